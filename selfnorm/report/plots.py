"""Figures (matplotlib, headless: the object API with the Agg canvas, no pyplot state)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from selfnorm._io import atomic_write_bytes
from selfnorm.constants import ALPHA_01, LAMBDA_01
from selfnorm.theory import fixed_point, g


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Render ``fig`` to PNG in memory, then write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def figure_keys(fig: Figure) -> dict[str, int]:
    """What a reader needs to decode a figure, counted from the figure itself: ``series`` (the
    most distinct colours of labelled lines on one axes: more than one needs a legend),
    ``legends`` (axes and figure legends), ``mappables`` (images, meshes and colour-mapped
    collections: each needs a colour scale) and ``colorbars``.

    Example:
        >>> import matplotlib.figure
        >>> fig = matplotlib.figure.Figure()
        >>> ax = fig.subplots()
        >>> _ = ax.plot([0, 1], label="a"), ax.plot([1, 0], label="b")
        >>> figure_keys(fig)
        {'series': 2, 'legends': 0, 'mappables': 0, 'colorbars': 0}
        >>> _ = ax.legend(); fig.colorbar(ax.imshow([[0, 1]]), ax=ax) and None
        >>> figure_keys(fig)
        {'series': 2, 'legends': 1, 'mappables': 1, 'colorbars': 1}
    """
    from matplotlib.collections import QuadMesh
    from matplotlib.colors import to_hex

    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    plotted = [a for a in fig.axes if a not in bars]
    series = max(  # labelled lines only: a reference line or a legend proxy is no series
        (
            len(
                {
                    to_hex(ln.get_color())
                    for ln in a.get_lines()
                    if not ln.get_label().startswith("_")
                }
            )
            for a in plotted
        ),
        default=0,
    )
    mappables = sum(
        len(a.images)
        + sum(isinstance(c, QuadMesh) or c.get_array() is not None for c in a.collections)
        for a in plotted
    )
    legends = len(fig.legends) + sum(a.get_legend() is not None for a in plotted)
    return {"series": series, "legends": legends, "mappables": mappables, "colorbars": len(bars)}


def mapping_field_figure(
    mu_range: tuple[float, float] = (-0.5, 0.5),
    nu_range: tuple[float, float] = (0.5, 2.0),
    n: int = 21,
    lam: float = LAMBDA_01,
    alpha: float = ALPHA_01,
) -> Figure:
    r"""The vector field :math:`g(\mu, \nu) - (\mu, \nu)` for :math:`\omega = 0, \tau = 1`, with
    the fixed point marked (the paper's Figure 2)."""
    mu, nu = np.meshgrid(np.linspace(*mu_range, n), np.linspace(*nu_range, n))
    mu_t, nu_t = g(mu, 0.0, nu, 1.0, lam, alpha)
    du, dv = mu_t - mu, nu_t - nu
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot()
    q = ax.quiver(mu, nu, du, dv, np.hypot(du, dv), cmap="viridis", angles="xy")
    fig.colorbar(q, ax=ax, label="step length |g(μ, ν) − (μ, ν)|")
    fp = fixed_point(0.0, 1.0, 0.0, 1.0, lam, alpha)
    fm, fv = (round(v, 4) + 0.0 for v in (fp.mean, fp.var))  # + 0.0 turns -0.0 into 0.0
    ax.plot([fp.mean], [fp.var], "r*", markersize=16, label=f"fixed point ({fm:g}, {fv:g})")
    ax.set_xlabel("μ (mean of the inputs)")
    ax.set_ylabel("ν (variance of the inputs)")
    ax.set_title(f"SELU mean/variance mapping g (ω = 0, τ = 1, λ = {lam:.4f}, α = {alpha:.4f})")
    ax.legend(loc="upper right")
    return fig


# ---------------------------------------------------------------------------------------------
# Figures of a comparison run. Inputs are plain data read from the run directory: per variant
# the Records of one seed (selfnorm.records.read_records) and the per-epoch metrics of every
# seed. Nothing here trains or touches a model.
# ---------------------------------------------------------------------------------------------

_CMAP = "viridis"


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f")  # fmt: skip
_FAMILY_COLOR = {"selu": 0, "relu": 1, "lrelu": 2, "elu": 3, "gelu": 4, "silu": 5, "tanh": 6}
"""Each family's own colour, the same in every figure of every run (a second variant of the
same family in one figure takes the next free colour)."""


def _variant_colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per variant: its family's (``selu``, ``relu+bn`` -> relu's, ...) unless another
    variant of the figure has it, then the first free one; stable for the same names.

    Example:
        >>> _variant_colors(["relu", "selu", "selu@seed-tf"]) == {
        ...     "relu": _PALETTE[1], "selu": _PALETTE[0], "selu@seed-tf": _PALETTE[2]}
        True
    """
    import re

    taken: set[int] = set()
    out = {}
    for n in names:
        family = re.split(r"[@:+]", n, maxsplit=1)[0]
        want = _FAMILY_COLOR.get(family)
        if want is None or want in taken:
            want = next((k for k in range(len(_PALETTE)) if k not in taken), len(taken))
        taken.add(want)
        out[n] = _PALETTE[want % len(_PALETTE)]
    return out


def _snapshot_indices(n_records: int, k: int) -> list[int]:
    """Up to ``k`` record indices from the first to the last, spaced on a log scale of the
    record number, so that early training, where the distributions change most, gets most
    of them (a linear spacing shows three near-identical late curves).

    Example:
        >>> _snapshot_indices(300, 6)
        [0, 2, 9, 30, 95, 299]
        >>> _snapshot_indices(3, 6)
        [0, 1, 2]
    """
    if n_records <= k:
        return list(range(n_records))
    out = {0, n_records - 1}
    for x in np.geomspace(1, n_records, k)[1:-1]:
        out.add(int(round(x)) - 1)
    return sorted(out)


def _density(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """In-range counts [under, bins..., over] -> density over all values (integrates to the
    in-range fraction, so mass outside the range is visible as a missing area)."""
    inner = counts[1:-1].astype(float)
    total = counts.sum()
    return inner / (total * np.diff(edges)) if total > 0 else inner


def selu_reference_density(edges: np.ndarray) -> np.ndarray:
    r"""What the theory predicts a SELU layer at the fixed point outputs, binned like a record:
    the density of :math:`y = \operatorname{selu}(z)`, :math:`z \sim \mathcal N(0, 1)` (the
    pre-activation of a layer with normalized weights, :math:`\omega = 0, \tau = 1`, fed by
    (0, 1) activations), averaged over each bin. It is not N(0, 1): skewed, with its mass
    piled up just above the saturation value :math:`-\lambda\alpha \approx -1.758`.

    .. math:: P(y \le t) = \Phi(t/\lambda)\ (t \ge 0), \quad
              \Phi\big(\ln(1 + t/(\lambda\alpha))\big)\ (-\lambda\alpha < t < 0)

    Example:
        >>> e = np.linspace(-4, 4, 801)
        >>> d = selu_reference_density(e)
        >>> round(float((d * np.diff(e)).sum()), 5)  # the mass in range: P(y > 4) = 7e-5
        0.99993
        >>> float(d[e[1:] <= -1.76].max())  # nothing below the saturation value
        0.0
    """
    from scipy.special import ndtr

    from selfnorm.constants import ALPHA_01, LAMBDA_01

    sat = LAMBDA_01 * ALPHA_01
    t = np.asarray(edges, dtype=float)
    cdf = np.where(
        t >= 0,
        ndtr(t / LAMBDA_01),
        ndtr(np.log(np.clip(1.0 + t / sat, 1e-300, None))) * (t > -sat),
    )
    return np.diff(cdf) / np.diff(t)


def _figure_legend(fig: Figure, axes) -> None:
    """One legend for the whole figure, right of the panels, with every label any panel drew
    (each once), at a size that stays readable however many panels there are."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=8)


def _label_cell(ax, i: int, j: int, n_rows: int, title: str, ylabel: str, xlabel: str) -> None:
    """Label a layer x variant grid: variant titles on top, layer names left, x label below."""
    if i == 0:
        ax.set_title(title)
    if j == 0:
        ax.set_ylabel(ylabel)
    if i == n_rows - 1:
        ax.set_xlabel(xlabel)


MIN_WIDTH = 7.5
"""Inches: a figure of one variant (one column) still fits its title and legend."""


def _grid(n_rows: int, n_cols: int, cell: tuple[float, float] = (3.2, 2.0)):
    width = max(cell[0] * n_cols + 0.8, MIN_WIDTH)
    fig = Figure(figsize=(width, cell[1] * n_rows + 0.9), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True)
    return fig, axes


def histogram_evolution_figure(records: Mapping[str, object], snapshots: int = 6) -> Figure:
    """(a) Per-layer post-activation densities at ``snapshots`` moments of training (start to
    end, light to dark), variants side by side; for SELU layers the theory's own reference
    dashed (:func:`selu_reference_density`, not N(0, 1)); other families get no reference."""
    names = list(records)
    n_layers = max(len(r.layers) for r in records.values())
    fig, axes = _grid(n_layers, len(names))
    cmap = matplotlib.colormaps[_CMAP]
    for j, name in enumerate(names):
        rec = records[name]
        centers = 0.5 * (rec.bin_edges[1:] + rec.bin_edges[:-1])
        idx = _snapshot_indices(len(rec.steps), snapshots)
        for i in range(n_layers):
            ax = axes[i, j]
            if i >= len(rec.layers):
                ax.set_axis_off()
                continue
            for t, s in enumerate(idx):
                color = cmap(0.15 + 0.75 * t / max(len(idx) - 1, 1))
                ax.plot(
                    centers,
                    _density(rec.hist_post[s, i], rec.bin_edges),
                    color=color,
                    lw=1.2,
                    label=f"epoch {rec.epochs[s]:.2g}",
                )
            if rec.family[i] == "selu":  # the others have no fixed point to compare with
                ax.stairs(selu_reference_density(rec.bin_edges), rec.bin_edges, color="k",
                          ls="--", lw=0.8, label="theory: SELU of N(0, 1)")  # fmt: skip
            ax.axvline(0, color="0.8", lw=0.6, zorder=0)
            # A ReLU's exact zeros make a spike that would flatten everything else: clip the
            # axis and print the zero fraction instead.
            ax.set_ylim(0, 1.0)
            last = idx[-1]
            notes = []
            zeros = rec.post["zero_frac"][last, i]
            if np.isfinite(zeros) and zeros > 0.01:
                notes.append(f"{zeros:.0%} exact zeros")
            sat = rec.post["saturation_frac"][last, i]
            if rec.family[i] == "selu" and np.isfinite(sat) and sat > 0.01:
                notes.append(f"{sat:.0%} near saturation")  # the spike the axis clips
            counts = rec.hist_post[last, i]
            outside = (counts[0] + counts[-1]) / max(counts.sum(), 1)
            if outside > 0.005:
                notes.append(f"{outside:.1%} beyond ±{rec.bin_edges[-1]:g}")
            if notes:
                ax.text(0.98, 0.92, "\n".join(notes) + " (at the end)", transform=ax.transAxes,
                        ha="right", va="top", fontsize=7,
                        bbox={"facecolor": "white", "alpha": 0.85, "lw": 0})  # fmt: skip
            _label_cell(ax, i, j, n_layers, name, f"{rec.layers[i]}\ndensity", "activation value")
    _figure_legend(fig, axes.flat)
    fig.suptitle("Post-activation distributions over training (one seed per variant)")
    return fig


def histogram_heatmap_figure(records: Mapping[str, object]) -> Figure:
    """(b) Signed heatmaps: value bin (y) x training step (x), colour = log10 of the fraction of
    the record's values in the bin (+1e-4)."""
    return _heatmaps(
        records,
        lambda r: (r.hist_post, r.layers, r.bin_edges),
        "value",
        "Post-activation histograms over training, log10(fraction of values per bin)",
    )


def weight_histogram_figure(records: Mapping[str, object]) -> Figure:
    """Heatmaps of every weight layer's weights over training, in units of 1/sqrt(fan_in)
    (LeCun's N(0, 1/fan_in) is N(0, 1) there, He's N(0, 2))."""
    return _heatmaps(
        records,
        lambda r: (r.hist_weight, r.weight_layers, r.bin_edges),
        "w·sqrt(fan_in)",
        "Weights over training, in units of 1/sqrt(fan_in), log10(fraction per bin)",
        taken_only=True,
    )


def gradient_histogram_figure(records: Mapping[str, object], of: str = "activations") -> Figure:
    """Heatmaps of gradients over training on signed log bins (y: ±10^k; the middle row is 0):
    w.r.t. each activation's output (``of="activations"``) or each weight layer's weights
    (``of="weights"``)."""
    if of == "activations":
        get = lambda r: (r.hist_grad, r.layers, r.grad_bin_edges)  # noqa: E731
        title = "Gradient w.r.t. each activation's output"
    else:
        get = lambda r: (r.hist_weight_grad, r.weight_layers, r.grad_bin_edges)  # noqa: E731
        title = "Gradient w.r.t. each layer's weights"
    return _heatmaps(records, get, "gradient", f"{title}, log10(fraction per bin)", True, True)


def has_gradient_histograms(rec) -> bool:
    """Whether records carry gradient histograms (older runs' do not)."""
    return bool(rec.hist_grad.shape[-1]) and bool(rec.hist_grad.sum())


def _heatmaps(records, get, ylabel: str, title: str, taken_only=False, log_bins=False) -> Figure:
    """One heatmap per layer (rows) and variant (columns): ``get(rec)`` gives the counts
    ``(S, layers, bins + 2)``, the layer names and the edges. ``taken_only``: drop records
    whose row is all zeros (not taken then). ``log_bins``: edges are signed log-spaced, drawn
    on an even axis labelled with the powers of ten."""
    names = list(records)
    n_layers = max(len(get(r)[1]) for r in records.values())
    fig, axes = _fixed_grid(n_layers, len(names))
    image = None
    for j, name in enumerate(names):
        rec = records[name]
        counts_all, layers, edges = get(rec)
        for i in range(n_layers):
            ax = axes[i, j]
            if i >= len(layers) or not counts_all.shape[-1]:
                ax.set_axis_off()
                continue
            hist = counts_all[:, i, :].astype(float)
            keep = hist.sum(1) > 0 if taken_only else np.ones(len(hist), bool)
            if keep.sum() == 0:
                ax.set_axis_off()
                continue
            hist, epochs = hist[keep], _time(rec)[keep]
            # fractions per record (records of a short last batch hold fewer values), log scale
            frac = hist[:, 1:-1] / np.maximum(hist.sum(1, keepdims=True), 1.0)
            counts = np.log10(1e-4 + frac.T)
            x0, x1 = float(epochs[0]), float(epochs[-1])
            if x1 <= x0:
                x1 = x0 + 1.0
            y0, y1 = (0.0, float(len(edges) - 1)) if log_bins else (edges[0], edges[-1])
            image = ax.imshow(
                counts,
                aspect="auto",
                origin="lower",
                cmap="magma",
                vmin=-4.0,
                vmax=0.0,
                extent=(x0, x1, float(y0), float(y1)),
                interpolation="nearest",  # one block per bin and record; a third the PNG bytes
            )
            if log_bins:
                _signed_log_ticks(ax, edges)
            else:
                ax.axhline(0, color="w", lw=0.5, alpha=0.6)
            _label_cell(ax, i, j, n_layers, name, f"{layers[i]}\n{ylabel}", "epoch")
            if j:  # the value axis is the same across a row: labelled once, on the left
                ax.tick_params(labelleft=False)
    if image is not None:
        w, h = fig.get_size_inches()
        bar = fig.add_axes((1 - 0.75 / w, 0.25, 0.12 / w, 0.5), label="<colorbar>")
        fig.colorbar(image, cax=bar, label="log10(fraction of the values in the bin)")
    fig.suptitle(title, y=1 - 0.12 / fig.get_size_inches()[1], va="top")
    return fig


def _fixed_grid(n_rows: int, n_cols: int, cell: tuple[float, float] = (3.0, 1.7)):
    """A layer x variant grid of heatmaps with margins fixed in inches (a constrained layout
    of dozens of panels costs more than drawing them): room for two-line layer labels on the
    left, the variants' titles and the figure's title on top, the x label below and the
    colour bar right."""
    left, right, top, bottom, gap = 0.95, 1.2, 0.75, 0.5, 0.12
    width = max(left + right + cell[0] * n_cols + gap * (n_cols - 1), MIN_WIDTH)
    height = top + bottom + cell[1] * n_rows + gap * (n_rows - 1)
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=gap / cell[0],
        hspace=gap / cell[1],
    )
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True)
    return fig, axes


def _time(rec) -> np.ndarray:
    """The records' epochs, or their steps where the epoch is unknown (a recorder told no
    ``steps_per_epoch``)."""
    return rec.epochs if np.isfinite(rec.epochs).all() else rec.steps.astype(float)


def _signed_log_ticks(ax, edges: np.ndarray) -> None:
    """Ticks at 0 and at the edges ±2^k for every tenth k (2^-30, 2^-20, 2^-10, 1: about
    1e-9, 1e-6, 1e-3, 1), labelled with their value, on an axis of bin positions."""
    middle = int(np.flatnonzero(edges == 0)[0])
    ax.axhline(middle, color="w", lw=0.5, alpha=0.6)
    pos, labels = [middle], ["0"]
    for k, e in enumerate(edges):
        mantissa, power = np.frexp(abs(e))  # |e| = mantissa * 2^power, mantissa in [0.5, 1)
        if e and mantissa == 0.5 and (power - 1) % 10 == 0:
            pos.append(k)
            labels.append(f"{e:.0e}".replace("e+00", "").replace("e-0", "e-"))
    ax.set_yticks(pos, labels, fontsize=6)


def moments_figure(records: Mapping[str, object]) -> Figure:
    """(c) Mean (top) and variance (bottom) of every layer's post-activations over training;
    the fixed point (0, 1) is the dashed line."""
    names = list(records)
    fig = Figure(figsize=(max(3.4 * len(names) + 0.8, MIN_WIDTH), 5.2), layout="constrained")
    axes = fig.subplots(2, len(names), squeeze=False, sharex="col")
    cmap = matplotlib.colormaps[_CMAP]
    for j, name in enumerate(names):
        rec = records[name]
        n = len(rec.layers)
        for i in range(n):
            color = cmap(i / max(n - 1, 1))
            axes[0, j].plot(rec.epochs, rec.post["mean"][:, i], color=color, label=rec.layers[i])
            axes[1, j].plot(rec.epochs, rec.post["std"][:, i] ** 2, color=color)
        selu = is_selu_record(rec)
        if selu:  # the others do not aim at (0, 1)
            axes[0, j].axhline(0.0, color="k", ls="--", lw=0.8, label="fixed point (0, 1)")
            axes[1, j].axhline(1.0, color="k", ls="--", lw=0.8)
        axes[0, j].set_title(name)
        axes[1, j].set_xlabel("epoch")
        var = rec.post["std"] ** 2
        var = var[np.isfinite(var) & (var > 0)]
        if selu:  # the dashed 1.0 is on the axis too
            var = np.append(var, 1.0)
        if var.size and var.max() / var.min() >= 3:  # a log axis only where it spans a range
            axes[1, j].set_yscale("log")
            _log_ticks(axes[1, j])
    axes[0, 0].set_ylabel("mean")
    axes[1, 0].set_ylabel("variance")
    _figure_legend(fig, axes.flat)
    fig.suptitle("Per-layer mean and variance of the activations (fixed point: SELU variants)")
    return fig


def training_curves_figure(histories: Mapping[str, Sequence[Sequence[Mapping]]]) -> Figure:
    """(d) Training loss and validation accuracy of every variant, mean ± std over seeds."""
    names = list(histories)
    colors = _variant_colors(names)
    fig = Figure(figsize=(10.5, 3.8), layout="constrained")
    ax_loss, ax_vloss, ax_acc = fig.subplots(1, 3)
    for name in names:
        runs = [r for r in histories[name] if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        epochs = np.arange(1, n + 1)
        for ax, key, scale in (
            (ax_loss, "train_loss", 1.0),
            (ax_vloss, "val_loss", 1.0),
            (ax_acc, "val_accuracy", 100.0),
        ):
            vals = np.array([[row.get(key, np.nan) for row in r[:n]] for r in runs], float)
            if np.isnan(vals).all():  # a training that did not report it (integrations)
                continue
            vals *= scale
            mean, std = vals.mean(0), vals.std(0)
            ax.plot(epochs, mean, color=colors[name], label=f"{name} ({len(runs)} seeds)")
            low = mean - std
            if ax is not ax_acc:  # a log axis: a band reaching 0 or below would draw spikes
                low = np.maximum(low, mean / 10)
            ax.fill_between(epochs, low, mean + std, color=colors[name], alpha=0.2, lw=0)
    for ax, title in ((ax_loss, "training loss"), (ax_vloss, "validation loss")):
        ax.set(title=title, xlabel="epoch", ylabel="cross-entropy (log scale)", yscale="log")
        _log_ticks(ax)
    ax_acc.set(title="validation accuracy (%)", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_vloss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_loss, ax_vloss, ax_acc):
        if not ax.lines:
            ax.text(0.5, 0.5, "not reported", ha="center", va="center", transform=ax.transAxes)
    drawn = next((ax for ax in (ax_acc, ax_vloss, ax_loss) if ax.lines), None)
    if drawn is not None:
        drawn.legend(fontsize=8 if len(names) <= 4 else 7)
    fig.suptitle("Learning curves, mean ± std over seeds")
    return fig


def fixed_point_distance_figure(records: Mapping[str, object]) -> Figure:
    """(e) Distance of each layer's (mean, var) from (0, 1) against depth, at the start, the
    middle and the end of training, for SELU variants only (the others do not aim at it):
    :math:`\\sqrt{\\mu^2 + (\nu - 1)^2}` of the layer's output mean and variance."""
    colors = _variant_colors(list(records))
    names = [n for n in records if is_selu_record(records[n])]  # the others do not aim at it
    fig = Figure(figsize=(10.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for k, (label, frac) in enumerate((("start", 0.0), ("middle", 0.5), ("end", 1.0))):
        ax = axes[k]
        for name in names:
            rec = records[name]
            s = round(frac * (len(rec.steps) - 1))
            ax.plot(
                rec.depth,
                rec.post["fp_distance"][s],
                "o-",
                color=colors[name],
                label=name,
                ms=4,
            )
        ax.set_title(f"{label} of training")
        ax.set_xlabel("layer (depth)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    drawn = [  # the three snapshots plotted, not every record
        records[n].post["fp_distance"][round(f * (len(records[n].steps) - 1))]
        for n in names
        for f in (0.0, 0.5, 1.0)
    ]
    values = np.concatenate(drawn or [[0.0]])
    values = values[np.isfinite(values)]
    top = float(values.max()) if values.size else 1.0
    if top > 2.0 and np.quantile(values, 0.1) < top / 30:  # decades apart: symlog keeps both
        axes[0].set_yscale("symlog", linthresh=0.1)
        axes[0].yaxis.set_major_locator(
            FixedLocator([0, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100])
        )
        axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:  # a linear axis from 0: a within-a-decade range still gets its ticks
        axes[0].set_ylim(0, 1.1 * top if top > 0 else 1.0)
    axes[0].set_ylabel("distance of (mean, var) from (0, 1)")
    axes[0].legend(fontsize=7)
    fig.suptitle("How far each layer's activations sit from the fixed point (0, 1)")
    return fig


def _log_ticks(ax) -> None:
    """Plain labelled ticks on a log y-axis, enough to read it and not a crowd: each decade's
    1 over more than three decades, 1-2-5 over one to three, 1-2-3-5 within one (of the axis
    range as drawn: call it after plotting)."""
    lo, hi = ax.get_ylim()
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 3.0
    subs = (1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1 else (1.0, 2.0, 3.0, 5.0)
    ax.yaxis.set_major_locator(LogLocator(subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def is_selu_record(rec) -> bool:
    """Whether every recorded layer of a variant is a SELU (the variants that aim at (0, 1))."""
    return bool(len(rec.family)) and all(f == "selu" for f in rec.family)


def depth_figure(curves: Mapping[str, object]) -> Figure:
    """Per-layer mean, variance and gradient norm at initialization against depth: measured
    (solid: the mean over the networks, shaded: their range), the map g with each layer's
    measured weight sums (dashed) and the mean-field recursion (dotted); (0, 1) in grey."""
    names = list(curves)
    colors = _variant_colors(names)
    fig = Figure(figsize=(13.0, 4.2), layout="constrained")
    ax_m, ax_v, ax_g = fig.subplots(1, 3)
    n_nets = 1
    for name in names:
        c = curves[name]
        col = colors[name]
        layers = np.arange(len(c.mean))

        def arr(v):
            return np.array([np.nan if x is None else x for x in v], dtype=float)

        ax_m.plot(layers, c.mean, color=col, label=name)
        ax_v.plot(layers, c.var, color=col, label=name)
        ax_g.plot(layers[1:], c.grad_norm[1:], color=col, label=name)
        if c.var_range and len(c.var_range) == len(layers):
            lo_hi = np.array(c.var_range, dtype=float)
            if (lo_hi[:, 1] > lo_hi[:, 0]).any():
                n_nets = max(n_nets, 2)
                ax_v.fill_between(layers, lo_hi[:, 0], lo_hi[:, 1], color=col, alpha=0.15, lw=0)
                g = np.array(c.grad_range, dtype=float)
                ax_g.fill_between(layers[1:], g[1:, 0], g[1:, 1], color=col, alpha=0.15, lw=0)
        theory_m, theory_v = arr(c.theory_mean), arr(c.theory_var)
        if np.isfinite(theory_m[1:]).any():
            ax_m.plot(layers, theory_m, "--", color=col, lw=1)
            ax_v.plot(layers, theory_v, "--", color=col, lw=1)
        if c.mf_var:
            ax_m.plot(layers, arr(c.mf_mean), ":", color=col, lw=1.6)
            ax_v.plot(layers, arr(c.mf_var), ":", color=col, lw=1.6)
            ax_g.plot(layers[1:], arr(c.mf_grad)[1:], ":", color=col, lw=1.6)
    ax_m.axhline(0.0, color="0.6", lw=0.8)
    ax_v.axhline(1.0, color="0.6", lw=0.8)
    ax_m.set(title="mean of the activations", xlabel="layer", ylabel="mean over units and samples")
    ax_v.set(title="variance of the activations", xlabel="layer", yscale="log",
             ylabel="variance (log scale)")  # fmt: skip
    ax_g.set(title="gradient norm per sample (backward)", xlabel="layer", yscale="log",
             ylabel="rms gradient norm (log scale)")  # fmt: skip
    for ax in (ax_m, ax_v, ax_g):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_v, ax_g):
        _log_ticks(ax)
    ax_v.plot([], [], "k--", lw=1, label="map g, measured ω, τ")
    ax_v.plot([], [], "k:", lw=1.6, label="mean-field q recursion")
    _figure_legend(fig, (ax_m, ax_v))  # beside the panels, off the curves
    measured = "the mean over networks, shaded: their range" if n_nets > 1 else "one network"
    fig.suptitle(f"Signal propagation at initialization (solid: measured, {measured})")
    fig.text(
        0.01, -0.02,
        "Dashed: the map g of (mean, variance) with each layer's measured weight sums ω, τ "
        "(for SELU the paper's g; none with a norm layer or random biases). Dotted: the "
        "mean-field recursion q_l = σ_w² E[φ(√q z)²] + σ_b²\n(Poole et al. 2016) and, "
        "backwards, √χ per layer, χ = σ_w² E[φ'(√q z)²] (Schoenholz et al. 2017), anchored at "
        "the last hidden layer; both are infinite-width limits: one network's second moment "
        "random-walks around them\n(for ReLU by a factor of order exp(±√(5·layer/width))), "
        "so hold them against the mean of several networks, or a wider one.",
        fontsize=8, ha="left", va="top",
    )  # fmt: skip
    return fig


def figure1_figure(curves: Mapping[str, Mapping]) -> Figure:
    """Training loss against update steps for every (variant, depth) curve (paper's Figure 1)."""
    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    variants = list(dict.fromkeys(c["variant"] for c in curves.values()))
    depths = sorted({c["depth"] for c in curves.values()})
    cmaps = [matplotlib.colormaps[m] for m in ("Blues", "Reds", "Greens", "Purples")]
    for key, c in curves.items():
        vi = variants.index(c["variant"])
        shade = 0.45 + 0.5 * depths.index(c["depth"]) / max(len(depths) - 1, 1)
        loss = np.array([np.nan if v is None else v for v in c["loss"]], dtype=float)
        ax.plot(
            np.asarray(c.get("step") or np.arange(1, len(loss) + 1)),
            loss,
            color=cmaps[vi % len(cmaps)](shade),
            ls="-" if vi == 0 else "--",
            lw=1.0,
            label=key,
        )
    ax.set(xlabel="update step", ylabel="training loss (log scale)", yscale="log")
    _log_ticks(ax)
    ax.legend(fontsize=8, ncol=2)
    fig.suptitle("Training loss across update steps (Klambauer et al. 2017, Figure 1)")
    return fig
