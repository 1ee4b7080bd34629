import pytest
import torch
from torch import nn
from torch.nn import functional as F

from selfnorm.linear import Linear, onednn_available


def _grads(layer, x, g, fn):
    x = x.clone().requires_grad_(True)
    out = fn(layer, x)
    gx, gw, gb = torch.autograd.grad(out, (x, layer.weight, layer.bias), g)
    return out.detach(), gx, gw, gb


@pytest.mark.parametrize(("batch", "fin", "fout"), [(100, 784, 512), (7, 33, 5), (1, 512, 10)])
def test_fast_path_matches_plain_linear(batch, fin, fout):
    torch.manual_seed(0)
    layer = Linear(fin, fout)
    x, g = torch.randn(batch, fin), torch.randn(batch, fout)
    fast = _grads(layer, x, g, lambda m, t: m(t))
    plain = _grads(layer, x, g, lambda m, t: F.linear(t, m.weight, m.bias))
    # float64 reference bounds the float32 rounding of both paths
    ref = _grads(layer.double(), x.double(), g.double(), lambda m, t: F.linear(t, m.weight, m.bias))
    layer.float()
    for a, b, r in zip(fast, plain, ref, strict=True):
        err_fast = float((a.double() - r).abs().max())
        err_plain = float((b.double() - r).abs().max())
        assert err_fast <= 4 * err_plain + 1e-6


def test_is_an_nn_linear_with_the_same_state_dict():
    layer = Linear(4, 3)
    assert isinstance(layer, nn.Linear)
    plain = nn.Linear(4, 3)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), plain(x))


def test_fallbacks_float64_gradcheck_and_3d_inputs():
    layer = Linear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))
    layer = Linear(5, 3)
    x3 = torch.randn(2, 4, 5)
    torch.testing.assert_close(layer(x3), F.linear(x3, layer.weight, layer.bias))


def test_no_bias_and_frozen_input():
    layer = Linear(6, 2, bias=False)
    x = torch.randn(3, 6)
    out = layer(x)
    out.sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.ones(3, 2).t() @ x)


def test_fast_path_is_active_on_this_build():
    # informative: the speed claims in docs/benchmarks.md assume it
    if not onednn_available():
        pytest.skip("this torch build has no oneDNN linear op; the plain path is used")
    layer = Linear(3, 2)
    out = layer(torch.randn(2, 3, requires_grad=True))
    assert type(out.grad_fn).__name__.startswith("_OneDNNLinear")
