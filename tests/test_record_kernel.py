"""The reductions of a record, torch ops and the opt-in C++ kernel, against each other and
against statistics by hand; recorder behaviours on both."""

import copy
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import Spy, batch, hand_hist, hand_stats, mixed_net, near_edges
from torch import nn
from torch.nn import functional as F

from selfnorm.config import RecordConfig
from selfnorm.recording import ActivationRecorder, kernel, reduce
from selfnorm.records import (
    STAT_KEYS,
    WEIGHT_KEYS,
)
from selfnorm.taxonomy import activation_family

needs_kernel = pytest.mark.skipif(
    kernel.load() is None, reason=f"kernel unavailable: {kernel.unavailable_reason()}"
)
BACKENDS = ["torch", pytest.param("kernel", marks=needs_kernel)]


def test_the_kernel_builds_where_a_compiler_and_ninja_exist():
    if shutil.which("c++") is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or ninja on this machine")
    assert kernel.load() is not None, kernel.unavailable_reason()
    assert kernel.unavailable_reason() is None


def train(net, backend, x, y, steps, every=1):
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with ActivationRecorder(net, RecordConfig(every=every, backend=backend)) as rec:
        for _ in range(steps):
            rec.step()
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return rec.records(), rec


@needs_kernel
def test_kernel_and_torch_ops_give_the_same_records_over_training():
    # both implementations of the reductions, every family, every record
    x, y = batch(n=96)
    net = mixed_net(4)
    twin = copy.deepcopy(net)
    a, rec = train(net, "kernel", x, y, 4)
    b, _ = train(twin, "torch", x, y, 4)
    assert a.layers == b.layers and a.steps.tolist() == b.steps.tolist() == [0, 1, 2, 3]
    for key in STAT_KEYS:
        for kind in ("pre", "post"):
            np.testing.assert_allclose(
                getattr(a, kind)[key],
                getattr(b, kind)[key],
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{kind} {key}",
            )
    np.testing.assert_allclose(a.grad_std, b.grad_std, rtol=1e-5)
    for key in WEIGHT_KEYS:
        np.testing.assert_allclose(a.weights[key], b.weights[key], rtol=1e-5, atol=1e-7)
    for h1, h2 in ((a.hist_pre, b.hist_pre), (a.hist_post, b.hist_post)):
        assert (h1.sum(-1) == h2.sum(-1)).all()
        # float32 rounding may move a value lying on a bin edge: at most a handful here
        assert np.abs(h1 - h2).sum() <= 4, np.abs(h1 - h2).sum()


@needs_kernel
def test_every_record_after_the_first_equals_statistics_by_hand():
    x, y = batch(n=64)
    net = mixed_net(2)
    names = ["1", "3", "5", "7", "9", "11"]
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    seen = []
    spy = Spy(net)
    with ActivationRecorder(net, RecordConfig(every=1, backend="kernel")) as rec:
        for _ in range(3):
            rec.step()
            loss = F.cross_entropy(net(x), y)
            seen.append(({n: spy.pre[n] for n in names}, {n: spy.post[n] for n in names}))
            opt.zero_grad()
            loss.backward()
            opt.step()
        r = rec.records()
    spy.remove()
    for step, (pre, post) in enumerate(seen):
        for i, name in enumerate(names):
            module = net.get_submodule(name)
            sat = -1.0507009873554805 * 1.6732632423543772 if r.family[i] == "selu" else None
            for kind, got, hist, t in (
                ("pre", r.pre, r.hist_pre, pre[name]),
                ("post", r.post, r.hist_post, post[name]),
            ):
                want = hand_stats(t, activation_family(module), sat, post=kind == "post")
                for key in STAT_KEYS:
                    np.testing.assert_allclose(
                        got[key][step, i], want[key], rtol=1e-5, atol=1e-6, err_msg=(step, key)
                    )
                assert np.abs(hist[step, i] - hand_hist(t)).sum() <= 2 * near_edges(t)


@needs_kernel
def test_records_do_not_depend_on_the_number_of_threads():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Linear(300, 300), nn.SELU(), nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 4)
    )
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1 / math.sqrt(m.in_features), generator=g)
    x = torch.randn(128, 300, generator=g)
    y = torch.randint(0, 4, (128,), generator=g)
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(train(copy.deepcopy(net), "kernel", x, y, 3)[0])
    finally:
        torch.set_num_threads(before)
    a, b = out
    for kind in ("pre", "post"):
        for key in STAT_KEYS:
            np.testing.assert_array_equal(getattr(a, kind)[key], getattr(b, kind)[key])
    np.testing.assert_array_equal(a.hist_post, b.hist_post)
    np.testing.assert_array_equal(a.grad_std, b.grad_std)
    for key in WEIGHT_KEYS:
        np.testing.assert_array_equal(a.weights[key], b.weights[key])


class SneakyReLU(nn.ReLU):
    """Overwrites its input although its ``inplace`` attribute says it does not."""

    def forward(self, x):
        return x.clamp_(min=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_activation_that_edits_its_input_unannounced_is_still_measured_before(backend):
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(10, 20)
    nn.init.normal_(lin.weight, generator=g)
    net = nn.Sequential(lin, SneakyReLU(), nn.Linear(20, 2))
    x = torch.randn(30, 10, generator=g)
    y = torch.randint(0, 2, (30,), generator=g)
    spy = Spy(net, types=(nn.ReLU,))  # its pre-hook runs first: a copy before the call
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    pres = []
    with ActivationRecorder(net, RecordConfig(every=1, backend=backend)) as rec:
        for _ in range(3):
            rec.step()
            loss = F.cross_entropy(net(x), y)
            pres.append(spy.pre["1"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        r = rec.records()
    spy.remove()
    for step, pre in enumerate(pres):
        want = hand_stats(pre, "relu", None, False)
        assert want["min"] < 0  # what the activation received, not what it left
        for key in STAT_KEYS:
            np.testing.assert_allclose(r.pre[key][step, 0], want[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", [reduce, pytest.param(kernel, marks=needs_kernel)])
@pytest.mark.parametrize("bins", [1, 3, 64, 94, 95, 200])
@pytest.mark.parametrize("n", [1, 2, 7, 4097, 3 * 2**17 + 5])
def test_histogram_counts_exactly_for_any_size_and_bin_count(impl, bins, n):
    # values built from known bins (jittered around bin centres, far from the edges), plus
    # under- and overflow and NaN: the counts must equal the construction exactly, whether the
    # kernel counts pairs of values (bins + 2 <= 96; odd sizes and sizes beyond one drain of the
    # pair tables included) or single values (more bins)
    rng = np.random.default_rng(bins * 1000 + n)
    lo, hi = -3.0, 5.0
    width = (hi - lo) / bins
    k = rng.integers(-1, bins + 1, size=n)  # -1: underflow, bins: overflow
    k[rng.random(n) < 0.3] = rng.integers(-1, bins + 1)  # a run of one bin (ReLU's zeros)
    v = lo + (k + 0.5 + rng.uniform(-0.3, 0.3, size=n)) * width
    v[k == -1] = lo - rng.uniform(1e-3, 10.0, size=int((k == -1).sum()))
    v[k == bins] = hi + rng.uniform(0.0, 10.0, size=int((k == bins).sum()))
    nan = rng.random(n) < 0.01
    v[nan] = np.nan
    want = np.bincount(np.where(nan, bins + 1, k + 1), minlength=bins + 2)
    x = torch.from_numpy(v.astype(np.float32))
    stats, hist = impl.activation_stats([x], [-math.inf], [False], reduce.Binning(bins, lo, hi))
    np.testing.assert_array_equal(hist[0].numpy(), want)
    assert math.isnan(stats[0, 0]) == bool(nan.any())


def test_backend_names_are_checked_and_kernel_requires_the_kernel(monkeypatch):
    with pytest.raises(ValueError, match="torch, kernel"):
        RecordConfig(backend="auto")
    assert RecordConfig().backend == "torch"  # the default compiles nothing
    monkeypatch.setattr(kernel, "load", lambda: None)
    monkeypatch.setattr(kernel, "unavailable_reason", lambda: "no compiler here")
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(RuntimeError, match="no compiler here.*backend='torch'"):
        ActivationRecorder(net, RecordConfig(backend="kernel"))
    ActivationRecorder(net, RecordConfig())  # torch ops: never asks for the kernel


def test_the_default_recorder_never_loads_the_kernel(monkeypatch):
    def refuse():
        raise AssertionError("the torch backend must not build or load the kernel")

    monkeypatch.setattr(kernel, "load", refuse)
    x, y = batch(n=16)
    r, _ = train(mixed_net(1), "torch", x, y, 2)
    assert len(r) == 2


def hand_weights(net):
    out = []
    for m in net.modules():
        if isinstance(m, nn.Linear):
            w = m.weight.detach().double()
            omega, tau = w.sum(1), (w * w).sum(1)
            out.append(
                [omega.mean(), omega.std(unbiased=False), tau.mean(), tau.std(unbiased=False)]
            )
    return np.array(out).T  # (key, layer) in WEIGHT_KEYS order


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dropped_recorder_and_its_model_are_freed_while_armed(backend):
    import gc
    import weakref

    net = nn.Sequential(nn.Linear(6, 8), nn.SELU(), nn.Linear(8, 2))
    rec = ActivationRecorder(net, RecordConfig(every=1, backend=backend))
    for _ in range(3):
        rec.step()
        net(torch.randn(4, 6)).sum().backward()
    rec.step()  # armed: the hooks are on the modules
    assert net[1]._forward_hooks
    refs = weakref.ref(net), weakref.ref(rec)
    del net, rec
    gc.collect()
    assert refs[0]() is None and refs[1]() is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_retrying_a_pass_that_raised_after_a_flush_records_it(backend):
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(8, 12)
    with ActivationRecorder(net, RecordConfig(every=1, backend=backend)) as rec:
        for _ in range(3):
            rec.step()
            net(x).sum().backward()
        rec.step()
        with pytest.raises(RuntimeError):
            net(torch.randn(8, 11))  # fails in the first Linear, before any activation
        rec.flush()  # e.g. in the caller's exception handler
        net(x).sum().backward()  # the same step again, with a good batch
        r = rec.records()
    assert r.steps.tolist() == [0, 1, 2, 3]
    assert (r.hist_post[:, 0].sum(-1) == 8 * 16).all() and np.isfinite(r.grad_std).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backward_after_the_next_step_does_not_count(backend):
    # gradients belong to the recorded pass's backward before the next step()
    net = nn.Sequential(nn.Linear(6, 8), nn.ELU(), nn.Linear(8, 2))
    with ActivationRecorder(net, RecordConfig(every=2, backend=backend)) as rec:
        for _ in range(8):
            rec.step()
            out = net(torch.randn(4, 6))
            rec.step()
            out.sum().backward()
        r = rec.records()
    assert r.steps.tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert np.isnan(r.grad_std).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_activation_called_again_in_a_later_pass_is_refused(backend):

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act, self.calls = nn.Linear(4, 4), nn.Tanh(), 0

        def forward(self, x):
            self.calls += 1
            h = self.act(self.lin(x))
            return self.act(h * 3) if self.calls >= 3 else h

    net = Twice()
    with pytest.raises(RuntimeError, match="'act#2' was called in this recorded forward pass"):
        with ActivationRecorder(net, RecordConfig(every=1, backend=backend)) as rec:
            for _ in range(4):
                rec.step()
                net(torch.randn(8, 4)).sum().backward()
