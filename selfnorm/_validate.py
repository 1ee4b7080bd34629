"""Argument checks that raise errors naming the value, the allowed range and the fix."""

from __future__ import annotations

import math


def finite(name: str, value: float) -> float:
    """Return ``float(value)`` or raise ``ValueError`` if it is NaN or infinite."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}={value!r} is not a finite number; pass a finite float")
    return v


def positive(name: str, value: float, fix: str = "") -> float:
    """Return ``float(value)`` or raise ``ValueError`` unless it is finite and > 0."""
    v = finite(name, value)
    if v <= 0:
        raise ValueError(f"{name}={value!r} must be > 0{'; ' + fix if fix else ''}")
    return v


def drop_rate(name: str, value: float) -> float:
    """Return a drop rate as float, or raise ``ValueError`` unless it lies in [0, 1)."""
    v = finite(name, value)
    if not 0.0 <= v < 1.0:
        hint = ""
        if v >= 1.0:
            hint = " (1 would drop every unit)"
        raise ValueError(
            f"{name}={value!r} is outside [0, 1){hint}; it is the probability of dropping a "
            "unit, so pass e.g. 0.05 or 0.1 (a keep probability q means rate 1 - q)"
        )
    return v


def positive_int(name: str, value: int) -> int:
    """Return ``value`` or raise ``ValueError`` unless it is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")
    return value
