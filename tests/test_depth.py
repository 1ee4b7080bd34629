import json
import math

import numpy as np
import pytest
from scipy import integrate

from selfnorm import taxonomy
from selfnorm.cli import main
from selfnorm.depth import DepthConfig, depth_propagation
from selfnorm.specs import get_spec
from selfnorm.theory import g, propagate_layer

FUNCS = {
    "relu": lambda z: max(z, 0.0),
    "lrelu": lambda z: z if z > 0 else 0.01 * z,
    "elu": lambda z: z if z > 0 else math.expm1(z),
    "tanh": math.tanh,
    "gelu": lambda z: 0.5 * z * math.erfc(-z / math.sqrt(2)),
    "silu": lambda z: z / (1 + math.exp(-z)),
}


@pytest.mark.parametrize("name", sorted(FUNCS))
@pytest.mark.parametrize(("m", "s"), [(0.0, 1.0), (0.5, 0.3), (-1.0, 2.0)])
def test_activation_moments_agree_with_quadrature(name, m, s):
    f = FUNCS[name]

    def dens(z):
        return math.exp(-((z - m) ** 2) / (2 * s * s)) / (s * math.sqrt(2 * math.pi))

    kw = {"points": [0.0], "limit": 200, "epsabs": 1e-12}
    lo, hi = m - 12 * s, m + 12 * s
    ref1 = integrate.quad(lambda z: f(z) * dens(z), lo, hi, **kw)[0]
    ref2 = integrate.quad(lambda z: f(z) ** 2 * dens(z), lo, hi, **kw)[0]
    first, second = taxonomy.kind(name).moments(m, s * s, None)
    assert abs(float(first) - ref1) < 1e-6
    assert abs(float(second) - ref2) < 1e-6


def test_propagate_layer_is_g_for_normalized_weights():
    omega, tau = np.zeros(8), np.ones(8)
    for mu, nu in [(0.2, 1.3), (-0.1, 0.7)]:
        got = propagate_layer(get_spec("selu").moments, mu, nu, omega, tau)
        ref = g(mu, 0.0, nu, 1.0)
        assert np.allclose(got, (float(ref[0]), float(ref[1])), atol=1e-12)


def test_selu_stays_at_the_fixed_point_and_theory_tracks_it():
    curves = depth_propagation(DepthConfig(("selu", "tanh"), depth=16, width=256, batch=2048))
    selu = curves["selu"]
    assert len(selu.mean) == 17 and len(selu.grad_norm) == 17
    assert max(abs(m) for m in selu.mean) < 0.1
    assert all(0.85 < v < 1.15 for v in selu.var)
    assert all(abs(t - v) < 0.1 for t, v in zip(selu.theory_var, selu.var, strict=True))
    # tanh with Glorot init: the variance shrinks layer by layer, and theory predicts it
    tanh = curves["tanh"]
    assert tanh.var[-1] < 0.2
    assert abs(tanh.theory_var[-1] - tanh.var[-1]) < 0.1 * tanh.var[-1]


def test_mean_field_recursion_closed_forms_and_measurement():
    curves = depth_propagation(
        DepthConfig(("selu", "relu", "tanh", "relu+bn"), depth=12, width=256, batch=1024,
                    networks=2)
    )  # fmt: skip
    relu = curves["relu"]
    # He init: q stays at 2, so every layer's variance is 1 - 1/pi and chi = 1 (flat gradients)
    taus = relu.tau_mean
    assert all(abs(t - 2) < 0.05 for t in taus)
    second = relu.mean[0] ** 2 + relu.var[0]  # E[x^2] of the inputs
    for layer in range(1, 13):
        q = taus[layer - 1] * second
        second = q / 2  # E[relu(sqrt(q) z)^2]
        assert relu.mf_var[layer] == pytest.approx(q / 2 - q / (2 * math.pi), rel=1e-4)
    # with BatchNorm before it every layer's pre-activation is N(0, 1): 1/2 - 1/(2 pi)
    assert curves["relu+bn"].mf_var[1:] == pytest.approx([0.5 - 1 / (2 * math.pi)] * 12)
    assert all(math.isnan(g) for g in curves["relu+bn"].mf_grad)
    # the measurement agrees where finite width does not matter much (12 layers of 256)
    selu, tanh = curves["selu"], curves["tanh"]
    assert all(abs(m - v) < 0.05 for m, v in zip(selu.mf_var[1:], selu.var[1:], strict=True))
    assert selu.mf_grad[1] == pytest.approx(selu.grad_norm[1], rel=0.05)  # chi > 1 for SELU
    assert selu.mf_grad[1] / selu.mf_grad[-1] > 1.3
    assert tanh.mf_var[-1] == pytest.approx(tanh.var[-1], rel=0.1)
    assert tanh.mf_grad[1] == pytest.approx(tanh.grad_norm[1], rel=0.1)  # chi < 1: vanishing
    assert len(relu.var_range) == 13 and all(lo <= hi for lo, hi in relu.var_range)


def test_the_selu_gain_trap_collapses_the_variance():
    curves = depth_propagation(
        DepthConfig(("selu",), depth=16, width=256, batch=1024, init="selu-gain")
    )
    assert curves["selu"].var[-1] < 0.2
    assert abs(curves["selu"].tau_mean[0] - 0.75**2) < 0.05


def test_depth_cli_writes_png_and_json(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["depth", "--activations", "selu,relu+bn", "--depth", "6", "--width", "64",
            "--batch", "256", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "selu" in capsys.readouterr().out
    data = json.loads((out / "depth.json").read_text())
    assert set(data["curves"]) == {"selu", "relu+bn"}
    assert data["curves"]["relu+bn"]["theory_var"][1] is None  # no mean-field map with BN
    assert (out / "depth.png").read_bytes()[:4] == b"\x89PNG"


def test_depth_cli_bad_input(capsys):
    assert main(["depth", "--init", "xavier"]) == 2
    assert "init='xavier'" in capsys.readouterr().err
