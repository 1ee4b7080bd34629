from decimal import Decimal

from selfnorm import constants
from selfnorm.constants import ALPHA_01, LAMBDA_01, SATURATION_01

# The paper's published digits (Klambauer et al. 2017, Eq. 14 evaluated to 32 digits).
PUBLISHED_LAMBDA = Decimal("1.0507009873554804934193349852946")
PUBLISHED_ALPHA = Decimal("1.6732632423543772848170429916717")


def test_constants_match_published_digits():
    assert abs(Decimal(LAMBDA_01) - PUBLISHED_LAMBDA) < Decimal("1e-12")
    assert abs(Decimal(ALPHA_01) - PUBLISHED_ALPHA) < Decimal("1e-12")


def test_saturation_is_minus_lambda_alpha():
    assert SATURATION_01 == -LAMBDA_01 * ALPHA_01
    assert abs(Decimal(SATURATION_01) + PUBLISHED_LAMBDA * PUBLISHED_ALPHA) < Decimal("1e-12")


def test_float_constants_are_eq14_to_the_last_bits():
    # Eq. 14 evaluated independently in 50-digit arithmetic; the float64 values from the closed
    # form must sit within a few ulps of it.
    import math

    import mpmath

    with mpmath.workdps(50):
        e1, e2, e = mpmath.erfc(1 / mpmath.sqrt(2)), mpmath.erfc(mpmath.sqrt(2)), mpmath.e
        alpha = -mpmath.sqrt(2 / mpmath.pi) / (e1 * mpmath.sqrt(e) - 1)
        lam = (
            (1 - e1 * mpmath.sqrt(e))
            * mpmath.sqrt(2 * mpmath.pi)
            / mpmath.sqrt(
                2 * e2 * e**2
                + mpmath.pi * e1**2 * e
                - 2 * (2 + mpmath.pi) * e1 * mpmath.sqrt(e)
                + mpmath.pi
                + 2
            )
        )
        assert abs(Decimal(str(lam)) - PUBLISHED_LAMBDA) < Decimal("1e-30")
        assert abs(Decimal(str(alpha)) - PUBLISHED_ALPHA) < Decimal("1e-30")
    assert abs(LAMBDA_01 - float(lam)) <= 4 * math.ulp(LAMBDA_01)
    assert abs(ALPHA_01 - float(alpha)) <= 4 * math.ulp(ALPHA_01)
    assert constants.selu_01_constants() == (LAMBDA_01, ALPHA_01)
