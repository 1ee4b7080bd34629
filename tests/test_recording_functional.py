"""Activation functions called in a forward (F.selu, torch.relu, x.tanh()) are recorded too."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import selfnorm
from selfnorm.config import RecordConfig
from selfnorm.recording import ActivationRecorder

STATS = ("mean", "std", "min", "max", "zero_frac", "dead_frac", "saturation_frac")


class Block(nn.Module):
    """A residual block that calls its activations as functions."""

    def __init__(self, width: int, act) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = act

    def forward(self, x):
        return x + self.act(self.fc(x))


class FunctionalNet(nn.Module):
    """Five functions: three in blocks, two in the root's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.b1 = Block(16, F.selu)
        self.b2 = Block(16, lambda h: F.leaky_relu(h, 0.1))
        self.b3 = Block(16, F.gelu)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = self.b3(self.b2(self.b1(h)))
        return self.out(h.tanh())


class ModuleNet(nn.Module):
    """The same computation with activation modules (the recorder's module hooks see them)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.a0 = nn.ReLU()
        self.b1 = Block(16, selfnorm.SELU())
        self.b2 = Block(16, nn.LeakyReLU(0.1))
        self.b3 = Block(16, nn.GELU())
        self.a4 = nn.Tanh()
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.b3(self.b2(self.b1(self.a0(self.inp(x)))))
        return self.out(self.a4(h))


def _train(net, steps=4, every=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with ActivationRecorder(net, RecordConfig(every=every)) as rec:
        for _ in range(steps):
            rec.step()
            x = torch.randn(32, 6, generator=g)
            loss = F.cross_entropy(net(x), torch.randint(0, 3, (32,), generator=g))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return rec.records()


def test_functional_calls_are_keyed_by_module_and_order_and_match_module_recording():
    torch.manual_seed(0)
    fnet = FunctionalNet()
    mnet = ModuleNet()
    mnet.load_state_dict(fnet.state_dict())
    rf, rm = _train(fnet), _train(mnet)
    assert rf.layers == ("relu.0", "b1.selu.0", "b2.leaky_relu.0", "b3.gelu.0", "tanh.1")
    assert rm.layers == ("a0", "b1.act", "b2.act", "b3.act", "a4")
    assert rf.family == rm.family == ("relu", "selu", "lrelu", "gelu", "tanh")
    assert rf.steps.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(rf.hist_post, rm.hist_post)
    np.testing.assert_array_equal(rf.hist_pre, rm.hist_pre)
    for key in STATS:
        for side in ("post", "pre"):
            np.testing.assert_allclose(
                getattr(rf, side)[key], getattr(rm, side)[key], rtol=1e-6, equal_nan=True
            )
    np.testing.assert_allclose(rf.grad_std, rm.grad_std, rtol=1e-5)
    assert np.isfinite(rf.post["saturation_frac"][:, 1]).all()  # the SELU call's
    assert np.isfinite(rf.post["dead_frac"][:, 0]).all()  # the ReLU call's
    # a relu output has exact zeros, its input does not
    assert (rf.post["zero_frac"][:, 0] > 0.2).all() and (rf.pre["zero_frac"][:, 0] == 0).all()


def test_module_recording_is_unchanged_and_sees_no_functional_copies():
    # nn.SELU's forward calls F.selu: the call belongs to the module, not a new layer
    net = nn.Sequential(nn.Linear(6, 8), nn.SELU(), nn.Linear(8, 8), nn.ReLU())
    on, off = _train(net, steps=2), None
    with ActivationRecorder(net, RecordConfig(every=1), functional=False) as rec:
        rec.step()
        net(torch.randn(8, 6)).sum().backward()
        off = rec.records()
    assert on.layers == off.layers == ("1", "3")


def test_an_in_place_function_records_its_input_before_the_call():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 64)

        def forward(self, x):
            return torch.relu_(self.fc(x))

    net = InPlace()
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        for _ in range(3):
            rec.step()
            with torch.no_grad():
                net(torch.randn(64, 4))
        r = rec.records()
    assert r.layers == ("relu.0",)
    assert (r.pre["min"] < 0).all() and (r.post["min"] == 0).all()  # the input, not the output


def test_a_forward_that_raises_leaves_no_function_mode_behind():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            F.selu(self.fc(x))
            raise ValueError("boom")

    with ActivationRecorder(Fails(), RecordConfig(every=1)) as rec:
        rec.step()
        with pytest.raises(ValueError, match="boom"):
            rec.model(torch.ones(2, 4))
        assert torch._C._len_torch_function_stack() == 0
        rec.step()  # the next step arms afresh


def test_a_call_the_first_pass_did_not_make_is_refused():
    class Sometimes(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.extra = False

        def forward(self, x):
            h = F.selu(self.fc(x))
            return torch.tanh(h) if self.extra else h

    net = Sometimes()
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        net(torch.ones(2, 4))
        net.extra = True
        rec.step()
        with pytest.raises(RuntimeError, match="'tanh.1' was called"):
            net(torch.ones(2, 4))


# -- weight and gradient histograms ---------------------------------------------------------


def _near_edges(values: np.ndarray, edges: np.ndarray) -> int:
    """Values within float32 rounding of an edge (their bin may differ between two codes)."""
    d = np.abs(values[:, None] - edges[None, :])
    return int((d <= 1e-5 * np.maximum(np.abs(edges[None, :]), 1e-12)).any(1).sum())


def _interior(hist_row: np.ndarray) -> np.ndarray:
    return hist_row[1:-1]


def test_weight_and_gradient_histograms_count_the_same_values_as_numpy():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(20, 64), selfnorm.SELU(), nn.Linear(64, 32), nn.ReLU(),
                        nn.Linear(32, 5))  # fmt: skip
    selfnorm.init_snn_(net, torch.Generator().manual_seed(0))
    outs = []

    def keep(_module, _args, y):
        y.retain_grad()
        outs.append(y)

    net[1].register_forward_hook(keep)
    x, t = torch.randn(128, 20), torch.randint(0, 5, (128,))
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        F.cross_entropy(net(x), t).backward()
        r = rec.records()
    assert r.weight_layers == ("0", "2", "4") and r.weight_fan_in.tolist() == [20, 64, 32]
    # weights in units of 1/sqrt(fan_in): LeCun's N(0, 1/fan_in) is N(0, 1) on the value bins
    w = (net[0].weight.detach() * np.sqrt(20)).numpy().ravel()
    expect, _ = np.histogram(w, bins=r.bin_edges)
    assert r.hist_weight[0, 0].sum() == w.size
    assert np.abs(_interior(r.hist_weight[0, 0]) - expect).sum() <= _near_edges(w, r.bin_edges)
    assert abs(w.std() - 1.0) < 0.1  # the init, seen through the histogram's units
    # the weight's gradient, on the signed log bins
    edges = r.grad_bin_edges
    assert edges[0] == -16.0 and edges[-1] == 16.0 and 0.0 in edges and len(edges) == 137
    gw = net[2].weight.grad.numpy().ravel()
    expect, _ = np.histogram(gw, bins=edges)
    assert r.hist_weight_grad[0, 1].sum() == gw.size
    assert np.abs(_interior(r.hist_weight_grad[0, 1]) - expect).sum() <= _near_edges(gw, edges)
    # the gradient w.r.t. the SELU's output
    ga = outs[0].grad.numpy().ravel()
    expect, _ = np.histogram(ga, bins=edges)
    assert r.hist_grad[0, 0].sum() == ga.size
    assert np.abs(_interior(r.hist_grad[0, 0]) - expect).sum() <= _near_edges(ga, edges)
    assert (expect > 0).sum() >= 10  # spread over decades, not piled in one bin


def test_dense_recording_takes_weight_histograms_on_every_tenth_step_and_they_are_stored(
    tmp_path,
):
    from selfnorm.records import read_records
    from selfnorm.sinks import NpzChunkSink

    net = nn.Sequential(nn.Linear(6, 8), nn.SELU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with ActivationRecorder(net, RecordConfig(every=1), sinks=[NpzChunkSink(tmp_path)]) as rec:
        for _ in range(12):
            rec.step()
            loss = net(torch.randn(16, 6)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    r = read_records(tmp_path)
    taken = r.hist_weight.sum((1, 2)) > 0
    assert taken.tolist() == [s % 10 == 0 for s in range(12)]
    assert (r.hist_weight_grad.sum((1, 2)) > 0).tolist() == taken.tolist()
    assert (r.hist_grad[:, 0].sum(1) == 16 * 8).all()  # every record's backward


def test_a_model_without_activation_functions_records_later_passes_without_the_mode():
    net = nn.Sequential(nn.Linear(6, 8), nn.SELU(), nn.Linear(8, 3))
    depth = []
    net[2].register_forward_hook(lambda *_: depth.append(torch._C._len_torch_function_stack()))
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        for _ in range(3):
            rec.step()
            net(torch.randn(4, 6)).sum().backward()
    assert depth == [1, 0, 0]  # the first pass looks for functions; it found none


# -- what the review found --------------------------------------------------------------------


def test_weight_gradients_survive_clipping_and_belong_to_the_recorded_pass():
    net = nn.Sequential(nn.Linear(6, 8), nn.SELU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with ActivationRecorder(net, RecordConfig(every=2)) as rec:
        for _ in range(5):
            rec.step()
            loss = net(torch.randn(16, 6)).square().mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1e-3)  # changes .grad in place
            opt.step()
        r = rec.records()
    assert r.hist_weight_grad[:, 0].sum(1).tolist() == [48] * 3  # every record, the first too
    # an eval pass recorded (record_eval) has no backward: no weight gradients of another pass
    with ActivationRecorder(net, RecordConfig(every=1), record_eval=True) as rec:
        rec.step()
        net.eval()
        net(torch.randn(4, 6))
        net.train()
        net(torch.randn(16, 6)).sum().backward()  # not the recorded pass
        r = rec.records()
    assert r.hist_weight_grad.sum() == 0 and r.hist_grad.sum() == 0


def test_an_interrupt_in_a_recorded_pass_leaves_no_function_mode_for_the_next():
    class Stops(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.stop = True

        def forward(self, x):
            h = F.selu(self.fc(x))
            if self.stop:
                raise KeyboardInterrupt  # always_call hooks do not run for a BaseException
            return h

    net = Stops()
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        with pytest.raises(KeyboardInterrupt):
            net(torch.ones(2, 4))
        torch.relu(torch.randn(3))  # outside the model: no recorder involved
        rec.step()
        assert torch._C._len_torch_function_stack() == 0
        net.stop = False
        net(torch.ones(2, 4)).sum().backward()
        assert torch._C._len_torch_function_stack() == 0
        assert rec.records().layers == ("selu.0",)


def test_a_module_given_as_an_activation_type_is_not_recorded_twice():
    class PlainTanh(nn.Module):
        def forward(self, x):
            return torch.tanh(x)

    net = nn.Sequential(nn.Linear(4, 4), PlainTanh())
    with ActivationRecorder(net, RecordConfig(every=1), activation_types=(PlainTanh,)) as rec:
        rec.step()
        net(torch.randn(2, 4))
        assert rec.records().layers == ("1",)


def test_records_from_before_gradient_histograms_join_newer_ones(tmp_path):
    from selfnorm.records import read_records, write_chunk

    net = nn.Sequential(nn.Linear(6, 8), nn.SELU(), nn.Linear(8, 3))
    new = _train(net, steps=2)
    old = new.select(slice(0, 1)).with_gradient_bins(np.zeros(0))
    old = type(old)(**{**old.__dict__, "weight_fan_in": None, "hist_weight": None})
    write_chunk(tmp_path, 0, old)
    write_chunk(tmp_path, 1, new.select(slice(1, 2)))
    r = read_records(tmp_path)
    assert r.hist_grad.shape[-1] == len(new.grad_bin_edges) + 1
    assert r.hist_grad[0].sum() == 0 and r.hist_grad[1].sum() > 0  # the old record: not taken
    assert r.weight_fan_in.tolist() == [6, 8]


def test_every_logged_activation_function_has_a_module_type():
    from selfnorm import taxonomy
    from selfnorm.tracing import ACTIVATION_FUNCTIONS

    assert set(ACTIVATION_FUNCTIONS.values()) <= set(taxonomy.FUNCTION_TYPES)
