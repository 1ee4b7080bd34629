"""``selfnorm sweep`` (grids on local workers or Ray) and ``selfnorm benchmark`` (nested CV)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from selfnorm.cli.common import CliError
from selfnorm.cli.common import print_json as _print_json

MAX_PRINTED_JOBS = 100


def _executor(args: argparse.Namespace):
    """The one executor value of ``--workers``, ``--threads`` and ``--ray``."""
    from selfnorm.sweep import LocalExecutor, RayExecutor

    if args.ray is not None:
        if args.workers is not None:
            raise CliError("--workers is for local processes; with --ray, Ray places the jobs")
        address = None if args.ray == "local" else args.ray
        return RayExecutor(address, 1 if args.threads is None else args.threads)
    return LocalExecutor(args.workers, args.threads)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _progress(quiet: bool):
    """A progress printer: one line per finished job on stderr, with done/total and the ETA."""
    if quiet:
        return None
    width = [0]

    def show(event: dict[str, Any]) -> None:
        rec = event["record"]
        total = event["total"]
        width[0] = width[0] or len(str(total))
        head = f"[{event['done']:>{width[0]}}/{total}]"
        if rec["status"] == "ok":
            m = rec["metrics"]
            if m["diverged"]:
                what = f"diverged: {m['diverged_reason']}"
            else:
                what = f"val acc {m['final_val_accuracy']:.4f}  test acc {m['test_accuracy']:.4f}"
                if m.get("test_score") is not None:
                    what += f"  val {m['val_score']:.4f}  test {m['test_score']:.4f}"
            line = f"{head} ok      {rec['name']}  {what}  ({rec['seconds']:.1f} s)"
        else:
            line = f"{head} FAILED  {rec['name']}: {rec['error']}"
        line += f"  | elapsed {_hms(event['elapsed'])}, ETA {_hms(event['eta'])}"
        print(line, file=sys.stderr, flush=True)

    return show


def cmd_sweep(args: argparse.Namespace) -> int:
    from selfnorm.sweep import format_best_table, format_jobs_table, load_sweep, run_sweep

    spec = load_sweep(args.sweep)
    out = args.out or str(Path("sweeps") / Path(args.sweep).stem)
    executor = _executor(args)
    n_jobs = len(spec.jobs())
    if not args.quiet:
        print(
            f"selfnorm sweep {args.sweep} -> {out}: {n_jobs} jobs ({len(spec.datasets)} "
            f"dataset(s) x {len(spec.activations)} variant(s) x grid x {len(spec.seeds)} "
            f"seed(s)); {executor.describe()}",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    summary = run_sweep(
        spec,
        out,
        keep_checkpoints=args.keep_checkpoints,
        progress=_progress(args.quiet),
        executor=executor,
    )
    if args.json:
        _print_json(summary)
    else:
        if summary["jobs_total"] <= MAX_PRINTED_JOBS:
            print(format_jobs_table(summary))
        else:
            print(f"{summary['jobs_total']} jobs: see {Path(out) / 'summary.md'} for the table")
        print()
        print(f"Best per variant, chosen on validation only ({summary['selection']}):")
        print(format_best_table(summary))
        print(f"wrote {Path(out) / 'sweep.json'} and {Path(out) / 'summary.md'} "
              f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return _failures(summary["jobs_failed"], out)


def _failures(failed: list[str], out: str) -> int:
    if not failed:
        return 0
    print(
        f"{len(failed)} job(s) failed (tracebacks in {Path(out) / 'jobs'}/<name>/error.txt); "
        "run the same command again to retry them, finished jobs are skipped",
        file=sys.stderr,
    )
    return 1


def _target(text: str | None) -> str | int | None:
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def cmd_benchmark(args: argparse.Namespace) -> int:
    from selfnorm.benchmark import benchmark, benchmark_spec, format_benchmark_table
    from selfnorm.config import load_toml

    data = {
        k: v
        for k, v in {
            "target": _target(args.target),
            "seed": args.seed,
            "val_fraction": args.val_fraction,
        }.items()
        if v is not None
    }
    grid = load_toml(args.grid) if args.grid else None
    spec, baselines = benchmark_spec(args.dataset, grid, data)
    stem = Path(args.dataset.split(":", 1)[-1]).stem
    out = args.out or str(Path("benchmarks") / stem)
    executor = _executor(args)
    if not args.quiet:
        n_jobs = len(spec.jobs()) * args.folds
        print(
            f"selfnorm benchmark {args.dataset} -> {out}: {args.folds} folds, "
            f"{len(spec.activations)} network variant(s) ({n_jobs} jobs; {executor.describe()}), "
            f"baselines: {', '.join(baselines) or 'none'}",
            file=sys.stderr,
        )
    result = benchmark(
        spec,
        out,
        folds=args.folds,
        metric=args.metric,
        baselines=baselines,
        keep_checkpoints=args.keep_checkpoints,
        progress=_progress(args.quiet),
        executor=executor,
    )
    if args.json:
        _print_json(result)
    else:
        print(f"{result['metric_description']}, {args.folds}-fold nested CV:")
        print(format_benchmark_table(result))
        print(f"wrote {Path(out) / 'benchmark.json'} and {Path(out) / 'summary.md'}")
    return _failures(result["jobs_failed"], out)


def _add_executor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument(
        "--workers", type=int, help="local worker processes (default: the cores of this machine)"
    )
    g.add_argument(
        "--ray",
        metavar="auto|ADDRESS|local",
        help="run the jobs as Ray tasks: auto = the cluster this machine belongs to, "
        "HOST:6379 or ray://HOST:10001 = that cluster, local = start one here "
        "(pip install 'selfnorm[ray]')",
    )
    g.add_argument(
        "--threads",
        type=int,
        help="torch threads per job (default: cores // workers; with --ray 1, and each task "
        "reserves that many CPUs)",
    )
    g.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each finished job's checkpoint.pt (default: delete it, keep the metrics)",
    )
    g.add_argument("--json", action="store_true", help="print the JSON summary instead of tables")
    g.add_argument("--quiet", action="store_true", help="no progress lines")


def register(sub) -> None:
    """Add the ``sweep`` and ``benchmark`` subcommands."""
    p = sub.add_parser(
        "sweep",
        help="a grid of datasets x variants x hyperparameters x seeds, on local workers or Ray",
        description="Expand SWEEP.toml (a compare config + datasets + [grid]) into jobs, run "
        "them on local worker processes or a Ray cluster, and pick the best configuration per "
        "variant on validation. Running it again skips finished jobs and retries failed ones.",
    )
    p.add_argument("sweep", metavar="SWEEP.toml", help="the sweep file")
    p.add_argument("--out", help="sweep directory (default sweeps/<file stem>)")
    _add_executor_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "benchmark",
        help="nested k-fold CV of the variants and scikit-learn baselines on a CSV table",
        description="Stratified k-fold cross-validation; inside each training fold the "
        "hyperparameters are chosen on an inner validation split. Networks (the variants of "
        "--grid) and baselines (random forest, SVM, logistic regression, Gaussian naive Bayes) "
        "share the folds; "
        "per method mean ± std, rank and a Wilcoxon test against the best.",
    )
    p.add_argument("dataset", metavar="csv:PATH", help="the table: features..., label")
    p.add_argument("--target", help="label column: name or index (default: the last)")
    p.add_argument("--folds", type=int, default=10, help="outer folds (default 10)")
    p.add_argument(
        "--metric",
        choices=["auc", "accuracy"],
        help="default: ROC AUC for two classes, accuracy for more (auc: macro one-vs-rest)",
    )
    p.add_argument(
        "--grid",
        metavar="SWEEP.toml",
        help="network variants and grid (a sweep file without datasets), optionally "
        "[baselines.NAME] grids; default: selu, relu, relu+bn, relu+ln x depth 2,4 x dropout",
    )
    p.add_argument("--seed", type=int, help="seed of the folds and inner splits (default 0)")
    p.add_argument("--val-fraction", type=float, help="inner validation share (default 0.1)")
    p.add_argument("--out", help="output directory (default benchmarks/<file stem>)")
    _add_executor_args(p)
    p.set_defaults(func=cmd_benchmark)
