import pytest
import torch
from torch import nn
from torch.nn import functional as F

from selfnorm.linear import Linear, onednn_available

needs_onednn = pytest.mark.skipif(
    not onednn_available(), reason="this torch build has no oneDNN linear op"
)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("batch", "fin", "fout"), [(100, 784, 512), (7, 33, 5), (1, 512, 10)])
def test_onednn_path_gives_the_gradients_of_f_linear_in_float32(batch, fin, fout, bias):
    torch.manual_seed(0)
    layer = Linear(fin, fout, bias=bias)
    x = torch.randn(batch, fin, requires_grad=True)
    g = torch.randn(batch, fout)
    out = layer(x)
    assert type(out.grad_fn).__name__ == "_OneDNNLinearBackward"  # the path under test ran
    params = (x, layer.weight) + ((layer.bias,) if bias else ())
    got = (out, *torch.autograd.grad(out, params, g))
    # the plain float32 path, and float64 as the reference both are measured against
    ref_out = F.linear(x, layer.weight, layer.bias)
    plain = (ref_out, *torch.autograd.grad(ref_out, params, g))
    x64 = x.detach().double().requires_grad_(True)
    w64 = layer.weight.detach().double().requires_grad_(True)
    b64 = layer.bias.detach().double().requires_grad_(True) if bias else None
    out64 = F.linear(x64, w64, b64)
    ref = (out64, *torch.autograd.grad(out64, (x64, w64) + ((b64,) if bias else ()), g.double()))
    names = ("out", "grad x", "grad W", "grad b")
    for name, a, p, r in zip(names, got, plain, ref, strict=False):
        assert a.shape == r.shape, name
        # float32 sums of k terms: errors ~ sqrt(k) * eps * scale; a wrong product is O(scale)
        scale = float(r.detach().abs().max())
        a, p, r = a.detach(), p.detach(), r.detach()
        torch.testing.assert_close(a.double(), r, rtol=0, atol=1e-5 * scale, msg=name)
        torch.testing.assert_close(a, p, rtol=0, atol=2e-5 * scale, msg=name)


def test_is_an_nn_linear_with_the_same_state_dict():
    layer = Linear(4, 3)
    assert isinstance(layer, nn.Linear)
    plain = nn.Linear(4, 3)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), plain(x))


def test_fallbacks_float64_gradcheck_and_3d_inputs():
    # float64 and 3-D inputs take F.linear (gradcheck needs float64, so it checks the fallback)
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
