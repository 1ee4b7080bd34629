"""The seed Keras MLP, as it ran and corrected (``selfnorm reproduce seed-keras``).

The seed (bigsnarfdude/SELU_Keras_Tutorial, quoted in the seed article) trains two
784-512-512-10 networks on MNIST with RMSprop (lr 1e-3, rho 0.9), batch 128, 20 epochs:
SELU + ``AlphaDropout(0.1)`` and ReLU + ``Dropout(0.2)``. As written it

* sets no initializer, so both nets get Keras' ``glorot_uniform`` weights (zero biases); SELU
  needs LeCun normal, ReLU's customary init is He;
* feeds pixels ``/ 255`` (in [0, 1]);
* passes the test set as ``validation_data``: every epoch's "validation" score is a test score,
  so an epoch or a model picked on it is picked on the test set, and the printed test accuracy
  (SELU 0.9818, ReLU 0.9846) is no longer an unbiased estimate.

Two :func:`~selfnorm.comparing.compare` runs, same seeds: ``as-written/`` (the test set as the
validation data, all 60,000 training images) and ``corrected/`` (LeCun for SELU, He for ReLU,
standardized inputs, a validation split carved from train, the test set scored every epoch
only to show what picking on it would report). The top page holds both side by side: the final
test accuracy, the best epoch's test accuracy when epochs are picked on the test set, and the
test accuracy of the epoch picked on validation.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from selfnorm._io import atomic_write_json, atomic_write_text
from selfnorm.config import experiment_from_dict
from selfnorm.data import Dataset, load_dataset
from selfnorm.reproduce._runs import compare_runs
from selfnorm.summary import mean_std
from selfnorm.tables import mean_std_cell, render

__all__ = [
    "SEED_KERAS_PRINTED",
    "as_written_dataset",
    "seed_keras_configs",
    "run_seed_keras",
    "selection_rows",
    "selection_table",
    "selection_verdict",
]

SEED_KERAS_PRINTED = {"epochs": 20, "selu": 0.9818, "relu": 0.9846}
"""The final test accuracies the seed notebook printed after 20 epochs."""

INTRO = (
    "The seed Keras MLP (784-512-512-10; SELU + AlphaDropout 0.1 vs ReLU + Dropout 0.2; "
    "RMSprop lr 1e-3, batch 128) as written (Keras' default glorot_uniform weights for both, "
    "pixels / 255, the test set passed as validation_data) against corrected (LeCun normal for "
    "SELU, He for ReLU, standardized inputs, a validation split carved from train, the test set "
    "used once). Each epoch's test score is kept to show what the test-as-validation habit does "
    "to model selection: the best epoch picked on the test set against the epoch picked on "
    "validation."
)

_TRAIN = {"optimizer": "rmsprop", "lr": 1e-3, "rmsprop_alpha": 0.9, "batch_size": 128}


def seed_keras_configs(
    epochs: int = 20,
    seeds: tuple[int, ...] = (0,),
    dataset: str = "mnist",
    data_dir: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The two experiments, ``as-written`` and ``corrected``, as config dicts.

    Example:
        >>> cfgs = seed_keras_configs()
        >>> cfgs["as-written"]["activations"], cfgs["corrected"]["activations"]
        (['selu@glorot-uniform', 'relu@glorot-uniform'], ['selu', 'relu'])
    """
    data = {"dataset": dataset, "data_dir": data_dir, "val_fraction": 1 / 12}
    model = {"kind": "mlp", "depth": 2, "width": 512}
    written = ["selu@glorot-uniform", "relu@glorot-uniform"]
    return {
        "as-written": {
            "data": {**data, "standardize": "none"},
            "model": model,
            "train": {**_TRAIN, "epochs": epochs},
            "activations": written,
            "dropout_by_activation": dict(zip(written, (0.1, 0.2), strict=True)),
            "seeds": list(seeds),
        },
        "corrected": {
            "data": {**data, "standardize": "global"},
            "model": model,
            "train": {**_TRAIN, "epochs": epochs, "test_every_epoch": True},
            "activations": ["selu", "relu"],
            "dropout_by_activation": {"selu": 0.1, "relu": 0.2},
            "seeds": list(seeds),
        },
    }


def as_written_dataset(ds: Dataset) -> Dataset:
    """What the seed trained and validated on: every training image (train and validation
    split joined) and the test set as the validation data.

    Example:
        >>> from selfnorm.data import DataConfig
        >>> ds = load_dataset(DataConfig("digits"))
        >>> w = as_written_dataset(ds)
        >>> len(w.y_train) == len(ds.y_train) + len(ds.y_val), w.x_val is w.x_test
        (True, True)
    """
    return dataclasses.replace(
        ds,
        x_train=np.concatenate([ds.x_train, ds.x_val]),
        y_train=np.concatenate([ds.y_train, ds.y_val]),
        x_val=ds.x_test,
        y_val=ds.y_test,
    )


def selection_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per network and variant: the final test accuracy, the test accuracy of the epoch picked
    on the test set and that of the epoch picked on validation (mean and std over seeds).

    As written, the validation data *is* the test set, so its best validation accuracy is the
    epoch picked on test, and no honest pick exists. Corrected, both come from the per-epoch
    test scores (``best_test_accuracy``, ``test_accuracy_at_best_val``); their difference is
    what the habit adds.

    Example:
        >>> run = {"diverged": False, "best_val_accuracy": 0.98, "best_test_accuracy": None,
        ...        "test_accuracy_at_best_val": None, "test_accuracy": 0.97}
        >>> s = {"as-written": {"variants": {"selu@glorot-uniform": {"runs": [run]}}}}
        >>> row = selection_rows(s)[0]
        >>> row["activation"], row["final"], row["picked_on_test"], row["picked_on_val"]
        ('selu', (0.97, None), (0.98, None), (None, None))
    """
    rows = []
    for net, summary in summaries.items():
        for name, v in summary["variants"].items():
            runs = [r for r in v["runs"] if not r["diverged"]]
            written = net == "as-written"
            on_test = [r["best_val_accuracy" if written else "best_test_accuracy"] for r in runs]
            on_val = [None if written else r["test_accuracy_at_best_val"] for r in runs]
            gaps = [None if b is None else a - b for a, b in zip(on_test, on_val, strict=True)]
            rows.append(
                {
                    "net": net,
                    "variant": name,
                    "activation": name.split("@")[0],
                    "final": mean_std([r["test_accuracy"] for r in runs]),
                    "picked_on_test": mean_std(on_test),
                    "picked_on_val": mean_std(on_val),
                    "optimism": mean_std(gaps),
                    "seeds": len(runs),
                }
            )
    return rows


def selection_table(rows: list[dict[str, Any]], epochs: int, style: str) -> str:
    """The rows of :func:`selection_rows` as a table (``text``, ``markdown`` or ``html``), with
    the seed's printed accuracy beside the as-written nets when ``epochs`` is the seed's 20."""
    printed = SEED_KERAS_PRINTED
    same_budget = epochs == printed["epochs"]
    header = [
        "net",
        "variant",
        "final test %",
        f"seed printed ({printed['epochs']} ep)",
        "best epoch, picked on test %",
        "picked on validation %",
        "picked on test - on validation",
    ]
    body = []
    for r in rows:
        seed = printed.get(r["activation"]) if r["net"] == "as-written" else None
        body.append(
            [
                r["net"],
                r["variant"],
                mean_std_cell(*r["final"], ".2f", 100),
                f"{100 * seed:.2f}" if seed is not None and same_budget else "—",
                mean_std_cell(*r["picked_on_test"], ".2f", 100),
                mean_std_cell(*r["picked_on_val"], ".2f", 100)
                if r["net"] != "as-written"
                else "— (validation = test)",
                mean_std_cell(*r["optimism"], "+.2f", 100),
            ]
        )
    return render(header, body, style, html_id="selection")


def selection_verdict(rows: list[dict[str, Any]], epochs: int) -> str:
    """What the rows say, in words: the seed's printed figures, and what picking an epoch on
    the test set adds to the corrected nets' test accuracy."""
    printed = SEED_KERAS_PRINTED
    parts = []
    for r in rows:
        if r["net"] == "corrected" and r["optimism"][0] is not None:
            parts.append(
                f"{r['variant']}: picking the epoch on the test set reports "
                f"{100 * r['picked_on_test'][0]:.2f}%, picking it on validation "
                f"{100 * r['picked_on_val'][0]:.2f}% ({100 * r['optimism'][0]:+.2f} points "
                "from the habit alone)"
            )
    budget = (
        f"The seed printed SELU {printed['selu']:.4f} and ReLU {printed['relu']:.4f} after "
        f"{printed['epochs']} epochs"
        + ("." if epochs == printed["epochs"] else f"; this run trained {epochs}.")
    )
    return budget + (" Corrected, " + "; ".join(parts) + "." if parts else "")


def run_seed_keras(
    out: str | Path,
    epochs: int = 20,
    seeds: tuple[int, ...] = (0,),
    dataset: str = "mnist",
    data_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train both networks as written and corrected; write ``out/as-written``,
    ``out/corrected`` (each a run directory with its report), ``out/selection.json`` and the
    top page ``out/report.html``. Returns the summaries by network."""
    from selfnorm.report.html import render_page

    out = Path(out)
    configs = {
        net: experiment_from_dict(d)
        for net, d in seed_keras_configs(epochs, seeds, dataset, data_dir).items()
    }
    written = configs["as-written"]
    ds = as_written_dataset(load_dataset(written.data, progress=progress))
    notes = {
        "as-written": "The seed Keras MLP as written: Keras' default glorot_uniform weights "
        "for both nets, pixels / 255, all 60,000 training images, and the test set passed as "
        "validation_data, so every 'validation' number here is a test number.",
        "corrected": "The seed Keras MLP corrected: LeCun normal (SELU) and He (ReLU) weights, "
        "standardized inputs, a validation split carved from train; the test set is scored "
        "every epoch only to show what picking an epoch on it would report.",
    }
    notes = {
        net: {"title": f"Reproduction: the seed Keras MLP, {net}", "intro": text}
        for net, text in notes.items()
    }
    summaries = compare_runs(
        configs, out, notes, resume, overwrite, progress, datasets={"as-written": ds}
    )
    rows = selection_rows(summaries)
    atomic_write_json(out / "selection.json", {"epochs": epochs, "rows": rows})
    verdict = selection_verdict(rows, epochs)
    links = " · ".join(
        f'<a href="{net}/report.html">{net}: its report</a>' for net in ("as-written", "corrected")
    )
    body = (
        f"<p class=intro>{html.escape(INTRO)}</p>"
        f"<div class=wide>{selection_table(rows, epochs, 'html')}</div>"
        f"<p class=verdict id=verdict>{html.escape(verdict)}</p><p>{links}</p>"
    )
    title = "Reproduction: the seed Keras MLP, as it ran and corrected"
    n = len(seeds)
    sub = (
        f"{dataset}, {epochs} epochs, {n} seed{'s' if n > 1 else ''}; RMSprop lr 1e-3 (rho 0.9), "
        "batch 128"
    )
    atomic_write_text(out / "report.html", render_page(title, sub, body))
    md = f"# {title}\n\n{sub}\n\n{selection_table(rows, epochs, 'markdown')}\n\n{verdict}\n"
    atomic_write_text(out / "summary.md", md)
    return summaries
