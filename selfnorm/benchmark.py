"""The paper's tabular benchmark: nested, stratified k-fold CV of the variants and baselines.

For each of ``folds`` stratified, seeded outer folds (:func:`split_indices`):

1. the training part is split once more (stratified, seeded, ``val_fraction``) into an inner
   training and an inner validation split; standardization is fitted on the inner training split;
2. every network variant trains once per grid point and seed on the inner training split (jobs of
   :mod:`selfnorm.sweep`, so local workers or Ray), and every scikit-learn baseline (random
   forest, SVM, logistic regression, each standardized inside a ``Pipeline``) fits once per point
   of its own grid;
3. per method, the grid point with the best score on the inner validation split is chosen, and
   its score on the outer test fold is that method's fold score. Nothing is refitted: networks
   and baselines see exactly the same training rows.

The score is ROC AUC for binary targets and accuracy for more classes (``metric="auc"`` there
gives the macro one-vs-rest AUC). Per method: mean and sample std over folds, rank (1 = best mean;
tied means share the better rank), and the two-sided Wilcoxon signed-rank test
(:func:`scipy.stats.wilcoxon`, default settings) of its fold scores against the best method's,
paired by fold, as in the paper's tables.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from selfnorm._io import atomic_write_json, atomic_write_text
from selfnorm.data import (
    CSV_PREFIX,
    DataConfig,
    Dataset,
    apply_standardization,
    fit_standardization,
    read_csv,
    stratified_split,
)
from selfnorm.executors import LocalExecutor, connect
from selfnorm.locking import RunLock
from selfnorm.summary import mean_std
from selfnorm.sweep import (
    Executor,
    Job,
    Progress,
    SweepSpec,
    best_point,
    group_points,
    run_jobs,
    sweep_from_dict,
)
from selfnorm.tables import mean_std_cell, render

__all__ = [
    "BASELINES",
    "DEFAULT_GRID",
    "METRICS",
    "CvFold",
    "benchmark",
    "benchmark_markdown",
    "benchmark_spec",
    "format_benchmark_table",
    "fold_dataset",
    "rank_methods",
    "run_baseline",
    "score",
    "split_indices",
    "wilcoxon_p",
]

METRICS = ("auc", "accuracy")

BASELINES: dict[str, dict[str, list[Any]]] = {
    "random_forest": {"n_estimators": [500], "min_samples_leaf": [1, 5]},
    "svm": {"C": [0.1, 1.0, 10.0, 100.0]},
    "logistic_regression": {"C": [0.01, 0.1, 1.0, 10.0, 100.0]},
    "naive_bayes": {"var_smoothing": [1e-9]},
}
"""Each baseline's default grid (scikit-learn parameter name -> values); ``[baselines]`` in the
grid file replaces it, per baseline, and an empty table drops that baseline. ``naive_bayes``
(Gaussian) is the earlier state of the art that the paper's HTRU2 table compares with."""

DEFAULT_GRID: dict[str, Any] = {
    "activations": ["selu", "relu", "relu+bn", "relu+ln"],
    "seeds": [0],
    "model": {"width": 256},
    "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "epochs": 30},
    "grid": {
        "depth": [2, 4],
        "dropout": {"selu": [0.0, 0.05], "relu": [0.0, 0.2], "relu+bn": [0.0, 0.2],
                    "relu+ln": [0.0, 0.2]},
    },
}  # fmt: skip
"""The network variants and grid without ``--grid``: 4 points per variant, one seed."""


# ---------------------------------------------------------------------------------------------
# Folds and scores: pure functions
# ---------------------------------------------------------------------------------------------


def split_indices(
    y: np.ndarray, folds: int, seed: int, val_fraction: float
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The nested splits: per outer fold ``(inner_train, inner_val, test)`` row indices.

    Outer folds: ``StratifiedKFold(folds, shuffle=True, random_state=seed)``. Inner split:
    :func:`selfnorm.data.stratified_split` of the outer training rows with ``val_fraction`` and
    ``seed``. All index arrays are sorted.

    Example:
        >>> y = np.array([0, 1] * 10)
        >>> [(len(a), len(b), len(c)) for a, b, c in split_indices(y, 2, 0, 0.2)]
        [(8, 2, 10), (8, 2, 10)]
    """
    from sklearn.model_selection import StratifiedKFold

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds={folds!r} must be an integer >= 2, e.g. 10")
    counts = np.bincount(y)
    present = counts[counts > 0]
    if present.min() < folds:
        rare = int(np.flatnonzero(counts == present.min())[0])
        raise ValueError(
            f"class {rare} has {present.min()} samples, fewer than folds={folds}: every test "
            "fold needs each class; use fewer folds or drop the rare class"
        )
    out = []
    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in kfold.split(np.zeros(len(y)), y):
        kept, held = stratified_split(y[train], val_fraction, seed, "inner validation")
        out.append((train[kept], train[held], np.sort(test)))
    return out


def score(metric: str, y: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC (binary: of the class-1 column; more classes: macro one-vs-rest) or accuracy.

    Args:
        metric: ``auc`` or ``accuracy``.
        y: true class indices ``(N,)``.
        probs: class probabilities ``(N, C)`` (rows sum to 1 for multi-class AUC), or for binary
            AUC any ``(N,)`` score that ranks class 1 higher.

    Example:
        >>> score("auc", np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    from sklearn.metrics import roc_auc_score

    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}; choose one of {', '.join(METRICS)}")
    probs = np.asarray(probs)
    if metric == "accuracy":
        return float(np.mean(probs.argmax(1) == y))
    if probs.ndim == 1:
        return float(roc_auc_score(y, probs))
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    labels = list(range(probs.shape[1]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels))


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of :func:`scipy.stats.wilcoxon` (defaults) on paired scores; 1.0 when
    every difference is 0 (no evidence of a difference, where scipy would divide 0 by 0).

    Example:
        >>> wilcoxon_p([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
        1.0
    """
    from scipy.stats import wilcoxon

    d = np.subtract(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    if not np.any(d):
        return 1.0
    return float(wilcoxon(a, b).pvalue)


def rank_methods(fold_scores: Mapping[str, Sequence[float | None]]) -> dict[str, dict[str, Any]]:
    """Per method: ``mean``, ``std`` (sample std over folds), ``rank``, ``p_value``, ``folds``.

    Higher scores are better. Methods with a missing fold score (every grid point failed or
    diverged there) get ``complete: false``, mean/std over their remaining folds, and no rank or
    p-value. The best method is the complete one with the highest mean (the first listed among
    equals); its ``p_value`` is None.

    Example:
        >>> r = rank_methods({"a": [0.9, 0.8, 0.85], "b": [0.7, 0.75, 0.8]})
        >>> r["a"]["rank"], r["b"]["rank"], r["a"]["p_value"], r["b"]["p_value"]
        (1, 2, None, 0.25)
    """
    from scipy.stats import rankdata

    out: dict[str, dict[str, Any]] = {}
    for name, scores in fold_scores.items():
        vals = [float(s) for s in scores if s is not None]
        mean, std = mean_std(vals)
        out[name] = {
            "mean": mean,
            "std": std,
            "rank": None,
            "p_value": None,
            "complete": len(vals) == len(scores),
            "folds": [None if s is None else float(s) for s in scores],
        }
    complete = [n for n in out if out[n]["complete"]]
    if not complete:
        return out
    ranks = rankdata([-out[n]["mean"] for n in complete], method="min")
    for name, rank in zip(complete, ranks, strict=True):
        out[name]["rank"] = int(rank)
    best = next(n for n in complete if out[n]["rank"] == 1)
    for name in complete:
        if name != best:
            out[name]["p_value"] = wilcoxon_p(out[best]["folds"], out[name]["folds"])
    return out


# ---------------------------------------------------------------------------------------------
# Network jobs on one fold
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _table(path: str, target: str | int | None):
    return read_csv(path, target)


def _csv_path(data: DataConfig) -> str:
    if not data.dataset.startswith(CSV_PREFIX):
        raise ValueError(
            f"the benchmark reads csv:PATH data, not {data.dataset!r}; write the table out as "
            "CSV (features..., label) and pass csv:PATH"
        )
    return data.dataset[len(CSV_PREFIX) :]


def fold_dataset(data: DataConfig, folds: int, index: int) -> Dataset:
    """Outer fold ``index`` of a CSV table as a :class:`~selfnorm.data.Dataset`: train = inner
    training split, val = inner validation split, test = the outer test fold; standardized with
    statistics of the inner training split (``data.standardize``)."""
    table = _table(_csv_path(data), data.target)
    train, val, test = split_indices(table.y, folds, data.seed, data.val_fraction)[index]
    stats = fit_standardization(table.x[train], data.standardize)

    def x(rows: np.ndarray) -> np.ndarray:
        return apply_standardization(table.x[rows], stats)

    return Dataset(
        name=f"{data.dataset} fold {index + 1}/{folds}",
        x_train=x(train),
        y_train=table.y[train],
        x_val=x(val),
        y_val=table.y[val],
        x_test=x(test),
        y_test=table.y[test],
        num_classes=len(table.class_names),
        class_names=table.class_names,
        standardization=stats,
    )


@dataclass(frozen=True)
class CvFold:
    """A :class:`selfnorm.sweep.JobTask`: train on outer fold ``index`` of ``folds``, then score
    the final model on the inner validation split and on the outer test fold with ``metric``."""

    folds: int
    index: int
    metric: str

    def label(self) -> str:
        return f"fold{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cv_fold", "folds": self.folds, "index": self.index, "metric": self.metric}

    def dataset(self, data: DataConfig) -> Dataset:
        return fold_dataset(data, self.folds, self.index)

    def extra_metrics(self, job: Job, dataset: Dataset, run_root: Path) -> dict[str, Any]:
        """``val_score`` and ``test_score`` (None for a diverged run)."""
        import torch

        from selfnorm.storage import RunPaths
        from selfnorm.training import build_model, logit_batches

        result = json.loads((run_root / "result.json").read_text(encoding="utf-8"))
        if result["diverged"]:
            return {"val_score": None, "test_score": None}
        cfg = job.config
        model = build_model(
            cfg.model,
            job.activation,
            cfg.dropout_for(job.activation),
            dataset.input_shape,
            dataset.num_classes,
            job.seed,
        )
        ckpt = RunPaths(run_root).load_checkpoint(fallback=False)  # the final model only
        if ckpt is None:
            raise RuntimeError(
                f"{run_root} has no checkpoint.pt to score; delete the job folder "
                f"{run_root.parent.parent.parent} and run the benchmark again"
            )
        model.load_state_dict(ckpt["model"])

        def probs(x: np.ndarray) -> np.ndarray:
            logits = torch.cat([out for _, out in logit_batches(model, torch.from_numpy(x))])
            return torch.softmax(logits.double(), dim=1).numpy()

        return {
            "val_score": score(self.metric, dataset.y_val, probs(dataset.x_val)),
            "test_score": score(self.metric, dataset.y_test, probs(dataset.x_test)),
        }


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def _baseline_model(name: str, params: Mapping[str, Any], seed: int, multiclass_auc: bool):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if name == "random_forest":
        est = RandomForestClassifier(random_state=seed, n_jobs=1, **params)
    elif name == "svm":
        # binary AUC ranks by the decision function; multi-class AUC needs probabilities: Platt
        # scaling fitted by 5-fold CV on the training rows (deterministic: unshuffled folds)
        est = SVC(**params)
        if multiclass_auc:
            est = CalibratedClassifierCV(est, ensemble=False)
    elif name == "logistic_regression":
        est = LogisticRegression(max_iter=10_000, **params)
    elif name == "naive_bayes":
        est = GaussianNB(**params)
    else:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    return make_pipeline(StandardScaler(), est)


def _baseline_scores(model, x: np.ndarray, metric: str, num_classes: int) -> np.ndarray:
    """What :func:`score` needs: class probabilities, or (binary AUC, no predict_proba, i.e. the
    SVM) the decision function."""
    if metric == "auc" and num_classes == 2 and not hasattr(model, "predict_proba"):
        return model.decision_function(x)
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)
    onehot = np.zeros((len(x), num_classes))
    onehot[np.arange(len(x)), model.predict(x)] = 1.0
    return onehot


def run_baseline(
    name: str,
    grid: Mapping[str, Sequence[Any]],
    x: np.ndarray,
    y: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    metric: str,
    seed: int,
) -> tuple[list[float], list[dict[str, Any]]]:
    """Per fold: fit every grid point on the inner training split, keep the best on the inner
    validation split (the first among equals), score it on the test fold.

    Returns:
        ``(fold_scores, chosen)``; ``chosen[i]`` = the params and ``val_score`` of fold ``i``.
    """
    num_classes = int(y.max()) + 1
    keys = list(grid)
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
    scores, chosen = [], []
    for train, val, test in splits:
        best = None
        for params in points:
            model = _baseline_model(name, params, seed, metric == "auc" and num_classes > 2)
            model.fit(x[train], y[train])
            v = score(metric, y[val], _baseline_scores(model, x[val], metric, num_classes))
            if best is None or v > best[0]:
                best = (v, params, model)
        v, params, model = best
        scores.append(score(metric, y[test], _baseline_scores(model, x[test], metric, num_classes)))
        chosen.append({**params, "val_score": v})
    return scores, chosen


def _check_baselines(baselines: Mapping[str, Any]) -> dict[str, dict[str, list[Any]]]:
    out = {}
    for name, grid in baselines.items():
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
        if not isinstance(grid, Mapping):
            raise ValueError(f"[baselines.{name}] must be a table of parameter lists")
        if not grid:
            continue  # an empty table drops the baseline
        out[name] = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
        for k, v in out[name].items():
            if not v:
                raise ValueError(f"baselines.{name}.{k} is empty; give at least one value")
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def benchmark_spec(
    dataset: str, grid: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None
) -> tuple[SweepSpec, dict[str, dict[str, list[Any]]]]:
    """The networks' :class:`SweepSpec` and the baselines' grids for one CSV table.

    Args:
        dataset: ``csv:PATH``.
        grid: a sweep file as a dict (without ``datasets``; may hold ``[baselines]``); None:
            :data:`DEFAULT_GRID` and :data:`BASELINES`.
        data: ``[data]`` settings that override the grid file's (``target``, ``seed``,
            ``val_fraction``, ...).
    """
    from selfnorm.config import merge

    grid = dict(DEFAULT_GRID if grid is None else grid)
    if "datasets" in grid or "dataset" in grid.get("data", {}):
        raise ValueError(
            "the benchmark's data come from the command line (csv:PATH); remove `datasets` and "
            "[data] dataset from the grid file"
        )
    baselines = _check_baselines({**BASELINES, **grid.pop("baselines", {})})
    grid = merge(grid, {"datasets": [dataset], "data": dict(data or {})})
    spec = sweep_from_dict(grid)
    if not spec.datasets[0].startswith(CSV_PREFIX):
        raise ValueError(
            f"the benchmark reads csv:PATH data, not {dataset!r}; write the table out as CSV "
            "(features..., label) and pass csv:PATH"
        )
    return spec, baselines


def benchmark(
    spec: SweepSpec,
    out_dir: str | os.PathLike,
    *,
    folds: int = 10,
    metric: str | None = None,
    baselines: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    executor: Executor | None = None,
    keep_checkpoints: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Nested cross-validation of the networks in ``spec`` and the baselines on one CSV table.

    Args:
        spec: one ``csv:PATH`` dataset, the variants and their grid (:func:`benchmark_spec`).
        out_dir: writes ``jobs/`` (one folder per network job), ``benchmark.json``,
            ``summary.md``; running again skips finished jobs.
        folds: outer folds, >= 2. Default: 10.
        metric: ``auc`` or ``accuracy``; None: AUC for two classes, accuracy for more.
        baselines: name -> scikit-learn grid (:data:`BASELINES`, the default); ``{}``: none.
        executor, keep_checkpoints, progress: see :func:`selfnorm.sweep.run_jobs`.

    Returns:
        The benchmark.json dict: ``{"metric", "methods": {NAME: {"mean", "std", "rank",
        "p_value", "folds", "chosen", "kind", "complete"}}, "best", ...}``.
    """
    if len(spec.datasets) != 1:
        raise ValueError(f"the benchmark takes one dataset, the spec has {list(spec.datasets)}")
    baselines = _check_baselines(BASELINES if baselines is None else baselines)
    data = spec.jobs()[0].config.data
    table = _table(_csv_path(data), data.target)
    num_classes = len(table.class_names)
    if metric is None:
        metric = "auc" if num_classes == 2 else "accuracy"
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}; choose one of {', '.join(METRICS)}")
    splits = split_indices(table.y, folds, data.seed, data.val_fraction)  # checks folds

    out = Path(out_dir)
    executor = LocalExecutor() if executor is None else executor
    # connected first (a wrong Ray address writes nothing), one process per folder
    with connect(executor), RunLock(out, "benchmark"):
        jobs = [j for i in range(folds) for j in spec.jobs(CvFold(folds, i, metric))]
        records = run_jobs(  # stops gracefully on Ctrl-C; the baselines below stop at once
            jobs,
            out,
            executor=executor,
            keep_checkpoints=keep_checkpoints,
            progress=progress,
        )
        points = group_points(records)
        fold_scores: dict[str, list[float | None]] = {}
        chosen: dict[str, list[dict[str, Any] | None]] = {}
        for act in spec.activations:
            fold_scores[act], chosen[act] = [], []
            for i in range(folds):
                mine = [p for p in points if p["activation"] == act and p["task"]["index"] == i]
                b = best_point(mine, "val_score")
                fold_scores[act].append(None if b is None else b["test_score"])
                chosen[act].append(
                    None if b is None else {**_searched(spec, b), "val_score": b["val_score"]}
                )
        for name, grid in baselines.items():
            fold_scores[name], chosen[name] = run_baseline(
                name, grid, table.x, table.y, splits, metric, data.seed
            )
        methods = rank_methods(fold_scores)
        for name, entry in methods.items():
            entry["kind"] = "baseline" if name in baselines else "network"
            entry["chosen"] = chosen[name]
        best = next((n for n, m in methods.items() if m["rank"] == 1), None)
        description = {"accuracy": "accuracy", "auc": "ROC AUC"}[metric]
        if metric == "auc" and num_classes > 2:
            description = "macro one-vs-rest ROC AUC"
        result = {
            "metric": metric,
            "metric_description": description,
            "best": best,
            "test": "two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon defaults) of each "
            "method's fold scores against the best method's, paired by fold; 1.0 when all "
            "differences are 0",
            "selection": f"per fold and method, the grid point with the best inner-validation "
            f"{metric} (networks: mean over seeds of the final-epoch model); no refit",
            "dataset": {
                "name": data.dataset,
                "target": data.target,
                "samples": len(table.y),
                "features": int(table.x.shape[1]),
                "classes": num_classes,
                "class_names": list(table.class_names),
            },
            "folds": folds,
            "seed": data.seed,
            "val_fraction": data.val_fraction,
            "methods": methods,
            "grid": spec.to_dict(),
            "baselines": baselines,
            "jobs_total": len(records),
            "jobs_failed": [r["name"] for r in records if r["status"] != "ok"],
        }
        atomic_write_json(out / "benchmark.json", result)
        atomic_write_text(out / "summary.md", benchmark_markdown(result))
    return result


def _searched(spec: SweepSpec, point: Mapping[str, Any]) -> dict[str, Any]:
    """The grid keys that were searched, with the chosen values."""
    return {k: point["params"][k] for k in spec.grid}


def format_benchmark_table(result: Mapping[str, Any]) -> str:
    """Methods by rank: mean ± std, rank, p-value against the best, kind (Markdown)."""
    methods = result["methods"]
    order = sorted(methods, key=lambda n: (methods[n]["rank"] is None, methods[n]["rank"] or 0))
    header = ["method", f"{result['metric']} mean ± std", "rank", "p (Wilcoxon vs best)", "kind"]
    rows = []
    for n in order:
        m = methods[n]
        rank = "—" if m["rank"] is None else str(m["rank"])
        p = "—" if m["p_value"] is None else f"{m['p_value']:.3g}"
        p = "best" if n == result["best"] else p
        rows.append([n, mean_std_cell(m["mean"], m["std"], ".4f"), rank, p, m["kind"]])
    return render(header, rows, "markdown")


def benchmark_markdown(result: Mapping[str, Any]) -> str:
    """summary.md of a benchmark."""
    ds = result["dataset"]
    parts = [
        f"# Benchmark: {ds['name']}",
        "",
        f"{ds['samples']} samples, {ds['features']} features, {ds['classes']} classes; "
        f"{result['folds']}-fold stratified CV (seed {result['seed']}), inner validation "
        f"fraction {result['val_fraction']}; metric: {result['metric_description']}.",
        "",
        f"Selection: {result['selection']}. Test: {result['test']}.",
        "",
        format_benchmark_table(result),
        "",
    ]
    if result["jobs_failed"]:
        parts += [f"{len(result['jobs_failed'])} network jobs failed; see jobs/<name>/error.txt:"]
        parts += [f"- `{n}`" for n in result["jobs_failed"]]
        parts.append("")
    return "\n".join(parts)
