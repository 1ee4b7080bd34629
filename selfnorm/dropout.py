r"""Alpha dropout modules for any fixed point :math:`(\mu, \nu)` and any drop rate."""

from __future__ import annotations

import torch
from torch import nn

from selfnorm import _validate
from selfnorm import functional as F
from selfnorm.constants import SATURATION_01

__all__ = ["AlphaDropout", "FeatureAlphaDropout"]


class AlphaDropout(nn.Module):
    r"""Alpha dropout: drop to the SELU saturation value, then restore mean and variance.

    In training mode each element is kept with probability :math:`q = 1 - p`, dropped
    elements are set to :math:`\alpha'`, and the result is mapped by :math:`a x + b`:

    .. math::
        a = \sqrt{\frac{\nu}{q\left((1-q)(\alpha' - \mu)^2 + \nu\right)}}, \qquad
        b = \mu - a\left(q\mu + (1-q)\alpha'\right),

    so inputs with mean :math:`\mu` and variance :math:`\nu` keep them. In eval mode the module
    returns its input object unchanged (no copy).

    Args:
        p: drop rate in [0, 1). Default 0.05 (the paper used 0.05 and 0.1).
        mean: fixed-point mean :math:`\mu`. Default 0.
        var: fixed-point variance :math:`\nu > 0`. Default 1.
        saturation: :math:`\alpha' = -\lambda\alpha` of the SELU in front. Default
            :math:`\alpha'_{01} \approx -1.7581`.
        generator: optional ``torch.Generator`` for the masks (on the input's device).

    Shape:
        Input any shape, output the same shape.

    Warning:
        ``p`` is a drop *rate*. A keep probability such as 0.7 passed here drops 70% of the
        units; the seed TensorFlow example made exactly this mistake.

    Example:
        >>> import torch
        >>> m = AlphaDropout(0.1)
        >>> m
        AlphaDropout(p=0.1, mean=0.0, var=1.0, saturation=-1.7581)
        >>> x = torch.randn(4, 3)
        >>> m.eval()(x) is x
        True

    Reference: Klambauer et al., Self-Normalizing Neural Networks, NIPS 2017.
    """

    def __init__(
        self,
        p: float = 0.05,
        mean: float = 0.0,
        var: float = 1.0,
        saturation: float = SATURATION_01,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.p = _validate.drop_rate("p", p)
        self.mean = _validate.finite("mean", mean)
        self.var = _validate.positive(
            "var", var, "it is the fixed-point variance; (0, 1) is the standard choice"
        )
        self.saturation = _validate.finite("saturation", saturation)
        self.generator = generator

    def _keep_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = self._keep_mask(x)
        return F.alpha_dropout(
            x,
            self.p if keep is None else F.realized_rate(self.p),
            True,
            mean=self.mean,
            var=self.var,
            saturation=self.saturation,
            generator=self.generator,
            keep=keep,
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, mean={self.mean}, var={self.var}, saturation={self.saturation:.4f}"


class FeatureAlphaDropout(AlphaDropout):
    r"""Alpha dropout of whole channels of an ``(N, C, ...)`` input (for convolutional SNNs).

    Same math as :class:`AlphaDropout`, but one keep/drop draw per (sample, channel): every
    spatial position of a dropped channel takes the value :math:`a\alpha' + b`.

    Shape:
        Input ``(N, C, *spatial)`` with at least one spatial dimension; output the same shape.
        Any other rank is an error (never a silent element-wise fallback).

    Example:
        >>> import torch
        >>> m = FeatureAlphaDropout(0.5, generator=torch.Generator().manual_seed(0))
        >>> y = m(torch.zeros(2, 3, 4, 4))
        >>> bool((y == y[:, :, :1, :1]).all())  # constant within each channel
        True
    """

    def _keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(
                f"FeatureAlphaDropout expects an (N, C, *spatial) input with at least one "
                f"spatial dimension, got shape {tuple(x.shape)}; use AlphaDropout for "
                "(N, features) inputs"
            )
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        return F.keep_mask(shape, self.p, self.generator, x.device)
