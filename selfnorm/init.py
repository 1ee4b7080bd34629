r"""Weight initialization: LeCun normal for SNNs, and the variance-scaling family it belongs to.

Self-normalization needs, for every unit, :math:`\omega = \sum_i w_i \approx 0` and
:math:`\tau = \sum_i w_i^2 \approx 1`. Drawing :math:`w \sim \mathcal{N}(0, 1/n_{in})` gives
exactly :math:`E[\omega] = 0` and :math:`E[\tau] = 1`.

Warning:
    ``torch.nn.init.calculate_gain('selu')`` returns 3/4. Using it (e.g. in
    ``kaiming_normal_(nonlinearity='selu')`` or ``xavier_*_(gain=...)``) gives
    :math:`\tau = 9/16` per layer, and the activations' variance shrinks layer by layer instead of
    staying at 1. PyTorch's default ``nn.Linear`` init (uniform, :math:`\tau = 1/3`) collapses even
    faster. Use :func:`lecun_normal_` / :func:`init_snn_`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from selfnorm import taxonomy

__all__ = [
    "INIT_SCHEMES",
    "InitScheme",
    "fan_in",
    "glorot_normal_",
    "glorot_uniform_",
    "init_model_",
    "init_snn_",
    "lecun_normal_",
    "torch_default_",
    "variance_scaling_normal_",
]


def fan_in(tensor: torch.Tensor) -> int:
    """Number of inputs feeding one output unit: ``in_features`` or ``in_channels x kernel``.

    Example:
        >>> import torch
        >>> fan_in(torch.empty(64, 3, 5, 5))
        75
    """
    if tensor.dim() < 2:
        raise ValueError(
            f"fan_in needs a weight with >= 2 dims (out, in, *kernel), got shape "
            f"{tuple(tensor.shape)}; biases have no fan-in"
        )
    return math.prod(tensor.shape[1:])


@torch.no_grad()
def variance_scaling_normal_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Fill ``tensor`` in place from :math:`\mathcal{N}(0, \text{gain}^2 / n_{in})`.

    gain 1 is LeCun normal (SELU, tanh), :math:`\sqrt2` is He normal (ReLU).
    """
    std = gain / math.sqrt(fan_in(tensor))
    return tensor.normal_(0.0, std, generator=generator)


def lecun_normal_(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""LeCun normal init in place: :math:`w \sim \mathcal{N}(0, 1/n_{in})`.

    :math:`n_{in}` is ``in_features`` for a Linear weight and ``in_channels/groups x kernel
    size`` for a Conv weight.

    Example:
        >>> import torch
        >>> w = lecun_normal_(torch.empty(256, 400), torch.Generator().manual_seed(0))
        >>> round(float(w.var() * 400), 1)
        1.0
    """
    return variance_scaling_normal_(tensor, 1.0, generator)


@torch.no_grad()
def init_model_(
    model: nn.Module,
    weight_init: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor],
    generator: torch.Generator | None = None,
    bias_init: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
) -> nn.Module:
    """Apply ``weight_init`` to every Linear/Conv weight of ``model``, then ``bias_init`` (default:
    zeros) to its bias.

    Modules are visited in ``named_modules()`` order, weight before bias, so one seeded generator
    gives the same weights every time.
    """
    for module in model.modules():
        if taxonomy.is_weight_layer(module):
            # ConvTranspose: (in, out / groups, *kernel); its transpose puts the units first
            w = module.weight.transpose(0, 1) if taxonomy.is_transposed(module) else module.weight
            weight_init(w, generator)
            if module.bias is not None:
                if bias_init is None:
                    module.bias.zero_()
                else:
                    bias_init(module.bias, generator)
    return model


def init_snn_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    r"""Initialize any model for self-normalization: LeCun normal weights, zero biases.

    Every weight layer of :mod:`selfnorm.taxonomy` (Linear, Conv, ConvTranspose) is initialized;
    other modules are left alone.

    Warning:
        Not ``calculate_gain('selu')`` (= 3/4): see the module docstring.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = init_snn_(nn.Sequential(nn.Linear(8, 4), nn.SELU(), nn.Linear(4, 2)))
        >>> net[0].bias.detach().abs().sum().item()
        0.0
    """
    return init_model_(model, lecun_normal_, generator)


@torch.no_grad()
def glorot_normal_(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Glorot/Xavier normal: :math:`\mathcal N(0, 2 / (n_{in} + n_{out}))` (tanh's customary
    init). For SELU it is *not* self-normalizing."""
    fan_out = tensor.shape[0] * math.prod(tensor.shape[2:])
    std = math.sqrt(2.0 / (fan_in(tensor) + fan_out))
    return tensor.normal_(0.0, std, generator=generator)


@torch.no_grad()
def glorot_uniform_(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Glorot/Xavier uniform: :math:`U(-b, b)` with :math:`b = \sqrt{6 / (n_{in} + n_{out})}`,
    the same variance :math:`2 / (n_{in} + n_{out})` as :func:`glorot_normal_`. Keras' default
    for Dense layers (``glorot_uniform``) and TensorFlow 1's ``xavier_initializer()``: what the
    seed examples drew when they set no initializer.

    Example:
        >>> w = glorot_uniform_(torch.empty(512, 784), torch.Generator().manual_seed(0))
        >>> bool(w.abs().max() <= (6 / (784 + 512)) ** 0.5)
        True
    """
    fan_out = tensor.shape[0] * math.prod(tensor.shape[2:])
    bound = math.sqrt(6.0 / (fan_in(tensor) + fan_out))
    return tensor.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def torch_default_(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""What ``nn.Linear``/``nn.Conv*d`` do by default: :math:`U(-1/\sqrt{n_{in}},
    1/\sqrt{n_{in}})`, i.e. :math:`\tau = 1/3` per unit."""
    bound = 1.0 / math.sqrt(fan_in(tensor))
    return tensor.uniform_(-bound, bound, generator=generator)


@dataclass(frozen=True)
class InitScheme:
    """A named weight init plus the standard deviation of the biases (0: zero biases)."""

    name: str
    weight: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
    bias_std: float = 0.0
    description: str = ""


INIT_SCHEMES: dict[str, InitScheme] = {
    s.name: s
    for s in (
        InitScheme("lecun", lecun_normal_, description="N(0, 1/fan_in): the SNN init"),
        InitScheme(
            "he",
            lambda w, g: variance_scaling_normal_(w, math.sqrt(2.0), g),
            description="N(0, 2/fan_in): ReLU's",
        ),
        InitScheme("glorot", glorot_normal_, description="N(0, 2/(fan_in+fan_out))"),
        InitScheme(
            "glorot-uniform",
            glorot_uniform_,
            description="U(-b, b), b = sqrt(6/(fan_in+fan_out)): Keras' default",
        ),
        InitScheme("torch", torch_default_, description="nn.Linear's default, tau = 1/3"),
        InitScheme(
            "selu-gain",
            lambda w, g: variance_scaling_normal_(w, 0.75, g),
            description="kaiming_normal_(nonlinearity='selu'): gain 3/4, tau = 9/16",
        ),
        InitScheme(
            "seed-tf",
            glorot_uniform_,
            bias_std=1.0,
            description="the seed TensorFlow example: Glorot uniform weights (its "
            "xavier_initializer()), N(0, 1) biases",
        ),
    )
}
"""Inits a variant can be forced to with ``<act>@<init>`` (e.g. ``selu@glorot``), to show what
the wrong init does."""
