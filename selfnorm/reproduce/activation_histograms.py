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
activation, with zero biases. :func:`~selfnorm.comparing.compare` runs, same seeds and batches:
``as-written/``; one per confound (:data:`ABLATIONS`: the network as written with that one
choice undone, for the variants it touches); and ``corrected/`` (each activation's own init,
alpha dropout for SELU, no BatchNorm for anyone, linear logits, standardized inputs). The top
page sets them side by side, says which confound changes the ranking
(:func:`confound_verdict`), and links the reports, which show each layer's signed histograms
over training.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from selfnorm._io import atomic_write_text
from selfnorm.config import AVH_FLAGS, experiment_from_dict
from selfnorm.reproduce._runs import compare_runs
from selfnorm.summary import mean_std
from selfnorm.tables import mean_std_cell, render

__all__ = [
    "ABLATIONS",
    "confound_verdict",
    "histogram_configs",
    "run_activation_histograms",
    "summary_table",
]

VARIANTS = ("selu", "relu", "lrelu:0.2")
"""The project's three activations (its Leaky ReLU slope is 0.2)."""

INTRO = (
    "The Activation-Visualization-Histogram project's CNN (three 5x5 stride-2 convolutions of "
    "32, 64, 128 filters, each followed by dropout keep 0.5, then fully connected 16n -> 4n -> "
    "n; Adam lr 1e-4, batch 64, gradients clipped at norm 20) as it ran: BatchNorm after ReLU "
    "and Leaky ReLU only, plain dropout for SELU, the activation on the logits, "
    "truncated-normal 0.02 / Glorot weights for all, pixels / 255. Corrected: each "
    "activation's own init (LeCun for SELU, He for the ReLUs), alpha dropout for SELU, no "
    "BatchNorm, linear logits, standardized inputs. Between them, one run per confound: as "
    "written with that one choice undone. The per-layer signed histograms over "
    "training, the view that project drew as 10-bin TensorBoard images, are in each run's "
    "report."
)


ABLATIONS = {
    "no-bn": ("bn_after_relus", ("relu", "lrelu:0.2"), "without the BatchNorm after the ReLUs"),
    "alpha-dropout": ("plain_dropout", ("selu",), "with alpha dropout for SELU"),
    "linear-logits": ("activated_logits", VARIANTS, "with linear logits"),
}
"""One run per confound: the network as written with that one choice undone, for the variants
it touches (name -> (flag switched off, variants, in words))."""


def histogram_configs(
    epochs: int = 1,
    seeds: tuple[int, ...] = (0,),
    dataset: str = "mnist",
    data_dir: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The experiments as config dicts: ``as-written``, one per confound of :data:`ABLATIONS`
    (as written but for that one), and ``corrected``.

    Example:
        >>> cfgs = histogram_configs()
        >>> list(cfgs)
        ['as-written', 'no-bn', 'alpha-dropout', 'linear-logits', 'corrected']
        >>> cfgs["no-bn"]["model"]["bn_after_relus"], cfgs["no-bn"]["activations"]
        (False, ['relu', 'lrelu:0.2'])
        >>> histogram_configs(dataset="svhn")["corrected"]["model"]["channels"]
        [64, 128, 256]
    """
    train = {"optimizer": "adam", "lr": 1e-4, "batch_size": 64, "clip_grad_norm": 20.0,
             "epochs": epochs}  # fmt: skip
    base = {"train": train, "dropout": 0.5, "seeds": list(seeds)}
    data = {"dataset": dataset, "data_dir": data_dir}
    channels = [64, 128, 256] if dataset in ("svhn", "cifar10") else [32, 64, 128]  # its sizes
    model = {"kind": "avh", "channels": channels}
    raw = {**data, "standardize": "none"}
    out = {"as-written": {**base, "data": raw, "model": model, "activations": list(VARIANTS)}}
    for name, (flag, variants, _) in ABLATIONS.items():
        out[name] = {**base, "data": raw, "model": {**model, flag: False},
                     "activations": list(variants)}  # fmt: skip
    out["corrected"] = {
        **base,
        "data": {**data, "standardize": "global"},
        "model": {**model, **dict.fromkeys(AVH_FLAGS, False)},
        "activations": list(VARIANTS),
    }
    return out


def confound_verdict(summaries: dict[str, dict[str, Any]]) -> str:
    """For each confound, the as-written ranking with that one undone (the variants it does
    not touch keep their as-written numbers: the same network, seed and batches), and whether
    the order changes.

    Example:
        >>> def s(**acc):
        ...     return {"variants": {k: {"test_accuracy": v} for k, v in acc.items()}}
        >>> runs = {"as-written": s(selu=0.9, relu=0.8), "no-bn": s(relu=0.95),
        ...         "alpha-dropout": s(selu=0.91), "linear-logits": s(selu=0.9, relu=0.8)}
        >>> print(confound_verdict(runs).splitlines()[1])
        Without the BatchNorm after the ReLUs: relu 95.00 > selu 90.00: the order changes.
    """

    written = _accuracies(summaries["as-written"])
    lines = [f"As written: {_said(written)}."]
    for name, (_, _, words) in ABLATIONS.items():
        if name not in summaries:
            continue
        acc = dict(written)
        acc.update(_accuracies(summaries[name]))
        moved = "the order changes" if _order(acc) != _order(written) else "the same order"
        lines.append(f"{words[0].upper()}{words[1:]}: {_said(acc)}: {moved}.")
    return "\n".join(lines)


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


def _accuracies(summary: dict[str, Any]) -> dict[str, float | None]:
    return {n: v["test_accuracy"] for n, v in summary["variants"].items()}


def _order(acc: dict[str, float | None]) -> list[str]:
    """The variants by test accuracy, best first (diverged ones left out)."""
    return sorted((n for n in acc if acc[n] is not None), key=lambda n: -acc[n])


def _said(acc: dict[str, float | None]) -> str:
    return " > ".join(f"{n} {100 * acc[n]:.2f}" for n in _order(acc))


def run_activation_histograms(
    out: str | Path,
    epochs: int = 1,
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
        confound_verdict(summaries)
        + "\nCorrected (all of them undone, each activation's own init, standardized inputs): "
        + _said(_accuracies(summaries["corrected"]))
        + f". {epochs} epoch{'s' if epochs != 1 else ''}, {len(seeds)} seed"
        + ("s" if len(seeds) != 1 else "")
        + ": a difference inside the seed-to-seed spread is no difference."
    )
    links = " · ".join(
        f'<a href="{net}/report.html">{net}: its report and histograms</a>' for net in configs
    )
    body = (
        f"<p class=intro>{html.escape(INTRO)}</p>"
        f"<div class=wide>{summary_table(summaries, 'html')}</div>"
        f"<p class=verdict id=verdict>{html.escape(verdict).replace(chr(10), '<br>')}</p>"
        f"<p>{links}</p>"
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
