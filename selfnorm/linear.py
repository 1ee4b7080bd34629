r"""``Linear``: ``torch.nn.Linear`` with a oneDNN fast path for fp32 training on the CPU.

On CPUs where PyTorch's bundled MKL takes a slower code path (seen on AMD EPYC: MKL's fp32
GEMM reaches ~150 GFLOP/s at MLP layer shapes, oneDNN ~300), all three matrix products of a
linear layer go through oneDNN, which ships inside the same torch:

.. math::
    y = x W^\top + b, \qquad \frac{\partial L}{\partial x} = g W, \qquad
    \frac{\partial L}{\partial W} = g^\top x, \qquad \frac{\partial L}{\partial b} = \sum g

oneDNN reads the transposed operands as strided views, so no transposed copy is made.
Everything else (CUDA, float64, inputs that are not 2-D, a torch without the oneDNN op) takes
``torch.nn.functional.linear``. The results equal the plain path up to float32 summation order.
The module is an ``nn.Linear`` (same parameters, state_dict, init, ``isinstance``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Linear", "onednn_available"]


def _probe() -> bool:
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x, w, b = torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4)
        out = op(x, w, b, "none", [], "")
        back = op(torch.ones(2, 4), w.t(), None, "none", [], "")
        return bool(torch.equal(out, torch.full((2, 4), 3.0)) and back.shape == (2, 3))
    except (AttributeError, RuntimeError, TypeError):
        return False


_ONEDNN = torch.backends.mkldnn.is_available() and _probe()


def onednn_available() -> bool:
    """Whether the oneDNN fast path is usable in this torch build."""
    return _ONEDNN


def _mm_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` through oneDNN; ``a`` and ``b`` may be transposed views."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm_t(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = _mm_t(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        gw = _mm_t(grad.t(), x.t(), None) if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _fast_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _ONEDNN
        and x.dim() == 2
        and x.shape[1] == weight.shape[1]  # else F.linear raises PyTorch's own shape error
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


class Linear(nn.Linear):
    r"""``nn.Linear`` whose fp32 CPU products run on oneDNN (see the module docstring).

    Example:
        >>> import torch
        >>> layer = Linear(4, 3)
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias),
        ...                atol=1e-6)
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast_ok(x, self.weight):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
