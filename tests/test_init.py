import math

import torch
from torch import nn

from selfnorm import SELU, init_snn_, lecun_normal_
from selfnorm.init import fan_in


def test_lecun_normal_variance_for_linear_and_conv():
    g = torch.Generator().manual_seed(0)
    w = lecun_normal_(torch.empty(512, 300), g)
    n = w.numel()
    # sample variance of n normals: relative se = sqrt(2/n)
    assert abs(float(w.var()) * 300 - 1) < 5 * math.sqrt(2 / n)
    c = lecun_normal_(torch.empty(256, 16, 3, 3), g)
    assert fan_in(c) == 16 * 9
    assert abs(float(c.var()) * 144 - 1) < 5 * math.sqrt(2 / c.numel())


def test_init_snn_covers_every_linear_and_conv_and_zeroes_biases():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), SELU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    init_snn_(net, torch.Generator().manual_seed(0))
    for layer in (net[0], net[3]):
        assert float(layer.bias.detach().abs().max()) == 0.0
    assert abs(float(net[3].weight.detach().var()) * 7200 - 1) < 0.05


def test_same_generator_seed_same_weights():
    def build():
        return init_snn_(nn.Linear(10, 10), torch.Generator().manual_seed(3))

    assert torch.equal(build().weight, build().weight)


def _deep_selu_stack(depth, width):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), SELU()]
    return nn.Sequential(*layers)


@torch.no_grad()
def test_deep_selu_stack_self_normalizes_only_with_lecun_init():
    torch.manual_seed(0)
    x = torch.randn(4096, 512)
    snn = init_snn_(_deep_selu_stack(32, 512), torch.Generator().manual_seed(1))
    y = snn(x)
    assert abs(float(y.mean())) < 0.1
    assert 0.85 <= float(y.var()) <= 1.15
    # The trap: PyTorch's default Linear init (uniform, tau = 1/3) makes the variance collapse.
    torch.manual_seed(1)
    default = _deep_selu_stack(32, 512)
    assert float(default(x).var()) < 0.1


def test_glorot_uniform_is_torchs_xavier_uniform_and_the_seed_tf_scheme_uses_it():
    from selfnorm.init import INIT_SCHEMES, glorot_uniform_

    for shape in ((512, 784), (16, 3, 5, 5)):
        ours = glorot_uniform_(torch.empty(shape), torch.Generator().manual_seed(3))
        ref = nn.init.xavier_uniform_(
            torch.empty(shape), generator=torch.Generator().manual_seed(3)
        )
        assert torch.equal(ours, ref)
    w = INIT_SCHEMES["seed-tf"].weight(torch.empty(512, 784), torch.Generator().manual_seed(0))
    bound = math.sqrt(6 / (784 + 512))  # TF 1's xavier_initializer(): uniform by default
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.999 * bound
    assert INIT_SCHEMES["seed-tf"].bias_std == 1.0
