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


def test_constants_are_derived_not_typed():
    # The module computes them from erfc at import time; recomputing gives the same floats.
    assert constants.selu_01_constants() == (LAMBDA_01, ALPHA_01)
