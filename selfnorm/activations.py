"""Activation modules (SELU with any (alpha, scale)) and the registry of activation specs, each
activation paired with its proper weight init and dropout."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from selfnorm import _validate
from selfnorm import functional as F
from selfnorm.constants import ALPHA_01, LAMBDA_01
from selfnorm.dropout import AlphaDropout, FeatureAlphaDropout
from selfnorm.init import INIT_SCHEMES, glorot_normal_, variance_scaling_normal_

__all__ = ["FAMILIES", "SELU", "ActivationFamily", "ActivationSpec", "get_spec", "spec_names"]


class SELU(nn.Module):
    r"""Scaled exponential linear unit.

    .. math::
        \operatorname{selu}(x) = \lambda \begin{cases} x & x > 0 \\
        \alpha (e^x - 1) & x \le 0 \end{cases}

    With the defaults :math:`(\alpha_{01}, \lambda_{01})` the fixed point of the mean/variance
    mapping is (0, 1); :func:`selfnorm.theory.solve_selu_parameters` gives the parameters for
    other fixed points.

    Args:
        alpha: :math:`\alpha > 0`. Default :math:`\alpha_{01} \approx 1.6733`.
        scale: :math:`\lambda > 0`. Default :math:`\lambda_{01} \approx 1.0507`.

    Shape:
        Input any shape, output the same shape.

    Example:
        >>> import torch
        >>> SELU()
        SELU(alpha=1.6733, scale=1.0507)
        >>> SELU()(torch.tensor([1.0]))
        tensor([1.0507])

    Reference: Klambauer et al., Self-Normalizing Neural Networks, NIPS 2017.
    """

    def __init__(self, alpha: float = ALPHA_01, scale: float = LAMBDA_01) -> None:
        super().__init__()
        self.alpha = _validate.positive("alpha", alpha, "SELU needs alpha > 0")
        self.scale = _validate.positive("scale", scale, "SELU needs scale (lambda) > 0")

    @property
    def saturation(self) -> float:
        """The value SELU saturates to for large negative inputs: -scale * alpha."""
        return -self.scale * self.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.selu(x, self.alpha, self.scale)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4f}, scale={self.scale:.4f}"


# ---------------------------------------------------------------------------------------------
# The registry of activation specs: each activation paired with its proper init and dropout.
# ---------------------------------------------------------------------------------------------

WeightInit = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


@dataclass(frozen=True)
class ActivationFamily:
    """One base activation and what belongs with it.

    ``gain(param)`` is the standard deviation factor of the variance-scaling normal init
    :math:`w \\sim \\mathcal N(0, \\text{gain}^2 / n_{in})`; ``glorot`` switches to
    :math:`\\mathcal N(0, 2 / (n_{in} + n_{out}))` (tanh's customary init).
    """

    name: str
    make: Callable[[float | None], nn.Module]
    init_name: str
    gain: Callable[[float | None], float]
    alpha_dropout: bool = False
    default_param: float | None = None
    param_name: str | None = None
    glorot: bool = False
    description: str = ""


def _lrelu_gain(slope: float | None) -> float:
    s = 0.01 if slope is None else slope
    return math.sqrt(2.0 / (1.0 + s * s))


FAMILIES: dict[str, ActivationFamily] = {
    f.name: f
    for f in (
        ActivationFamily(
            "selu",
            lambda _: SELU(),
            "lecun_normal",
            lambda _: 1.0,
            alpha_dropout=True,
            description="SELU + LeCun normal + alpha dropout (the SNN recipe)",
        ),
        ActivationFamily(
            "relu",
            lambda _: nn.ReLU(),
            "he_normal",
            lambda _: math.sqrt(2.0),
            description="ReLU + He normal + dropout",
        ),
        ActivationFamily(
            "lrelu",
            lambda s: nn.LeakyReLU(s),
            "he_normal",
            _lrelu_gain,
            default_param=0.01,
            param_name="negative_slope",
            description="Leaky ReLU (lrelu:SLOPE, default 0.01) + He normal + dropout",
        ),
        ActivationFamily(
            "elu",
            lambda a: nn.ELU(a),
            "he_normal",
            lambda _: math.sqrt(2.0),
            default_param=1.0,
            param_name="alpha",
            description="ELU (elu:ALPHA, default 1) + He normal + dropout",
        ),
        ActivationFamily(
            "gelu",
            lambda _: nn.GELU(),
            "he_normal",
            lambda _: math.sqrt(2.0),
            description="GELU + He normal + dropout",
        ),
        ActivationFamily(
            "silu",
            lambda _: nn.SiLU(),
            "he_normal",
            lambda _: math.sqrt(2.0),
            description="SiLU/Swish + He normal + dropout",
        ),
        ActivationFamily(
            "tanh",
            lambda _: nn.Tanh(),
            "glorot_normal",
            lambda _: 1.0,
            glorot=True,
            description="tanh + Glorot normal + dropout",
        ),
    )
}

NORMS = {"bn": "BatchNorm", "ln": "LayerNorm"}


@dataclass(frozen=True)
class ActivationSpec:
    """A resolved variant: activation + its init + its dropout (+ optional normalization).

    Build modules with :meth:`activation`, :meth:`dropout`, :meth:`feature_dropout`; initialize
    weights with :meth:`init_weight_`. Every call returns a fresh module, so each layer has its
    own named module and hooks are keyed by layer name.

    Example:
        >>> spec = get_spec("lrelu:0.2+bn")
        >>> spec.name, spec.norm, spec.activation()
        ('lrelu:0.2+bn', 'bn', LeakyReLU(negative_slope=0.2))
        >>> get_spec("selu").dropout(0.1)
        AlphaDropout(p=0.1, mean=0.0, var=1.0, saturation=-1.7581)
    """

    name: str
    family: ActivationFamily
    param: float | None = None
    norm: str | None = None
    init: str | None = None
    """A forced init scheme from :data:`selfnorm.init.INIT_SCHEMES`; None: the proper one."""

    def activation(self) -> nn.Module:
        return self.family.make(self.param)

    def dropout(self, p: float) -> nn.Module:
        """Element-wise dropout of the proper kind (alpha dropout for SELU)."""
        return AlphaDropout(p) if self.family.alpha_dropout else nn.Dropout(p)

    def feature_dropout(self, p: float) -> nn.Module:
        """Channel-wise dropout of the proper kind, for (N, C, H, W) feature maps."""
        return FeatureAlphaDropout(p) if self.family.alpha_dropout else nn.Dropout2d(p)

    def init_weight_(
        self, weight: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Initialize one Linear/Conv weight in place with this activation's proper init (or the
        forced ``init``)."""
        if self.init is not None:
            return INIT_SCHEMES[self.init].weight(weight, generator)
        if self.family.glorot:
            return glorot_normal_(weight, generator)
        return variance_scaling_normal_(weight, self.family.gain(self.param), generator)

    @torch.no_grad()
    def init_bias_(
        self, bias: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Zero, or N(0, std^2) for a forced init scheme with biases (``seed-tf``)."""
        std = INIT_SCHEMES[self.init].bias_std if self.init is not None else 0.0
        return bias.normal_(0.0, std, generator=generator) if std > 0 else bias.zero_()

    @property
    def init_name(self) -> str:
        return self.init if self.init is not None else self.family.init_name

    @property
    def dropout_name(self) -> str:
        return "alpha_dropout" if self.family.alpha_dropout else "dropout"


def spec_names() -> list[str]:
    """Every base name; each also takes ``+bn`` or ``+ln``, and ``:PARAM`` where it has one."""
    return list(FAMILIES)


def get_spec(name: str) -> ActivationSpec:
    """Resolve ``<act>[:<param>][@<init>][+bn|+ln]`` (e.g. ``selu``, ``lrelu:0.2``, ``relu+bn``,
    ``selu@glorot``: SELU forced to Glorot init, to see what the wrong init does).

    Raises:
        ValueError: unknown name (the message lists the valid ones) or a bad parameter.
    """
    text = name.strip().lower()
    base, _, norm = text.partition("+")
    if norm and norm not in NORMS:
        raise ValueError(
            f"unknown normalization '+{norm}' in activation {name!r}; use '+bn' (BatchNorm) or "
            "'+ln' (LayerNorm), e.g. relu+bn"
        )
    base, _, init = base.partition("@")
    if init and init not in INIT_SCHEMES:
        raise ValueError(
            f"unknown init '@{init}' in activation {name!r}; valid: {', '.join(INIT_SCHEMES)} "
            "(e.g. selu@glorot), or none for the activation's proper init"
        )
    base, _, param_text = base.partition(":")
    family = FAMILIES.get(base)
    if family is None:
        raise ValueError(
            f"unknown activation {name!r}; valid: {', '.join(FAMILIES)} "
            "(each optionally with +bn or +ln, e.g. relu+bn; lrelu:0.2 sets the slope; "
            "@INIT forces an init, e.g. selu@glorot)"
        )
    param = family.default_param
    if param_text:
        if family.param_name is None:
            raise ValueError(f"activation {base!r} takes no parameter, got {name!r}")
        try:
            param = float(param_text)
        except ValueError:
            raise ValueError(
                f"bad {family.param_name} {param_text!r} in {name!r}; pass a number, "
                f"e.g. {base}:0.2"
            ) from None
        if (
            not math.isfinite(param)
            or (base == "lrelu" and not 0 <= param < 1)
            or (base == "elu" and param <= 0)
        ):
            allowed = "[0, 1)" if base == "lrelu" else "> 0"
            raise ValueError(f"{family.param_name}={param_text} in {name!r} must be {allowed}")
    return ActivationSpec(
        name=text, family=family, param=param, norm=norm or None, init=init or None
    )
