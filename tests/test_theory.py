import math

import mpmath
import numpy as np
import pytest
from scipy import integrate

from selfnorm.constants import ALPHA_01, LAMBDA_01
from selfnorm.theory import (
    check_theorems,
    fixed_point,
    g,
    g_monte_carlo,
    jacobian,
    solve_selu_parameters,
    spectral_norm,
)


def g_by_quadrature(mu, omega, nu, tau, lam=LAMBDA_01, alpha=ALPHA_01):
    """Independent implementation: integrate selu against the Gaussian density numerically."""
    m, s = mu * omega, math.sqrt(nu * tau)

    def selu(z):
        return lam * z if z > 0 else lam * alpha * math.expm1(z)

    def dens(z):
        return math.exp(-((z - m) ** 2) / (2 * s * s)) / (s * math.sqrt(2 * math.pi))

    lo, hi = m - 12 * s, m + 12 * s
    kw = {"points": [0.0] if lo < 0 < hi else None, "epsabs": 1e-13, "epsrel": 1e-13}
    kw["limit"] = 200
    mean = integrate.quad(lambda z: selu(z) * dens(z), lo, hi, **kw)[0]
    second = integrate.quad(lambda z: selu(z) ** 2 * dens(z), lo, hi, **kw)[0]
    return mean, second - mean**2


def test_fixed_point_zero_one():
    mu, nu = g(0.0, 0.0, 1.0, 1.0)
    assert abs(float(mu)) < 1e-12
    assert abs(float(nu) - 1.0) < 1e-12


def test_jacobian_at_fixed_point_matches_paper():
    jac = jacobian(0.0, 0.0, 1.0, 1.0)
    # The paper prints [[0.0, 0.088834], [0.0, 0.782648]] (6 decimals, truncated).
    expected = np.array([[0.0, 0.088834], [0.0, 0.782648]])
    assert np.abs(jac - expected).max() < 1e-6
    assert round(float(spectral_norm(jac)), 4) == 0.7877


POINTS = [
    (0.0, 0.0, 1.0, 1.0),
    (0.1, -0.1, 0.8, 1.1),
    (0.7, 0.3, 2.5, 0.9),
    (-1.0, 1.0, 0.1, 1.2),
    (2.0, 1.0, 4.0, 1.0),
]


@pytest.mark.parametrize("point", POINTS)
def test_g_agrees_with_numerical_quadrature(point):
    mu, nu = g(*point)
    ref_mu, ref_nu = g_by_quadrature(*point)
    assert abs(float(mu) - ref_mu) < 1e-10
    assert abs(float(nu) - ref_nu) < 1e-10


@pytest.mark.parametrize("point", POINTS)
def test_g_agrees_with_monte_carlo(point):
    n = 1_000_000
    mu, nu = g(*point)
    mc_mu, mc_nu = g_monte_carlo(*point, n=n, seed=1)
    # 5 standard errors; se(var) <= var * sqrt(kurtosis-ish / n), bounded generously by 6/n
    assert abs(mc_mu - float(mu)) < 5 * math.sqrt(float(nu) / n)
    assert abs(mc_nu - float(nu)) < 5 * float(nu) * math.sqrt(6.0 / n)


@pytest.mark.parametrize("point", POINTS)
def test_jacobian_agrees_with_finite_differences(point):
    mu, omega, nu, tau = point
    h = 1e-6
    jac = jacobian(*point)
    d_mu = (np.array(g(mu + h, omega, nu, tau)) - np.array(g(mu - h, omega, nu, tau))) / (2 * h)
    d_nu = (np.array(g(mu, omega, nu + h, tau)) - np.array(g(mu, omega, nu - h, tau))) / (2 * h)
    np.testing.assert_allclose(jac[:, 0], d_mu, atol=1e-7)
    np.testing.assert_allclose(jac[:, 1], d_nu, atol=1e-7)


def _g_mpmath(m, s2, lam=LAMBDA_01, alpha=ALPHA_01):
    """The naive exp * erfc closed form in 60-digit arithmetic: no overflow there."""
    with mpmath.workdps(60):
        m, s2, lam, alpha = map(mpmath.mpf, (m, s2, lam, alpha))
        s = mpmath.sqrt(s2)
        phi_p = mpmath.erfc(-m / (s * mpmath.sqrt(2))) / 2
        phi_n = mpmath.erfc(m / (s * mpmath.sqrt(2))) / 2
        dens = mpmath.exp(-(m**2) / (2 * s2)) / (s * mpmath.sqrt(2 * mpmath.pi))
        e1 = mpmath.exp(m + s2 / 2) * mpmath.erfc((m + s2) / (s * mpmath.sqrt(2))) / 2
        e2 = mpmath.exp(2 * m + 2 * s2) * mpmath.erfc((m + 2 * s2) / (s * mpmath.sqrt(2))) / 2
        mean = lam * (m * phi_p + s2 * dens + alpha * (e1 - phi_n))
        second = lam**2 * ((m**2 + s2) * phi_p + m * s2 * dens + alpha**2 * (e2 - 2 * e1 + phi_n))
        return float(mean), float(second - mean**2)


@pytest.mark.parametrize(("m", "s2"), [(0.0, 900.0), (-40.0, 1.0), (30.0, 500.0), (-5.0, 0.01)])
def test_g_is_stable_for_large_arguments(m, s2):
    # exp(2m + 2 s^2) alone overflows float64 at s^2 = 900; the erfcx form does not.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        mu, nu = g(m, 1.0, s2, 1.0)
    ref_mu, ref_nu = _g_mpmath(m, s2)
    assert np.isfinite(mu) and np.isfinite(nu)
    assert math.isclose(float(mu), ref_mu, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(float(nu), ref_nu, rel_tol=1e-9, abs_tol=1e-12)


def test_g_is_vectorized():
    mu = np.linspace(-0.5, 0.5, 7)[:, None]
    nu = np.linspace(0.5, 2.0, 5)[None, :]
    m, v = g(mu, 1.0, nu, 1.0)
    assert m.shape == v.shape == (7, 5)
    assert float(v[3, 2]) == pytest.approx(float(g(mu[3, 0], 1.0, nu[0, 2], 1.0)[1]), abs=1e-15)
    assert jacobian(mu, 1.0, nu, 1.0).shape == (7, 5, 2, 2)


def test_spectral_norm_agrees_with_numpy_svd():
    rng = np.random.default_rng(0)
    mats = rng.normal(size=(100, 2, 2))
    np.testing.assert_allclose(spectral_norm(mats), np.linalg.norm(mats, ord=2, axis=(1, 2)))


@pytest.mark.parametrize("start", [(0.8, 4.0), (-0.5, 0.1), (1.0, 10.0)])
def test_fixed_point_iteration_converges_to_zero_one(start):
    fp = fixed_point(*start)
    assert fp.converged
    assert abs(fp.mean) < 1e-9 and abs(fp.var - 1.0) < 1e-9


def test_bad_variance_is_refused():
    with pytest.raises(ValueError, match="must be > 0"):
        g(0.0, 0.0, -1.0, 1.0)


@pytest.mark.parametrize("convention", ["paper", "notebook"])
def test_solver_recovers_lambda01_alpha01(convention):
    lam, alpha = solve_selu_parameters(0.0, 1.0, convention=convention)
    assert abs(lam - LAMBDA_01) < 1e-12
    assert abs(alpha - ALPHA_01) < 1e-12


@pytest.mark.parametrize(("mean", "var"), [(0.0, 2.0), (0.1, 1.0), (-0.1, 1.0), (0.5, 0.7)])
@pytest.mark.parametrize(("convention", "omega"), [("paper", 0.0), ("notebook", 1.0)])
def test_solver_fixed_point_round_trip(mean, var, convention, omega):
    lam, alpha = solve_selu_parameters(mean, var, convention=convention)
    assert lam > 0 and alpha > 0
    mu, nu = g(mean, omega, var, 1.0, lam, alpha)
    assert abs(float(mu) - mean) < 1e-10
    assert abs(float(nu) - var) < 1e-10


def test_solver_conventions_differ_for_nonzero_mean():
    paper = solve_selu_parameters(0.1, 1.0, convention="paper")
    notebook = solve_selu_parameters(0.1, 1.0, convention="notebook")
    assert abs(paper[1] - notebook[1]) > 0.1


def test_solver_explains_unreachable_fixed_points():
    with pytest.raises(ValueError, match="must lie in"):
        solve_selu_parameters(5.0, 0.1)
    with pytest.raises(ValueError, match=r"var=0.0 is outside \[1e-08, 1e\+08\]"):
        solve_selu_parameters(0.0, 0.0)
    with pytest.raises(ValueError, match="convention"):
        solve_selu_parameters(0.0, 1.0, convention="keras")


def test_theorems_hold_on_million_point_grids():
    checks = {c.name: c for c in check_theorems(points_per_axis=32)}
    assert set(checks) == {"theorem1", "theorem2", "theorem3", "theorem3b"}
    for c in checks.values():
        assert c.grid_size == 32**4
        assert c.holds, c
    t1 = checks["theorem1"]
    assert 0.7877 < t1.worst < 1.0  # at least the norm at the fixed point, below 1
    assert t1.extra["maps_into_domain"]
    assert checks["theorem2"].worst < 0 < checks["theorem3"].worst
    assert 0 < checks["theorem3b"].worst and checks["theorem3b"].domain["nu"] == (0.02, 0.24)


def test_theorem_check_detects_a_violation():
    # With a SELU whose fixed point is far from (0, 1), Theorem 1's domain is not mapped into
    # itself: the check must say so rather than always print "holds".
    lam, alpha = solve_selu_parameters(0.0, 3.0)
    t1 = check_theorems(points_per_axis=8, lam=lam, alpha=alpha)[0]
    assert not t1.holds
