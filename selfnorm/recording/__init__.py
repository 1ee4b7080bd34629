"""Measuring inside a network: :class:`ActivationRecorder` (the schedule, the layer layout and
the hooks) and the pure reductions it calls (:mod:`selfnorm.recording.reduce`, torch ops; the
opt-in C++ implementation :mod:`selfnorm.recording.kernel`). Records are plain arrays
(:class:`selfnorm.records.Records`), read back without this package."""

from selfnorm.recording.recorder import SATURATION_RTOL, ActivationRecorder

__all__ = ["SATURATION_RTOL", "ActivationRecorder"]
