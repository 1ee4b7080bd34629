import math

import pytest
import torch

from selfnorm import AlphaDropout, FeatureAlphaDropout
from selfnorm.constants import SATURATION_01
from selfnorm.functional import (
    alpha_dropout,
    alpha_dropout_coefficients,
    keep_mask,
    realized_rate,
)

FIXED_POINTS = [(0.0, 1.0, 0.1), (0.0, 1.0, 0.5), (0.3, 2.0, 0.2), (-0.2, 0.5, 0.05)]


@pytest.mark.parametrize(("mean", "var", "p"), FIXED_POINTS)
def test_every_output_is_one_of_two_affine_values(mean, var, p):
    g = torch.Generator().manual_seed(1)
    x = mean + math.sqrt(var) * torch.randn(100_000, dtype=torch.float64, generator=g)
    y = AlphaDropout(p, mean, var, generator=g)(x)
    # the mask realizes p rounded to 2^-15; the correction is computed for that rate
    assert abs(realized_rate(p) - p) <= 2**-16
    a, b = alpha_dropout_coefficients(realized_rate(p), mean, var)
    kept = torch.isclose(y, a * x + b, rtol=0, atol=1e-12)
    dropped = torch.isclose(y, torch.full_like(y, a * SATURATION_01 + b), rtol=0, atol=1e-12)
    assert bool((kept | dropped).all())
    # the drop fraction is binomial(n, p): within 5 standard errors
    n = x.numel()
    assert abs(float(dropped.double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize(("mean", "var", "p"), FIXED_POINTS)
def test_moments_are_preserved(mean, var, p):
    n = 2_000_000
    g = torch.Generator().manual_seed(2)
    # a skewed, SELU-like input with exactly the requested mean and variance
    z = torch.randn(n, dtype=torch.float64, generator=g)
    x = mean + math.sqrt(var) * (z - z.mean()) / z.std(correction=0)
    y = alpha_dropout(x, p, True, mean=mean, var=var, generator=g)
    y_mean, y_var = float(y.mean()), float(y.var(correction=0))
    # tolerances from the sample size: se(mean) = sd/sqrt(n), se(var) = sqrt((m4 - var^2)/n)
    m4 = float(((y - y_mean) ** 4).mean())
    assert abs(y_mean - mean) < 5 * math.sqrt(y_var / n)
    assert abs(y_var - var) < 5 * math.sqrt((m4 - y_var**2) / n)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3])
def test_same_result_as_torch_alpha_dropout_given_the_same_mask(p):
    x = torch.randn(50_000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    ref = torch.nn.functional.alpha_dropout(x, p, training=True)
    a, b = alpha_dropout_coefficients(p)
    keep = ~torch.isclose(ref, torch.full_like(ref, a * SATURATION_01 + b), rtol=0, atol=1e-9)
    ours = alpha_dropout(x, p, True, keep=keep)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_gradcheck_with_fixed_mask():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, dtype=torch.float64, requires_grad=True, generator=g)
    keep = torch.rand(40, generator=g) > 0.3

    def f(t):
        return alpha_dropout(t, 0.3, True, mean=0.2, var=1.5, keep=keep)

    assert torch.autograd.gradcheck(f, (x,))


def test_eval_mode_and_zero_rate_return_the_input_object():
    x = torch.randn(3, 4)
    assert AlphaDropout(0.1).eval()(x) is x
    assert AlphaDropout(0.0)(x) is x
    assert alpha_dropout(x, 0.2, False) is x
    x3 = torch.randn(2, 3, 4)
    assert FeatureAlphaDropout(0.1).eval()(x3) is x3


def test_generator_makes_it_reproducible():
    x = torch.randn(1000)
    y1 = AlphaDropout(0.2, generator=torch.Generator().manual_seed(7))(x)
    y2 = AlphaDropout(0.2, generator=torch.Generator().manual_seed(7))(x)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 1.0}, r"p=1.0 is outside \[0, 1\)"),
        ({"p": -0.1}, r"outside \[0, 1\)"),
        ({"p": float("nan")}, "not a finite number"),
        ({"p": 0.1, "var": 0.0}, "var=0.0 must be > 0"),
        ({"p": 0.1, "var": -1.0}, "must be > 0"),
        ({"p": 0.1, "mean": float("inf")}, "mean=inf"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlphaDropout(**kwargs)
    with pytest.raises(ValueError, match=match):
        FeatureAlphaDropout(**kwargs)


def test_feature_dropout_drops_whole_channels_and_keeps_moments():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4000, 16, 4, 4, dtype=torch.float64, generator=g)
    y = FeatureAlphaDropout(0.2, generator=g)(x)
    a, b = alpha_dropout_coefficients(realized_rate(0.2))
    kept = torch.isclose(y, a * x + b, rtol=0, atol=1e-12).flatten(2)
    dropped = torch.isclose(y, torch.full_like(y, a * SATURATION_01 + b), rtol=0, atol=1e-12)
    dropped = dropped.flatten(2)
    # a channel is either kept everywhere or dropped everywhere
    assert bool((kept.all(-1) | dropped.all(-1)).all())
    n_channels = 4000 * 16
    frac = float(dropped.all(-1).double().mean())
    assert abs(frac - 0.2) < 5 * math.sqrt(0.2 * 0.8 / n_channels)
    # Mean over all elements: dominated by the channel draws (n_channels of them); the affine
    # map keeps E = 0 exactly, so a 5-se band around 0 with se = sd(y) / sqrt(n_channels).
    assert abs(float(y.mean())) < 5 * math.sqrt(float(y.var()) / n_channels)
    assert abs(float(y.var()) - 1.0) < 5 * math.sqrt(2.0 / n_channels) * 2


@pytest.mark.parametrize("shape", [(8,), (8, 16)])
def test_feature_dropout_refuses_inputs_without_spatial_dims(shape):
    with pytest.raises(ValueError, match="use AlphaDropout"):
        FeatureAlphaDropout(0.1)(torch.randn(shape))


def test_keep_mask_is_bernoulli_with_independent_halves():
    n = 1_000_000
    m = keep_mask((n,), 0.3, torch.Generator().manual_seed(9)).double()
    q = 1 - realized_rate(0.3)
    se = math.sqrt(q * (1 - q) / n)
    assert abs(float(m.mean()) - q) < 5 * se
    # groups of four neighbouring entries come from the bits of one integer: uncorrelated
    fields = m[: n // 4 * 4].view(-1, 4)
    var = q * (1 - q)
    for i in range(4):
        for j in range(i + 1, 4):
            corr = float(((fields[:, i] - q) * (fields[:, j] - q)).mean()) / var
            assert abs(corr) < 5 / math.sqrt(len(fields))
    # and consecutive integers are independent
    lag = float(((fields[1:, 0] - q) * (fields[:-1, 3] - q)).mean()) / var
    assert abs(lag) < 5 / math.sqrt(len(fields))


def test_keep_mask_refuses_rates_that_drop_everything():
    with pytest.raises(ValueError, match="too close to 1"):
        keep_mask((10,), 0.99999)
