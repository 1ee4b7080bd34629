"""Where the jobs of a sweep or benchmark run: local worker processes or a Ray cluster.

:func:`run_jobs` takes :class:`~selfnorm.sweep.Job` values and an executor
(:class:`LocalExecutor` or :class:`RayExecutor`), runs every unfinished job with
:func:`run_job` (the worker function: one :func:`selfnorm.comparing.compare` of one variant and
one seed in ``ROOT/jobs/<name>/``) and returns every job's ``job.json`` record. A job is
finished when its record says ``"status": "ok"``; any other job is run again, resuming from its
checkpoint.

Stopping: a first Ctrl-C or SIGTERM to the sweep's process asks every local worker to stop after
its current step (an event they share; the workers themselves ignore the terminal's signals so
that one Ctrl-C is not taken as two), waits for them to save, and raises
:class:`~selfnorm.interrupts.Interrupted`; jobs not yet started are not started. A second signal
kills the workers at once, which every durable write survives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfnorm._io import atomic_write_json, atomic_write_text
from selfnorm.data import DataConfig, Dataset
from selfnorm.interrupts import Interrupted, current_stop, graceful_stop
from selfnorm.summary import run_metrics

if TYPE_CHECKING:
    from selfnorm.sweep import Job, JobTask

__all__ = [
    "Executor",
    "LocalExecutor",
    "Progress",
    "RayExecutor",
    "available_cores",
    "check_executor",
    "connect",
    "run_job",
    "run_jobs",
]


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS, Windows)
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LocalExecutor:
    """Jobs in ``workers`` local processes (default: the cores), each with ``threads`` torch
    threads (default: cores // workers).

    Example:
        >>> LocalExecutor(workers=2, threads=1).describe()
        '2 local worker process(es) x 1 torch thread(s)'
    """

    workers: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}={v!r} must be an integer >= 1, e.g. 2")

    def resolved(self) -> tuple[int, int]:
        """``(workers, threads)`` with the defaults filled in."""
        workers = available_cores() if self.workers is None else self.workers
        return workers, max(
            1, available_cores() // workers
        ) if self.threads is None else self.threads

    def describe(self) -> str:
        workers, threads = self.resolved()
        return f"{workers} local worker process(es) x {threads} torch thread(s)"


@dataclass(frozen=True)
class RayExecutor:
    """Jobs as Ray tasks (``pip install selfnorm[ray]``), each reserving ``threads`` CPUs and
    running that many torch threads. ``address``: ``"auto"`` (the cluster this machine belongs
    to), ``"ray://HOST:10001"`` or ``"HOST:6379"``; None starts a local Ray instance, or uses
    the connection of a process that called ``ray.init`` already.

    Example:
        >>> RayExecutor("ray://head:10001").describe()
        'Ray tasks on Ray cluster ray://head:10001, 1 torch thread(s) and CPU(s) per job'
    """

    address: str | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        _check_threads(self.threads)

    def describe(self) -> str:
        where = "a local Ray instance" if self.address is None else f"Ray cluster {self.address}"
        return f"Ray tasks on {where}, {self.threads} torch thread(s) and CPU(s) per job"


Executor = LocalExecutor | RayExecutor
"""Where the jobs of a sweep or benchmark run: one value passed through run_jobs, run_sweep,
benchmark and the CLI."""


@lru_cache(maxsize=8)
def _load(data: DataConfig, task: JobTask | None) -> Dataset:
    """The data of a job, loaded once per process (a worker runs many jobs on the same data)."""
    from selfnorm.data import load_dataset

    return task.dataset(data) if task is not None else load_dataset(data, progress=False)


def run_job(job: Job, root: str, threads: int, keep_checkpoint: bool = False) -> dict[str, Any]:
    """Run one job in this process (the worker function of both executors); never raises.

    Sets torch to ``threads`` threads, trains (or resumes, or skips a finished run) with
    :func:`selfnorm.comparing.compare`, and writes ``job.json`` (the record returned) into
    ``root/jobs/<name>/``. A failure writes its traceback to ``error.txt`` next to it.
    ``keep_checkpoint=False`` deletes the finished run's checkpoint (it is only needed to resume).
    """
    import torch

    from selfnorm.comparing import compare
    from selfnorm.storage import RunDir

    torch.set_num_threads(threads)
    job_dir = Path(root) / "jobs" / job.name
    stop = _worker_stop if _STOP is not None else None
    record: dict[str, Any] = {
        **{k: v for k, v in job.to_dict().items() if k != "config"},
        "status": "failed",
        "error": None,
        "metrics": {},
        "seconds": None,
        "epoch_seconds": None,
        "threads": threads,
        "host": socket.gethostname(),
    }
    if stop is not None and stop():  # the sweep is stopping: do not start (nor touch files)
        return {**record, "status": "interrupted", "error": "not started: the sweep stopped"}
    for leftover in ("job.json", "error.txt"):
        (job_dir / leftover).unlink(missing_ok=True)
    t0 = time.perf_counter()
    paths = RunDir(job_dir).run(job.activation, job.seed)
    try:
        ds = _load(job.config.data, job.task)
        resume = (job_dir / "config.json").exists()
        compare(job.config, str(job_dir), resume=resume, progress=False, dataset=ds, stop=stop)
        metrics = run_numbers(paths.root)
        epoch_seconds = metrics.pop("epoch_seconds")  # timings are kept apart from the numbers
        if job.task is not None:
            metrics.update(job.task.extra_metrics(job, ds, paths.root))
        record.update(status="ok", metrics=metrics, epoch_seconds=epoch_seconds)
    except Interrupted as exc:  # saved where it stopped; the next start resumes it
        record.update(status="interrupted", error=str(exc))
    except Exception as exc:  # recorded, never swallowed: job.json + error.txt + the summary
        record["error"] = f"{type(exc).__name__}: {exc}"
        atomic_write_text(job_dir / "error.txt", traceback.format_exc())
    record["seconds"] = time.perf_counter() - t0
    atomic_write_json(job_dir / "job.json", record)
    if record["status"] == "ok" and not keep_checkpoint:
        paths.remove_checkpoints()
    return record


def run_numbers(run_root: Path) -> dict[str, Any]:
    """:func:`selfnorm.summary.run_metrics` of one finished run, read from its folder."""
    from selfnorm.storage import read_jsonl

    result = json.loads((run_root / "result.json").read_text(encoding="utf-8"))
    return run_metrics(result, read_jsonl(run_root / "metrics.jsonl"))


# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------

Progress = Callable[[dict[str, Any]], None]


def run_jobs(
    jobs: Sequence[Job],
    root: str | os.PathLike,
    *,
    executor: Executor | None = None,
    keep_checkpoints: bool = False,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Run every unfinished job; return every job's record, in the order of ``jobs``.

    Args:
        jobs: from :meth:`SweepSpec.jobs`.
        root: the sweep folder; job ``j`` writes ``root/jobs/<j.name>/``.
        executor: :class:`LocalExecutor` (the default: every core) or :class:`RayExecutor`.
        keep_checkpoints: keep each finished run's ``checkpoint.pt`` (default: delete it).
        progress: called after every finished job with ``{"done", "total", "skipped",
            "record", "elapsed", "eta"}`` (``eta`` in seconds, None before the first job ends).

    Returns:
        The ``job.json`` records (finished ones read back from disk). A job whose settings
        ran before under another folder name (a narrowed grid axis changes the readable
        prefix, not the hash) reuses that folder.
    """
    root = Path(root).resolve()
    if len({j.name for j in jobs}) != len(jobs):
        raise ValueError("two jobs have the same name (the same config twice); remove duplicates")
    executor = LocalExecutor() if executor is None else executor
    check_executor(executor)
    jobs = _reuse_folders(jobs, root)
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        rec = _finished_record(root, job)
        if rec is not None:
            records[job.name] = rec
            if not keep_checkpoints:
                _run_paths(root, job).remove_checkpoints()
        else:
            todo.append(job)
    tracker = _Tracker(len(jobs), len(records), progress)
    if todo:
        with graceful_stop(message=STOPPING_JOBS):  # Ctrl-C/SIGTERM: see the module docstring
            if isinstance(executor, RayExecutor):
                done = _run_ray(
                    todo, root, executor.threads, keep_checkpoints, executor.address, tracker
                )
            else:
                workers, threads = executor.resolved()
                done = _run_local(todo, root, workers, threads, keep_checkpoints, tracker)
        records.update(done)
    return [records[j.name] for j in jobs]


@contextmanager
def connect(executor: Executor) -> Iterator[None]:
    """For a :class:`RayExecutor`: connect (``ray.init``) for the ``with`` body unless this
    process is connected already, and disconnect after; a refused connection is a one-line
    ``ValueError``. For a :class:`LocalExecutor`: nothing. A sweep connects before it writes
    anything, so a wrong address leaves no folder behind."""
    global _CONNECTED
    if not isinstance(executor, RayExecutor) or _CONNECTED:  # nested: the outer one holds it
        yield
        return
    check_executor(executor)
    import ray

    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=executor.address)
    except ConnectionError as exc:
        raise ValueError(
            f"cannot connect to Ray at address={executor.address!r} ({exc}); start a cluster "
            "with `ray start --head` (then --ray auto), or use --ray local for one on this machine"
        ) from None
    _CONNECTED = True
    try:
        yield
    finally:
        _CONNECTED = False
        ray.shutdown()


_CONNECTED = False
"""True while :func:`connect` holds a Ray connection it made."""


def _reuse_folders(jobs: Sequence[Job], root: Path) -> list[Job]:
    """A job whose settings already have a folder under another readable prefix (the prefix
    names the grid keys a spec varies, so narrowing an axis renames it) takes that folder: a
    job's identity is the hash of its resolved settings, the name's last part."""
    import dataclasses

    folder = root / "jobs"
    if not folder.is_dir():
        return list(jobs)
    by_digest = {p.name.rsplit("-", 1)[-1]: p.name for p in sorted(folder.iterdir()) if p.is_dir()}
    out = []
    for job in jobs:
        name = by_digest.get(job.name.rsplit("-", 1)[-1], job.name)
        out.append(job if name == job.name else dataclasses.replace(job, name=name))
    return out


def check_executor(executor: Executor) -> None:
    """Fail early and clearly: a wrong type, Ray not installed, or a Ray address where no
    cluster answers (probed with a short TCP connection, so it is an error in seconds rather
    than Ray's minutes of retries)."""
    if not isinstance(executor, (LocalExecutor, RayExecutor)):
        raise TypeError(f"executor must be a LocalExecutor or RayExecutor, got {executor!r}")
    if isinstance(executor, RayExecutor) and not _CONNECTED:  # connect() checked it already
        ray = _ray(executor.address)
        if executor.address not in (None, "auto") and not ray.is_initialized():
            _probe(executor.address)


STOPPING_JOBS = "stopping the running jobs after their current step; the others do not start"
"""What the first Ctrl-C of a sweep or a benchmark says (see graceful_stop)."""

RAY_PROBE_SECONDS = 5.0
"""How long :func:`check_executor` waits for a Ray head's port to accept a connection."""


def _probe(address: str) -> None:
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
            f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT; pass e.g. "
            "10.0.0.5:6379, ray://head:10001, auto, or local"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_PROBE_SECONDS).close()
    except OSError as exc:
        raise ValueError(
            f"no Ray cluster answers at {address!r} ({exc.strerror or exc}); start one there "
            "with `ray start --head`, check the address, or use --ray local"
        ) from None


def _check_threads(threads: int) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r} must be an integer >= 1, e.g. 1")


def _run_paths(root: Path, job: Job):
    from selfnorm.storage import RunDir

    return RunDir(root / "jobs" / job.name).run(job.activation, job.seed)


def _finished_record(root: Path, job: Job) -> dict[str, Any] | None:
    path = root / "jobs" / job.name / "job.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return rec if rec.get("status") == "ok" else None


class _Tracker:
    """Counts finished jobs and estimates the time left from this session's pace."""

    def __init__(self, total: int, skipped: int, progress: Progress | None) -> None:
        self.total, self.skipped, self.ran = total, skipped, 0
        self.progress = progress
        self.t0 = time.perf_counter()

    def done(self, record: dict[str, Any]) -> None:
        self.ran += 1
        elapsed = time.perf_counter() - self.t0
        left = self.total - self.skipped - self.ran
        if self.progress is not None:
            self.progress(
                {
                    "done": self.skipped + self.ran,
                    "total": self.total,
                    "skipped": self.skipped,
                    "record": record,
                    "elapsed": elapsed,
                    "eta": elapsed / self.ran * left,
                }
            )


def _lost(job: Job, threads: int, error: str) -> dict[str, Any]:
    """The record of a job whose worker died (it never wrote job.json)."""
    return {
        **{k: v for k, v in job.to_dict().items() if k != "config"},
        "status": "failed",
        "error": error,
        "metrics": {},
        "seconds": None,
        "epoch_seconds": None,
        "threads": threads,
        "host": None,
    }


_WORKER_MODULES = ("torch", "torch._dynamo", "selfnorm.training", "sklearn.model_selection")
"""Imported once before any job (torch.optim imports torch._dynamo lazily, 1.6 s here)."""


_STOP = None
"""In a local worker process: the sweep's stop event (set by the parent on Ctrl-C/SIGTERM)."""
_PARENT: int | None = None
_TERMINATED = False


def _worker_sigterm(signum, frame) -> None:  # noqa: ARG001
    global _TERMINATED
    _TERMINATED = True


def _worker_stop() -> bool:
    """A worker stops after its step when the sweep says so, when it got SIGTERM, or when the
    sweep's process is gone (killed: the worker is an orphan and must not run on)."""
    return _TERMINATED or _STOP.is_set() or os.getppid() != _PARENT


def _init_worker(threads: int, stop=None) -> None:
    import importlib

    import torch

    global _STOP, _PARENT
    _STOP, _PARENT = stop, os.getppid()
    if stop is not None:
        # The parent decides when to stop on Ctrl-C (a terminal's reaches every process of the
        # group); a SIGTERM to this worker alone (e.g. `kill PID` of a worker whose sweep
        # died) stops it gracefully too.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _worker_sigterm)
    torch.set_num_threads(threads)
    for name in _WORKER_MODULES:
        importlib.import_module(name)


def _pool_context():
    """forkserver where there is one: workers fork from a server that has imported torch once
    (a fork of a process that has run torch ops can hang; a spawn re-imports everything)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(_WORKER_MODULES))
    return ctx


def _run_local(
    jobs: Sequence[Job],
    root: Path,
    workers: int,
    threads: int,
    keep: bool,
    tracker: _Tracker,
) -> dict[str, dict[str, Any]]:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = _pool_context()
    stop_event = ctx.Event()
    flag = current_stop()
    out: dict[str, dict[str, Any]] = {}
    n = min(workers, len(jobs))
    ex = ProcessPoolExecutor(
        n, mp_context=ctx, initializer=_init_worker, initargs=(threads, stop_event)
    )
    try:
        futures = {ex.submit(run_job, job, str(root), threads, keep): job for job in jobs}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = futures[fut]
                if fut.cancelled():
                    continue
                try:
                    rec = fut.result()
                except Exception as exc:  # the worker process died (killed, out of memory)
                    rec = _lost(job, threads, f"worker process lost: {type(exc).__name__}: {exc}")
                out[job.name] = rec
                if rec["status"] != "interrupted":
                    tracker.done(rec)
            if flag is not None and flag.requested and not stop_event.is_set():
                stop_event.set()  # running jobs save after their step; the rest never start
                for fut in pending:
                    fut.cancel()
    except BaseException:  # a second signal: stop the workers now (every write survives that)
        for proc in list(getattr(ex, "_processes", {}).values()):
            proc.kill()
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    left = sum(out.get(j.name, {}).get("status") != "ok" for j in jobs)
    if flag is not None and flag.requested and left:
        raise Interrupted(
            f"{left} of {len(jobs)} jobs left unfinished, their state saved", flag.signum
        )
    return out


def _ray(address: str | None):
    """The ray module, checked: installed, and no second address for a connected process."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "Ray is not installed; pip install 'selfnorm[ray]' (or run without --ray)"
        ) from None
    if ray.is_initialized() and address is not None:
        raise ValueError(
            f"ray_address={address!r}, but this process is already connected to Ray; pass "
            "None to use that connection, or call ray.shutdown() first"
        )
    return ray


def _run_ray(
    jobs: Sequence[Job],
    root: Path,
    threads: int,
    keep: bool,
    address: str | None,
    tracker: _Tracker,
) -> dict[str, dict[str, Any]]:
    with connect(RayExecutor(address, threads)):
        import ray

        task = ray.remote(run_job).options(num_cpus=threads)
        refs = {task.remote(job, str(root), threads, keep): job for job in jobs}
        pending = list(refs)
        out: dict[str, dict[str, Any]] = {}
        flag = current_stop()
        while pending:
            if flag is not None and flag.requested:  # Ray tasks have no graceful stop:
                for ref in pending:  # cancelled; each resumes from its last checkpoint
                    ray.cancel(ref, force=True)
                raise Interrupted(
                    f"{len(pending)} of {len(jobs)} Ray jobs cancelled; each resumes from its "
                    "last checkpoint",
                    flag.signum,
                )
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                job = refs[ref]
                try:
                    rec = ray.get(ref)
                except Exception as exc:  # the task's worker died (RayTaskError, node lost)
                    rec = _lost(job, threads, f"Ray task lost: {type(exc).__name__}: {exc}")
                out[job.name] = rec
                tracker.done(rec)
        return out
