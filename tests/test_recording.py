import copy
import math
import os

import numpy as np
import pytest
import torch
from conftest import (
    Spy,
    batch,
    hand_hist,
    hand_stats,
    mixed_net,
    near_edges,
    no_module_hooks,
    train_steps,
)
from torch import nn
from torch.nn import functional as F

import selfnorm
from selfnorm.config import RecordConfig
from selfnorm.constants import SATURATION_01
from selfnorm.models import build_cnn, build_mlp
from selfnorm.recording import ActivationRecorder, kernel, recorder
from selfnorm.records import (
    STAT_KEYS,
    WEIGHT_KEYS,
    Records,
    read_records,
    truncate_records,
    write_chunk,
)
from selfnorm.sinks import NpzChunkSink, TensorBoardSink
from selfnorm.taxonomy import activation_family


@pytest.fixture(
    autouse=True,
    params=[
        "torch",
        pytest.param(
            "kernel",
            marks=pytest.mark.skipif(kernel.load() is None, reason="kernel unavailable"),
        ),
    ],
)
def reductions(request, monkeypatch):
    """Every test here runs with the torch ops and again with the C++ kernel reducing the
    records (where it builds): the recorder is the same, only the reduction differs."""
    if request.param == "kernel":
        monkeypatch.setattr(recorder, "_implementation", lambda backend, model: kernel)
    return request.param


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def test_statistics_equal_those_computed_by_hand_for_every_family():
    net = mixed_net()
    x, y = batch()
    spy = Spy(net)
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        train_steps(net, rec, x, y, 1)
        r = rec.records()
    spy.remove()
    names = ["1", "3", "5", "7", "9", "11"]
    assert r.layers == tuple(names)
    assert r.family == ("selu", "relu", "lrelu", "selu", "gelu", "tanh")
    assert r.depth.tolist() == [1, 2, 3, 4, 5, 6]
    assert r.steps.tolist() == [0]
    for i, name in enumerate(names):
        module = net.get_submodule(name)
        sat = SATURATION_01 if r.family[i] == "selu" else None
        for kind, got, hist, t in (
            ("pre", r.pre, r.hist_pre, spy.pre[name]),
            ("post", r.post, r.hist_post, spy.post[name]),
        ):
            want = hand_stats(t, activation_family(module), sat, post=kind == "post")
            for key in STAT_KEYS:
                np.testing.assert_allclose(
                    got[key][0, i], want[key], rtol=1e-5, atol=1e-6, err_msg=f"{name} {kind} {key}"
                )
            counts = hist[0, i]
            assert counts.sum() == t.numel()
            diff = np.abs(counts - hand_hist(t)).sum()
            assert diff <= 2 * near_edges(t), (name, kind, counts, hand_hist(t))
        np.testing.assert_allclose(
            r.grad_std[0, i], spy.grad[name].double().std(unbiased=False).item(), rtol=1e-5
        )
    # the constructed cases really are what they claim
    assert r.post["dead_frac"][0, 1] >= 6 / 32
    assert r.pre["dead_frac"][0, 2] >= 4 / 32
    assert r.post["saturation_frac"][0, 3] >= 5 / 32
    assert r.post["zero_frac"][0, 1] >= 6 / 32
    assert np.isnan(r.post["saturation_frac"][0, [1, 2, 4, 5]]).all()
    assert np.isnan(r.pre["saturation_frac"][0]).all()
    assert np.isnan(r.post["dead_frac"][0, [0, 3, 4, 5]]).all()


def test_dead_fraction_counts_units_never_positive_in_the_whole_batch():
    # unit 0 never > 0, unit 1 positive once, unit 2 always, unit 3 exactly zero: dead 2/4
    x = torch.tensor([[-1.0, -1.0, 1.0, 0.0], [-2.0, 3.0, 2.0, 0.0], [-0.5, -4.0, 0.1, 0.0]])
    net = nn.Sequential(nn.ReLU())
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        net(x)
        r = rec.records()
    assert r.post["dead_frac"][0, 0] == 0.5
    assert r.pre["dead_frac"][0, 0] == 0.5
    assert r.post["zero_frac"][0, 0] == 8 / 12  # six negatives clipped, three zeros, x -> 0
    assert r.pre["zero_frac"][0, 0] == 3 / 12
    assert np.isnan(r.grad_std[0, 0])  # no backward pass


def test_histogram_bins_are_half_open_and_nothing_is_dropped():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 50, generator=g, dtype=torch.float64) * 3
    # move values off the edges so float32 rounding cannot decide their bin
    frac = (base + 4) * 8 - torch.floor((base + 4) * 8)
    base = torch.where((frac < 1e-3) | (frac > 1 - 1e-3), base + 0.01, base).float()
    special = torch.tensor(
        [-4.0, -3.875, 0.0, -0.0, 3.875, 4.0, 4.5, -4.5, -1e30, 1e30]
        + [math.inf, -math.inf, math.nan, math.nan, 3.99999, -4.0000005]
    )
    x = torch.cat([base.ravel(), special]).view(1, -1)
    net = nn.Sequential(nn.Hardtanh(-1e6, 1e6))  # the input is the pre-activation
    with ActivationRecorder(net, RecordConfig(every=1), record_eval=True) as rec:
        rec.step()
        net(x)
        r = rec.records()
    counts = r.hist_pre[0, 0]
    np.testing.assert_array_equal(counts, hand_hist(x))
    assert counts.sum() == x.numel()
    # by hand for the special values: -4 -> bin 0, -3.875 -> bin 1, +-0 -> bin 32,
    # 3.875 -> last bin, 4 and beyond, inf and NaN -> overflow, below -4 -> underflow
    only = ActivationRecorder(nn.Sequential(nn.Tanh()), RecordConfig(every=1), record_eval=True)
    with only:
        only.step()
        only.model(special.view(1, -1))
        h = only.records().hist_pre[0, 0]
    assert h[0] == 4 and h[1] == 1 and h[2] == 1 and h[33] == 2 and h[64] == 2
    assert h[65] == 6 and h.sum() == len(special)


def test_histogram_range_and_bins_come_from_the_config():
    x = torch.linspace(-0.95, 1.95, 30).view(1, -1)  # steps of 0.1, never on an edge
    cfg = RecordConfig(every=1, bins=3, range=(0.0, 1.5))
    with ActivationRecorder(nn.Sequential(nn.SiLU()), cfg) as rec:
        rec.step()
        rec.model(x)
        r = rec.records()
    np.testing.assert_array_equal(r.bin_edges, [0.0, 0.5, 1.0, 1.5])
    assert r.hist_pre[0, 0].tolist() == hand_hist(x, r.bin_edges).tolist() == [10, 5, 5, 5, 5]


def test_many_bins_widen_the_bin_index():
    x = (torch.arange(3000, dtype=torch.float32) / 3000 * 10 - 5 + 1e-4).view(3, 1000)
    cfg = RecordConfig(every=1, bins=20000, range=(-4.0, 4.0))  # 2 rows x 20002 > 2**15
    with ActivationRecorder(nn.Sequential(nn.Tanh()), cfg) as rec:
        rec.step()
        rec.model(x)
        r = rec.records()
    np.testing.assert_array_equal(r.hist_pre[0, 0], hand_hist(x, r.bin_edges))
    assert r.hist_post[0, 0].sum() == x.numel()


def test_grad_std_equals_autograd_by_hand():
    net = mixed_net(3)
    twin = copy.deepcopy(net)
    x, y = batch(seed=5)
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        F.cross_entropy(net(x), y).backward()
        r = rec.records()
    outs = {}
    for i in (1, 3, 5, 7, 9, 11):
        twin[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
    loss = F.cross_entropy(twin(x), y)
    grads = torch.autograd.grad(loss, [outs[i] for i in (1, 3, 5, 7, 9, 11)])
    for col, g in enumerate(grads):
        assert g.abs().sum() > 0
        np.testing.assert_allclose(r.grad_std[0, col], g.double().std(unbiased=False), rtol=1e-5)


def test_only_the_first_gradient_of_a_recorded_pass_counts():
    net = mixed_net(3)
    x, y = batch(seed=5)
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        loss = F.cross_entropy(net(x), y)
        loss.backward(retain_graph=True)
        (10 * loss).backward()  # e.g. a second backward: its hooks fire again, ignored
        r = rec.records()
    once = ActivationRecorder(mixed_net(3), RecordConfig(every=1))
    with once:
        once.step()
        F.cross_entropy(once.model(x), y).backward()
        np.testing.assert_array_equal(r.grad_std, once.records().grad_std)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_omega_and_tau_are_the_per_unit_weight_sums(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        net = build_mlp(20, 5, depth=2, width=16, spec="selu", shape="conic", generator=g)
        x = torch.randn(8, 20)
    else:
        net = nn.Sequential(
            nn.Conv2d(3, 6, 3), nn.ReLU(), nn.ConvTranspose2d(6, 4, 3), nn.ELU(), nn.Flatten()
        )
        x = torch.randn(8, 3, 6, 6)
    with ActivationRecorder(net, RecordConfig(every=1), record_eval=True) as rec:
        rec.step()
        net(x)
        r = rec.records()
    mods = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    assert len(r.weight_layers) == len(mods)
    for j, m in enumerate(mods):
        w = m.weight.detach().double()
        if isinstance(m, nn.ConvTranspose2d):
            w = w.transpose(0, 1)
        w = w.reshape(w.shape[0], -1)
        omega, tau = w.sum(1), (w * w).sum(1)
        want = {
            "omega_mean": omega.mean(),
            "omega_std": omega.std(unbiased=False),
            "tau_mean": tau.mean(),
            "tau_std": tau.std(unbiased=False),
        }
        for key in WEIGHT_KEYS:
            np.testing.assert_allclose(r.weights[key][0, j], want[key].item(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("every", "weighed"), [(1, list(range(0, 120, 10))), (2, None), (7, None)])
def test_dense_recording_takes_the_weight_sums_every_10th_step(every, weighed):
    net = nn.Sequential(nn.Linear(4, 8), nn.SELU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with ActivationRecorder(net, RecordConfig(every=every)) as rec:
        for _ in range(120):
            rec.step()
            net(torch.randn(16, 4)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        r = rec.records()
    have = np.isfinite(r.weights["tau_mean"]).all(1)
    assert r.steps[have].tolist() == (weighed if weighed is not None else r.steps.tolist())
    assert np.isnan(r.weights["omega_std"][~have]).all()
    assert np.isfinite(r.post["mean"]).all() and np.isfinite(r.grad_std).all()  # all the rest


def test_cnn_units_are_channels_and_layers_of_different_shapes_are_all_recorded():
    g = torch.Generator().manual_seed(0)
    net = build_cnn((1, 12, 12), 4, "relu", channels=(4, 8), generator=g)
    with torch.no_grad():
        net.conv2.bias[:3] = -100.0  # 3 of 8 channels dead
    x = torch.randn(6, 1, 12, 12, generator=g)
    spy = Spy(net)
    with ActivationRecorder(net, RecordConfig(every=1), record_eval=True) as rec:
        rec.step()
        net(x)
        r = rec.records()
    spy.remove()
    assert r.layers == ("act1", "act2")
    assert r.post["dead_frac"][0, 1] == 3 / 8
    for i, name in enumerate(r.layers):
        want = hand_stats(spy.post[name], "relu", None, True)
        for key in ("mean", "std", "zero_frac", "dead_frac", "max"):
            np.testing.assert_allclose(r.post[key][0, i], want[key], rtol=1e-5, atol=1e-7)
        assert r.hist_post[0, i].sum() == spy.post[name].numel()


# ---------------------------------------------------------------------------------------------
# Hooks: scoped, in-place safe, only when asked
# ---------------------------------------------------------------------------------------------


def test_no_hook_remains_after_the_block_or_between_recording_steps():
    net = mixed_net()
    x, y = batch()
    kept_outputs = []
    keep = net[1].register_forward_hook(lambda m, a, o: kept_outputs.append(o))
    keep.remove()  # a user hook added and removed before: the dicts start empty
    with ActivationRecorder(net, RecordConfig(every=2)) as rec:
        assert rec.step()  # armed: hooks now exist
        assert not no_module_hooks(net)
        loss = F.cross_entropy(net(x), y)
        assert no_module_hooks(net)  # removed right after the recorded forward pass
        loss.backward()
        assert not rec.step()
        assert no_module_hooks(net)
        net(x)
        assert rec.step()
    assert no_module_hooks(net)
    # tensor hooks on outputs of a recorded pass are removed too
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        h = net[1].register_forward_hook(lambda m, a, o: kept_outputs.append(o))
        out = net(x)
        h.remove()
    assert no_module_hooks(net)
    assert not kept_outputs[-1]._backward_hooks
    out.sum().backward()  # still works, nothing fires into a closed recorder


def test_hooks_are_removed_when_the_block_raises():
    net = mixed_net()
    x, _ = batch()
    with pytest.raises(ZeroDivisionError):
        with ActivationRecorder(net, RecordConfig(every=1)) as rec:
            rec.step()
            net[1].register_forward_hook(lambda m, a, o: 1 / 0)  # a user hook that fails
            net(x)
    net[1]._forward_hooks.clear()  # that user hook is the user's to remove
    assert no_module_hooks(net)
    with pytest.raises(RuntimeError, match="boom"):
        with ActivationRecorder(net, RecordConfig(every=1)) as rec:
            rec.step()
            raise RuntimeError("boom")
    assert no_module_hooks(net)


def test_a_forward_pass_that_raised_does_not_leak_into_the_next_record():
    net = mixed_net()
    x, y = batch()
    calls = []

    def fails_once(m, a, o):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("bad batch")

    h = net[5].register_forward_hook(fails_once)
    spy = Spy(net)
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        with pytest.raises(ValueError, match="bad batch"):
            net(x)  # dies after two of six layers were captured
        rec.step()
        F.cross_entropy(net(x[:50]), y[:50]).backward()
        r = rec.records()
    h.remove()
    spy.remove()
    assert r.steps.tolist() == [1]
    for i, name in enumerate(r.layers):
        assert r.hist_post[0, i].sum() == spy.post[name].numel() == 50 * 32
        np.testing.assert_allclose(r.post["mean"][0, i], spy.post[name].double().mean(), atol=1e-6)


def test_inplace_activation_is_measured_before_and_after():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(10, 20)
    nn.init.normal_(lin.weight, generator=g)
    net = nn.Sequential(lin, nn.ReLU(inplace=True), nn.Linear(20, 2))
    x = torch.randn(30, 10, generator=g)
    pre = lin(x).detach()  # what the ReLU receives, before it overwrites it
    post = pre.clamp_min(0)
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        out = net(x)
        outs = {}
        h = net[1].register_forward_hook(lambda m, a, o: outs.setdefault("o", o))
        out2 = net(x)
        h.remove()
        gout = torch.autograd.grad(out2.square().sum(), outs["o"])[0]
        out.square().sum().backward()
        r = rec.records()
    want_pre = hand_stats(pre, "relu", None, False)
    want_post = hand_stats(post, "relu", None, True)
    assert want_pre["min"] < 0 and want_pre["zero_frac"] == 0
    for key in STAT_KEYS:
        np.testing.assert_allclose(r.pre[key][0, 0], want_pre[key], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(r.post[key][0, 0], want_post[key], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(r.hist_pre[0, 0], hand_hist(pre))
    np.testing.assert_allclose(r.grad_std[0, 0], gout.double().std(unbiased=False), rtol=1e-5)


def test_eval_and_unarmed_forwards_record_nothing_unless_asked():
    net = mixed_net()
    x, y = batch()
    with ActivationRecorder(net, RecordConfig(every=3)) as rec:
        train_steps(net, rec, x, y, 7, eval_between=True)
        net.train()
        net(x)  # no step(): not armed
        r = rec.records()
    assert r.steps.tolist() == [0, 3, 6]

    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        assert rec.step()
        net.eval()
        net(x)  # eval mode: ignored, still armed
        assert rec.armed and len(rec.flush()) == 0
        net.train()
        net(x)
        assert not rec.armed
        assert len(rec.records()) == 1
        assert rec.step()  # armed again; an eval pass leaves it unused until the block ends
        net.eval()
        net(x)

    with ActivationRecorder(net, RecordConfig(every=2)) as rec:
        assert rec.step()
        net(x)  # eval mode still: step 0 never recorded
        assert not rec.step() and not rec.armed and no_module_hooks(net)
        net.train()
        net(x)
        assert len(rec.records()) == 0

    with ActivationRecorder(net, RecordConfig(every=1), record_eval=True) as rec:
        rec.arm()
        net.eval()
        with torch.no_grad():
            net(x)
        r = rec.records()
    assert len(r) == 1 and np.isnan(r.grad_std).all() and np.isfinite(r.post["mean"]).all()


def test_recording_does_not_change_training():
    x, y = batch(n=100)
    nets = []
    for record in (False, True):
        torch.manual_seed(0)
        net = build_mlp(
            12, 3, 3, 32, "selu", dropout=0.1, generator=torch.Generator().manual_seed(0)
        )
        if record:
            with ActivationRecorder(net, RecordConfig(every=2)) as rec:
                train_steps(net, rec, x, y, 6)
        else:
            train_steps(net, None, x, y, 6)
        nets.append(net)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_module_called_twice_is_two_layers_in_call_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Tanh()  # registered first, called last
            self.act = nn.ReLU()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.late(self.act(self.fc(self.act(x))))

    net = Net()
    with ActivationRecorder(net, RecordConfig(every=1), record_eval=True) as rec:
        rec.step()
        net(torch.randn(5, 6))
        r = rec.records()
    assert r.layers == ("act", "act#2", "late")
    assert r.family == ("relu", "relu", "tanh")


def test_smaller_last_batch_and_layout_errors():
    net = mixed_net()
    x, y = batch(n=64)
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        train_steps(net, rec, x, y, 1)
        train_steps(net, rec, x[:10], y[:10], 1)
        r = rec.records()
    assert [int(h.sum()) for h in r.hist_post[:, 0]] == [64 * 32, 10 * 32]

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.ReLU(), nn.Tanh()
            self.use_b = False

        def forward(self, x):
            return self.b(self.a(x)) if self.use_b else self.a(x)

    net = Branchy()
    with ActivationRecorder(net, RecordConfig(every=1), record_eval=True) as rec:
        rec.step()
        net(torch.randn(3, 4))
        net.use_b = True
        rec.step()
        with pytest.raises(RuntimeError, match="'b' was called in this recorded forward pass"):
            net(torch.randn(3, 4))


@pytest.mark.parametrize(
    ("module", "family"),
    [
        (selfnorm.SELU(), "selu"),
        (nn.SELU(), "selu"),
        (nn.ReLU(inplace=True), "relu"),
        (nn.ReLU6(), "relu"),
        (nn.LeakyReLU(), "lrelu"),
        (nn.PReLU(), "lrelu"),
        (nn.RReLU(), "lrelu"),
        (nn.ELU(), "elu"),
        (nn.CELU(), "elu"),
        (nn.GELU(), "gelu"),
        (nn.SiLU(), "silu"),
        (nn.Tanh(), "tanh"),
        (nn.Sigmoid(), "other"),
        (nn.Softplus(), "other"),
        (nn.Mish(), "other"),
        (nn.Hardtanh(), "other"),
    ],
)
def test_every_activation_module_is_recorded_with_its_family(module, family):
    assert activation_family(module) == family
    net = nn.Sequential(nn.Linear(4, 8), module, nn.Linear(8, 2))
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        net(torch.randn(16, 4)).sum().backward()
        r = rec.records()
    assert r.layers == ("1",) and r.family == (family,)
    assert r.hist_post[0, 0].sum() == r.hist_pre[0, 0].sum() == 16 * 8
    assert np.isfinite(r.grad_std).all()


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="no activation modules"):
        ActivationRecorder(nn.Linear(3, 3), functional=False)
    with ActivationRecorder(nn.Linear(3, 3)) as rec:  # functions could be called: seen at once
        rec.step()
        with pytest.raises(RuntimeError, match="called no activation"):
            rec.model(torch.ones(2, 3))
    with pytest.raises(ValueError, match="start_step"):
        ActivationRecorder(nn.ReLU(), start_step=-1)
    with pytest.raises(RuntimeError, match="without sinks"):
        ActivationRecorder(nn.ReLU(), sinks=[]).records()
    with pytest.raises(ValueError, match="record.every=0"):
        RecordConfig(every=0)
    with pytest.raises(ValueError, match=r"low < high"):
        RecordConfig(range=(1.0, -1.0))
    with pytest.raises(ValueError, match="drop --no-record or --tensorboard"):
        RecordConfig(enabled=False, tensorboard=True)


def test_disabled_config_never_arms():
    net = mixed_net()
    x, y = batch()
    with ActivationRecorder(net, RecordConfig(enabled=False)) as rec:
        train_steps(net, rec, x, y, 3)
        assert len(rec.records()) == 0


# ---------------------------------------------------------------------------------------------
# Storage and sinks
# ---------------------------------------------------------------------------------------------


def assert_same_records(a: Records, b: Records):
    assert a.layers == b.layers and a.family == b.family and a.weight_layers == b.weight_layers
    for name in ("steps", "epochs", "depth", "bin_edges", "hist_post", "hist_pre", "grad_std"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("post", "pre", "weights"):
        da, db = getattr(a, name), getattr(b, name)
        assert list(da) == list(db)
        for key in da:
            np.testing.assert_array_equal(da[key], db[key], err_msg=f"{name}[{key}]")


def recorded(tmp_path, flushes=3, steps=4, every=2):
    net = mixed_net()
    x, y = batch()
    sink = NpzChunkSink(tmp_path / "seed0" / "records")
    parts = []
    with ActivationRecorder(net, RecordConfig(every=every), sinks=[sink], steps_per_epoch=4) as rec:
        for _ in range(flushes):
            train_steps(net, rec, x, y, steps)
            parts.append(rec.flush())
    return parts


def test_read_records_roundtrip_and_dtypes(tmp_path):
    parts = recorded(tmp_path)
    files = sorted(p.name for p in (tmp_path / "seed0" / "records").iterdir())
    assert files == ["chunk-000000.npz", "chunk-000001.npz", "chunk-000002.npz"]
    for path in (tmp_path / "seed0", tmp_path / "seed0" / "records"):
        r = read_records(path)
        assert r.steps.tolist() == [0, 2, 4, 6, 8, 10]
        np.testing.assert_array_equal(r.epochs, r.steps / 4)
        assert r.steps.dtype == np.int64 and r.epochs.dtype == np.float64
        assert r.hist_post.dtype == np.int64 and r.hist_post.shape == (6, 6, 66)
        assert r.depth.dtype == np.int64 and r.bin_edges.shape == (65,)
        assert set(r.post) == set(r.pre) == set(STAT_KEYS) and set(r.weights) == set(WEIGHT_KEYS)
        assert all(v.dtype == np.float64 and v.shape == (6, 6) for v in r.post.values())
        assert all(v.shape == (6, 7) for v in r.weights.values())
        assert_same_records(r.select(slice(0, 2)), parts[0])
        assert_same_records(r.select(slice(4, 6)), parts[2])
    assert len(read_records(tmp_path / "nothing")) == 0


def test_a_torn_write_never_exists_and_never_hides_earlier_chunks(tmp_path, monkeypatch):
    recorded(tmp_path)
    rdir = tmp_path / "seed0" / "records"
    whole = read_records(rdir)
    # a kill -9 during atomic_write_bytes leaves at most its temporary file: ignored
    data = (rdir / "chunk-000002.npz").read_bytes()
    (rdir / ".chunk-000003.npz.x1y2z3.tmp").write_bytes(data[: len(data) // 2])
    assert_same_records(read_records(rdir), whole)
    # a chunk damaged by something else is skipped with a warning naming it
    (rdir / "chunk-000003.npz").write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match="chunk-000003.npz"):
        r = read_records(rdir)
    assert_same_records(r, whole)

    # the writer's own crash: the temporary file is removed, the target never appears
    def dies(src, dst):
        raise KeyboardInterrupt  # killed between writing the temporary file and the rename

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        write_chunk(rdir, 7, whole)
    monkeypatch.undo()
    assert sorted(p.name for p in rdir.iterdir())[-1] == "chunk-000003.npz"  # no 7, no temp


def test_truncate_drops_records_from_the_resume_step_on(tmp_path):
    recorded(tmp_path)  # records at steps 0, 2 | 4, 6 | 8, 10
    rdir = tmp_path / "seed0" / "records"
    whole = read_records(rdir)
    (rdir / ".chunk-000003.npz.abc.tmp").write_bytes(b"half")
    assert truncate_records(rdir, 6) == 2  # chunk 1 keeps step 4, chunk 2 goes
    assert sorted(p.name for p in rdir.iterdir()) == ["chunk-000000.npz", "chunk-000001.npz"]
    r = read_records(rdir)
    assert r.steps.tolist() == [0, 2, 4]
    assert_same_records(r, whole.select(slice(0, 3)))
    sink = NpzChunkSink(rdir)
    sink.write(whole.select(slice(4, 6)))
    assert (rdir / "chunk-000002.npz").exists()
    assert truncate_records(rdir, 0) == 0 and not list(rdir.iterdir())


def test_tensorboard_events_hold_the_same_bins_and_grouped_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    net = mixed_net()
    x, y = batch()
    tb = TensorBoardSink(tmp_path / "tb")
    with ActivationRecorder(net, RecordConfig(every=2), sinks=[tb]) as rec:
        train_steps(net, rec, x, y, 4)
        r = rec.flush()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    # one group per layer: the Linear before an activation and the activation share it
    group = {layer: str(int(layer) - 1) for layer in r.layers}
    for layer, family in zip(r.layers, r.family, strict=True):
        t = f"{group[layer]}/{layer}"
        assert {f"{t}/post", f"{t}/pre"} <= set(tags["histograms"])
        for key in ("mean", "std", "min", "max", "grad_std"):
            assert f"{t}/{key}" in tags["scalars"]
        # zeros mean something for ReLU only, the (0, 1) distance for SELU only
        assert (f"{t}/zero_frac" in tags["scalars"]) == (family in ("relu", "lrelu"))
        assert (f"{t}/fp_distance" in tags["scalars"]) == (family == "selu")
        assert f"{t}/pre_mean" in tags["scalars"]
        assert f"{group[layer]}/weight/tau_mean" in tags["scalars"]
    assert f"{r.weight_layers[-1]}/weight/tau_mean" in tags["scalars"]  # the output layer
    assert not any(t.startswith(("act/", "weight/")) for t in tags["scalars"])
    assert "2/3/dead_frac" in tags["scalars"] and "0/1/dead_frac" not in tags["scalars"]
    assert "0/1/saturation_frac" in tags["scalars"]
    events = acc.Histograms("0/1/post")
    assert [e.step for e in events] == [0, 2]
    h = events[1].histogram_value
    assert list(h.bucket) == r.hist_post[1, 0].tolist()
    np.testing.assert_array_equal(h.bucket_limit[:-1], r.bin_edges)
    assert h.num == r.hist_post[1, 0].sum()
    means = acc.Scalars("2/3/mean")
    np.testing.assert_allclose([e.value for e in means], r.post["mean"][:, 1], rtol=1e-6)
    # weights (in weight units) and gradients, on the records' own bins
    g = acc.Histograms("0/weight/values")[1].histogram_value
    assert list(g.bucket) == r.hist_weight[1, 0].tolist()
    unit = np.sqrt(r.weight_fan_in[0])
    np.testing.assert_allclose(g.bucket_limit[:-1], r.bin_edges / unit, rtol=1e-12)
    for tag, counts in (
        ("0/weight/grad", r.hist_weight_grad[1, 0]),
        ("0/1/grad", r.hist_grad[1, 0]),
    ):
        h = acc.Histograms(tag)[1].histogram_value
        assert list(h.bucket) == counts.tolist() and h.num == counts.sum() > 0
        np.testing.assert_array_equal(h.bucket_limit[:-1], r.grad_bin_edges)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_records_equal_cpu_records_and_recording_steps_never_sync():
    x, y = batch(n=128)
    results = []
    for device in ("cpu", "cuda"):
        net = mixed_net().to(device)
        xd, yd = x.to(device), y.to(device)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        with ActivationRecorder(net, RecordConfig(every=1)) as rec:
            for i in range(4):
                # after the first record (plans, buffers) a recording step must not wait for
                # the GPU: every reduction stays on the device until flush
                strict = device == "cuda" and i > 0
                if strict:
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    rec.step()
                    loss = F.cross_entropy(net(xd), yd)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                finally:
                    if strict:
                        torch.cuda.set_sync_debug_mode(0)
            results.append(rec.records())
    a, b = results
    assert a.layers == b.layers and a.steps.tolist() == b.steps.tolist() == [0, 1, 2, 3]
    for key in ("mean", "std", "min", "max", "zero_frac", "dead_frac", "saturation_frac"):
        np.testing.assert_allclose(a.post[key], b.post[key], rtol=1e-3, atol=1e-4, err_msg=key)
        np.testing.assert_allclose(a.pre[key], b.pre[key], rtol=1e-3, atol=1e-4, err_msg=key)
    np.testing.assert_allclose(a.grad_std, b.grad_std, rtol=1e-3)
    for key in WEIGHT_KEYS:
        np.testing.assert_allclose(a.weights[key], b.weights[key], rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(a.hist_pre.sum(-1), b.hist_pre.sum(-1))
    # counts may differ only by values that float differences moved across an edge
    assert np.abs(a.hist_post - b.hist_post).sum() <= 0.001 * a.hist_post.sum()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_get_exact_counts(dtype):
    # counts of 0/1 values summed in float16 overflow at 65504 and round in bfloat16
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 512), nn.ReLU()).to(dtype)
    x = torch.randn(256, 64, generator=g).to(dtype)
    with ActivationRecorder(net, RecordConfig(every=1), record_eval=True) as rec:
        rec.step()
        with torch.no_grad():
            out = net(x)
        r = rec.records()
    want = float((out == 0).double().mean())
    assert r.post["zero_frac"][0, 0] == pytest.approx(want, abs=1e-12)
    assert int(r.hist_post[0, 0].sum()) == out.numel()
    np.testing.assert_allclose(r.post["mean"][0, 0], float(out.double().mean()), rtol=1e-5)


def test_a_pass_armed_by_hand_takes_the_weight_sums():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    with ActivationRecorder(net, RecordConfig(every=3), record_eval=True) as rec:
        for _ in range(2):
            rec.step()
            net(torch.randn(5, 4))
        rec.arm()  # step 1, not a multiple of every
        net(torch.randn(5, 4))
        r = rec.records()
    assert r.steps.tolist() == [0, 1]
    assert np.isfinite(r.weights["tau_mean"]).all()
