"""Activation specs: a family of :mod:`selfnorm.taxonomy` resolved with its parameter, its proper
init and dropout, and an optional normalization; what ``--activations`` names.

``[LABEL=]<act>[:PARAM][@INIT][+bn|+ln]``: ``selu``, ``lrelu:0.2``, ``relu+bn``, ``selu@glorot``
(SELU forced to Glorot init, to see what the wrong init does). A ``LABEL=`` prefix names a
variant, so that one spec can appear twice in a comparison with different settings (``a=selu``
and ``b=selu`` with two drop rates); the label changes nothing about the network. The families
are those registered in the taxonomy that can be built (``make``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from selfnorm import taxonomy
from selfnorm.dropout import AlphaDropout, FeatureAlphaDropout
from selfnorm.init import INIT_SCHEMES, glorot_normal_, variance_scaling_normal_
from selfnorm.taxonomy import ActivationKind

__all__ = ["NORMS", "ActivationSpec", "get_spec", "spec_names", "split_label"]

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
    family: ActivationKind
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
        return self.init if self.init is not None else self.family.init

    @property
    def dropout_name(self) -> str:
        return "alpha_dropout" if self.family.alpha_dropout else "dropout"

    @property
    def feature_dropout_name(self) -> str:
        """What :meth:`feature_dropout` makes, in words."""
        return "feature_alpha_dropout" if self.family.alpha_dropout else "dropout2d"

    def moments(self, m, s2):
        """Mean-field moments of this activation (:attr:`ActivationKind.moments`)."""
        if self.family.moments is None:
            raise ValueError(f"activation {self.name!r} has no mean-field moments registered")
        return self.family.moments(m, s2, self.param)


def spec_names() -> list[str]:
    """Every base name; each also takes ``+bn`` or ``+ln``, and ``:PARAM`` where it has one."""
    return [k.name for k in taxonomy.kinds() if k.make is not None]


_LABEL = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def split_label(name: str) -> tuple[str | None, str]:
    """A variant name's label and its spec: ``LABEL=SPEC`` -> (LABEL, SPEC); a plain spec has
    no label.

    Example:
        >>> split_label("written=selu@seed-tf"), split_label("relu+bn")
        (('written', 'selu@seed-tf'), (None, 'relu+bn'))
    """
    text = name.strip().lower()
    label, sep, spec = text.rpartition("=")
    if not sep:
        return None, text
    if not _LABEL.fullmatch(label):
        raise ValueError(
            f"variant label {label!r} in {name!r}: use letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit), e.g. written=selu@seed-tf"
        )
    return label, spec


def get_spec(name: str) -> ActivationSpec:
    """Resolve ``[LABEL=]<act>[:<param>][@<init>][+bn|+ln]`` (e.g. ``selu``, ``lrelu:0.2``,
    ``relu+bn``, ``selu@glorot``: SELU forced to Glorot init, to see what the wrong init does;
    ``corrected=selu``: SELU under the label ``corrected``). The spec's ``name`` is without the
    label.

    Raises:
        ValueError: unknown name (the message lists the valid ones), a bad parameter or label.

    Example:
        >>> get_spec("corrected=selu").name, get_spec("corrected=selu").init_name
        ('selu', 'lecun_normal')
    """
    _, text = split_label(name)
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
    names = spec_names()
    if base not in names:
        raise ValueError(
            f"unknown activation {name!r}; valid: {', '.join(names)} "
            "(each optionally with +bn or +ln, e.g. relu+bn; lrelu:0.2 sets the slope; "
            "@INIT forces an init, e.g. selu@glorot)"
        )
    family = taxonomy.kind(base)
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
        allowed = "a finite number" if not math.isfinite(param) else family.param_ok(param)
        if allowed is not None:
            raise ValueError(f"{family.param_name}={param_text} in {name!r} must be {allowed}")
    return ActivationSpec(
        name=text, family=family, param=param, norm=norm or None, init=init or None
    )
