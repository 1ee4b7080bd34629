"""One taxonomy: a family registered in one place is built, initialized, recorded, audited and
predicted by depth; the built-in tables agree with the modules they describe."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import selfnorm
from selfnorm import taxonomy, theory
from selfnorm.auditing import audit
from selfnorm.config import RecordConfig
from selfnorm.constants import ALPHA_01, LAMBDA_01
from selfnorm.depth import DepthConfig, depth_propagation
from selfnorm.models import build_mlp
from selfnorm.recording import ActivationRecorder
from selfnorm.specs import get_spec, spec_names


class Sine(nn.Module):
    def forward(self, x):
        return torch.sin(x)


@pytest.fixture
def sine():
    kind = taxonomy.register(
        taxonomy.ActivationKind(
            "sine",
            (Sine,),
            make=lambda _: Sine(),
            init="lecun_normal",
            gain=lambda _: 1.0,
            moments=lambda m, s2, _: theory.quadrature_moments(np.sin, m, s2),
        )
    )
    yield kind
    taxonomy.unregister("sine")


def test_a_family_registered_in_one_place_is_used_everywhere(sine):
    assert "sine" in spec_names()
    spec = get_spec("sine")
    assert spec.family is sine and spec.init_name == "lecun_normal"
    # initialized: LeCun normal, N(0, 1/fan_in), by the spec's gain
    gen = torch.Generator().manual_seed(0)
    net = build_mlp(256, 10, 3, 512, spec, generator=gen)
    hidden = [m for m in net.modules() if isinstance(m, nn.Linear)][1]
    var = float(hidden.weight.detach().var())
    n = hidden.weight.numel()
    assert abs(var * 512 - 1.0) < 6 * math.sqrt(2 / n) * 1.0  # 6 sigma of a variance estimate
    # recorded, under its family name
    x = torch.randn(64, 256, generator=gen)
    with ActivationRecorder(net, RecordConfig(every=1)) as rec:
        rec.step()
        net(x).sum().backward()
        r = rec.records()
    assert r.family == ("sine",) * 3
    with torch.no_grad():
        want = float(torch.sin(net.fc1(x)).mean())
    np.testing.assert_allclose(r.post["mean"][0, 0], want, rtol=1e-4, atol=1e-6)
    # audited as an activation: an activation after the output layer is reported
    head = nn.Sequential(nn.Linear(8, 4), Sine())
    assert any(f.kind == "output_activation" for f in audit(head))
    # depth: the registered moments predict the measured variance at initialization
    c = depth_propagation(DepthConfig(("sine",), depth=6, width=512, batch=2048))["sine"]
    assert np.isfinite(c.theory_var).all()
    np.testing.assert_allclose(c.var[1:], c.theory_var[1:], rtol=0.1)


def test_an_unregistered_module_is_none_of_these():
    head = nn.Sequential(nn.Linear(8, 4), Sine())
    assert not any(f.kind == "output_activation" for f in audit(head))
    assert taxonomy.activation_kind(Sine()) is None
    with pytest.raises(ValueError, match="has no activation modules"):
        ActivationRecorder(head, functional=False)
    with pytest.raises(ValueError, match="unknown activation 'sine'; valid: selu"):
        get_spec("sine")


def test_register_refuses_a_name_twice():
    with pytest.raises(ValueError, match="'relu' exists already"):
        taxonomy.register(taxonomy.ActivationKind("relu", (Sine,)))
    with pytest.raises(ValueError, match="'other' exists already"):
        taxonomy.register(taxonomy.ActivationKind("other", (Sine,)))


@pytest.mark.parametrize(
    ("module", "family"),
    [
        (selfnorm.SELU(), "selu"),
        (nn.SELU(), "selu"),
        (nn.ReLU6(), "relu"),  # a Hardtanh subclass: the ReLU family is checked first
        (nn.Hardtanh(), "other"),
        (nn.PReLU(), "lrelu"),
        (nn.CELU(), "elu"),
        (nn.Softmax(dim=1), "other"),
    ],
)
def test_families_of_torch_modules(module, family):
    assert taxonomy.activation_family(module) == family
    assert taxonomy.is_activation(module)


def test_selu_parameters_of_both_selus():
    assert taxonomy.selu_parameters(nn.SELU()) == (ALPHA_01, LAMBDA_01)
    assert taxonomy.selu_parameters(selfnorm.SELU(2.0, 1.5)) == (2.0, 1.5)
    assert taxonomy.saturation_value(selfnorm.SELU(2.0, 1.5)) == -3.0
    assert taxonomy.selu_parameters(nn.ELU()) is None


@pytest.mark.parametrize(
    "layer",
    [nn.Linear(6, 5), nn.Conv1d(6, 5, 3), nn.Conv2d(6, 5, 3), nn.ConvTranspose2d(6, 5, 3)],
)
def test_weight_layers_units_and_fan_in_match_the_layer(layer):
    x = torch.randn(2, 6, *([7, 7] if layer.weight.dim() == 4 else [9] * (layer.weight.dim() - 2)))
    assert taxonomy.is_weight_layer(layer)
    assert taxonomy.weight_units(layer) == 5
    w = taxonomy.unit_weights(layer)
    assert w.shape == (5, taxonomy.fan_in(layer))
    # row j of unit_weights is what output unit j sums: perturbing it moves only unit j
    j = 3
    with torch.no_grad():
        before = layer(x)
        if taxonomy.is_transposed(layer):
            layer.weight[:, j] += 1.0
        else:
            layer.weight[j] += 1.0
        d = (layer(x) - before).abs()
        changed = d.reshape(d.shape[0], d.shape[1], -1).amax(-1).amax(0) > 0
    assert changed.tolist() == [k == j for k in range(5)]


def test_conv_transpose_is_initialized_with_its_fan_in():
    net = nn.Sequential(nn.ConvTranspose2d(64, 256, 3), selfnorm.SELU())
    selfnorm.init_snn_(net, torch.Generator().manual_seed(0))
    w = taxonomy.unit_weights(net[0])  # (256 units, 64 * 9 incoming weights)
    tau = float((w.double() ** 2).sum(1).mean())
    assert abs(tau - 1.0) < 0.05  # LeCun normal: E[tau] = 1 per unit
    assert all(f.kind != "weight_init" for f in audit(net, input_shape=(4, 64, 8, 8)))


def test_norm_layers():
    for m in (nn.BatchNorm1d(4), nn.LayerNorm(4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4)):
        assert taxonomy.is_norm(m)
    assert not taxonomy.is_norm(nn.Linear(2, 2))


def test_a_family_registered_for_a_subclass_of_a_builtin_takes_it():
    class CappedReLU(nn.ReLU):
        pass

    assert taxonomy.activation_family(CappedReLU()) == "relu"  # nearest known class
    taxonomy.register(taxonomy.ActivationKind("capped", (CappedReLU,)))
    try:
        assert taxonomy.activation_family(CappedReLU()) == "capped"
        assert taxonomy.activation_family(nn.ReLU()) == "relu"
    finally:
        taxonomy.unregister("capped")
    assert taxonomy.activation_family(CappedReLU()) == "relu"
