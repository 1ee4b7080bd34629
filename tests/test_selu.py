import pytest
import torch

from selfnorm import SELU
from selfnorm.functional import selu


def reference_selu(x, alpha, scale):
    # Written independently of the fused kernel: the textbook piecewise definition.
    return scale * torch.where(x > 0, x, alpha * (torch.exp(torch.clamp(x, max=0)) - 1))


def test_equals_torch_selu_at_defaults():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(selu(x), torch.nn.functional.selu(x), rtol=0, atol=0)
    torch.testing.assert_close(SELU()(x), torch.nn.functional.selu(x), rtol=0, atol=0)


@pytest.mark.parametrize(("alpha", "scale"), [(1.6733, 1.0507), (1.9712, 1.0607), (0.5, 2.0)])
def test_matches_piecewise_definition_for_any_parameters(alpha, scale):
    x = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    torch.testing.assert_close(selu(x, alpha, scale), reference_selu(x, alpha, scale))


def test_gradcheck_float64():
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    x.data[x.data.abs() < 1e-3] += 0.01  # keep away from the kink at 0
    assert torch.autograd.gradcheck(lambda t: selu(t, 1.97, 1.06), (x,))
    assert torch.autograd.gradgradcheck(lambda t: selu(t, 1.97, 1.06), (x,))


def test_module_repr_and_validation():
    assert "alpha=1.6733, scale=1.0507" in repr(SELU())
    with pytest.raises(ValueError, match="alpha"):
        SELU(alpha=-1.0)
    with pytest.raises(ValueError, match="scale"):
        SELU(scale=float("nan"))
