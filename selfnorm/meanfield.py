r"""Mean-field signal propagation through deep random networks, for any activation.

Poole et al. (2016) and Schoenholz et al. (2017): in a wide network whose weights are drawn
independently with :math:`\operatorname{Var} w = \sigma_w^2 / n_{in}` (so
:math:`\tau = \sum_i w_i^2 \approx \sigma_w^2`) and biases with variance :math:`\sigma_b^2`,
every unit's pre-activation pooled over units is :math:`h \sim \mathcal N(0, q_l)` with

.. math::

    q_l = \sigma_w^2\, E\big[\phi(\sqrt{q_{l-1}}\, z)^2\big] + \sigma_b^2,
    \qquad q_1 = \sigma_w^2\, E[x^2] + \sigma_b^2,

because a random weight sums its inputs' *second moments*, means included (the map g of
Klambauer et al. tracks mean and variance separately with the per-unit weight sums
:math:`\omega_j`; pooled over units it is the same recursion). The layer's post-activations then
have mean :math:`E\phi(\sqrt{q_l} z)` and variance :math:`E\phi^2 - (E\phi)^2`. Backwards, the
squared gradient per unit changes by

.. math::

    \chi_l = \sigma_w^2\, E\big[\phi'(\sqrt{q_l}\, z)^2\big]

per layer (equal widths): :math:`\chi > 1` grows gradients towards the input, :math:`\chi < 1`
shrinks them. With a normalization before the activation (BatchNorm, LayerNorm; gain 1, shift
0) every :math:`q_l = 1`. This is the infinite-width limit: one finite network's second moment
performs a multiplicative random walk around it (relative spread of order
:math:`\sqrt{l / n}`), so a measurement is held against it averaged over networks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.integrate import simpson

__all__ = ["derivative_second_moment", "signal_propagation"]

_REACH = 12.0
"""Standard deviations integrated on each side."""


def derivative_second_moment(fprime: Callable[[np.ndarray], np.ndarray], q: float,
                             nodes: int = 2001) -> float:  # fmt: skip
    r""":math:`E[f'(\sqrt q\, z)^2]`, :math:`z \sim \mathcal N(0, 1)`, by composite Simpson on
    each half-line out to 12 standard deviations: a kink at 0 (ReLU, SELU) is a panel edge, so
    the derivative's jump costs no accuracy.

    Example:
        >>> relu_prime = lambda x: (x > 0).astype(float)
        >>> round(derivative_second_moment(relu_prime, 2.0), 10)
        0.5
        >>> round(derivative_second_moment(lambda x: 1 - np.tanh(x) ** 2, 1.0), 6)
        0.464403
    """
    if not q > 0:
        raise ValueError(f"q={q!r}: the pre-activation second moment must be > 0")
    total = 0.0
    for sign in (-1.0, 1.0):
        z = sign * np.linspace(1e-300, _REACH, nodes)  # the kink side of 0 excluded
        y = np.asarray(fprime(np.sqrt(q) * z), dtype=float) ** 2
        total += abs(float(simpson(y * np.exp(-0.5 * z * z), x=z)))
    return float(total / np.sqrt(2.0 * np.pi))


def signal_propagation(
    moments: Callable,
    fprime: Callable[[np.ndarray], np.ndarray],
    taus: Sequence[float],
    input_second_moment: float,
    bias_var: float = 0.0,
    normalized: bool = False,
) -> dict[str, list[float]]:
    r"""The recursion above through ``len(taus)`` layers.

    Args:
        moments: ``moments(m, s2) -> (E f, E f^2)`` for :math:`z \sim \mathcal N(m, s2)` (a
            family's own in :mod:`selfnorm.taxonomy`).
        fprime: the activation's derivative, elementwise on a NumPy array.
        taus: :math:`\sigma_w^2` of each layer (e.g. the measured mean of
            :math:`\sum_i w_{ji}^2`).
        input_second_moment: :math:`E[x^2]` of the network's input (1 for standardized).
        bias_var: :math:`\sigma_b^2` of every layer's biases.
        normalized: a BatchNorm/LayerNorm before each activation (every :math:`q_l = 1`).

    Returns:
        per layer ``q`` (pre-activation second moment), ``mean`` and ``var`` of the
        post-activations, and ``chi``.

    Example:
        >>> from selfnorm.theory import piecewise_linear_moments
        >>> relu = lambda m, s2: piecewise_linear_moments(m, s2, 0.0)
        >>> out = signal_propagation(relu, lambda x: (x > 0) * 1.0, [2.0] * 3, 1.0)
        >>> [round(v, 6) for v in out["var"]], [round(c, 6) for c in out["chi"]]
        ([0.68169, 0.68169, 0.68169], [1.0, 1.0, 1.0])
    """
    out: dict[str, list[float]] = {"q": [], "mean": [], "var": [], "chi": []}
    second = float(input_second_moment)
    for tau in taus:
        q = 1.0 if normalized else float(tau) * second + bias_var
        first, second = (float(v) for v in moments(0.0, q))
        out["q"].append(q)
        out["mean"].append(first)
        out["var"].append(second - first * first)
        out["chi"].append(float(tau) * derivative_second_moment(fprime, q))
    return out
