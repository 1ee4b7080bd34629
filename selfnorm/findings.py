"""What the audit reports: :class:`Finding`, its kinds and severities (a stable interface).

Example:
    >>> Finding("info", MODEL, "no_selu", {"selu_modules": 0}, {"selu_modules": ">= 1"}, "x").kind
    'no_selu'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = ["INPUT", "KINDS", "MODEL", "SEVERITIES", "Finding", "Severity", "Value"]

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")

KINDS: tuple[str, ...] = (
    "weight_init",
    "bias_nonzero",
    "dropout_with_selu",
    "alpha_dropout_without_selu",
    "alpha_dropout_mismatch",
    "dropout_rate_looks_like_keep_prob",
    "norm_with_selu",
    "output_activation",
    "inplace_op",
    "no_selu",
    "activation_drift",
    "input_not_standardized",
    "dynamic_check_skipped",
    "inert_dropout",
    "functional_activation",
)
"""Every ``Finding.kind`` the audit emits (a stable interface, like the ``--json`` keys)."""

MODEL = "<model>"
"""``Finding.layer`` of findings about the whole model (and of a root module that is a leaf)."""
INPUT = "<input>"
"""``Finding.layer`` of findings about the example input."""

Value = float | int | str | bool | list


@dataclass(frozen=True)
class Finding:
    """One problem found by :func:`audit`.

    ``measured`` and ``expected`` map short names to plain values (numbers, strings, and
    ``[low, high]`` lists for ranges), so :meth:`to_dict` is JSON as is.

    Example:
        >>> f = Finding("error", "fc1", "bias_nonzero", {"bias_rms": 1.0}, {"bias_rms": 0.0},
        ...             "torch.nn.init.zeros_(layer.bias)")
        >>> f.to_dict()["measured"]
        {'bias_rms': 1.0}
    """

    severity: Severity
    """``"error"`` (the network does not self-normalize; exit code 1), ``"warning"`` or
    ``"info"``."""
    layer: str
    """Module name as in ``named_modules()``, or ``<input>`` / ``<model>``."""
    kind: str
    """Short id, one of :data:`KINDS`."""
    measured: Mapping[str, Value] = field(hash=False)
    """What the audit measured (read-only)."""
    expected: Mapping[str, Value] = field(hash=False)
    """What a self-normalizing network has."""
    fix: str
    """The fix, in one line."""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity={self.severity!r}; use one of {SEVERITIES}")
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}; use one of {KINDS}")
        object.__setattr__(self, "measured", MappingProxyType(dict(self.measured)))
        object.__setattr__(self, "expected", MappingProxyType(dict(self.expected)))

    def to_dict(self) -> dict:
        """``{"severity", "layer", "kind", "measured", "expected", "fix"}``, JSON-ready
        (non-finite numbers become the strings ``"nan"``, ``"inf"``, ``"-inf"``)."""
        return {
            "severity": self.severity,
            "layer": self.layer,
            "kind": self.kind,
            "measured": {k: _json_value(v) for k, v in self.measured.items()},
            "expected": {k: _json_value(v) for k, v in self.expected.items()},
            "fix": self.fix,
        }


def _json_value(v: Value) -> Value:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    return v
