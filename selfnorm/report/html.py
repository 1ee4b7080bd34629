"""The report of a comparison run: ``report.html`` (self-contained) and ``summary.md``.

Reads only the run directory (config.json, summary.json, each run's metrics.jsonl and, where
present, its activation records), so it can be rebuilt any time without retraining:
``selfnorm report RUN_DIR``. The page leads with the comparison table and a verdict computed from
the numbers, then the figures (PNG, embedded as data URIs), then the resolved configuration. It
loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from selfnorm._io import atomic_write_text
from selfnorm.records import read_records
from selfnorm.report import plots
from selfnorm.storage import RunDir, read_jsonl
from selfnorm.summary import stacking_text
from selfnorm.tables import comparison_table, render

__all__ = [
    "DRIFT_THRESHOLD",
    "ReportFigure",
    "build_report",
    "figure",
    "figures_html",
    "render_page",
    "verdict",
]

DRIFT_THRESHOLD = 0.5
"""A layer "drifted" when sqrt(mean^2 + (var - 1)^2) of its post-activations exceeds this at
the end of training (for reference: N(0, 1.5^2) sits at 1.25, N(0.5, 1) at 0.5)."""


@dataclass(frozen=True)
class ReportFigure:
    """One figure of the report: an id, a caption, the PNG bytes and what decodes it
    (:func:`selfnorm.report.plots.figure_keys`, written beside the image as ``data-`` attributes
    of its ``<figure>``)."""

    key: str
    caption: str
    png: bytes
    keys: Mapping[str, int] = field(default_factory=dict)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _load(run_dir: RunDir) -> tuple[dict, dict]:
    for path in (run_dir.config, run_dir.summary):
        if not path.exists():
            raise ValueError(
                f"{run_dir.root} has no {path.name}; pass the folder of a finished "
                "`selfnorm compare` run (an interrupted one: finish it with --resume first)"
            )
    config = json.loads(run_dir.config.read_text(encoding="utf-8"))
    summary = json.loads(run_dir.summary.read_text(encoding="utf-8"))
    return config, summary


def _records(run_dir: RunDir, config: Mapping, names) -> dict[str, Any]:
    """Records of each variant's first seed, where they were stored."""
    out = {}
    seed = config["seeds"][0]
    for name in names:
        root = run_dir.run(name, seed).root
        if (root / "records").exists():
            rec = read_records(root)
            if len(rec.steps):
                out[name] = rec
    return out


def _outer(records: Mapping[str, Any]) -> float:
    """The largest |edge| of the value bins (``RecordConfig.range``)."""
    return max(float(np.abs(r.bin_edges[[0, -1]]).max()) for r in records.values())


def _drift(records: Mapping[str, Any]) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for name, rec in records.items():
        last = rec.post["fp_distance"][-1]
        out[name] = [
            (layer, float(d))
            for layer, d in zip(rec.layers, last, strict=True)
            if math.isfinite(d) and d > DRIFT_THRESHOLD
        ]
    return out


def _judge(gap: float, spread: float | None, n_seeds: int, unit: str) -> str:
    """How a difference between two means stands against the seed-to-seed spread."""
    if n_seeds < 2 or spread is None:
        return "one seed: no evidence of a difference either way"
    if gap > spread:
        return f"larger than the spread over seeds (std {spread:.2f}{unit})"
    return f"a tie: within the spread over seeds (std {spread:.2f}{unit})"


def _is_selu_variant(name: str) -> bool:
    from selfnorm.specs import get_spec

    try:
        return bool(get_spec(name).family.selu)
    except ValueError:  # not a spec name (hand-made summaries): judged as given
        return True


def verdict(summary: Mapping, drift: Mapping[str, list[tuple[str, float]]] | None = None) -> str:
    """One paragraph computed from the numbers, careful about what they can show.

    Who has the best test accuracy and test loss, each difference set against the spread over
    seeds (a difference inside it is a tie; one seed is no evidence either way); who reached
    97% of its best validation accuracy first, only when that separates the variants; the cost
    per epoch, only when the timing spread allows a comparison; divergences; and, for SELU
    variants only (the others do not aim at it), layers that drifted from the fixed point.

    Example:
        >>> v = {"test_accuracy": .97, "test_accuracy_std": .002, "test_loss": .10,
        ...      "test_loss_std": .01, "epochs_to_97": 2.0, "epochs_to_97_std": 0.0,
        ...      "epoch_seconds": .5, "epoch_seconds_std": .01, "diverged": 0.0, "seeds": [0, 1]}
        >>> w = dict(v, test_accuracy=.95, test_loss=.2, epochs_to_97=4.0, epoch_seconds=.4)
        >>> print(verdict({"ranking": ["selu", "relu"], "variants": {"selu": v, "relu": w}}))
        ... # doctest: +NORMALIZE_WHITESPACE
        selu has the best test accuracy, 97.00% (mean of 2 seeds), 2.00 points above relu
        (95.00%): larger than the spread over seeds (std 0.20 points). It also has the lowest
        test loss, 0.100 (relu 0.200): larger than the spread over seeds (std 0.01). selu
        reached 97% of its best validation accuracy first (epoch 2.0 on average, relu 4.0). Per
        epoch relu was the cheapest (0.400 s), 1.25x faster than selu (0.500 s).
    """
    variants = summary["variants"]
    ranking = list(summary.get("ranking", []))
    parts = []
    if not ranking:
        if all(v.get("diverged") == 1.0 for v in variants.values()):
            parts.append("Every run diverged; no variant has a test accuracy.")
        else:  # a training selfnorm did not run may have no test score (selfnorm.integrations)
            parts.append("No variant has a test accuracy: the runs reported no test score.")
    else:
        best = ranking[0]
        b = variants[best]
        n_seeds = min(len(variants[n].get("seeds", [])) or 1 for n in ranking)
        head = (
            f"{best} has the best test accuracy, {100 * b['test_accuracy']:.2f}% "
            f"(mean of {n_seeds} seed{'s' if n_seeds > 1 else ''})"
        )
        if len(ranking) > 1:
            second = ranking[1]
            s = variants[second]
            gap = 100 * (b["test_accuracy"] - s["test_accuracy"])
            stds = [b.get("test_accuracy_std"), s.get("test_accuracy_std")]
            spread = None if None in stds else 100 * max(stds)
            head += (
                f", {gap:.2f} points above {second} ({100 * s['test_accuracy']:.2f}%): "
                + _judge(gap, spread, n_seeds, " points")
            )
        parts.append(head + ".")
        losses = [n for n in ranking if variants[n].get("test_loss") is not None]
        if len(losses) > 1:
            low = min(losses, key=lambda n: variants[n]["test_loss"])
            other = (
                best
                if low != best
                else min((n for n in losses if n != low), key=lambda n: variants[n]["test_loss"])
            )
            lo, ot = variants[low], variants[other]
            stds = [lo.get("test_loss_std"), ot.get("test_loss_std")]
            judged = _judge(ot["test_loss"] - lo["test_loss"],
                            None if None in stds else max(stds), n_seeds, "")  # fmt: skip
            who = "It also has" if low == best else f"{low} has"
            parts.append(
                f"{who} the lowest test loss, {lo['test_loss']:.3f} ({other} "
                f"{ot['test_loss']:.3f}): {judged}."
            )
        timed = [n for n in ranking if variants[n].get("epochs_to_97") is not None]
        if len(timed) > 1:
            order = sorted(timed, key=lambda n: variants[n]["epochs_to_97"])
            first, next_ = variants[order[0]], variants[order[1]]
            gap = next_["epochs_to_97"] - first["epochs_to_97"]
            stds = [first.get("epochs_to_97_std"), next_.get("epochs_to_97_std")]
            spread = max((x for x in stds if x is not None), default=0.0)
            if gap > spread and gap > 0:
                parts.append(
                    f"{order[0]} reached 97% of its best validation accuracy first (epoch "
                    f"{first['epochs_to_97']:.1f} on average, {order[1]} "
                    f"{next_['epochs_to_97']:.1f})."
                )
        costed = [n for n in ranking if variants[n].get("epoch_seconds")]
        if len(costed) > 1:
            cheap = min(costed, key=lambda n: variants[n]["epoch_seconds"])
            dear = max(costed, key=lambda n: variants[n]["epoch_seconds"])
            c, d = variants[cheap], variants[dear]
            stds = [c.get("epoch_seconds_std"), d.get("epoch_seconds_std")]
            ratio = d["epoch_seconds"] / c["epoch_seconds"]
            stacking = summary.get("stacking") or {}
            shared = any(stacking.get(n, {}).get("runs_per_stack", 1) > 1 for n in (cheap, dear))
            if shared:  # the seeds of a stack share one time: their spread is not measured
                parts.append(
                    "Per-epoch times of stacked seeds are their stack's time shared out, "
                    "with no spread over seeds to judge them by: not compared."
                )
            elif n_seeds < 2 or None in stds:
                parts.append("Per-epoch times have no spread over seeds to judge them by: "
                             "not compared.")  # fmt: skip
            elif d["epoch_seconds"] - c["epoch_seconds"] > 2 * max(stds):
                parts.append(
                    f"Per epoch {cheap} was the cheapest ({c['epoch_seconds']:.3f} s), "
                    f"{ratio:.2f}x faster than {dear} ({d['epoch_seconds']:.3f} s)."
                )
            else:
                parts.append(
                    f"Per-epoch times ({c['epoch_seconds']:.3f}-{d['epoch_seconds']:.3f} s) "
                    "differ by less than twice their spread over seeds: no speed difference "
                    "to report."
                )
    diverged = [n for n, v in variants.items() if v.get("diverged")]
    for n in diverged:
        parts.append(f"{n} diverged in {variants[n]['diverged']:.0%} of its seeds.")
    if drift:
        drift = {n: layers for n, layers in drift.items() if _is_selu_variant(n)}
        stayed = [n for n, layers in drift.items() if not layers]
        moved = {n: layers for n, layers in drift.items() if layers}
        if stayed:
            parts.append(
                f"At the end of training every layer of {', '.join(stayed)} stayed within "
                f"{DRIFT_THRESHOLD} of the fixed point (0, 1) in (mean, variance)."
            )
        for n, layers in moved.items():
            worst = max(layers, key=lambda t: t[1])
            parts.append(
                f"In {n}, {len(layers)} layer{'s' if len(layers) > 1 else ''} drifted from "
                f"(0, 1) ({', '.join(layer for layer, _ in layers)}; farthest {worst[0]} at "
                f"{worst[1]:.2f})."
            )
    return " ".join(parts)


def make_figures(
    run_dir: str | Path, records: Mapping[str, Any] | None = None
) -> list[ReportFigure]:
    """Every figure of the report, from the run directory alone (``records``: the variants'
    records when the caller has read them already)."""
    rd = RunDir(run_dir)
    config, summary = _load(rd)
    names = list(summary["variants"])
    histories = {n: [read_jsonl(rd.run(n, s).metrics) for s in config["seeds"]] for n in names}
    figs = [
        figure(
            "curves",
            "Training loss, validation loss and validation accuracy per epoch, mean ± std over "
            "seeds.",
            plots.training_curves_figure(histories),
        )
    ]
    if records is None:
        records = _records(rd, config, names)
    if records:
        seed = config["seeds"][0]
        figs += [
            figure(
                "histograms",
                f"Post-activation densities of every layer at six moments of training, spaced "
                f"on a log scale of the step so that early training gets most of them (seed "
                f"{seed}). Dashed, SELU layers only: what the theory predicts a SELU layer at "
                "the fixed point outputs, SELU of an N(0, 1) pre-activation (skewed, piled up "
                "above the saturation value -1.758; not N(0, 1)). Other activations have no "
                "fixed point to compare with. Mass beyond the range is not drawn; ReLU's exact "
                "zeros are stated as a percentage.",
                plots.histogram_evolution_figure(records),
            ),
            figure(
                "heatmaps",
                "The same histograms as heatmaps: value (y, signed) against training time (x), "
                "colour log10 of the fraction of the values in each bin.",
                plots.histogram_heatmap_figure(records),
            ),
            figure(
                "moments",
                "Mean and variance of each layer's activations over training (one seed per "
                "variant). Dashed, SELU variants only: the fixed point (0, 1) they aim at.",
                plots.moments_figure(records),
            ),
        ]
        if any(r.hist_weight.sum() for r in records.values()):
            figs.append(
                figure(
                    "weights",
                    "Each weight layer's weights over training, in units of 1/sqrt(fan_in): "
                    "LeCun's N(0, 1/fan_in), SELU's init, is N(0, 1) on this axis and He's "
                    f"N(0, 2/fan_in) is N(0, 2); values beyond ±{_outer(records):g} are counted "
                    "but not drawn.",
                    plots.weight_histogram_figure(records),
                )
            )
        if any(plots.has_gradient_histograms(r) for r in records.values()):
            figs += [
                figure(
                    "gradients",
                    "The loss gradient w.r.t. each activation's output over training, on "
                    "signed log bins (two per octave of |g|, from 2^-30 = 9.3e-10 to 16; the "
                    "middle line is 0, the rows next to it hold every |g| below 2^-30, among "
                    "them the exact zeros of dead ReLU units): vanishing gradients sink towards "
                    "the middle, exploding ones rise to the edges.",
                    plots.gradient_histogram_figure(records, "activations"),
                ),
                figure(
                    "weight_gradients",
                    "The gradient w.r.t. each weight layer's weights, on the same bins.",
                    plots.gradient_histogram_figure(records, "weights"),
                ),
            ]
        if any(plots.is_selu_record(r) for r in records.values()):
            figs.append(
                figure(
                    "fixed_point_distance",
                    "SELU variants only: the distance sqrt(mean^2 + (variance - 1)^2) of each "
                    "layer's output mean and variance from the fixed point (0, 1), against "
                    "depth, at the start, middle and end of training (other activations do not "
                    "aim at (0, 1)).",
                    plots.fixed_point_distance_figure(records),
                )
            )
    return figs


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.5rem;margin-bottom:.2rem}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1rem 0;font-variant-numeric:tabular-nums}
th,td{padding:.35rem .7rem;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}
table.findings td,table.findings th,#carries td,#carries th{text-align:left;font-size:.85rem}
#carries td:first-child{white-space:nowrap}
#selection td:nth-child(-n+2),#selection th:nth-child(-n+2){text-align:left;white-space:nowrap}
.wide{overflow-x:auto}tr.best td{font-weight:600}#comparison td{white-space:nowrap}
.verdict{background:#f7f9fc;border-left:4px solid #4a7bd0;padding:.7rem 1rem}
figure{margin:1.5rem 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9rem}pre{background:#f6f6f6;padding:1rem;overflow:auto;
font-size:.8rem}
"""


def render_page(title: str, subtitle: str, body_html: str) -> str:
    """A complete, self-contained HTML page with the report's style."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=sub>{html.escape(subtitle)}</p>"
        f"{body_html}</body></html>\n"
    )


def figures_html(figures: list[ReportFigure]) -> str:
    """Figures as ``<figure>`` elements with the PNG embedded as a data URI."""
    return "".join(
        f'<figure id="fig-{f.key}"'
        + "".join(f' data-{k}="{v}"' for k, v in f.keys.items())
        + f'><img alt="{html.escape(f.caption)}" '
        f'src="data:image/png;base64,{base64.b64encode(f.png).decode()}">'
        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
        for f in figures
    )


def figure(key: str, caption: str, fig: Figure) -> ReportFigure:
    """Render a matplotlib figure for a report."""
    return ReportFigure(key, caption, _png(fig), plots.figure_keys(fig))


def _optional_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _audit_html(findings: Mapping[str, list[Mapping]]) -> str:
    rows = []
    for variant, items in findings.items():
        if not items:
            rows.append(f"<tr><td>{html.escape(variant)}</td><td colspan=5>no findings</td></tr>")
        for f in items:
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(v))}</td>"
                    for v in (
                        variant,
                        f["severity"],
                        f["layer"],
                        f["kind"],
                        json.dumps(f["measured"]),
                        f["fix"],
                    )
                )
                + "</tr>"
            )
    return (
        "<h2>Audit at initialization</h2><p>What <code>selfnorm check</code> finds in each "
        "variant's freshly initialized model (seed of the first run), on a batch of the "
        "training data.</p><table id=audit class=findings><thead><tr><th>variant</th>"
        "<th>severity</th><th>layer</th><th>kind</th><th>measured</th><th>fix</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _audit_md(findings: Mapping[str, list[Mapping]]) -> str:
    lines = ["## Audit at initialization", "", "| variant | severity | layer | kind | fix |",
             "|---|---|---|---|---|"]  # fmt: skip
    for variant, items in findings.items():
        if not items:
            lines.append(f"| {variant} | — | — | no findings | — |")
        for f in items:
            lines.append(
                f"| {variant} | {f['severity']} | {f['layer']} | {f['kind']} | {f['fix']} |"
            )
    return "\n".join(lines) + "\n\n"


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.md`` into ``run_dir``; return their paths.

    Raises:
        ValueError: ``run_dir`` is not a finished comparison run.
    """
    rd = RunDir(run_dir)
    config, summary = _load(rd)
    names = list(summary["variants"])
    records = _records(rd, config, names)
    text = verdict(summary, _drift(records) if records else None)
    figures = make_figures(run_dir, records)
    ds = summary.get("dataset", {})
    title = f"selfnorm comparison: {', '.join(names)} on {ds.get('name', '?')}"

    def size(key: str) -> str:
        return "?" if ds.get(key) is None else str(ds[key])

    sub = (
        f"{size('train')} training / {size('val')} validation / {size('test')} test samples, "
        f"{len(config['seeds'])} seed(s), device {summary.get('device', '?')}"
    )
    if stacking_text(summary):
        sub += f", {stacking_text(summary)}"
    fig_html = figures_html(figures)
    if not records:
        fig_html += (
            "<p>No activation records were stored in this run (it ran with --no-record), so "
            "the per-layer figures are missing.</p>"
        )
    notes = _optional_json(rd.root / "notes.json") or {}
    title = notes.get("title", title)
    intro = notes.get("intro", "")
    carries = notes.get("variants") or {}  # a reproduction's word on each variant
    rows = [[name, carries[name]] for name in names if name in carries]
    carried = {
        style: render(["variant", "what it carries"], rows, style, html_id="carries")
        if rows
        else ""
        for style in ("html", "markdown")
    }
    findings = _optional_json(rd.root / "audit.json")
    body = (
        (f"<p class=intro>{html.escape(intro)}</p>" if intro else "")
        + (f"<div class=wide>{carried['html']}</div>" if rows else "")
        + f"<div class=wide>{comparison_table(summary, 'html')}</div>"
        + f"<p class=verdict id=verdict>{html.escape(text)}</p>"
        + f"<h2>Figures</h2>{fig_html}"
        + (_audit_html(findings) if findings else "")
        + "<h2>Configuration</h2>"
        + f"<pre id=config>{html.escape(json.dumps(config, indent=2))}</pre>"
    )
    html_path = atomic_write_text(rd.root / "report.html", render_page(title, sub, body))
    md = (
        f"# {title}\n\n{sub}\n\n{intro + chr(10) + chr(10) if intro else ''}"
        f"{carried['markdown'] + chr(10) + chr(10) if rows else ''}"
        f"{comparison_table(summary, 'markdown')}\n\n{text}\n\n"
        f"Figures: see report.html ({', '.join(f.key for f in figures)}).\n\n"
        + (_audit_md(findings) if findings else "")
        + f"## Configuration\n\n```json\n{json.dumps(config, indent=2)}\n```\n"
    )
    md_path = atomic_write_text(rd.root / "summary.md", md)
    return html_path, md_path
