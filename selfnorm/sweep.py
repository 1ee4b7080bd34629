"""Grids -> jobs -> local worker processes or a Ray cluster -> one table, best per variant.

A sweep file is a ``selfnorm compare`` experiment file (``[data]``, ``[model]``, ``[train]``,
``activations``, ``dropout``, ...) plus ``datasets``, a ``[grid]`` of hyperparameter values,
and ``select``::

    datasets = ["digits", "csv:data/htru2.csv"]   # default: [data] dataset, else digits
    activations = ["selu", "relu", "relu+bn"]     # the variants
    seeds = [0, 1]                                # or grid.seeds
    select = "val_accuracy"                       # or "val_loss"
    [train]
    batch_size = 64
    [grid]                                        # each key: a list, or a list per variant
    depth = [2, 4, 8]
    width = [256, 512]
    lr = [1e-3, 1e-2]
    dropout = { selu = [0.0, 0.05], relu = [0.0, 0.2], "relu+bn" = [0.0] }

It expands into one :class:`Job` per (dataset, variant, grid point, seed); a job is
:func:`selfnorm.comparing.compare` with one variant and one seed, so it runs the same training
loop and writes an ordinary run directory, ``OUT/jobs/<name>/`` (name: a readable prefix and a
hash of the resolved config, so the same job always lands in the same folder). A job is finished
when its ``job.json`` says ``"status": "ok"``: starting the sweep again skips finished jobs,
resumes interrupted ones from their last checkpoint and re-runs failed ones. A failing job
records its error (``job.json``) and traceback (``error.txt``) and does not stop the others.

Jobs run in ``workers`` local processes (each with ``threads`` torch threads, its data loaded
once per process) or as Ray tasks; each job seeds itself, so with the same thread count both
give the same numbers. At the end :func:`summarize_sweep` chooses, per dataset and variant, the
grid point with the best mean over seeds of the *final-epoch validation* score (the model that
the test score belongs to), and ``sweep.json`` and ``summary.md`` are written to ``OUT``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from selfnorm._io import atomic_write_json, atomic_write_text
from selfnorm.config import (
    MODEL_KINDS,
    ExperimentConfig,
    experiment_from_dict,
    load_toml,
    merge,
    model_keys,
)
from selfnorm.data import CSV_PREFIX, DataConfig, Dataset
from selfnorm.executors import (
    Executor,
    LocalExecutor,
    Progress,
    RayExecutor,
    available_cores,
    connect,
    run_job,
    run_jobs,
)
from selfnorm.locking import RunLock
from selfnorm.storage import slug
from selfnorm.summary import mean_std
from selfnorm.tables import mean_std_cell, render

__all__ = [
    "GRID_KEYS",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "SELECT_MODES",
    "Job",
    "JobTask",
    "Progress",
    "SweepSpec",
    "available_cores",
    "best_point",
    "format_best_table",
    "format_jobs_table",
    "group_points",
    "load_sweep",
    "run_job",
    "run_jobs",
    "run_sweep",
    "summarize_sweep",
    "summary_markdown",
    "sweep_from_dict",
]

GRID_KEYS: dict[str, tuple[str | None, str]] = {
    "depth": ("model", "depth"),
    "width": ("model", "width"),
    "shape": ("model", "shape"),
    "optimizer": ("train", "optimizer"),
    "lr": ("train", "lr"),
    "momentum": ("train", "momentum"),
    "weight_decay": ("train", "weight_decay"),
    "batch_size": ("train", "batch_size"),
    "epochs": ("train", "epochs"),
    "dropout": (None, "dropout"),
}
"""Grid key -> (config section or None for top level, field). ``seeds`` is a grid key too."""

SELECT_MODES = ("val_accuracy", "val_loss")
"""How the best grid point is chosen: highest mean final-epoch validation accuracy (ties: lower
validation loss), or lowest mean final-epoch validation loss."""

_FLOAT_KEYS = ("lr", "momentum", "weight_decay", "dropout")
_SWEEP_KEYS = ("datasets", "activations", "seeds", "select", "grid")
_SHORT = {"depth": "d", "width": "w", "lr": "lr", "dropout": "p", "epochs": "e", "shape": ""}


# ---------------------------------------------------------------------------------------------
# The sweep file
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: base settings, datasets x variants x grid x seeds, and the selection rule.

    Example:
        >>> spec = sweep_from_dict({"activations": ["selu", "relu"], "seeds": [0, 1],
        ...                         "grid": {"depth": [2, 4], "lr": [1e-3]}})
        >>> len(spec.jobs()), spec.varied
        (8, ('depth',))
    """

    base: Mapping[str, Any] = field(default_factory=dict)
    """Experiment settings shared by every job ([data], [model], [train], dropout, ...)."""
    datasets: tuple[str, ...] = ("digits",)
    """Registry names or ``csv:PATH`` (stored with an absolute path)."""
    activations: tuple[str, ...] = ("selu", "relu", "lrelu")
    """The variants, names from the activation registry."""
    grid: Mapping[str, Any] = field(default_factory=dict)
    """Grid key (:data:`GRID_KEYS`) -> tuple of values, or {variant: tuple of values}."""
    seeds: tuple[int, ...] = (0,)
    """One job per seed; selection averages over them."""
    select: str = "val_accuracy"
    """One of :data:`SELECT_MODES`."""

    def __post_init__(self) -> None:
        if self.select not in SELECT_MODES:
            raise ValueError(f"select={self.select!r}; choose one of {', '.join(SELECT_MODES)}")
        object.__setattr__(self, "datasets", tuple(self.datasets))
        if not self.datasets or len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets={list(self.datasets)}: name each dataset once, e.g. digits")
        # ExperimentConfig normalizes and checks the variants and seeds
        probe = self._experiment(list(self.activations), list(self.seeds))
        object.__setattr__(self, "activations", probe.activations)
        object.__setattr__(self, "seeds", probe.seeds)
        object.__setattr__(self, "grid", _check_grid(self.grid, probe.activations))
        self.jobs()  # every job's config is valid, or this raises naming the bad value

    def _experiment(self, activations: list[str], seeds: list[int]) -> ExperimentConfig:
        """The base settings as an experiment on the first dataset (checks and resolves them)."""
        over = {"data": {"dataset": self.datasets[0]}, "activations": activations, "seeds": seeds}
        return experiment_from_dict(merge(self.base, over))

    @property
    def varied(self) -> tuple[str, ...]:
        """Grid keys with more than one value for some variant (they name the jobs)."""
        out = []
        for key, values in self.grid.items():
            lists = values.values() if isinstance(values, Mapping) else [values]
            if any(len(v) > 1 for v in lists):
                out.append(key)
        return tuple(out)

    def values(self, key: str, activation: str) -> tuple[Any, ...] | None:
        """The grid values of ``key`` for one variant (None: not searched, the base value)."""
        values = self.grid.get(key)
        if isinstance(values, Mapping):
            return values.get(activation)
        return values

    def jobs(self, task: JobTask | None = None) -> list[Job]:
        """Every job, in a fixed order: dataset, variant, grid point (keys in
        :data:`GRID_KEYS` order, last varies fastest), seed.

        Args:
            task: extra data handling and metrics of every job (the benchmark's folds).
        """
        dropouts = self._experiment(list(self.activations), [0])
        out = []
        for dataset in self.datasets:
            for act in self.activations:
                keys = [k for k in GRID_KEYS if self.values(k, act) is not None]
                for combo in itertools.product(*(self.values(k, act) for k in keys)):
                    point = dict(zip(keys, combo, strict=True))
                    for seed in self.seeds:
                        cfg = _job_config(self.base, dataset, act, seed, point, dropouts)
                        out.append(Job.make(cfg, point, self.varied, task))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :func:`sweep_from_dict` reads it back."""
        grid = {
            k: ({a: list(v) for a, v in vals.items()} if isinstance(vals, Mapping) else list(vals))
            for k, vals in self.grid.items()
        }
        return {
            **json.loads(json.dumps(dict(self.base))),
            "datasets": list(self.datasets),
            "activations": list(self.activations),
            "seeds": list(self.seeds),
            "select": self.select,
            "grid": grid,
        }


def _check_grid(grid: Mapping[str, Any], activations: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(grid, Mapping):
        raise ValueError(f"[grid] must be a table of hyperparameter lists, got {grid!r}")
    out: dict[str, Any] = {}
    for key, values in grid.items():
        if key not in GRID_KEYS:
            raise ValueError(f"unknown grid key {key!r}; valid: {', '.join([*GRID_KEYS, 'seeds'])}")
        if isinstance(values, Mapping):
            per = {}
            for act, vals in values.items():
                name = act.strip().lower()
                if name not in activations:
                    raise ValueError(
                        f"grid.{key} names variant {act!r}, which is not among the activations "
                        f"{list(activations)}"
                    )
                per[name] = _check_values(key, f"grid.{key}.{act}", vals)
            out[key] = per
        else:
            out[key] = _check_values(key, f"grid.{key}", values)
    return out


def _check_values(key: str, where: str, values: Any) -> tuple[Any, ...]:
    if isinstance(values, (str, int, float)):
        values = [values]
    values = tuple(values)
    if key in _FLOAT_KEYS:  # 0 and 0.0 are one value (and one job hash)
        values = tuple(
            float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values
        )
    if not values:
        raise ValueError(f"{where} is empty; give at least one value, e.g. [4]")
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"{where}={list(values)} repeats a value")
    return values


def _absolute_dataset(name: str) -> str:
    if name.startswith(CSV_PREFIX):
        path = Path(name[len(CSV_PREFIX) :].strip()).expanduser()
        return CSV_PREFIX + str(path.resolve()) if str(path) else name
    return name


def _job_config(
    base: Mapping[str, Any],
    dataset: str,
    activation: str,
    seed: int,
    point: Mapping[str, Any],
    dropouts: ExperimentConfig,
) -> ExperimentConfig:
    # one job, one variant: its per-variant drop rate and input scaling become the job's own
    override: dict[str, Any] = {
        "data": {"dataset": dataset, "standardize": dropouts.standardize_for(activation)},
        "activations": [activation],
        "seeds": [seed],
        "dropout": float(dropouts.dropout_for(activation)),
        "dropout_by_activation": {},
        "standardize_by_activation": {},
    }
    for key, value in point.items():
        section, name = GRID_KEYS[key]
        if section is None:
            override[name] = value
        else:
            override.setdefault(section, {})[name] = value
    merged = merge(base, override)
    merged["dropout_by_activation"] = merged["standardize_by_activation"] = {}
    return experiment_from_dict(merged)


def sweep_from_dict(d: Mapping[str, Any]) -> SweepSpec:
    """Build a :class:`SweepSpec` from a nested dict (a sweep TOML file, or ``to_dict()``).

    Relative ``csv:`` paths and ``data_dir`` are resolved against the current directory (as in
    ``selfnorm compare``) and stored absolute, so that workers anywhere find them.
    """
    d = dict(d)
    sweep_keys = {k: d.pop(k) for k in _SWEEP_KEYS if k in d}
    base = json.loads(json.dumps(d))  # a deep, plain copy
    data = base.get("data", {})
    if not isinstance(data, Mapping):
        raise ValueError(f"[data] must be a table of settings, got {data!r}")
    if "datasets" in sweep_keys and "dataset" in data:
        raise ValueError(
            "the sweep names its data twice: `datasets` and [data] dataset; keep one of them"
        )
    datasets = sweep_keys.get("datasets", [data.get("dataset", DataConfig.dataset)])
    if isinstance(datasets, str):
        datasets = [datasets]
    if "dataset" in data:
        base["data"] = {k: v for k, v in data.items() if k != "dataset"}
    if base.get("data", {}).get("data_dir") is not None:
        base["data"]["data_dir"] = str(Path(base["data"]["data_dir"]).expanduser().resolve())
    grid = dict(sweep_keys.get("grid", {}))
    if "seeds" in grid and "seeds" in sweep_keys:
        raise ValueError("seeds are given twice: top-level `seeds` and grid.seeds; keep one")
    seeds = grid.pop("seeds", sweep_keys.get("seeds", [0]))
    model = base.get("model", {})
    kind = model.get("kind", "mlp") if isinstance(model, Mapping) else "mlp"
    if kind in MODEL_KINDS:
        for key in grid:
            section, name = GRID_KEYS.get(key, (None, key))
            if section == "model" and name not in model_keys(kind):
                raise ValueError(
                    f"grid.{key} does not apply to model kind {kind!r} (its settings: "
                    f'{", ".join(model_keys(kind))}); drop it from [grid] or use kind = "mlp"'
                )
    if isinstance(seeds, int):
        seeds = [seeds]
    kwargs: dict[str, Any] = {
        "base": base,
        "datasets": tuple(_absolute_dataset(str(x)) for x in datasets),
        "grid": grid,
        "seeds": tuple(seeds),
    }
    if "activations" in sweep_keys:
        kwargs["activations"] = tuple(sweep_keys["activations"])
    if "select" in sweep_keys:
        kwargs["select"] = sweep_keys["select"]
    return SweepSpec(**kwargs)


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read a sweep TOML file (see the module docstring)."""
    return sweep_from_dict(load_toml(path))


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


class JobTask(Protocol):
    """What a job does beyond a plain run: its own data split and extra metrics.

    :class:`selfnorm.benchmark.CvFold` is one: it trains on one cross-validation fold and
    scores the model with ROC AUC. Implementations must be picklable (they travel to workers),
    hashable (they key the per-process data cache) and frozen.
    """

    def label(self) -> str:
        """A short prefix of the job name, e.g. ``fold3``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; part of the job's hash."""

    def dataset(self, data: DataConfig) -> Dataset:
        """The job's splits."""

    def extra_metrics(self, job: Job, dataset: Dataset, run_root: Path) -> dict[str, Any]:
        """More numbers for ``job.json``, computed after training (the checkpoint still exists)."""


@dataclass(frozen=True)
class Job:
    """One training run: one dataset, one variant, one grid point, one seed."""

    name: str
    """``<task>-<dataset>-<variant>-<varied params>-s<seed>-<hash>``; the job's folder."""
    activation: str
    seed: int
    params: Mapping[str, Any]
    """Every grid key's value in this job (searched or not)."""
    config: ExperimentConfig
    """The resolved experiment: one activation, one seed."""
    task: JobTask | None = None

    @classmethod
    def make(
        cls,
        config: ExperimentConfig,
        point: Mapping[str, Any],
        varied: Sequence[str],
        task: JobTask | None = None,
    ) -> Job:
        act, seed = config.activations[0], config.seeds[0]
        params = {  # the grid keys this config has (a CNN has no depth, width or shape)
            key: getattr(config if section is None else getattr(config, section), name)
            for key, (section, name) in GRID_KEYS.items()
            if hasattr(config if section is None else getattr(config, section), name)
        }
        resolved = config.to_dict()  # train.stack left out: a job trains one seed (nothing
        # to stack), and the jobs of sweeps run before it existed keep their names
        resolved["train"] = {k: v for k, v in resolved["train"].items() if k != "stack"}
        key = json.dumps(
            {"config": resolved, "task": task.to_dict() if task else None}, sort_keys=True
        )
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
        parts = [task.label()] if task else []
        parts += [_dataset_label(config.data.dataset), act]
        parts += [f"{_SHORT.get(k, k)}{params[k]}" for k in varied if k in point]
        prefix = slug("-".join([*parts, f"s{seed}"]))[:96]
        return cls(f"{prefix}-{digest}", act, seed, params, config, task)

    @property
    def dataset(self) -> str:
        return self.config.data.dataset

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset,
            "activation": self.activation,
            "seed": self.seed,
            "params": dict(self.params),
            "task": self.task.to_dict() if self.task else None,
            "config": self.config.to_dict(),
        }


def _dataset_label(name: str) -> str:
    return Path(name[len(CSV_PREFIX) :]).stem if name.startswith(CSV_PREFIX) else name


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def _mean(values: Sequence[float | None]) -> float | None:
    return mean_std(values)[0]


def _std(values: Sequence[float | None]) -> float | None:
    return mean_std(values)[1]


def _point_key(rec: Mapping[str, Any]) -> str:
    return json.dumps(
        [rec["dataset"], rec["activation"], rec["params"], rec["task"]], sort_keys=True
    )


def group_points(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records grouped by (dataset, variant, grid point, task) across seeds, with means.

    A grid point is ``eligible`` for selection when every seed finished without diverging.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        groups.setdefault(_point_key(rec), []).append(rec)
    out = []
    for recs in groups.values():
        ok = [r for r in recs if r["status"] == "ok" and not r["metrics"]["diverged"]]
        m = [r["metrics"] for r in ok]
        first = recs[0]
        entry = {
            "dataset": first["dataset"],
            "activation": first["activation"],
            "params": first["params"],
            "task": first["task"],
            "seeds": [r["seed"] for r in recs],
            "jobs": [r["name"] for r in recs],
            "eligible": len(ok) == len(recs),
            "val_accuracy": _mean([x["final_val_accuracy"] for x in m]),
            "val_loss": _mean([x["final_val_loss"] for x in m]),
            "test_accuracy": _mean([x["test_accuracy"] for x in m]),
            "test_accuracy_std": _std([x["test_accuracy"] for x in m]),
            "test_loss": _mean([x["test_loss"] for x in m]),
        }
        for key in ("val_score", "test_score"):
            if all(key in x for x in m) and m:
                entry[key] = _mean([x[key] for x in m])
        out.append(entry)
    return out


def best_point(points: Sequence[Mapping[str, Any]], select: str) -> Mapping[str, Any] | None:
    """The eligible point with the best validation number (None when none is eligible).

    ``val_accuracy``: highest mean final val accuracy, ties broken by lower val loss;
    ``val_loss``: lowest mean final val loss; ``val_score`` (benchmark): highest mean val score,
    ties by lower val loss. Remaining ties: the first point in job order.
    """
    eligible = [p for p in points if p["eligible"] and p["val_loss"] is not None]
    if not eligible:
        return None
    if select == "val_loss":
        return min(eligible, key=lambda p: p["val_loss"])
    return max(eligible, key=lambda p: (p[select], -p["val_loss"]))


def summarize_sweep(spec: SweepSpec, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """sweep.json: the spec, every job's record, and the best grid point per dataset and variant
    (chosen on validation only; its test numbers are reported, never used to choose)."""
    points = group_points(records)
    best: dict[str, dict[str, Any]] = {}
    for dataset in spec.datasets:
        for act in spec.activations:
            mine = [p for p in points if p["dataset"] == dataset and p["activation"] == act]
            b = best_point(mine, spec.select)
            best.setdefault(dataset, {})[act] = None if b is None else dict(b)
    failed = [r["name"] for r in records if r["status"] != "ok"]
    return {
        "spec": spec.to_dict(),
        "select": spec.select,
        "selection": "best mean over seeds of the final-epoch validation "
        + ("accuracy (ties: lower validation loss)" if spec.select == "val_accuracy" else "loss")
        + "; test numbers are those of the same final-epoch models",
        "varied": list(spec.varied),
        "jobs_total": len(records),
        "jobs_ok": len(records) - len(failed),
        "jobs_failed": failed,
        "best": best,
        "jobs": list(records),
    }


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return str(v)


def format_best_table(summary: Mapping[str, Any]) -> str:
    """The best grid point per dataset and variant, as a Markdown table."""
    varied = summary["varied"]
    header = [
        "dataset",
        "variant",
        *varied,
        "seeds",
        "val acc",
        "val loss",
        "test acc",
        "test loss",
    ]
    rows = []
    for dataset, per in summary["best"].items():
        for act, b in per.items():
            if b is None:
                rows.append([_dataset_label(dataset), act, *["—"] * (len(header) - 2)])
                continue
            rows.append(
                [
                    _dataset_label(dataset),
                    act,
                    *[_fmt(b["params"][k]) for k in varied],
                    str(len(b["seeds"])),
                    _fmt(b["val_accuracy"]),
                    _fmt(b["val_loss"]),
                    mean_std_cell(b["test_accuracy"], b["test_accuracy_std"], ".4f"),
                    _fmt(b["test_loss"]),
                ]
            )
    return render(header, rows, "markdown")


def format_jobs_table(summary: Mapping[str, Any]) -> str:
    """Every job with its validation and test numbers, as a Markdown table."""
    varied = summary["varied"]
    header = ["job", "variant", *varied, "seed", "status", "val acc", "val loss", "test acc", "s"]
    rows = []
    for r in summary["jobs"]:
        m = r["metrics"]
        status = r["status"] if r["status"] != "ok" or not m["diverged"] else "diverged"
        rows.append(
            [
                r["name"],
                r["activation"],
                *[_fmt(r["params"][k]) for k in varied],
                str(r["seed"]),
                status,
                _fmt(m.get("final_val_accuracy")),
                _fmt(m.get("final_val_loss")),
                _fmt(m.get("test_accuracy")),
                _fmt(r["seconds"], 1),
            ]
        )
    return render(header, rows, "markdown")


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """summary.md: counts, failures with their errors, the best table, the jobs table."""
    parts = [
        "# Sweep",
        "",
        f"{summary['jobs_total']} jobs: {summary['jobs_ok']} finished, "
        f"{len(summary['jobs_failed'])} failed.",
        "",
        f"## Best configuration per variant\n\nChosen on validation only: {summary['selection']}.",
        "",
        format_best_table(summary),
        "",
    ]
    failed = [r for r in summary["jobs"] if r["status"] != "ok"]
    if failed:
        parts += ["## Failed jobs", ""]
        parts += [f"- `{r['name']}`: {r['error']} (traceback: `jobs/{r['name']}/error.txt`)"
                  for r in failed]  # fmt: skip
        parts.append("")
    parts += ["## All jobs", "", format_jobs_table(summary), ""]
    return "\n".join(parts)


def run_sweep(
    spec: SweepSpec,
    out_dir: str | os.PathLike,
    *,
    executor: Executor | None = None,
    keep_checkpoints: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run a sweep (see :func:`run_jobs` for the executor) and write its summary.

    Writes ``out_dir/spec.json`` first, then one folder per job under ``out_dir/jobs/``, and at
    the end ``out_dir/sweep.json`` (:func:`summarize_sweep`) and ``out_dir/summary.md``. Calling
    it again on the same folder skips finished jobs; a changed spec adds its new jobs (jobs are
    named by their config) and summarizes exactly the jobs of the new spec.

    Returns:
        The sweep.json dict.
    """
    out = Path(out_dir)
    executor = LocalExecutor() if executor is None else executor
    jobs = spec.jobs()
    # connected first: a Ray address with no cluster behind it fails before anything is written
    with connect(executor), RunLock(out, "sweep"):
        atomic_write_json(out / "spec.json", spec.to_dict())
        records = run_jobs(
            jobs,
            out,
            executor=executor,
            keep_checkpoints=keep_checkpoints,
            progress=progress,
        )
        summary = summarize_sweep(spec, records)
        atomic_write_json(out / "sweep.json", summary)
        atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary
