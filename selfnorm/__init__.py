"""selfnorm: Self-Normalizing Neural Networks (Klambauer et al., NIPS 2017) done right.

The layout, in the direction imports point:

* building blocks: :mod:`~selfnorm.constants`, :mod:`~selfnorm.functional`,
  :mod:`~selfnorm.activations`, :mod:`~selfnorm.dropout`, :mod:`~selfnorm.theory`,
  :mod:`~selfnorm.taxonomy` (what kind of layer a module is, said once), :mod:`~selfnorm.init`,
  :mod:`~selfnorm.specs`, :mod:`~selfnorm.linear`, :mod:`~selfnorm.models`;
* measuring: :mod:`selfnorm.recording` (recorder, pure reductions, the opt-in C++ kernel),
  :mod:`~selfnorm.records` (the stored format), :mod:`~selfnorm.sinks`,
  :mod:`selfnorm.integrations` (a run directory for any training; the Lightning and Keras 3
  callbacks);
* experiments: :mod:`~selfnorm.config`, :mod:`~selfnorm.data`, :mod:`~selfnorm.training`,
  :mod:`~selfnorm.storage` (with :mod:`~selfnorm.locking`, :mod:`~selfnorm.interrupts`,
  :mod:`~selfnorm.resources`), :mod:`~selfnorm.summary`, :mod:`~selfnorm.depth`,
  :mod:`~selfnorm.auditing` (with :mod:`~selfnorm.findings`, :mod:`~selfnorm.tracing`),
  :mod:`~selfnorm.sweep`, :mod:`~selfnorm.executors`, :mod:`~selfnorm.benchmark`,
  :mod:`~selfnorm.stacked` (K runs as one model; not wired into compare yet),
  :mod:`~selfnorm.reproduce`;
* presenting: :mod:`~selfnorm.tables`, :mod:`selfnorm.report` (from saved files only);
* interface: :mod:`selfnorm.cli`.
"""

from selfnorm.activations import SELU
from selfnorm.auditing import audit  # selfnorm.audit(model) -> findings (module: auditing)
from selfnorm.constants import ALPHA_01, LAMBDA_01, SATURATION_01
from selfnorm.dropout import AlphaDropout, FeatureAlphaDropout
from selfnorm.init import init_snn_, lecun_normal_

__version__ = "0.1.0"

__all__ = [
    "ALPHA_01",
    "LAMBDA_01",
    "SATURATION_01",
    "SELU",
    "AlphaDropout",
    "audit",
    "FeatureAlphaDropout",
    "init_snn_",
    "lecun_normal_",
]
