"""Activation modules: SELU with any (alpha, scale). Which family a module belongs to is said in
:mod:`selfnorm.taxonomy`; a family paired with its init and dropout is a spec
(:mod:`selfnorm.specs`)."""

from __future__ import annotations

import torch
from torch import nn

from selfnorm import _validate
from selfnorm import functional as F
from selfnorm.constants import ALPHA_01, LAMBDA_01

__all__ = ["SELU"]


class SELU(nn.Module):
    r"""Scaled exponential linear unit.

    .. math::
        \operatorname{selu}(x) = \lambda \begin{cases} x & x > 0 \\
        \alpha (e^x - 1) & x \le 0 \end{cases}

    With the defaults :math:`(\alpha_{01}, \lambda_{01})` the fixed point of the mean/variance
    mapping is (0, 1); :func:`selfnorm.theory.solve_selu_parameters` gives the parameters for
    other fixed points.

    Args:
        alpha: :math:`\alpha > 0`. Default :math:`\alpha_{01} \approx 1.6733`.
        scale: :math:`\lambda > 0`. Default :math:`\lambda_{01} \approx 1.0507`.

    Shape:
        Input any shape, output the same shape.

    Example:
        >>> import torch
        >>> SELU()
        SELU(alpha=1.6733, scale=1.0507)
        >>> SELU()(torch.tensor([1.0]))
        tensor([1.0507])

    Reference: Klambauer et al., Self-Normalizing Neural Networks, NIPS 2017.
    """

    def __init__(self, alpha: float = ALPHA_01, scale: float = LAMBDA_01) -> None:
        super().__init__()
        self.alpha = _validate.positive("alpha", alpha, "SELU needs alpha > 0")
        self.scale = _validate.positive("scale", scale, "SELU needs scale (lambda) > 0")

    @property
    def saturation(self) -> float:
        """The value SELU saturates to for large negative inputs: -scale * alpha."""
        return -self.scale * self.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.selu(x, self.alpha, self.scale)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4f}, scale={self.scale:.4f}"
