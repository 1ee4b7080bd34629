"""The seed TensorFlow example, as it ran and corrected (``selfnorm reproduce seed-tf``).

The seed's 784-512x4-10 SELU network (Adam lr 1e-3, batch 100, MNIST) carries three faults:

* **Init**: Glorot uniform weights (``xavier_initializer()``) and N(0, 1) biases
  (``tf.random_normal``), where self-normalization needs LeCun normal weights and zero biases.
* **Inputs**: pixels in [0, 1] (its MNIST reader), where the fixed point needs mean 0, variance 1.
* **Dropout**: ``dropout_selu(x, keep_prob, ..., training=False)`` is called as
  ``dropout_selu(L1, keep_prob=keep_prob)``; it ends in ``smart_cond(training, dropout,
  identity)``, so with the default ``training=False`` it returns its input at train and test
  time: the network as written never drops a unit, whatever ``keep_prob`` is fed. A caller that
  does pass ``training=True`` meets the second bug: the inner function's parameter is a drop
  *rate*, and it receives ``keep_prob`` 0.7, so 70% of the units are dropped.

Three variants, one :func:`~selfnorm.comparing.compare` run (same data, seeds and batches):

========================================  =============================================
``as-written=selu@seed-tf``               the network as written: no dropout, [0, 1] inputs
``training-true=selu@seed-tf``            as written with ``training=True``: 70% dropped
``corrected=selu``                        LeCun normal, zero biases, standardized inputs,
                                          alpha dropout keep 0.7 (drop rate 0.3)
========================================  =============================================

With a constant ``training=True`` the seed's evaluation (``keep_prob`` fed 1, so rate 1 and
keep 0) would divide by zero and return NaN; the second variant evaluates without dropout, as a
per-phase ``training`` flag would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfnorm._io import atomic_write_json
from selfnorm.comparing import compare
from selfnorm.config import experiment_from_dict

__all__ = ["SEED_TF_PRINTED", "SEED_TF_VARIANTS", "run_seed_tf", "seed_tf_config"]

SEED_TF_PRINTED = {"epochs": 50, "test_accuracy": 0.9764}
"""What the seed's tutorial printed after training, with its bugs in place."""

# variant -> (drop rate, input scaling or None for the experiment's, what it carries)
SEED_TF_VARIANTS: dict[str, tuple[float, str | None, str]] = {
    "as-written=selu@seed-tf": (
        0.0,
        "none",
        "the seed as written: Glorot uniform weights, N(0, 1) biases, inputs in [0, 1], and no "
        "dropout at all (dropout_selu is called without training=, which defaults to False, so "
        "it returns its input at train and test time; the fed keep_prob 0.7 does nothing)",
    ),
    "training-true=selu@seed-tf": (
        0.7,
        "none",
        "as written, but with training=True passed: keep_prob 0.7 goes into the parameter that "
        "is a drop rate, so 70% of the units are dropped in training (evaluated without "
        "dropout: with a constant training=True, the seed's keep_prob 1 at test would give NaN)",
    ),
    "corrected=selu": (
        0.3,
        None,
        "corrected: LeCun normal weights, zero biases, standardized inputs, alpha dropout with "
        "keep probability 0.7 (drop rate 0.3) as intended",
    ),
}

INTRO = (
    "The seed TensorFlow example (784-512x4-10 SELU network, Adam lr 1e-3, batch 100) as it "
    "ran, as it would have run with training=True passed to its dropout, and corrected; same "
    "data, seeds and batches. What each variant carries is in the table below. The audit "
    "names the faults of each initial model."
)


def seed_tf_config(
    epochs: int = 3,
    seeds: tuple[int, ...] = (0,),
    dataset: str = "mnist",
    data_dir: str | None = None,
) -> dict[str, Any]:
    """The experiment of the ``seed-tf`` reproduction, as a config dict.

    Example:
        >>> cfg = seed_tf_config()
        >>> cfg["dropout_by_activation"]["training-true=selu@seed-tf"]
        0.7
        >>> cfg["standardize_by_activation"]["as-written=selu@seed-tf"]
        'none'
    """
    return {
        "data": {"dataset": dataset, "data_dir": data_dir, "standardize": "global"},
        "model": {"kind": "mlp", "depth": 4, "width": 512},
        "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 100, "epochs": epochs},
        "activations": list(SEED_TF_VARIANTS),
        "dropout_by_activation": {k: v[0] for k, v in SEED_TF_VARIANTS.items()},
        "standardize_by_activation": {k: v[1] for k, v in SEED_TF_VARIANTS.items() if v[1]},
        "seeds": list(seeds),
    }


def printed_comparison(summary: dict[str, Any], epochs: int) -> str:
    """The seed's printed accuracy beside ours as written, at the same epoch count (else why
    not).

    Example:
        >>> s = {"variants": {"as-written=selu@seed-tf": {"test_accuracy": 0.97}}}
        >>> printed_comparison(s, 50)
        'The seed printed test accuracy 0.9764 after 50 epochs; as written here: 0.9700.'
        >>> printed_comparison(s, 3)[:60]
        'The seed printed test accuracy 0.9764 after 50 epochs; this '
    """
    printed = SEED_TF_PRINTED
    head = (
        f"The seed printed test accuracy {printed['test_accuracy']:.4f} after "
        f"{printed['epochs']} epochs"
    )
    if epochs != printed["epochs"]:
        return (
            f"{head}; this run trained {epochs} epoch{'s' if epochs != 1 else ''} (run with "
            f"--epochs {printed['epochs']} to hold our as-written number against it)."
        )
    ours = summary["variants"]["as-written=selu@seed-tf"]["test_accuracy"]  # mean over seeds
    mine = "diverged" if ours is None else f"{ours:.4f}"
    return f"{head}; as written here: {mine}."


def run_seed_tf(
    out: str | Path,
    epochs: int = 3,
    seeds: tuple[int, ...] = (0,),
    dataset: str = "mnist",
    data_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the three variants; write the run directory and its report."""
    from selfnorm.report.html import build_report

    config = experiment_from_dict(seed_tf_config(epochs, seeds, dataset, data_dir))
    summary = compare(config, str(out), resume=resume, overwrite=overwrite, progress=progress)
    atomic_write_json(
        Path(out) / "notes.json",
        {
            "title": "Reproduction: the seed TensorFlow example, as it ran and corrected",
            "intro": f"{INTRO} {printed_comparison(summary, epochs)}",
            "variants": {k: v[2] for k, v in SEED_TF_VARIANTS.items()},
        },
    )
    build_report(out)
    return summary
