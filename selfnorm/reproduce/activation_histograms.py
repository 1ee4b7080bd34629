"""The Activation-Visualization-Histogram project, as it ran and corrected
(``selfnorm reproduce activation-histograms``).

The project (shaohua0116/Activation-Visualization-Histogram) compares SELU, ReLU and Leaky ReLU
(slope 0.2) on MNIST with one CNN (:func:`selfnorm.models.build_avh`): three 5x5 stride-2
convolutions (32, 64, 128 filters; 64, 128, 256 on SVHN and CIFAR-10), each followed by
dropout keep 0.5, then fully connected 16 n -> 4 n -> n; Adam lr 1e-4, batch 64, gradients
clipped at global norm 20, pixels / 255. As written it carries three confounds:

* a BatchNorm after the activation for ReLU and Leaky ReLU only (its ``conv2d`` skips it for
  SELU), so two of the three variants are normalized networks;
* plain dropout for SELU, which breaks the fixed point that alpha dropout keeps;
* the activation applied to the logits too (``fc(c_5, n, ..., activation_fn)``).

Its weights are truncated-normal std 0.02 (conv) and Glorot uniform (fully connected) for every
activation, with zero biases. Two :func:`~selfnorm.training.compare` runs, same seeds and
batches: ``as-written/`` and ``corrected/`` (each activation's own init, alpha dropout for SELU,
no BatchNorm for anyone, linear logits, standardized inputs); the top page sets them side by
side and links their reports, which show each layer's signed histograms over training.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from selfnorm._io import atomic_write_text
from selfnorm.config import experiment_from_dict
from selfnorm.reproduce._runs import compare_runs
from selfnorm.summary import mean_std
from selfnorm.tables import mean_std_cell, render

__all__ = ["histogram_configs", "run_activation_histograms", "summary_table"]

VARIANTS = ("selu", "relu", "lrelu:0.2")

INTRO = (
    "The Activation-Visualization-Histogram project's CNN (three 5x5 stride-2 convolutions of "
    "32, 64, 128 filters, each followed by dropout keep 0.5, then fully connected 16n -> 4n -> "
    "n; Adam lr 1e-4, batch 64, gradients clipped at norm 20) as it ran: BatchNorm after ReLU "
    "and Leaky ReLU only, plain dropout for SELU, the activation on the logits, "
    "truncated-normal 0.02 / Glorot weights for all, pixels / 255. Corrected: each "
    "activation's own init (LeCun for SELU, He for the ReLUs), alpha dropout for SELU, no "
    "BatchNorm, linear logits, standardized inputs. The per-layer signed histograms over "
    "training, the view that project drew as 10-bin TensorBoard images, are in each run's "
    "report."
)


def histogram_configs(
    epochs: int = 2,
    seeds: tuple[int, ...] = (0,),
    dataset: str = "mnist",
    data_dir: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The two experiments, ``as-written`` and ``corrected``, as config dicts.

    Example:
        >>> cfgs = histogram_configs()
        >>> cfgs["as-written"]["model"], cfgs["corrected"]["data"]["standardize"]
        ({'kind': 'avh', 'channels': [32, 64, 128], 'as_written': True}, 'global')
        >>> histogram_configs(dataset="svhn")["corrected"]["model"]["channels"]
        [64, 128, 256]
    """
    train = {"optimizer": "adam", "lr": 1e-4, "batch_size": 64, "clip_grad_norm": 20.0,
             "epochs": epochs}  # fmt: skip
    base = {"train": train, "activations": list(VARIANTS), "dropout": 0.5, "seeds": list(seeds)}
    data = {"dataset": dataset, "data_dir": data_dir}
    channels = [64, 128, 256] if dataset in ("svhn", "cifar10") else [32, 64, 128]  # its sizes
    return {
        "as-written": {
            **base,
            "data": {**data, "standardize": "none"},
            "model": {"kind": "avh", "channels": channels, "as_written": True},
        },
        "corrected": {
            **base,
            "data": {**data, "standardize": "global"},
            "model": {"kind": "avh", "channels": channels, "as_written": False},
        },
    }


def summary_table(summaries: dict[str, dict[str, Any]], style: str) -> str:
    """Test and best validation accuracy per network and variant (mean ± std over seeds)."""
    header = ["net", "variant", "test acc %", "best val %", "diverged"]
    return render(header, _rows(summaries), style, html_id="selection")


def _rows(summaries: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for net, summary in summaries.items():
        for name, v in summary["variants"].items():
            runs = [r for r in v["runs"] if not r["diverged"]]
            rows.append(
                [
                    net,
                    name,
                    mean_std_cell(*mean_std([r["test_accuracy"] for r in runs]), ".2f", 100),
                    mean_std_cell(*mean_std([r["best_val_accuracy"] for r in runs]), ".2f", 100),
                    f"{len(v['runs']) - len(runs)}/{len(v['runs'])}",
                ]
            )
    return rows


def _ranking(summary: dict[str, Any]) -> str:
    acc = {n: v["test_accuracy"] for n, v in summary["variants"].items()}
    ranked = sorted((n for n in acc if acc[n] is not None), key=lambda n: -acc[n])
    return " > ".join(f"{n} {100 * acc[n]:.2f}" for n in ranked)


def run_activation_histograms(
    out: str | Path,
    epochs: int = 2,
    seeds: tuple[int, ...] = (0,),
    dataset: str = "mnist",
    data_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the three activations as written and corrected; write ``out/as-written``,
    ``out/corrected`` (run directories with their reports) and the top page
    ``out/report.html``. Returns the summaries by network."""
    from selfnorm.report.html import render_page

    out = Path(out)
    configs = {
        net: experiment_from_dict(d)
        for net, d in histogram_configs(epochs, seeds, dataset, data_dir).items()
    }
    title = "Reproduction: the activation-histograms CNN, {}"
    notes = {net: {"title": title.format(net), "intro": INTRO} for net in configs}
    summaries = compare_runs(configs, out, notes, resume, overwrite, progress)
    verdict = (
        f"As written: {_ranking(summaries['as-written'])}. Corrected: "
        f"{_ranking(summaries['corrected'])} ({epochs} epoch{'s' if epochs != 1 else ''}, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}). Which confound moves the "
        "ranking is not separated here: the two runs differ in all of them at once."
    )
    links = " · ".join(
        f'<a href="{net}/report.html">{net}: its report and histograms</a>' for net in configs
    )
    body = (
        f"<p class=intro>{html.escape(INTRO)}</p>"
        f"<div class=wide>{summary_table(summaries, 'html')}</div>"
        f"<p class=verdict id=verdict>{html.escape(verdict)}</p><p>{links}</p>"
    )
    title = "Reproduction: the activation-histograms project, as it ran and corrected"
    sub = (
        f"{dataset}, {epochs} epoch{'s' if epochs != 1 else ''}; Adam lr 1e-4, batch 64, "
        "gradient norm clipped at 20"
    )
    atomic_write_text(out / "report.html", render_page(title, sub, body))
    md = f"# {title}\n\n{sub}\n\n{summary_table(summaries, 'markdown')}\n\n{verdict}\n"
    atomic_write_text(out / "summary.md", md)
    return summaries
