"""selfnorm: Self-Normalizing Neural Networks (Klambauer et al., NIPS 2017) done right."""

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
