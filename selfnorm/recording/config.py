"""What the recorder measures and how often: :class:`RecordConfig` (a field of the experiment
config, :class:`selfnorm.config.ExperimentConfig`, and the recorder's own settings)."""

from __future__ import annotations

from dataclasses import dataclass

from selfnorm import _validate

__all__ = ["RECORD_BACKENDS", "RecordConfig"]

RECORD_BACKENDS = ("torch", "kernel")


@dataclass(frozen=True)
class RecordConfig:
    """What :class:`selfnorm.recording.ActivationRecorder` measures during training, and where
    ``selfnorm compare`` writes it.

    Example:
        >>> RecordConfig(every=10).bin_edges()[:3]
        [-4.0, -3.875, -3.75]
    """

    enabled: bool = True
    """Record activation statistics during training (``--no-record`` turns it off)."""
    every: int | None = None
    """Record every N optimizer steps (step 0, N, 2N, ...); ``--record-every N``. None (auto):
    :meth:`resolve_every`, a quarter epoch but at most 50 steps (the overhead budget). Every
    record holds every activation statistic, histogram, gradient std and the weight sums (ω, τ),
    except that dense recording (N = 1) takes ω and τ every 10th step only
    (:data:`selfnorm.recording.recorder.DENSE_WEIGHT_STEPS`; NaN on the other records)."""
    bins: int = 64
    """Histogram bins over ``range``; values outside are counted as underflow/overflow."""
    range: tuple[float, float] = (-4.0, 4.0)
    """Signed histogram range ``(low, high)``; the default suits SELU's fixed point (0, 1)."""
    tensorboard: bool = False
    """Also write TensorBoard event files to ``RUN_DIR/tensorboard/`` (``--tensorboard``)."""
    backend: str = "torch"
    """How a record is reduced: ``torch`` (torch ops, on any device; the default, compiles
    nothing) or ``kernel`` (the opt-in C++ implementation of :mod:`selfnorm.recording.kernel`
    for float32 CPU tensors: compiled on first use, needs a C++ compiler and ``pip install
    'selfnorm[kernel]'``; an error where it cannot be built). Both compute the same statistics;
    only the speed differs."""

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"record.enabled={self.enabled!r} must be true or false")
        if not isinstance(self.tensorboard, bool):
            raise ValueError(f"record.tensorboard={self.tensorboard!r} must be true or false")
        if self.tensorboard and not self.enabled:
            raise ValueError(
                "record.tensorboard=true writes the recorded statistics, but record.enabled="
                "false records none; drop --no-record or --tensorboard"
            )
        if self.backend not in RECORD_BACKENDS:
            raise ValueError(
                f"record.backend={self.backend!r} must be one of {', '.join(RECORD_BACKENDS)}"
            )
        if self.every is not None:
            _validate.positive_int("record.every", self.every)
        _validate.positive_int("record.bins", self.bins)
        rng = tuple(self.range)
        if len(rng) != 2:
            raise ValueError(f"record.range={self.range!r} must be two numbers (low, high)")
        lo, hi = (_validate.finite("record.range", v) for v in rng)
        if not lo < hi:
            raise ValueError(f"record.range=({lo}, {hi}) needs low < high, e.g. (-4, 4)")
        object.__setattr__(self, "range", (lo, hi))

    def resolve_every(self, steps_per_epoch: int) -> int:
        """``every``, or for None: ``min(50, max(1, steps_per_epoch // 4))``: four records per
        epoch on small data (digits: every 2 of its 11 steps), every 50 steps on MNIST.

        Example:
            >>> RecordConfig().resolve_every(11), RecordConfig().resolve_every(550)
            (2, 50)
        """
        if self.every is not None:
            return self.every
        return min(50, max(1, steps_per_epoch // 4))

    def bin_edges(self) -> list[float]:
        """The ``bins + 1`` edges, evenly spaced over ``range``."""
        lo, hi = self.range
        return [lo + (hi - lo) * i / self.bins for i in range(self.bins + 1)]
