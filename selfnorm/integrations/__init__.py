"""Inside the user's own training: :class:`~selfnorm.integrations.run.TrainingRun` (any loop),
the Lightning callback (:mod:`selfnorm.integrations.lightning`, extra ``lightning``) and the
Keras 3 callback (:mod:`selfnorm.integrations.keras`, extra ``keras``, torch backend). Each
writes a run directory that ``selfnorm report`` turns into the usual report."""

from selfnorm.integrations.run import TrainingRun

__all__ = ["TrainingRun"]
