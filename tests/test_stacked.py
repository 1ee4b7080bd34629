"""StackedMLP: K runs as one model equal each run alone (issue 12's base)."""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as TF

from selfnorm import training
from selfnorm.config import TrainConfig, experiment_from_dict
from selfnorm.data import DataConfig, load_dataset
from selfnorm.dropout import AlphaDropout
from selfnorm.interrupts import Interrupted
from selfnorm.models import build_mlp
from selfnorm.records import read_records
from selfnorm.stacked import (
    StackedMLP,
    StackedRuns,
    seeded_rng_state,
    stack_size,
    unstackable,
)
from selfnorm.storage import RunDir, read_jsonl
from selfnorm.training import make_optimizer

SEEDS = (0, 1, 2)


def _runs(spec="selu", dropout=0.1):
    return [
        build_mlp(20, 4, 3, 32, spec, dropout, generator=torch.Generator().manual_seed(s))
        for s in SEEDS
    ]


def test_each_run_keeps_its_weights_masks_and_steps_as_alone():
    alone, stacked_from = _runs(), _runs()
    stacked = StackedMLP(stacked_from, [torch.Generator().manual_seed(100 + s) for s in SEEDS])
    for k in range(3):  # the initial weights: each run's own seed's
        torch.testing.assert_close(
            stacked.weights["fc1"][k].t(), alone[k].fc1.weight, rtol=0, atol=0
        )
    opts = [make_optimizer(m.parameters(), TrainConfig(lr=1e-2)) for m in alone]
    opt = make_optimizer(stacked.parameters(), TrainConfig(lr=1e-2))
    g = torch.Generator().manual_seed(7)
    rngs = [torch.Generator().manual_seed(100 + s) for s in SEEDS]  # the runs' mask streams
    for _ in range(5):
        x = torch.randn(3, 16, 20, generator=g)
        y = torch.randint(0, 4, (3, 16), generator=g)
        for k, (model, o) in enumerate(zip(alone, opts, strict=True)):
            torch.set_rng_state(rngs[k].get_state())  # the run alone draws from the global RNG
            loss = TF.cross_entropy(model(x[k]), y[k])
            rngs[k].set_state(torch.get_rng_state())
            o.zero_grad()
            loss.backward()
            o.step()
        out = stacked(x)
        loss = sum(TF.cross_entropy(out[k], y[k]) for k in range(3))  # disjoint slices
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k in range(3):
        run = stacked.load_run(k, _runs()[k])
        for a, b in zip(run.parameters(), alone[k].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_plain_dropout_draws_each_runs_mask_as_the_run_alone():
    alone = _runs("relu", 0.3)
    stacked = StackedMLP(_runs("relu", 0.3), [torch.Generator().manual_seed(s) for s in SEEDS])
    x = torch.randn(3, 16, 20)
    out = stacked(x)
    for k, s in enumerate(SEEDS):
        torch.manual_seed(s)  # a run alone draws nn.Dropout's mask from the global RNG
        torch.testing.assert_close(out[k], alone[k](x[k]), rtol=1e-5, atol=1e-6)
        assert torch.equal(stacked.generators[k].get_state(), torch.get_rng_state())


@pytest.mark.parametrize(
    ("layer", "why"),
    [
        (torch.nn.LogSoftmax(dim=1), "element-wise activations"),
        (torch.nn.PReLU(), "parameters or buffers"),
        (torch.nn.RReLU(), "RReLU draws its slopes"),
        (torch.nn.Linear(8, 8, bias=False), "without a bias"),
        (torch.nn.Flatten(2), "Flatten of other dimensions"),
        (AlphaDropout(0.1, generator=torch.Generator()), "its own generator"),
    ],
)
def test_a_layer_that_would_not_train_as_alone_is_refused(layer, why):
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), layer, torch.nn.Linear(8, 3))
    assert why in unstackable(net) and unstackable(net).startswith("layer 1 (")


def test_what_cannot_be_stacked_is_refused_with_its_name():
    with pytest.raises(ValueError, match=r"layer bn1 \(BatchNorm1d\) cannot be stacked"):
        StackedMLP(_runs("relu+bn", 0.0))
    with pytest.raises(ValueError, match="one generator per run"):
        StackedMLP(_runs())
    with pytest.raises(ValueError, match="other layers"):
        StackedMLP([*_runs("selu", 0.0)[:2], *_runs("relu", 0.0)[:1]])


# --- stacked runs in the training loop (selfnorm.training, train.stack) ------------------------

CFG = {
    "model": {"depth": 2, "width": 32},
    "train": {"epochs": 2, "batch_size": 64},
    "activations": ["selu"],
    "seeds": list(SEEDS),
    "dropout": 0.1,
    "record": {"every": 5},
}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return training.DeviceData.from_dataset(load_dataset(DataConfig(), progress=False), CPU)


def _fresh(config, data, seeds=SEEDS):
    shape = tuple(data.x_train.shape[1:])
    models = [training.build_model(config.model, "selu", 0.1, shape, 10, s) for s in seeds]
    opts = [training.make_optimizer(m.parameters(), config.train) for m in models]
    return models, opts


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_stacked_steps_are_each_runs_own_steps(data, clip):
    """Same weights, data order and masks as each run alone; losses equal within float32
    rounding at the first steps (clipping per run), the mask streams exactly."""
    config = experiment_from_dict(CFG)
    n, bs = len(data.x_train), config.train.batch_size
    steps = len(training.batch_bounds(n, bs))
    perms = torch.stack([training.epoch_permutation(n, s, 1) for s in SEEDS])
    alone, after = [], []
    for k, (model, opt) in enumerate(zip(*_fresh(config, data), strict=True)):
        torch.manual_seed(SEEDS[k])  # what a sequential run does
        losses = torch.zeros(1, steps)
        training._epoch(training._Single(model, opt), data.x_train, data.y_train,
                        perms[k : k + 1], bs, [], losses, 0, None, None, clip)  # fmt: skip
        alone.append(losses[0])
        after.append(torch.get_rng_state())
    models, opts = _fresh(config, data)
    engine = StackedRuns(models, opts, [seeded_rng_state(s, CPU) for s in SEEDS],
                         lambda p: training.make_optimizer(p, config.train))  # fmt: skip
    losses = torch.zeros(3, steps)
    training._epoch(engine, data.x_train, data.y_train, perms, bs, [], losses, 0, None, None, clip)
    torch.testing.assert_close(losses[:, :3], torch.stack(alone)[:, :3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses, torch.stack(alone), rtol=2e-3, atol=1e-4)
    for k in range(3):  # the same number of draws from the same stream: the same masks
        assert torch.equal(engine.generators[k].get_state(), after[k])


def _train(config, data, root, seeds=SEEDS, stack=3, **kw):
    rd = RunDir(root)
    rd.root.mkdir(parents=True, exist_ok=True)
    paths = [rd.run("selu", s) for s in seeds]
    return training.train_runs(data, config, "selu", list(seeds), paths, stack=stack, **kw), rd


def test_a_stacked_run_keeps_its_own_files_and_numbers(data, tmp_path):
    config = experiment_from_dict(CFG)
    stacked, rs = _train(config, data, tmp_path / "stacked")
    alone, ra = _train(config, data, tmp_path / "alone", stack=1)
    for s, a, b in zip(SEEDS, stacked, alone, strict=True):
        assert (a["seed"], a["epochs_completed"], a["diverged"]) == (s, 2, False)
        assert json.loads(rs.run("selu", s).result.read_text()) == a
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.02)
        rows_s, rows_a = (
            read_jsonl(rs.run("selu", s).metrics),
            read_jsonl(ra.run("selu", s).metrics),
        )
        for key in ("train_loss", "val_loss"):
            np.testing.assert_allclose([r[key] for r in rows_s], [r[key] for r in rows_a],
                                       rtol=2e-3)  # fmt: skip
        ck = rs.run("selu", s).load_checkpoint()  # the format of a run alone
        assert set(ck) == set(ra.run("selu", s).load_checkpoint())
        model = _fresh(config, data, [s])[0][0]
        model.load_state_dict(ck["model"])
        ra_ck = ra.run("selu", s).load_checkpoint()
        assert set(ck["optimizer"]["state"]) == set(ra_ck["optimizer"]["state"])
        # records: one per run, the same steps; the first record (initial weights, the same
        # masks) equal to the run alone's exactly, the later ones within float rounding
        r_s, r_a = read_records(rs.run("selu", s).root), read_records(ra.run("selu", s).root)
        np.testing.assert_array_equal(r_s.steps, r_a.steps)
        assert r_s.layers == r_a.layers and len(r_s.steps) >= 4
        np.testing.assert_array_equal(r_s.hist_post[0], r_a.hist_post[0])
        for key, value in r_s.post.items():
            np.testing.assert_allclose(value[0], r_a.post[key][0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(value, r_a.post[key], rtol=0.05, atol=0.02)


def test_a_diverging_run_stops_alone_and_the_others_go_on_unchanged(data, tmp_path, monkeypatch):
    build = training.build_model

    def blow_up_seed_1(cfg, activation, dropout, shape, classes, seed):
        model = build(cfg, activation, dropout, shape, classes, seed)
        if seed == 1:  # a run whose loss is not finite from its first step
            with torch.no_grad():
                model.fc1.weight[0, 0] = float("nan")
        return model

    monkeypatch.setattr(training, "build_model", blow_up_seed_1)
    config = experiment_from_dict(CFG)
    three, rd = _train(config, data, tmp_path / "three")
    two, rd2 = _train(config, data, tmp_path / "two", seeds=(0, 2), stack=2)
    assert three[1]["diverged"] and three[1]["test_accuracy"] is None
    assert (
        three[1]["diverged_reason"].startswith("non-finite training loss")
        and "epoch 1" in (three[1]["diverged_reason"])
    )
    assert read_jsonl(rd.run("selu", 1).metrics) == []
    for a, b in zip((three[0], three[2]), two, strict=True):
        assert {k: v for k, v in a.items()} == b  # exactly: the stack does not mix runs
    for s in (0, 2):  # the same weights (validation scores exact), training losses to 1e-6
        rows, rows2 = read_jsonl(rd.run("selu", s).metrics), read_jsonl(rd2.run("selu", s).metrics)
        assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in rows2]
        np.testing.assert_allclose([r["train_loss"] for r in rows],
                                   [r["train_loss"] for r in rows2], rtol=1e-6)  # fmt: skip


def test_the_stack_choice():
    cpu, cuda = CPU, torch.device("cuda")
    assert [stack_size("auto", cpu, k) for k in (1, 3, 7, 8, 9)] == [1, 1, 1, 8, 9]
    assert stack_size("auto", cuda, 3) == 3 and stack_size("off", cuda, 3) == 1
    assert stack_size(2, cpu, 3) == 2 and stack_size(8, cpu, 3) == 3
    assert TrainConfig(stack="4").stack == 4 and TrainConfig(stack="OFF").stack == "off"
    for bad in (1, 0, "fast", True, 2.5):
        with pytest.raises(ValueError, match="choose auto, off, or the most runs per stack"):
            TrainConfig(stack=bad)


def test_one_stack_at_a_time_a_finished_run_is_written_before_the_next_trains(data, tmp_path):
    config = experiment_from_dict({**CFG, "train": {"epochs": 1, "batch_size": 64}})
    steps = len(training.batch_bounds(len(data.x_train), 64))
    calls = iter(range(10**6))
    with pytest.raises(Interrupted, match="selu seed 1 stopped in epoch 1 after step 3"):
        _train(config, data, tmp_path, stack=1, stop=lambda: next(calls) >= steps + 3)
    rd = RunDir(tmp_path)
    assert rd.run("selu", 0).result.exists() and not rd.run("selu", 1).result.exists()
