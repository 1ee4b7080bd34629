import math

import pytest
import torch
from torch import nn

from selfnorm import SELU, AlphaDropout, FeatureAlphaDropout
from selfnorm.models import build_cnn, build_mlp, layer_widths
from selfnorm.specs import get_spec, spec_names


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_spec("swishy")
    for name in spec_names():
        assert name in str(err.value)
    with pytest.raises(ValueError, match=r"\+bn"):
        get_spec("relu+gn")
    with pytest.raises(ValueError, match=r"negative_slope=1.5 .* must be \[0, 1\)"):
        get_spec("lrelu:1.5")
    with pytest.raises(ValueError, match="takes no parameter"):
        get_spec("relu:0.1")


@pytest.mark.parametrize(
    ("name", "act", "drop", "gain"),
    [
        ("selu", SELU, AlphaDropout, 1.0),
        ("relu", nn.ReLU, nn.Dropout, math.sqrt(2)),
        ("lrelu", nn.LeakyReLU, nn.Dropout, math.sqrt(2 / (1 + 0.01**2))),
        ("lrelu:0.3", nn.LeakyReLU, nn.Dropout, math.sqrt(2 / (1 + 0.09))),
        ("elu", nn.ELU, nn.Dropout, math.sqrt(2)),
        ("gelu", nn.GELU, nn.Dropout, math.sqrt(2)),
        ("silu", nn.SiLU, nn.Dropout, math.sqrt(2)),
    ],
)
def test_each_spec_pairs_activation_init_and_dropout(name, act, drop, gain):
    net = build_mlp(256, 10, 3, 400, name, dropout=0.1, generator=torch.Generator().manual_seed(0))
    acts = [m for n, m in net.named_children() if n.startswith("act")]
    drops = [m for n, m in net.named_children() if n.startswith("drop")]
    assert len(acts) == 3 and all(type(a) is act for a in acts)
    assert len({id(a) for a in acts}) == 3  # a fresh module per layer
    assert len(drops) == 3 and all(type(d) is drop and d.p == 0.1 for d in drops)
    w = net.fc2.weight.detach()
    # std of 400*400 normals: relative se of the variance ~ sqrt(2/n)
    assert abs(float(w.var()) * 400 / gain**2 - 1) < 5 * math.sqrt(2 / w.numel())
    assert float(net.fc2.bias.detach().abs().max()) == 0.0
    if name.startswith("lrelu:"):
        assert acts[0].negative_slope == 0.3


def test_tanh_uses_glorot():
    net = build_mlp(300, 10, 1, 100, "tanh", generator=torch.Generator().manual_seed(0))
    assert abs(float(net.fc1.weight.detach().var()) - 2 / 400) < 5 * (2 / 400) * math.sqrt(
        2 / 30000
    )


@pytest.mark.parametrize(("suffix", "cls"), [("+bn", nn.BatchNorm1d), ("+ln", nn.LayerNorm)])
def test_normalization_variants(suffix, cls):
    net = build_mlp(20, 3, 2, 16, "relu" + suffix)
    names = [n for n, _ in net.named_children()]
    norm = suffix[1:]
    assert names == ["flatten", "fc1", f"{norm}1", "act1", "fc2", f"{norm}2", "act2", "out"]
    assert isinstance(getattr(net, f"{norm}1"), cls)


def test_conic_shape_and_forward():
    assert layer_widths(3, 64, 8, "conic") == [64, 32, 16]
    net = build_mlp(64, 8, 3, 64, "selu", shape="conic")
    assert [net.fc1.out_features, net.fc2.out_features, net.fc3.out_features] == [64, 32, 16]
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 8)


def test_same_seed_same_model():
    a = build_mlp(10, 2, 2, 8, "selu", generator=torch.Generator().manual_seed(4))
    b = build_mlp(10, 2, 2, 8, "selu", generator=torch.Generator().manual_seed(4))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cnn_uses_channel_dropout_of_the_proper_kind():
    net = build_cnn((3, 16, 16), 10, "selu", channels=(8, 16), dropout=0.1)
    assert isinstance(net.drop1, FeatureAlphaDropout)
    assert isinstance(build_cnn((3, 16, 16), 10, "relu", (8,), 0.1).drop1, nn.Dropout2d)
    assert isinstance(build_cnn((3, 16, 16), 10, "relu+ln", (8,)).ln1, nn.GroupNorm)
    with pytest.raises(ValueError, match="needs input_shape"):
        build_cnn((64,), 10, "selu")


@pytest.mark.parametrize(("kw", "match"), [({"depth": 0}, "depth=0"), ({"dropout": 1.0}, "0, 1")])
def test_bad_sizes(kw, match):
    args = {"in_features": 4, "out_features": 2, "depth": 2, "width": 8, "spec": "selu"} | kw
    with pytest.raises(ValueError, match=match):
        build_mlp(**args)


def test_forced_init_schemes():
    gen = torch.Generator().manual_seed(0)
    net = build_mlp(300, 10, 2, 500, "selu@glorot", generator=gen)
    w = net.fc2.weight.detach()
    assert abs(float(w.var()) / (2 / 1000) - 1) < 5 * math.sqrt(2 / w.numel())
    assert float(net.fc2.bias.detach().abs().max()) == 0.0
    bugged = build_mlp(300, 10, 2, 500, "selu@seed-tf", dropout=0.7, generator=gen)
    b = bugged.fc1.bias.detach()
    assert abs(float(b.std()) - 1) < 0.15  # N(0, 1) biases, 500 of them
    assert get_spec("relu@lecun+bn").init_name == "lecun"
    assert get_spec("selu").init_name == "lecun_normal"
    with pytest.raises(ValueError, match="unknown init '@xavier'"):
        get_spec("selu@xavier")
