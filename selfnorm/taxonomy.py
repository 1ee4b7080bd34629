r"""What kind of layer a module is, said once: activation families, weight layers, norms.

Every part of selfnorm that asks "is this a SELU?", "which family is this activation?", "does
this layer carry weights, and what is its fan-in?" asks here: the spec registry
(:mod:`selfnorm.specs`), init (:mod:`selfnorm.init`), the audit, the recorder and its records,
and the depth prediction. An :class:`ActivationKind` holds everything known about one family:
its module types, how to build one, its proper init and dropout, whether dead units are
counted, its SELU parameters, and its mean-field moments

.. math::
    E[f(z)],\; E[f(z)^2], \qquad z \sim \mathcal N(m, s^2),

for the theory's layer-to-layer propagation (:func:`selfnorm.theory.propagate_layer`).
:func:`register` adds a family; it is then built by ``selfnorm compare``, initialized, recorded,
audited and predicted by ``selfnorm depth`` like the built-in ones.

Example:
    >>> from torch import nn
    >>> activation_family(nn.LeakyReLU(0.2)), activation_family(nn.Sigmoid())
    ('lrelu', 'other')
    >>> is_weight_layer(nn.ConvTranspose2d(3, 8, 3)), weight_units(nn.ConvTranspose2d(3, 8, 3))
    (True, 8)
    >>> float(kind("relu").moments(0.0, 1.0, None)[1])  # E[relu(z)^2] = 1/2, z ~ N(0, 1)
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from selfnorm import theory
from selfnorm.activations import SELU
from selfnorm.constants import ALPHA_01, LAMBDA_01
from selfnorm.dropout import AlphaDropout

__all__ = [
    "ALPHA_DROPOUT_TYPES",
    "DROPOUT_TYPES",
    "FUNCTION_TYPES",
    "NONELEMENTWISE_TYPES",
    "NORM_TYPES",
    "PLAIN_DROPOUT_TYPES",
    "WEIGHT_TYPES",
    "ActivationKind",
    "activation_family",
    "activation_kind",
    "activation_types",
    "fan_in",
    "is_activation",
    "is_norm",
    "is_selu",
    "is_transposed",
    "is_weight_layer",
    "kind",
    "kinds",
    "register",
    "saturation_value",
    "selu_parameters",
    "unit_weights",
    "unregister",
    "weight_units",
]

Moments = Callable[[np.ndarray, np.ndarray, "float | None"], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ActivationKind:
    r"""One activation family and everything that belongs with it.

    ``gain(param)`` is the std factor of the variance-scaling normal init
    :math:`w \sim \mathcal N(0, \text{gain}^2 / n_{in})` (``init`` names it: ``lecun_normal``
    for gain 1, ``he_normal``); ``glorot=True`` switches to
    :math:`\mathcal N(0, 2 / (n_{in} + n_{out}))`. A kind without ``make`` is recognised
    (recorded, audited) but cannot be chosen as a ``compare`` variant.
    """

    name: str
    """The family's name in specs (``lrelu:0.2``) and in records."""
    types: tuple[type[nn.Module], ...]
    """Module types of this family (a module belongs to the family of the nearest of its
    classes: ``nn.ReLU6``, a ``nn.Hardtanh``, is ``relu``; a registered subclass wins)."""
    make: Callable[[float | None], nn.Module] | None = None
    """A fresh module for a parameter (None: the default)."""
    init: str = "he_normal"
    gain: Callable[[float | None], float] = lambda _: math.sqrt(2.0)
    glorot: bool = False
    alpha_dropout: bool = False
    """Alpha dropout (keeps mean and variance) instead of plain dropout."""
    default_param: float | None = None
    param_name: str | None = None
    param_ok: Callable[[float], str | None] = lambda _: None
    """The allowed range of the parameter: None if ``param`` is allowed, else its text."""
    dead_units: bool = False
    """Count units never > 0 in a batch (the ReLU family, whose units can die)."""
    selu: Callable[[nn.Module], tuple[float, float]] | None = None
    """``(alpha, scale)`` of a module of this family (SELU only)."""
    moments: Moments | None = None
    """``(m, s2, param) -> (E f(z), E f(z)^2)``, elementwise, for :mod:`selfnorm.depth`."""
    description: str = ""


_KINDS: dict[str, ActivationKind] = {}


def register(k: ActivationKind) -> ActivationKind:
    """Add an activation family (its name must be new); returns it.

    Example:
        >>> from torch import nn
        >>> k = register(ActivationKind("softsign", (nn.Softsign,), make=lambda _: nn.Softsign()))
        >>> activation_family(nn.Softsign())
        'softsign'
        >>> unregister("softsign")
    """
    if not isinstance(k, ActivationKind):
        raise TypeError(f"register takes an ActivationKind, got {type(k).__name__}")
    if k.name in _KINDS or k.name == "other":
        raise ValueError(f"an activation family named {k.name!r} exists already; pick a new name")
    _KINDS[k.name] = k
    _cache.clear()
    return k


def unregister(name: str) -> None:
    """Remove a family added by :func:`register`."""
    del _KINDS[name]
    _cache.clear()


def kinds() -> tuple[ActivationKind, ...]:
    """Every registered family, in registration order (without ``other``)."""
    return tuple(_KINDS.values())


def kind(name: str) -> ActivationKind:
    """The family named ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    k = _OTHER if name == "other" else _KINDS.get(name)
    if k is None:
        raise ValueError(f"unknown activation family {name!r}; registered: {', '.join(_KINDS)}")
    return k


_cache: dict[type, ActivationKind | None] = {}


def activation_kind(module: nn.Module) -> ActivationKind | None:
    """The family of ``module``, or None where it is not an activation selfnorm knows."""
    t = type(module)
    if t not in _cache:  # the family of the nearest class in the module's MRO (ReLU6 -> relu)
        mro = t.__mro__
        best = None
        for k in (*_KINDS.values(), _OTHER):
            for base in k.types:
                if base in mro and (best is None or mro.index(base) < best[0]):
                    best = (mro.index(base), k)
        _cache[t] = best[1] if best is not None else None
    return _cache[t]


def activation_family(module: nn.Module) -> str:
    """The family's name of an activation module; ``other`` for any other module."""
    k = activation_kind(module)
    return k.name if k is not None else "other"


def activation_types() -> tuple[type[nn.Module], ...]:
    """Every registered activation module type (what the recorder hooks by default)."""
    return tuple(t for k in (*_KINDS.values(), _OTHER) for t in k.types)


def selu_parameters(module: nn.Module) -> tuple[float, float] | None:
    """``(alpha, scale)`` of a SELU-family module; None for other modules."""
    k = activation_kind(module)
    return k.selu(module) if k is not None and k.selu is not None else None


def is_selu(module: nn.Module) -> bool:
    """Whether ``module`` is a SELU (selfnorm's or PyTorch's, any parameters)."""
    return selu_parameters(module) is not None


def saturation_value(module: nn.Module) -> float | None:
    r"""The value :math:`\alpha' = -\lambda\alpha` a SELU module saturates to; None for others.

    Example:
        >>> round(saturation_value(nn.SELU()), 4), saturation_value(nn.ReLU())
        (-1.7581, None)
    """
    p = selu_parameters(module)
    return None if p is None else -p[0] * p[1]


FUNCTION_TYPES: dict[str, type[nn.Module]] = {
    "selu": nn.SELU, "relu": nn.ReLU, "relu6": nn.ReLU6, "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU, "celu": nn.CELU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "softsign": nn.Softsign, "mish": nn.Mish,
    "prelu": nn.PReLU, "hard_sigmoid": nn.Hardsigmoid, "hard_silu": nn.Hardswish,
    "hard_tanh": nn.Hardtanh, "log_sigmoid": nn.LogSigmoid, "tanh_shrink": nn.Tanhshrink,
    "soft_shrink": nn.Softshrink, "hard_shrink": nn.Hardshrink,
}  # fmt: skip
"""Activation functions by name (torch's ``F.leaky_relu``, Keras' ``keras.activations``
names) and the module type of the same function: a call of the function is of that module's
family (``activation_kind(FUNCTION_TYPES["leaky_relu"]())`` is ``lrelu``)."""


# -- weight layers and norms ------------------------------------------------------------------

WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
"""Layers whose weight maps inputs to units: Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d."""

ALPHA_DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    AlphaDropout, nn.AlphaDropout, nn.FeatureAlphaDropout,
)  # fmt: skip
"""Dropouts that set dropped units to the saturation value and correct mean and variance
(selfnorm's, for any fixed point, and PyTorch's)."""
PLAIN_DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)  # fmt: skip
"""Dropouts that zero dropped units and rescale by 1/(1 - p)."""
DROPOUT_TYPES = ALPHA_DROPOUT_TYPES + PLAIN_DROPOUT_TYPES

SHAPE_ONLY_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)  # fmt: skip
"""Modules that move or pool values without changing which unit made them (skipped when
looking for what a weight layer feeds)."""

NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)
"""Normalization layers (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm)."""


def is_weight_layer(module: nn.Module) -> bool:
    """Whether ``module`` is one of :data:`WEIGHT_TYPES` with a weight tensor."""
    return isinstance(module, WEIGHT_TYPES) and isinstance(
        getattr(module, "weight", None), torch.Tensor
    )


def is_transposed(module: nn.Module) -> bool:
    """Whether the weight is ``(in, out / groups, *kernel)`` (ConvTranspose) rather than
    ``(out, in / groups, *kernel)``."""
    return bool(getattr(module, "transposed", False))


def weight_units(module: nn.Module) -> int:
    """Units of a weight layer: output features or channels (per group for ConvTranspose)."""
    w = module.weight
    return int(w.shape[1] if is_transposed(module) else w.shape[0])


def unit_weights(module: nn.Module) -> torch.Tensor:
    """A weight layer's weight, detached, as ``(units, fan_in)``: row ``j`` holds unit ``j``'s
    incoming weights (for ConvTranspose, whose weight is ``(in, out / groups, *kernel)``, the
    first two dims swapped).

    Example:
        >>> unit_weights(nn.Conv2d(3, 8, 5)).shape, unit_weights(nn.ConvTranspose1d(3, 8, 5)).shape
        (torch.Size([8, 75]), torch.Size([8, 15]))
    """
    w = module.weight.detach()
    if is_transposed(module):
        w = w.transpose(0, 1)
    return w.reshape(w.shape[0], -1)


def fan_in(module: nn.Module) -> int:
    r"""Incoming weights of one unit: ``in_features``, or ``in_channels / groups`` times the
    kernel size (for ConvTranspose with stride 1 the same count; a stride spreads them)."""
    w = module.weight
    return int(w[:, 0].numel() if is_transposed(module) else w[0].numel())


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is one of :data:`NORM_TYPES`."""
    return isinstance(module, NORM_TYPES)


# -- the built-in families --------------------------------------------------------------------


def _selu_params(module: nn.Module) -> tuple[float, float]:
    if isinstance(module, SELU):
        return module.alpha, module.scale
    return ALPHA_01, LAMBDA_01  # torch.nn.SELU has the standard constants


def _lrelu_gain(slope: float | None) -> float:
    s = 0.01 if slope is None else slope
    return math.sqrt(2.0 / (1.0 + s * s))


for _k in (
    ActivationKind(
        "selu",
        (SELU, nn.SELU),
        make=lambda _: SELU(),
        init="lecun_normal",
        gain=lambda _: 1.0,
        alpha_dropout=True,
        selu=_selu_params,
        moments=lambda m, s2, _: theory.elu_moments(m, s2, LAMBDA_01, ALPHA_01),
        description="SELU + LeCun normal + alpha dropout (the SNN recipe)",
    ),
    ActivationKind(
        "relu",
        (nn.ReLU, nn.ReLU6),
        make=lambda _: nn.ReLU(),
        dead_units=True,
        moments=lambda m, s2, _: theory.piecewise_linear_moments(m, s2, 0.0),
        description="ReLU + He normal + dropout",
    ),
    ActivationKind(
        "lrelu",
        (nn.LeakyReLU, nn.PReLU, nn.RReLU),
        make=lambda s: nn.LeakyReLU(s),
        gain=_lrelu_gain,
        default_param=0.01,
        param_name="negative_slope",
        param_ok=lambda s: None if 0 <= s < 1 else "[0, 1)",
        dead_units=True,
        moments=lambda m, s2, s: theory.piecewise_linear_moments(m, s2, 0.01 if s is None else s),
        description="Leaky ReLU (lrelu:SLOPE, default 0.01) + He normal + dropout",
    ),
    ActivationKind(
        "elu",
        (nn.ELU, nn.CELU),
        make=lambda a: nn.ELU(a),
        default_param=1.0,
        param_name="alpha",
        param_ok=lambda a: None if a > 0 else "> 0",
        moments=lambda m, s2, a: theory.elu_moments(m, s2, 1.0, 1.0 if a is None else a),
        description="ELU (elu:ALPHA, default 1) + He normal + dropout",
    ),
    ActivationKind(
        "gelu",
        (nn.GELU,),
        make=lambda _: nn.GELU(),
        moments=lambda m, s2, _: theory.quadrature_moments(theory.gelu, m, s2),
        description="GELU + He normal + dropout",
    ),
    ActivationKind(
        "silu",
        (nn.SiLU,),
        make=lambda _: nn.SiLU(),
        moments=lambda m, s2, _: theory.quadrature_moments(theory.silu, m, s2),
        description="SiLU/Swish + He normal + dropout",
    ),
    ActivationKind(
        "tanh",
        (nn.Tanh,),
        make=lambda _: nn.Tanh(),
        init="glorot_normal",
        gain=lambda _: 1.0,
        glorot=True,
        moments=lambda m, s2, _: theory.quadrature_moments(np.tanh, m, s2),
        description="tanh + Glorot normal + dropout",
    ),
):
    _KINDS[_k.name] = _k

_OTHER = ActivationKind(
    "other",
    (
        nn.Sigmoid,
        nn.Softplus,
        nn.Mish,
        nn.Hardtanh,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.Softsign,
        nn.Tanhshrink,
        nn.LogSigmoid,
        nn.Softshrink,
        nn.Hardshrink,
        nn.Threshold,
    ),  # fmt: skip
)
"""Element-wise activations recognised (recorded, audited) but not offered as variants; checked
after every registered family, so a family registered for one of these types takes it."""

NONELEMENTWISE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d, nn.GLU,
)  # fmt: skip
"""Nonlinearities across units (not recorded per value; the audit treats them as activations)."""


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is a nonlinearity: a known family, or one of
    :data:`NONELEMENTWISE_TYPES`."""
    return activation_kind(module) is not None or isinstance(module, NONELEMENTWISE_TYPES)
