"""Aggregate per-run results over seeds, and format the comparison table (pure functions)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["METRICS", "mean_std", "run_metrics", "summarize"]

METRICS = (
    "test_accuracy",
    "test_loss",
    "best_val_accuracy",
    "final_val_accuracy",
    "epochs_to_97",
    "epoch_seconds",
)
"""Per-run numbers that summary.json reports as mean (key) and std over seeds (key_std)."""


def run_metrics(result: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> dict:
    """The numbers of one run, from its ``result.json`` and its per-epoch history
    (``metrics.jsonl``): the one definition used by ``compare``, ``sweep`` and the report.

    ``final_*`` are the last epoch's (the model whose test score is reported); ``epochs_to_97``
    is the first epoch whose validation accuracy reaches 97% of the run's best;
    ``epoch_seconds`` is the median epoch time (the only number that is not deterministic).
    With a test score per epoch (``train.test_every_epoch``), ``best_test_accuracy`` is the best
    of them (the number a model picked on the test set reports) and
    ``test_accuracy_at_best_val`` the test score of the epoch with the best validation accuracy
    (the first such epoch: the model picked honestly); both None without.

    Example:
        >>> h = [{"val_accuracy": a, "epoch_seconds": 1.0} for a in (0.5, 0.9, 0.95, 0.93)]
        >>> m = run_metrics({"test_accuracy": 0.94, "test_loss": 0.2, "diverged": False}, h)
        >>> m["best_val_accuracy"], m["final_val_accuracy"], m["epochs_to_97"]
        (0.95, 0.93, 3)
        >>> for row, t in zip(h, (0.4, 0.92, 0.91, 0.935)):
        ...     row["test_accuracy"] = t
        >>> m = run_metrics({"test_accuracy": 0.935}, h)
        >>> m["best_test_accuracy"], m["test_accuracy_at_best_val"]
        (0.935, 0.91)
    """
    accs = [row.get("val_accuracy") for row in history]
    if None in accs:  # a training without validation scores (selfnorm.integrations)
        accs = []
    tests = [row.get("test_accuracy") for row in history]
    scored = bool(tests) and all(t is not None for t in tests)
    losses = [row["val_loss"] for row in history if "val_loss" in row]
    best = max(accs) if accs else None
    last = history[-1] if history else {}
    return {
        "test_accuracy": result.get("test_accuracy"),
        "test_loss": result.get("test_loss"),
        "best_val_accuracy": best,
        "final_val_accuracy": accs[-1] if accs else None,
        "final_val_loss": last.get("val_loss"),
        "min_val_loss": min(losses) if losses else None,
        "final_train_loss": last.get("train_loss"),
        "epochs_to_97": next(i for i, a in enumerate(accs, 1) if a >= 0.97 * best)
        if accs
        else None,
        "epoch_seconds": statistics.median(r["epoch_seconds"] for r in history)
        if history and all("epoch_seconds" in r for r in history)
        else None,
        "epochs_completed": result.get("epochs_completed", len(history)),
        "diverged": bool(result.get("diverged")),
        "diverged_reason": result.get("diverged_reason"),
        "best_test_accuracy": max(tests) if scored else None,
        "test_accuracy_at_best_val": tests[accs.index(best)] if scored else None,
    }


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values that are not None; the std is
    None for fewer than two values (one seed has no spread to show), both None for none.
    The one convention of compare, sweep, benchmark and the report.

    Example:
        >>> mean_std([1.0, 3.0, None]), mean_std([2.0]), mean_std([])
        ((2.0, 1.4142135623730951), (2.0, None), (None, None))
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None


def summarize(
    config,
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    histories: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    device: str,
    dataset,
    stacking: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build summary.json: for each variant the mean and sample std over seeds of METRICS
    (diverged runs excluded from the means), ``diverged`` = the fraction of seeds that diverged,
    and the per-seed numbers under ``runs``; with ``stacking`` (variant -> runs per stacked
    model, and the ``train.stack`` asked for) which mode trained each variant."""
    variants: dict[str, Any] = {}
    for name, runs in results.items():
        per_run = [run_metrics(r, h) for r, h in zip(runs, histories[name], strict=True)]
        entry: dict[str, Any] = {}
        for key in METRICS:
            ok = [m[key] for m in per_run if not m["diverged"]]
            entry[key], entry[f"{key}_std"] = mean_std(ok)
        entry["diverged"] = sum(m["diverged"] for m in per_run) / len(per_run)
        entry["seeds"] = [r["seed"] for r in runs]
        entry["runs"] = [{"seed": r["seed"], **m} for r, m in zip(runs, per_run, strict=True)]
        variants[name] = entry
    ranked = sorted(
        (n for n in variants if variants[n]["test_accuracy"] is not None),
        key=lambda n: -variants[n]["test_accuracy"],
    )
    if isinstance(dataset, Mapping):  # a training selfnorm did not run: what its caller knows
        described = dict(dataset)
    else:
        described = {
            "name": dataset.name,
            "train": len(dataset.y_train),
            "val": len(dataset.y_val),
            "test": len(dataset.y_test),
            "num_classes": dataset.num_classes,
            "input_shape": list(dataset.input_shape),
        }
    out = {
        "dataset": described,
        "device": device,
        "ranking": ranked,
        "variants": variants,
    }
    if stacking is not None:  # runs per stacked model (1: one at a time)
        out["stacking"] = {
            name: {"mode": "stacked" if v["runs_per_stack"] > 1 else "sequential", **v}
            for name, v in stacking.items()
        }
    return out


def stacking_text(summary: Mapping[str, Any]) -> str:
    """How the runs of a comparison trained, in words (``summary["stacking"]``; "" when the
    summary predates it).

    Example:
        >>> stacking_text({"stacking": {"selu": {"runs_per_stack": 3},
        ...                             "relu+bn": {"runs_per_stack": 1}}})
        'seeds stacked: selu 3 per model; relu+bn one run at a time'
        >>> stacking_text({"stacking": {"selu": {"runs_per_stack": 1}}})
        'one run at a time'
    """
    stacking = summary.get("stacking") or {}
    if not stacking:
        return ""
    if all(v.get("runs_per_stack", 1) == 1 for v in stacking.values()):
        return "one run at a time"
    parts = [
        f"{name} {v['runs_per_stack']} per model"
        if v.get("runs_per_stack", 1) > 1
        else f"{name} one run at a time"
        for name, v in stacking.items()
    ]
    return "seeds stacked: " + "; ".join(parts)
