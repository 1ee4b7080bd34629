"""Tables: one renderer for the terminal, Markdown and HTML, and the comparison's column spec.

A table is a header and rows of cell strings; :func:`render` writes it as aligned text, a
Markdown table or an HTML ``<table>``. :data:`COMPARISON` is the one column spec of a
``selfnorm compare`` summary, used by the terminal table, ``summary.md`` and ``report.html``.
Numbers over seeds are shown as ``mean ± std`` (:func:`mean_std_cell`); a single value has no
spread and shows no ``±``.

Example:
    >>> print(render(["a", "bb"], [["1", "2"], ["10", "x"]], "text"))
    a   bb
    1   2
    10  x
    >>> print(render(["a", "bb"], [["1", "2"]], "markdown"))
    | a | bb |
    |---|---|
    | 1 | 2 |
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["COMPARISON", "Column", "comparison_table", "mean_std_cell", "render"]

STYLES = ("text", "markdown", "html")


def render(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    style: str,
    *,
    html_id: str | None = None,
    html_row_classes: Sequence[str | None] | None = None,
) -> str:
    """The table as ``text`` (columns aligned by two spaces), ``markdown`` or ``html`` (cells
    escaped; ``html_id`` and per-row classes optional)."""
    if style not in STYLES:
        raise ValueError(f"style={style!r}; choose one of {', '.join(STYLES)}")
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"a row has {len(r)} cells for {len(header)} columns: {list(r)}")
    if style == "text":
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join(
            "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]
        )
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    classes = html_row_classes or [None] * len(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        (f'<tr class="{html.escape(c)}">' if c else "<tr>")
        + "".join(f"<td>{html.escape(str(v))}</td>" for v in r)
        + "</tr>"
        for r, c in zip(rows, classes, strict=True)
    )
    ident = f' id="{html.escape(html_id)}"' if html_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def mean_std_cell(mean: float | None, std: float | None, fmt: str, scale: float = 1.0) -> str:
    """``mean ± std`` formatted with ``fmt`` after multiplying by ``scale``; ``—`` for no
    value, the mean alone where there is no std (one value).

    Example:
        >>> mean_std_cell(0.97, 0.01, ".2f", 100), mean_std_cell(3.0, None, ".1f")
        ('97.00 ± 1.00', '3.0')
    """
    if mean is None:
        return "—"
    if std is None:
        return f"{mean * scale:{fmt}}"
    return f"{mean * scale:{fmt}} ± {std * scale:{fmt}}"


@dataclass(frozen=True)
class Column:
    """A column of the comparison table: its header and its cell of one variant's summary."""

    header: str
    cell: Callable[[str, Mapping[str, Any]], str]


def _stat(key: str, fmt: str, scale: float = 1.0) -> Callable[[str, Mapping[str, Any]], str]:
    return lambda _name, v: mean_std_cell(v.get(key), v.get(f"{key}_std"), fmt, scale)


def _diverged(_name: str, v: Mapping[str, Any]) -> str:
    n = len(v.get("runs", [])) or 1
    return f"{round(v['diverged'] * n)}/{n}"


COMPARISON: tuple[Column, ...] = (
    Column("variant", lambda name, _v: name),
    Column("test acc %", _stat("test_accuracy", ".2f", 100.0)),
    Column("test loss", _stat("test_loss", ".4f")),
    Column("best val %", _stat("best_val_accuracy", ".2f", 100.0)),
    Column("final val %", _stat("final_val_accuracy", ".2f", 100.0)),
    Column("epochs to 97% of best", _stat("epochs_to_97", ".1f")),
    Column("s/epoch", _stat("epoch_seconds", ".3f")),
    Column("diverged", _diverged),
)
"""The comparison table's columns: mean ± std over seeds (diverged runs excluded) of the
per-run numbers of :func:`selfnorm.summary.run_metrics`, and the diverged runs."""


def comparison_table(summary: Mapping[str, Any], style: str) -> str:
    """The comparison table of a summary.json, best test accuracy first.

    Example:
        >>> s = {"ranking": ["selu"], "variants": {"selu": {
        ...     "test_accuracy": 0.97, "test_accuracy_std": 0.01, "test_loss": 0.1,
        ...     "test_loss_std": 0.02, "best_val_accuracy": 0.98, "best_val_accuracy_std": 0.0,
        ...     "final_val_accuracy": 0.975, "final_val_accuracy_std": 0.0, "epochs_to_97": 3.0,
        ...     "epochs_to_97_std": 1.0, "epoch_seconds": 0.5, "epoch_seconds_std": 0.1,
        ...     "diverged": 0.0}}}
        >>> print(comparison_table(s, "text"))  # doctest: +NORMALIZE_WHITESPACE
        variant  test acc %    test loss        best val %    final val %   epochs to 97% of best  s/epoch        diverged
        selu     97.00 ± 1.00  0.1000 ± 0.0200  98.00 ± 0.00  97.50 ± 0.00  3.0 ± 1.0              0.500 ± 0.100  0/1
    """  # noqa: E501
    ranking = list(summary.get("ranking", []))
    names = ranking + [n for n in summary["variants"] if n not in ranking]
    rows = [[c.cell(n, summary["variants"][n]) for c in COMPARISON] for n in names]
    classes = ["best" if ranking and n == ranking[0] else None for n in names]
    return render(
        [c.header for c in COMPARISON],
        rows,
        style,
        html_id="comparison",
        html_row_classes=classes,
    )
