import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import assert_same_records

from selfnorm.comparing import compare
from selfnorm.config import ExperimentConfig, MlpConfig, TrainConfig, experiment_from_dict
from selfnorm.data import DataConfig, load_dataset
from selfnorm.records import read_records
from selfnorm.storage import RunDir, read_jsonl
from selfnorm.training import epoch_permutation, make_optimizer

SMALL = {
    "model": {"depth": 2, "width": 32},
    "train": {"epochs": 3, "batch_size": 64},
    "activations": ["selu", "relu"],
    "seeds": [0, 1],
}


def small_config(**over) -> ExperimentConfig:
    d = dict(SMALL)
    d.update(over)
    return experiment_from_dict(d)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(), progress=False)


def _strip_times(rows):
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


def test_compare_writes_summary_and_same_seed_gives_same_numbers(tmp_path, digits):
    cfg = small_config()
    s1 = compare(cfg, str(tmp_path / "a"), progress=False, dataset=digits)
    s2 = compare(cfg, str(tmp_path / "b"), progress=False, dataset=digits)
    assert set(s1["variants"]) == {"selu", "relu"}
    for name in ("selu", "relu"):
        v1, v2 = s1["variants"][name], s2["variants"][name]
        assert v1["test_accuracy"] == v2["test_accuracy"]
        assert v1["seeds"] == [0, 1] and v1["diverged"] == 0.0
        assert 0.5 < v1["test_accuracy"] <= 1.0
        for seed in (0, 1):
            rows_a = read_jsonl(RunDir(tmp_path / "a").run(name, seed).metrics)
            rows_b = read_jsonl(RunDir(tmp_path / "b").run(name, seed).metrics)
            assert len(rows_a) == 3
            assert _strip_times(rows_a) == _strip_times(rows_b)
    on_disk = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert on_disk["variants"]["selu"]["test_accuracy"] == s1["variants"]["selu"]["test_accuracy"]
    stored_cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert experiment_from_dict(stored_cfg) == cfg


def test_compare_records_every_n_steps_into_chunks_per_epoch(tmp_path, digits):
    cfg = small_config(seeds=[0], record={"every": 4})
    compare(cfg, str(tmp_path / "r"), progress=False, dataset=digits)
    spe = math.ceil(len(digits.x_train) / 64)
    for name in ("selu", "relu"):
        paths = RunDir(tmp_path / "r").run(name, 0)
        assert len(list(paths.records.glob("chunk-*.npz"))) == 3  # one per epoch
        r = read_records(paths.root)
        assert r.steps.tolist() == list(range(0, 3 * spe, 4))
        np.testing.assert_allclose(r.epochs, r.steps / spe)
        assert r.layers == ("act1", "act2") and r.family == (name, name)
        assert r.weight_layers == ("fc1", "fc2", "out")
        assert (r.hist_post.sum(-1) > 0).all() and np.isfinite(r.grad_std).all()
    assert not (tmp_path / "r" / "tensorboard").exists()
    off = small_config(seeds=[0], activations=["selu"], record={"enabled": False})
    compare(off, str(tmp_path / "off"), progress=False, dataset=digits)
    assert not RunDir(tmp_path / "off").run("selu", 0).records.exists()


def test_summary_means_and_stds_are_over_seeds(tmp_path, digits):
    s = compare(small_config(), str(tmp_path / "r"), progress=False, dataset=digits)
    v = s["variants"]["selu"]
    accs = [r["test_accuracy"] for r in v["runs"]]
    assert v["test_accuracy"] == pytest.approx(sum(accs) / 2)
    assert v["test_accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    for r in v["runs"]:
        rows = read_jsonl(RunDir(tmp_path / "r").run("selu", r["seed"]).metrics)
        assert r["best_val_accuracy"] == max(row["val_accuracy"] for row in rows)


def test_every_variant_sees_the_same_data_order():
    a = epoch_permutation(1000, seed=3, epoch=2)
    assert torch.equal(a, epoch_permutation(1000, seed=3, epoch=2))
    assert not torch.equal(a, epoch_permutation(1000, seed=3, epoch=3))
    assert sorted(a.tolist()) == list(range(1000))


def test_divergence_stops_that_variant_and_the_others_go_on(tmp_path, digits):
    cfg = small_config(
        activations=["relu", "tanh"],
        seeds=[0],
        train={"optimizer": "sgd", "lr": 100.0, "epochs": 2},
    )
    s = compare(cfg, str(tmp_path / "d"), progress=False, dataset=digits)
    relu = json.loads((tmp_path / "d/runs/relu/seed0/result.json").read_text())
    assert relu["diverged"] and "non-finite training loss" in relu["diverged_reason"]
    assert s["variants"]["relu"]["diverged"] == 1.0
    assert s["variants"]["tanh"]["diverged"] == 0.0
    assert len(read_jsonl(tmp_path / "d/runs/tanh/seed0/metrics.jsonl")) == 2


def test_existing_directory_is_never_overwritten_silently(tmp_path, digits):
    cfg = small_config(seeds=[0], activations=["selu"], train={"epochs": 1})
    out = str(tmp_path / "x")
    compare(cfg, out, progress=False, dataset=digits)
    with pytest.raises(ValueError, match="already exists"):
        compare(cfg, out, progress=False, dataset=digits)
    other = small_config(seeds=[0], activations=["selu"], train={"epochs": 2})
    with pytest.raises(ValueError, match="train.epochs: stored 1, now 2"):
        compare(other, out, resume=True, progress=False, dataset=digits)
    compare(other, out, overwrite=True, progress=False, dataset=digits)
    assert len(read_jsonl(tmp_path / "x/runs/selu/seed0/metrics.jsonl")) == 2


def test_fused_adam_matches_the_plain_one():
    torch.manual_seed(0)
    w0 = torch.randn(64, 32)
    results = []
    for fused in (True, False):
        w = torch.nn.Parameter(w0.clone())
        if fused:
            opt = make_optimizer([w], TrainConfig(lr=1e-2))
            if not opt.defaults.get("fused"):
                pytest.skip("this torch build has no fused Adam here; nothing to compare")
        else:
            opt = torch.optim.Adam([w], lr=1e-2)
        for step in range(20):
            g = torch.Generator().manual_seed(step)
            opt.zero_grad()
            (w * torch.randn(64, 32, generator=g)).sum().backward()
            opt.step()
        results.append(w.detach())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="lr=-1.0 must be > 0"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="batch_size=0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown activation 'sellu'"):
        ExperimentConfig(activations=("sellu",))
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        ExperimentConfig(dropout=1.5)
    with pytest.raises(ValueError, match="depth=0"):
        MlpConfig(depth=0)
    with pytest.raises(ValueError, match="unknown key"):
        experiment_from_dict({"train": {"learning_rate": 1}})


RESUME_ARGS = [
    "compare", "--activations", "selu,relu", "--seeds", "0,1", "--epochs", "6",
    "--depth", "2", "--width", "256", "--dropout", "0.1", "--record-every", "3", "--quiet",
]  # fmt: skip


def _run_cli(args):
    """Run the CLI to the end in a subprocess; return (exit code, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "selfnorm", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=1200,
        check=False,
    )
    return done.returncode, done.stderr


@pytest.mark.slow
def test_resume_after_kill_9_gives_exactly_the_uninterrupted_metrics(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    code, err = _run_cli([*RESUME_ARGS, "--out", str(full)])
    assert code == 0, err
    # Start again and kill -9 once the second variant's first run is mid-way.
    target = cut / "runs" / "relu" / "seed0" / "metrics.jsonl"
    with subprocess.Popen(
        # checkpoints after every epoch, so the kill lands between checkpoints of one run
        [
            sys.executable,
            "-m",
            "selfnorm",
            *RESUME_ARGS,
            "--checkpoint-seconds",
            "0",
            "--out",
            str(cut),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as p:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(read_jsonl(target)) < 2 and p.poll() is None:
            time.sleep(0.005)
        os.kill(p.pid, signal.SIGKILL)
    assert not (cut / "summary.json").exists(), "the run finished before it could be killed"
    assert (cut / "runs/selu/seed1/result.json").exists()
    code, err = _run_cli(["compare", "--resume", str(cut), "--quiet"])
    assert code == 0, err
    for name in ("selu", "relu"):
        for seed in (0, 1):
            a = RunDir(full).run(name, seed)
            b = RunDir(cut).run(name, seed)
            assert _strip_times(read_jsonl(a.metrics)) == _strip_times(read_jsonl(b.metrics))
            assert json.loads(a.result.read_text()) == json.loads(b.result.read_text())
            assert_same_records(read_records(a.root), read_records(b.root))
            assert not list(b.records.glob(".*.tmp"))
    s_full = json.loads((full / "summary.json").read_text())
    s_cut = json.loads((cut / "summary.json").read_text())
    for name in ("selu", "relu"):
        assert s_full["variants"][name]["test_accuracy"] == s_cut["variants"][name]["test_accuracy"]


def test_checkpoints_follow_the_clock_and_the_last_epoch(tmp_path, digits, monkeypatch):
    from selfnorm import storage

    saved = []
    real = storage.RunPaths.save_checkpoint

    def spy(self, state):
        saved.append(state["epoch"])
        real(self, state)

    monkeypatch.setattr(storage.RunPaths, "save_checkpoint", spy)
    cfg = small_config(activations=["selu"], seeds=[0])
    compare(cfg, str(tmp_path / "slow"), progress=False, dataset=digits)  # default: 10 s
    assert saved == [3]  # 3 short epochs: only the last one is checkpointed
    saved.clear()
    compare(cfg, str(tmp_path / "every"), progress=False, dataset=digits, checkpoint_seconds=0)
    assert saved == [1, 2, 3]
    ckpt = RunDir(tmp_path / "slow").run("selu", 0).load_checkpoint()
    assert ckpt["epoch"] == 3
    for bad in (-1, True, "10"):
        with pytest.raises(ValueError, match="must be a number >= 0"):
            compare(cfg, str(tmp_path / "bad"), progress=False, dataset=digits,
                    checkpoint_seconds=bad)  # fmt: skip


def test_progress_to_a_file_is_plain_lines(tmp_path, digits, capsys):
    """stderr that is not a terminal (a log file) gets one line per variant, no \\r frames."""
    cfg = small_config(activations=["selu", "relu"], seeds=[0])
    compare(cfg, str(tmp_path / "p"), progress=True, dataset=digits)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()  # the data were given: no "loading" line
    assert lines[0].startswith("auditing each variant's initial model on 512 training samples")
    assert lines[1].startswith("selu: 3/3 epochs") and lines[2].startswith("relu: 3/3 epochs")
    assert len(lines) == 3
    cfg = small_config(activations=["selu"], seeds=[0, 1])
    compare(cfg, str(tmp_path / "q"), progress=True, dataset=digits)
    # several seeds: the count says it spans them (the last line: a loaded machine may add one
    # every 10 s before it)
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("selu: 6/6 epochs (2 seeds x 3), seed 1")
