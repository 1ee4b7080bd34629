r"""The SELU theory as code: the mean/variance mapping g, its Jacobian, fixed points, the
parameter solver and numerical checks of the paper's Theorems 1-3.

Setting (Klambauer et al. 2017, Sec. 3). A unit receives :math:`z = \sum_i w_i x_i` from inputs
with mean :math:`\mu` and variance :math:`\nu`, and weights with :math:`\omega = \sum_i w_i`,
:math:`\tau = \sum_i w_i^2`. By the central limit theorem
:math:`z \sim \mathcal{N}(\mu\omega, \nu\tau)`. The mapping

.. math::
    g : (\mu, \nu) \mapsto (\tilde\mu, \tilde\nu) = \left(E[\operatorname{selu}(z)],\
    \operatorname{Var}[\operatorname{selu}(z)]\right)

is evaluated in closed form. With :math:`m = \mu\omega`, :math:`s^2 = \nu\tau`, :math:`\Phi`
and :math:`\varphi` the standard normal CDF and density:

.. math::
    E[z 1_{z>0}] &= m\,\Phi(m/s) + s\,\varphi(m/s) \\
    E[z^2 1_{z>0}] &= (m^2 + s^2)\,\Phi(m/s) + m s\,\varphi(m/s) \\
    E[e^{kz} 1_{z\le0}] &= \tfrac12 e^{km + k^2 s^2/2}\,
        \operatorname{erfc}\!\left(\tfrac{m + k s^2}{\sqrt2 s}\right), \quad k = 1, 2

The products :math:`e^{a}\operatorname{erfc}(b)` overflow/underflow in floating point for large
arguments; they are evaluated as :math:`e^{a - b^2}\operatorname{erfcx}(b)` for :math:`b \ge 0`.

The Jacobian w.r.t. :math:`(\mu, \nu)` uses :math:`\partial_\mu = \omega\,\partial_m`,
:math:`\partial_\nu = \tau\,\partial_{s^2}`, :math:`\partial_m E[f(z)] = E[f'(z)]` and the heat
equation :math:`\partial_{s^2} E[f(z)] = \tfrac12 E[f''(z)]` (with the kink of SELU at 0
contributing :math:`\lambda(1-\alpha)\,p_z(0)`).

Example:
    >>> mu, nu = g(0.0, 0.0, 1.0, 1.0)
    >>> abs(float(mu)) < 1e-12, abs(float(nu) - 1.0) < 1e-12
    (True, True)
    >>> jacobian(0.0, 0.0, 1.0, 1.0).round(7).tolist()  # the paper prints 0.088834 (truncated)
    [[0.0, 0.0888348], [0.0, 0.7826479]]
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy.special import erfc, erfcx

from selfnorm.constants import ALPHA_01, LAMBDA_01

__all__ = [
    "FixedPoint",
    "TheoremCheck",
    "check_theorems",
    "fixed_point",
    "g",
    "g_monte_carlo",
    "jacobian",
    "solve_selu_parameters",
    "spectral_norm",
]

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


def _exp_erfc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r""":math:`e^a \operatorname{erfc}(b)` without overflow: erfcx form where :math:`b \ge 0`."""
    a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    out = np.empty(a.shape)
    pos = b >= 0
    out[pos] = np.exp(a[pos] - b[pos] ** 2) * erfcx(b[pos])
    neg = ~pos
    out[neg] = np.exp(a[neg]) * erfc(b[neg])
    return out


@dataclass(frozen=True)
class _Pieces:
    """Gaussian expectations of z ~ N(m, s2) that g and its derivatives are made of."""

    m: np.ndarray
    s2: np.ndarray
    phi_pos: np.ndarray  # P(z > 0)
    phi_neg: np.ndarray  # P(z <= 0)
    dens0: np.ndarray  # density of z at 0
    ez_pos: np.ndarray  # E[z 1{z>0}]
    ez2_pos: np.ndarray  # E[z^2 1{z>0}]
    e1_neg: np.ndarray  # E[e^z 1{z<=0}]
    e2_neg: np.ndarray  # E[e^{2z} 1{z<=0}]


def _pieces(m, s2) -> _Pieces:
    m, s2 = np.broadcast_arrays(np.asarray(m, float), np.asarray(s2, float))
    if not np.all(s2 > 0):
        bad = s2[~(s2 > 0)].flat[0]
        raise ValueError(
            f"the pre-activation variance nu*tau must be > 0, got {bad!r}; pass nu > 0 and tau > 0"
        )
    s = np.sqrt(s2)
    u = m / (_SQRT2 * s)
    gauss = np.exp(-(u**2))
    dens0 = gauss / (s * _SQRT2PI)
    phi_pos = 0.5 * erfc(-u)
    phi_neg = 0.5 * erfc(u)
    return _Pieces(
        m=m,
        s2=s2,
        phi_pos=phi_pos,
        phi_neg=phi_neg,
        dens0=dens0,
        ez_pos=m * phi_pos + s2 * dens0,
        ez2_pos=(m**2 + s2) * phi_pos + m * s2 * dens0,
        e1_neg=0.5 * _exp_erfc(m + s2 / 2, (m + s2) / (_SQRT2 * s)),
        e2_neg=0.5 * _exp_erfc(2 * m + 2 * s2, (m + 2 * s2) / (_SQRT2 * s)),
    )


def _mean_and_second_moment(p: _Pieces, lam: float, alpha: float):
    mean = lam * (p.ez_pos + alpha * (p.e1_neg - p.phi_neg))
    second = lam**2 * (p.ez2_pos + alpha**2 * (p.e2_neg - 2 * p.e1_neg + p.phi_neg))
    return mean, second


def g(mu, omega, nu, tau, lam: float = LAMBDA_01, alpha: float = ALPHA_01):
    r"""The mapping :math:`(\mu, \nu) \mapsto (\tilde\mu, \tilde\nu)` of one SELU layer.

    Args:
        mu, nu: mean and variance of the layer's inputs (arrays broadcast together).
        omega, tau: :math:`\sum_i w_i` and :math:`\sum_i w_i^2` of a unit's weights.
        lam, alpha: SELU parameters, default :math:`(\lambda_{01}, \alpha_{01})`.

    Returns:
        ``(mu_tilde, nu_tilde)``, numpy arrays of the broadcast shape.

    Example:
        >>> mu, nu = g([0.0, 0.1], 0.0, 1.0, 1.0)
        >>> np.round(nu, 12).tolist()
        [1.0, 1.0]
    """
    p = _pieces(np.multiply(mu, omega), np.multiply(nu, tau))
    mean, second = _mean_and_second_moment(p, lam, alpha)
    return mean, second - mean**2


def g_monte_carlo(
    mu: float,
    omega: float,
    nu: float,
    tau: float,
    lam: float = LAMBDA_01,
    alpha: float = ALPHA_01,
    n: int = 1_000_000,
    seed: int = 0,
) -> tuple[float, float]:
    r"""Monte Carlo estimate of :func:`g`: sample :math:`z \sim \mathcal N(\mu\omega, \nu\tau)`.

    An independent check of the closed form; its standard error is about
    :math:`\sqrt{\tilde\nu / n}` for the mean.

    Example:
        >>> mu, nu = g_monte_carlo(0.0, 0.0, 1.0, 1.0, n=200_000)
        >>> abs(mu) < 0.01, abs(nu - 1) < 0.02
        (True, True)
    """
    rng = np.random.default_rng(seed)
    z = mu * omega + math.sqrt(nu * tau) * rng.standard_normal(n)
    y = lam * np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0)))
    return float(y.mean()), float(y.var())


def jacobian(mu, omega, nu, tau, lam: float = LAMBDA_01, alpha: float = ALPHA_01) -> np.ndarray:
    r"""Jacobian :math:`\partial(\tilde\mu, \tilde\nu) / \partial(\mu, \nu)`, shape ``(..., 2, 2)``.

    .. math::
        \partial_m \tilde\mu &= \lambda\left(\Phi_+ + \alpha E[e^z 1_{z\le0}]\right) \\
        \partial_{s^2} \tilde\mu &= \tfrac12\lambda\left(\alpha E[e^z 1_{z\le0}]
            + (1-\alpha)\,p_z(0)\right) \\
        \partial_m \tilde\xi &= 2\lambda^2\left(E[z 1_{z>0}] + \alpha^2
            (E[e^{2z} 1_{z\le0}] - E[e^z 1_{z\le0}])\right) \\
        \partial_{s^2} \tilde\xi &= \lambda^2\left(\Phi_+ + \alpha^2
            (2E[e^{2z} 1_{z\le0}] - E[e^z 1_{z\le0}])\right)

    with :math:`\tilde\xi` the second moment, :math:`\tilde\nu = \tilde\xi - \tilde\mu^2`,
    then the chain rule :math:`\partial_\mu = \omega\partial_m`, :math:`\partial_\nu =
    \tau\partial_{s^2}`.

    Example:
        >>> round(spectral_norm(jacobian(0.0, 0.0, 1.0, 1.0)).item(), 4)
        0.7877
    """
    omega = np.asarray(omega, float)
    tau = np.asarray(tau, float)
    p = _pieces(np.multiply(mu, omega), np.multiply(nu, tau))
    mean, _ = _mean_and_second_moment(p, lam, alpha)
    dmean_dm = lam * (p.phi_pos + alpha * p.e1_neg)
    dmean_ds2 = 0.5 * lam * (alpha * p.e1_neg + (1 - alpha) * p.dens0)
    dsec_dm = 2 * lam**2 * (p.ez_pos + alpha**2 * (p.e2_neg - p.e1_neg))
    dsec_ds2 = lam**2 * (p.phi_pos + alpha**2 * (2 * p.e2_neg - p.e1_neg))
    dvar_dm = dsec_dm - 2 * mean * dmean_dm
    dvar_ds2 = dsec_ds2 - 2 * mean * dmean_ds2
    jac = np.empty(mean.shape + (2, 2))
    jac[..., 0, 0] = omega * dmean_dm
    jac[..., 0, 1] = tau * dmean_ds2
    jac[..., 1, 0] = omega * dvar_dm
    jac[..., 1, 1] = tau * dvar_ds2
    return jac


def spectral_norm(jac: np.ndarray) -> np.ndarray:
    r"""Largest singular value of each 2x2 matrix in ``jac`` (shape ``(..., 2, 2)``), in closed
    form: :math:`\sigma_{max}^2 = \tfrac12\left(S + \sqrt{S^2 - 4D^2}\right)` with :math:`S` the
    squared Frobenius norm and :math:`D` the determinant.

    Example:
        >>> float(spectral_norm(np.array([[3.0, 0.0], [4.0, 0.0]])))
        5.0
    """
    a, b = jac[..., 0, 0], jac[..., 0, 1]
    c, d = jac[..., 1, 0], jac[..., 1, 1]
    s = a * a + b * b + c * c + d * d
    det = a * d - b * c
    return np.sqrt(0.5 * (s + np.sqrt(np.maximum(s * s - 4 * det * det, 0.0))))


@dataclass(frozen=True)
class FixedPoint:
    """Result of iterating g from a start point."""

    mean: float
    var: float
    iterations: int
    converged: bool
    trajectory: list[tuple[float, float]] = field(repr=False)


def fixed_point(
    mean0: float = 0.5,
    var0: float = 2.0,
    omega: float = 0.0,
    tau: float = 1.0,
    lam: float = LAMBDA_01,
    alpha: float = ALPHA_01,
    tol: float = 1e-12,
    max_iter: int = 10_000,
) -> FixedPoint:
    r"""Iterate :math:`(\mu, \nu) \leftarrow g(\mu, \omega, \nu, \tau)` from ``(mean0, var0)``
    until the step is below ``tol`` (what an infinitely deep network does at initialization).

    Example:
        >>> fp = fixed_point(0.8, 4.0)
        >>> fp.converged, round(fp.mean, 9), round(fp.var, 9)
        (True, 0.0, 1.0)
    """
    mu, nu = float(mean0), float(var0)
    traj = [(mu, nu)]
    for i in range(1, max_iter + 1):
        m, v = g(mu, omega, nu, tau, lam, alpha)
        m, v = float(m), float(v)
        traj.append((m, v))
        step = max(abs(m - mu), abs(v - nu))
        mu, nu = m, v
        if not (math.isfinite(mu) and math.isfinite(nu)) or nu <= 0:
            return FixedPoint(mu, nu, i, False, traj)
        if step < tol:
            return FixedPoint(mu, nu, i, True, traj)
    return FixedPoint(mu, nu, max_iter, False, traj)


Convention = Literal["paper", "notebook"]


SOLVE_VAR_RANGE = (1e-8, 1e8)
"""The variances :func:`solve_selu_parameters` accepts (its Gaussian integrals lose precision
and then overflow beyond them)."""
SOLVE_MAX_ABS_MEAN = 1e8


def solve_selu_parameters(
    mean: float = 0.0, var: float = 1.0, convention: Convention = "paper"
) -> tuple[float, float]:
    r"""SELU parameters :math:`(\lambda, \alpha)` making ``(mean, var)`` the fixed point of g.

    Two conventions for the pre-activation :math:`z`:

    * ``"paper"`` (the paper's Eq. 4-5 with normalized weights :math:`\omega = 0, \tau = 1`):
      :math:`z \sim \mathcal N(0, \nu)`. The weights' sum removes the input mean, so only
      the variance reaches the unit; this is what a LeCun-initialized layer sees.
    * ``"notebook"`` (the paper's companion notebook): :math:`z \sim \mathcal N(\mu, \nu)`,
      i.e. :math:`\omega = 1, \tau = 1`; the input mean passes through.

    Both agree for mean 0. Since :math:`\tilde\mu = \lambda A(\alpha)` with :math:`A` linear
    in :math:`\alpha`, and :math:`\tilde\xi = \lambda^2 B(\alpha)` with :math:`B` quadratic, the
    conditions :math:`\tilde\mu = \mu`, :math:`\tilde\xi = \nu + \mu^2` reduce to the quadratic
    :math:`A(\alpha)^2 (\nu + \mu^2) = \mu^2 B(\alpha)`, solved exactly; the root with
    :math:`\alpha > 0` and :math:`\lambda > 0` is unique when it exists.

    Raises:
        ValueError: ``var`` outside :data:`SOLVE_VAR_RANGE`, ``|mean|`` above
            :data:`SOLVE_MAX_ABS_MEAN`, an unknown convention, or a fixed point no SELU with
            :math:`\alpha, \lambda > 0` reaches (the message gives the reachable range).

    Example:
        >>> lam, alpha = solve_selu_parameters(0.0, 1.0)
        >>> round(lam, 10), round(alpha, 10)
        (1.0507009874, 1.6732632424)
    """
    if convention not in ("paper", "notebook"):
        raise ValueError(f"convention={convention!r}; choose 'paper' or 'notebook'")
    mean, var = float(mean), float(var)
    lo_var, hi_var = SOLVE_VAR_RANGE
    if not (math.isfinite(var) and lo_var <= var <= hi_var):
        raise ValueError(
            f"var={var!r} is outside [{lo_var:g}, {hi_var:g}], the variances solved in double "
            "precision; pass a variance in that range, e.g. 1.0"
        )
    if not (math.isfinite(mean) and abs(mean) <= SOLVE_MAX_ABS_MEAN):
        raise ValueError(
            f"mean={mean!r} is outside [-{SOLVE_MAX_ABS_MEAN:g}, {SOLVE_MAX_ABS_MEAN:g}]; pass "
            "a mean in that range, e.g. 0.0 (a fixed point needs mean^2 of the order of var)"
        )
    m = mean if convention == "notebook" else 0.0
    p = _pieces(m, var)
    ez, ez2 = float(p.ez_pos), float(p.ez2_pos)
    c = float(p.phi_neg - p.e1_neg)  # A(alpha) = ez - alpha * c   (c > 0)
    d = float(p.e2_neg - 2 * p.e1_neg + p.phi_neg)  # B(alpha) = ez2 + alpha^2 * d   (d > 0)
    if mean == 0.0:
        alpha = ez / c
        return math.sqrt(var / (ez2 + alpha**2 * d)), alpha
    r2 = mean**2 / (var + mean**2)
    qa, qb, qc = c * c - r2 * d, -2 * ez * c, ez * ez - r2 * ez2
    if abs(qa) < 1e-15 * max(abs(qb), abs(qc)):
        roots = [-qc / qb]
    else:
        disc = qb * qb - 4 * qa * qc
        roots = [] if disc < 0 else [(-qb + s * math.sqrt(disc)) / (2 * qa) for s in (1, -1)]
    for alpha in roots:
        a_val = ez - alpha * c
        if alpha > 0 and a_val * mean > 0:
            return mean / a_val, alpha
    lo, hi = -c / math.sqrt(d), ez / math.sqrt(ez2)
    raise ValueError(
        f"no SELU with alpha > 0 has the fixed point (mean={mean}, var={var}) under the "
        f"{convention!r} convention: mean / sqrt(var + mean^2) = "
        f"{mean / math.sqrt(var + mean**2):.4f} must lie in ({lo:.4f}, {hi:.4f}); "
        "choose a mean closer to 0 or a larger var"
    )


@dataclass(frozen=True)
class TheoremCheck:
    """Outcome of checking one theorem's claim on a grid of (mu, omega, nu, tau)."""

    name: str
    claim: str
    domain: dict[str, tuple[float, float]]
    grid_size: int
    worst: float
    """Worst value of the checked quantity over the grid (see ``claim``)."""
    worst_at: dict[str, float]
    holds: bool
    seconds: float
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


_THEOREM_DOMAINS: dict[str, dict[str, tuple[float, float]]] = {
    "theorem1": {"mu": (-0.1, 0.1), "omega": (-0.1, 0.1), "nu": (0.8, 1.5), "tau": (0.95, 1.1)},
    "theorem2": {"mu": (-1.0, 1.0), "omega": (-0.1, 0.1), "nu": (3.0, 16.0), "tau": (0.8, 1.25)},
    "theorem3": {"mu": (-0.1, 0.1), "omega": (-0.1, 0.1), "nu": (0.02, 0.16), "tau": (0.8, 1.25)},
    "theorem3b": {"mu": (-0.1, 0.1), "omega": (-0.1, 0.1), "nu": (0.02, 0.24), "tau": (0.9, 1.25)},
}


def _grid(domain: dict[str, tuple[float, float]], n: int) -> dict[str, np.ndarray]:
    axes = [np.linspace(lo, hi, n) for lo, hi in domain.values()]
    return dict(zip(domain, np.meshgrid(*axes, indexing="ij"), strict=True))


def _where(grid: dict[str, np.ndarray], flat_index: int) -> dict[str, float]:
    return {k: float(v.flat[flat_index]) for k, v in grid.items()}


def check_theorems(
    points_per_axis: int = 32, lam: float = LAMBDA_01, alpha: float = ALPHA_01
) -> list[TheoremCheck]:
    r"""Check the claims of Theorems 1-3 on a regular grid (endpoints included).

    * Theorem 1 (stable attracting fixed point): on :math:`\mu, \omega \in [-0.1, 0.1]`,
      :math:`\nu \in [0.8, 1.5]`, :math:`\tau \in [0.95, 1.1]` the Jacobian's spectral norm is
      < 1 (``worst`` = its maximum) and g maps the :math:`(\mu, \nu)` domain into itself.
    * Theorem 2 (variance decreases from above): :math:`\tilde\nu < \nu` on
      :math:`\mu \in [-1, 1]`, :math:`\omega \in [-0.1, 0.1]`, :math:`\nu \in [3, 16]`,
      :math:`\tau \in [0.8, 1.25]` (``worst`` = max of :math:`\tilde\nu - \nu`).
    * Theorem 3 (variance increases from below): :math:`\tilde\nu > \nu` on
      :math:`\mu, \omega \in [-0.1, 0.1]`, :math:`\nu \in [0.02, 0.16]`,
      :math:`\tau \in [0.8, 1.25]` (``worst`` = min of :math:`\tilde\nu - \nu`), and its
      second case ``theorem3b``: :math:`\nu \in [0.02, 0.24]` with :math:`\tau \in [0.9, 1.25]`
      (larger variances are lifted too when the weights' :math:`\tau` is not too small).

    A grid is evidence, not a proof (the paper proves them with bounds on derivatives).
    ``points_per_axis=32`` gives 32^4 = 1,048,576 points per theorem.

    Example:
        >>> [c.holds for c in check_theorems(points_per_axis=6)]
        [True, True, True, True]
    """
    if points_per_axis < 2:
        raise ValueError(f"points_per_axis={points_per_axis} must be >= 2 (grid endpoints)")
    checks = []

    t0 = time.perf_counter()
    dom = _THEOREM_DOMAINS["theorem1"]
    grid = _grid(dom, points_per_axis)
    jac = jacobian(grid["mu"], grid["omega"], grid["nu"], grid["tau"], lam, alpha)
    norm = spectral_norm(jac)
    mu_t, nu_t = g(grid["mu"], grid["omega"], grid["nu"], grid["tau"], lam, alpha)
    inside = bool(
        mu_t.min() >= dom["mu"][0]
        and mu_t.max() <= dom["mu"][1]
        and nu_t.min() >= dom["nu"][0]
        and nu_t.max() <= dom["nu"][1]
    )
    i = int(np.argmax(norm))
    checks.append(
        TheoremCheck(
            name="theorem1",
            claim="spectral norm of the Jacobian < 1 and g maps the (mu, nu) domain into itself",
            domain=dom,
            grid_size=int(norm.size),
            worst=float(norm.flat[i]),
            worst_at=_where(grid, i),
            holds=bool(norm.flat[i] < 1.0) and inside,
            seconds=time.perf_counter() - t0,
            extra={
                "image_mean": (float(mu_t.min()), float(mu_t.max())),
                "image_var": (float(nu_t.min()), float(nu_t.max())),
                "maps_into_domain": inside,
            },
        )
    )

    for name, claim, pick, ok in (
        ("theorem2", "nu_tilde < nu (worst = max of nu_tilde - nu)", np.argmax, lambda w: w < 0),
        ("theorem3", "nu_tilde > nu (worst = min of nu_tilde - nu)", np.argmin, lambda w: w > 0),
        ("theorem3b", "nu_tilde > nu, second case (worst = min of nu_tilde - nu)", np.argmin,
         lambda w: w > 0),
    ):  # fmt: skip
        t0 = time.perf_counter()
        dom = _THEOREM_DOMAINS[name]
        grid = _grid(dom, points_per_axis)
        _, nu_t = g(grid["mu"], grid["omega"], grid["nu"], grid["tau"], lam, alpha)
        diff = nu_t - grid["nu"]
        i = int(pick(diff))
        checks.append(
            TheoremCheck(
                name=name,
                claim=claim,
                domain=dom,
                grid_size=int(diff.size),
                worst=float(diff.flat[i]),
                worst_at=_where(grid, i),
                holds=bool(ok(diff.flat[i])),
                seconds=time.perf_counter() - t0,
            )
        )
    return checks


# ---------------------------------------------------------------------------------------------
# Mean-field moments for other activations (for depth propagation at initialization).
# ---------------------------------------------------------------------------------------------

_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(128)
_GH_WEIGHTS = _GH_WEIGHTS / math.sqrt(2.0 * math.pi)


def gelu(z: np.ndarray) -> np.ndarray:
    r""":math:`z\,\Phi(z)` (the exact GELU), elementwise."""
    return 0.5 * z * erfc(-z / _SQRT2)


def silu(z: np.ndarray) -> np.ndarray:
    r""":math:`z / (1 + e^{-z})`, elementwise."""
    return z / (1.0 + np.exp(-z))


def elu_moments(m, s2, lam: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean and second moment of :math:`\lambda\,\mathrm{elu}_\alpha(z)`,
    :math:`z \sim \mathcal N(m, s^2)`, in closed form (SELU: :math:`(\lambda_{01},
    \alpha_{01})`; ELU: :math:`\lambda = 1`), elementwise.

    Example:
        >>> mean, second = elu_moments(0.0, 1.0, LAMBDA_01, ALPHA_01)  # SELU's fixed point
        >>> round(float(mean), 12) == 0, round(float(second), 12)
        (True, 1.0)
    """
    return _mean_and_second_moment(_pieces(m, s2), lam, alpha)


def piecewise_linear_moments(m, s2, slope: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean and second moment of :math:`f(z) = z` for :math:`z > 0`, :math:`a z` below
    (ReLU: :math:`a = 0`; Leaky ReLU), :math:`z \sim \mathcal N(m, s^2)`:
    :math:`E[f] = E[z 1_{z>0}] + a E[z 1_{z\le0}]`,
    :math:`E[f^2] = E[z^2 1_{z>0}] + a^2 E[z^2 1_{z\le0}]`.

    Example:
        >>> mean, second = piecewise_linear_moments(0.0, 1.0, 0.0)
        >>> round(float(mean), 6), round(float(second), 6)  # 1/sqrt(2 pi), 1/2
        (0.398942, 0.5)
    """
    p = _pieces(m, s2)
    ez_neg = p.m - p.ez_pos  # E[z 1{z<=0}]
    ez2_neg = p.m**2 + p.s2 - p.ez2_pos
    return p.ez_pos + slope * ez_neg, p.ez2_pos + slope * slope * ez2_neg


def quadrature_moments(f, m, s2) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean and second moment of a smooth :math:`f(z)`, :math:`z \sim \mathcal N(m, s^2)`, by
    128-point Gauss-Hermite quadrature (fast convergence for tanh, GELU, SiLU), elementwise.

    Example:
        >>> mean, second = quadrature_moments(np.tanh, 0.0, 1.0)
        >>> round(float(mean), 12) == 0, round(float(second), 4)
        (True, 0.3943)
    """
    m, s2 = np.broadcast_arrays(np.asarray(m, float), np.asarray(s2, float))
    if not np.all(s2 > 0):
        raise ValueError("the pre-activation variance must be > 0")
    z = m[..., None] + np.sqrt(s2)[..., None] * _GH_NODES
    y = f(z)
    return (y * _GH_WEIGHTS).sum(-1), (y * y * _GH_WEIGHTS).sum(-1)


def propagate_layer(moments, mean: float, var: float, omega, tau):
    r"""Mean-field prediction for one layer whose units have weight sums ``omega`` and squared
    sums ``tau`` (arrays over units), inputs with ``(mean, var)``: unit :math:`j` receives
    :math:`\mathcal N(\mu\omega_j, \nu\tau_j)`; the layer's output mean and variance pool all
    units: :math:`\tilde\mu = \overline{E_j}`, :math:`\tilde\nu = \overline{E_j^{(2)}} -
    \tilde\mu^2`. ``moments(m, s2)`` gives :math:`(E f(z), E f(z)^2)` of the activation, e.g.
    :func:`elu_moments` (the families' own are in :mod:`selfnorm.taxonomy`). With every
    :math:`\omega_j = 0, \tau_j = 1` and SELU this is :func:`g`.

    Example:
        >>> selu = lambda m, s2: elu_moments(m, s2, LAMBDA_01, ALPHA_01)
        >>> m, v = propagate_layer(selu, 0.0, 1.0, np.zeros(4), np.ones(4))
        >>> abs(m) < 1e-12, abs(v - 1) < 1e-12
        (True, True)
    """
    first, second = moments(mean * np.asarray(omega, float), var * np.asarray(tau, float))
    mu = float(np.mean(first))
    return mu, float(np.mean(second)) - mu * mu
