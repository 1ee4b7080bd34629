"""Reproductions: the seed examples as they ran and corrected, and the paper's Figure 1.

``seed-tf`` (:mod:`selfnorm.reproduce.seed_tf`)
    The seed TensorFlow MLP as written, with ``training=True`` passed to its dropout, and
    corrected.
``figure1`` (:mod:`selfnorm.reproduce.figure1`)
    Klambauer et al. (2017), Figure 1: training loss curves of deep SNNs and ReLU+BatchNorm
    networks.
"""

from selfnorm.reproduce.figure1 import Figure1Config, roughness, run_figure1
from selfnorm.reproduce.seed_tf import run_seed_tf, seed_tf_config

__all__ = [
    "REPRODUCTIONS",
    "Figure1Config",
    "roughness",
    "run_figure1",
    "run_seed_tf",
    "seed_tf_config",
]

REPRODUCTIONS = ("seed-tf", "figure1")
