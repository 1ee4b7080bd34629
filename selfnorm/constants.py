r"""SELU constants, derived once from the paper's closed form.

For a pre-activation :math:`z \sim \mathcal{N}(0, 1)` the SELU

.. math::
    \operatorname{selu}(z) = \lambda \begin{cases} z & z > 0 \\
    \alpha (e^z - 1) & z \le 0 \end{cases}

has mean 0 and variance 1 exactly when (Klambauer et al. 2017, Eq. 14)

.. math::
    \alpha_{01} = -\frac{\sqrt{2/\pi}}{\operatorname{erfc}(1/\sqrt2)\, e^{1/2} - 1}

.. math::
    \lambda_{01} = \frac{\left(1 - \operatorname{erfc}(1/\sqrt2)\sqrt e\right)\sqrt{2\pi}}
    {\sqrt{2\operatorname{erfc}(\sqrt2)e^2 + \pi\operatorname{erfc}(1/\sqrt2)^2 e
    - 2(2+\pi)\operatorname{erfc}(1/\sqrt2)\sqrt e + \pi + 2}}

The saturation value of SELU for :math:`z \to -\infty` is :math:`\alpha' = -\lambda\alpha`;
alpha dropout sets dropped units to it.

Nobody else in the package retypes these digits: import them from here.

Example:
    >>> from selfnorm.constants import ALPHA_01, LAMBDA_01, SATURATION_01
    >>> round(LAMBDA_01, 10), round(ALPHA_01, 10), round(SATURATION_01, 10)
    (1.0507009874, 1.6732632424, -1.7580993408)
"""

from __future__ import annotations

import math

__all__ = ["ALPHA_01", "LAMBDA_01", "SATURATION_01", "selu_01_constants"]


def selu_01_constants() -> tuple[float, float]:
    """Return ``(lambda_01, alpha_01)`` evaluated from the closed form of Eq. 14.

    Example:
        >>> lam, alpha = selu_01_constants()
        >>> abs(lam - 1.0507009873554805) < 1e-15
        True
    """
    e1 = math.erfc(1.0 / math.sqrt(2.0))
    e2 = math.erfc(math.sqrt(2.0))
    sqrt_e = math.exp(0.5)
    alpha = -math.sqrt(2.0 / math.pi) / (e1 * sqrt_e - 1.0)
    denom = math.sqrt(
        2.0 * e2 * math.e**2
        + math.pi * e1**2 * math.e
        - 2.0 * (2.0 + math.pi) * e1 * sqrt_e
        + math.pi
        + 2.0
    )
    lam = (1.0 - e1 * sqrt_e) * math.sqrt(2.0 * math.pi) / denom
    return lam, alpha


LAMBDA_01, ALPHA_01 = selu_01_constants()
"""λ01 ≈ 1.0507 and α01 ≈ 1.6733: the SELU whose fixed point is (mean, var) = (0, 1)."""

SATURATION_01 = -LAMBDA_01 * ALPHA_01
"""α' = -λ01·α01 ≈ -1.7581: the value SELU saturates to, and the value of dropped units."""
