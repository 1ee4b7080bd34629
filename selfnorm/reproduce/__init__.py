"""Reproductions: the seed examples as they ran and corrected, and the paper's Figure 1.

``seed-tf`` (:mod:`selfnorm.reproduce.seed_tf`)
    The seed TensorFlow MLP as written, with ``training=True`` passed to its dropout, and
    corrected.
``seed-keras`` (:mod:`selfnorm.reproduce.seed_keras`)
    The seed Keras MLP (SELU vs ReLU) as written and corrected, with what using the test set as
    validation data does to model selection.
``activation-histograms`` (:mod:`selfnorm.reproduce.activation_histograms`)
    The Activation-Visualization-Histogram project's CNN (SELU, ReLU, Leaky ReLU) as written
    and corrected, with per-layer signed histograms over training.
``figure1`` (:mod:`selfnorm.reproduce.figure1`)
    Klambauer et al. (2017), Figure 1: training loss curves of deep SNNs and ReLU+BatchNorm
    networks.
"""

from selfnorm.reproduce.activation_histograms import run_activation_histograms
from selfnorm.reproduce.figure1 import Figure1Config, roughness, run_figure1
from selfnorm.reproduce.seed_keras import run_seed_keras, seed_keras_configs
from selfnorm.reproduce.seed_tf import run_seed_tf, seed_tf_config

__all__ = [
    "REPRODUCTIONS",
    "Figure1Config",
    "roughness",
    "run_activation_histograms",
    "run_figure1",
    "run_seed_keras",
    "run_seed_tf",
    "seed_keras_configs",
    "seed_tf_config",
]

REPRODUCTIONS = ("seed-tf", "seed-keras", "activation-histograms", "figure1")
