"""The run directory: config, per-run metrics, checkpoints and results, written crash-safely.

Layout::

    RUN_DIR/
      config.json                      the resolved ExperimentConfig
      summary.json                     per-variant means/stds over seeds (written last)
      runs/<variant>/seed<k>/
        metrics.jsonl                  one JSON line per epoch, appended as it happens
        checkpoint.pt                  model + optimizer + RNG state after the last epoch
        checkpoint.prev.pt             the checkpoint before it, kept until the new one is on disk
        records/chunk-<k>.npz          activation statistics, one chunk per epoch (records.py)
        result.json                    final numbers; its presence marks the run complete
      tensorboard/<variant>/seed<k>/   TensorBoard event files (``--tensorboard``)

Appends are flushed and fsync'ed; whole-file writes are atomic and durable (temporary file,
fsync, rename, fsync of the folder: :mod:`selfnorm._io`), so a ``kill -9`` or a power loss at
any moment leaves either the old or the new version of every file. A checkpoint carries a
SHA-256 digest of its contents: one damaged on disk is detected on load, and the run falls back
to the previous checkpoint with a warning. On resume the metrics and records beyond the
checkpoint are dropped before training continues. ``docs/run-directory.md`` lists what survives
which fault.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfnorm._io import atomic_write_bytes, atomic_write_json, fsync_dir, make_dirs
from selfnorm.locking import LOCK_NAME
from selfnorm.records import chunk_paths, read_chunk, truncate_records

__all__ = [
    "RunDir",
    "RunDirError",
    "RunPaths",
    "config_digest",
    "read_json",
    "read_jsonl",
    "remove_temporary_files",
]


class RunDirError(ValueError):
    """A file of a run directory is damaged or inconsistent: one line naming it and the fix."""


def read_json(path: Path, what: str = "") -> Any:
    """``json.loads`` of a file, with an error that names the file (and ``what`` it should be)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(
            f"{path} is not valid JSON ({exc}){'; ' + what if what else ''}"
        ) from None


def config_digest(config: dict[str, Any]) -> str:
    """A short digest of a resolved config dict: each run stores the digest of the config it
    was trained with, so an edited ``config.json`` is caught on resume.

    Example:
        >>> config_digest({"a": 1}) == config_digest({"a": 1}) != config_digest({"a": 2})
        True
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _state_digest(obj: Any, h: Any = None) -> str:
    """SHA-256 over a checkpoint's contents (tensor bytes, dtypes, shapes and plain values),
    in a fixed order: what :meth:`RunPaths.load_checkpoint` checks a loaded file against."""
    top = h is None
    h = hashlib.sha256() if top else h
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _state_digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for v in obj:
            _state_digest(v, h)
    else:
        h.update(repr(obj).encode())
    return h.hexdigest() if top else ""


def slug(name: str) -> str:
    """A variant name as a folder name (``lrelu:0.2+bn`` -> ``lrelu_0.2+bn``)."""
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", name)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read complete JSON lines; a torn last line (crash mid-write) is ignored.

    Raises:
        RunDirError: a line before the last is not a JSON object (the file was edited or
            damaged: not something a crash leaves).
    """
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            if i == len(lines) - 1:  # the torn end of an interrupted append
                break
            raise RunDirError(
                f"{path} line {i + 1} is not a JSON object ({line[:40]!r}); the file was "
                f"edited or damaged: restore it, or delete {path.parent} and resume to train "
                "that run again"
            )
        rows.append(row)
    return rows


@dataclass(frozen=True)
class RunPaths:
    """Files of one (variant, seed) run."""

    root: Path
    tensorboard: Path | None = field(default=None, compare=False)
    """Folder of this run's TensorBoard event files (``RunDir.run`` sets it)."""

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def previous_checkpoint(self) -> Path:
        return self.root / "checkpoint.prev.pt"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    def read_result(self) -> dict[str, Any]:
        """The finished run's ``result.json``, checked to be a JSON object."""
        fix = f"delete {self.root} and resume to train this run again"
        result = read_json(self.result, fix)
        if not isinstance(result, dict):
            kind = type(result).__name__
            raise RunDirError(f"{self.result} holds a {kind}, not a JSON object; {fix}")
        return result

    @property
    def records(self) -> Path:
        return self.root / "records"

    def append_metrics(self, row: dict[str, Any]) -> None:
        make_dirs(self.root)
        new = not self.metrics.exists()
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if new:
            fsync_dir(self.root)

    def truncate_metrics(self, epochs: int) -> list[dict[str, Any]]:
        """Keep the first ``epochs`` rows (those covered by the checkpoint) and return them."""
        rows = read_jsonl(self.metrics)[:epochs]
        if len(rows) < epochs:
            raise RunDirError(
                f"{self.metrics} has {len(rows)} complete rows but the checkpoint is at epoch "
                f"{epochs}; the file was edited or damaged: delete {self.root} and resume to "
                "train this run again"
            )
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.metrics, text.encode("utf-8"))
        return rows

    def truncate_records(self, before_step: int) -> None:
        """Drop the records taken at or after ``before_step`` (those a resumed run takes
        again), and any temporary file an interrupted write left."""
        truncate_records(self.records, before_step)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``state`` (with its digest) as ``checkpoint.pt``, durably; the one it replaces
        becomes ``checkpoint.prev.pt`` once the new one is complete on disk."""
        buf = io.BytesIO()
        torch.save({**state, "digest": _state_digest(state)}, buf)
        atomic_write_bytes(self.checkpoint, buf.getvalue(), keep=self.previous_checkpoint)

    def load_checkpoint(self, fallback: bool = True) -> dict[str, Any] | None:
        """The newest good checkpoint, or None when the run has none.

        A damaged ``checkpoint.pt`` (truncated, garbled, or with contents that do not match
        its digest) falls back to ``checkpoint.prev.pt`` with a one-line ``RuntimeWarning``
        (``fallback=False``: only ``checkpoint.pt`` counts, e.g. to score the final model).
        Loaded onto the CPU (``load_state_dict`` moves it to the model's device), so a full GPU
        is not taken for damage; an ``OSError`` (permissions, too many open files) propagates
        as it is.

        Raises:
            RunDirError: there are checkpoints but none of them is good.
        """
        problems = []
        candidates = (self.checkpoint, self.previous_checkpoint) if fallback else (self.checkpoint,)
        for path in candidates:
            if not path.exists():
                continue
            state, problem = _load_state(path)
            if state is not None:
                if problems:  # set the damaged file aside (kept for a look), warn once
                    os.replace(self.checkpoint, self.damaged_checkpoint)
                    fsync_dir(self.root)
                    warnings.warn(
                        f"{problems[0]}; resuming from the previous one, {path.name} "
                        f"(epoch {state['epoch']}); the damaged file is now checkpoint.damaged.pt",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                return state
            problems.append(f"{path} is damaged ({problem})")
        if problems:
            raise RunDirError(
                f"{'; '.join(problems)}; no good checkpoint is left for this run: delete "
                f"{self.root} and resume to train it again (the other runs are kept)"
            )
        return None

    def load_previous_checkpoint(self) -> dict[str, Any] | None:
        """``checkpoint.prev.pt`` when it is good, else None: the state one checkpoint before
        the newest (a stack of runs steps a run back to it to stay together on resume)."""
        if not self.previous_checkpoint.exists():
            return None
        return _load_state(self.previous_checkpoint)[0]

    def check_records(self, before_step: int) -> None:
        """Every record chunk a resume keeps (steps before ``before_step``) must be readable.

        Raises:
            RunDirError: naming the chunk, with the choice: accept a gap or retrain the run.
        """
        for _, path in chunk_paths(self.records):
            try:
                rec = read_chunk(path)
            except Exception as exc:  # noqa: BLE001 - any failure to read is damage
                raise RunDirError(
                    f"{path} is damaged ({type(exc).__name__}: {exc}); delete that file to "
                    f"resume with a gap in the records, or delete {self.root} to train this "
                    "run again"
                ) from None
            if len(rec.steps) and rec.steps.min() >= before_step:
                break

    def remove_checkpoints(self) -> None:
        """Delete every checkpoint of the run (a finished sweep job keeps only its numbers)."""
        for p in (self.checkpoint, self.previous_checkpoint, self.damaged_checkpoint):
            p.unlink(missing_ok=True)
        remove_temporary_files(self.root)

    @property
    def damaged_checkpoint(self) -> Path:
        return self.root / "checkpoint.damaged.pt"

    def reset(self) -> None:
        """Delete everything a previous attempt of this run wrote."""
        self.remove_checkpoints()
        for p in (self.metrics, self.result):
            p.unlink(missing_ok=True)
        for d in (self.records, self.tensorboard):
            if d is not None and d.exists():
                shutil.rmtree(d)


class RunDir:
    """A comparison's output folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def run(self, variant: str, seed: int) -> RunPaths:
        return RunPaths(
            self.root / "runs" / slug(variant) / f"seed{seed}",
            self.root / "tensorboard" / slug(variant) / f"seed{seed}",
        )

    def exists(self) -> bool:
        """The folder holds anything but a lock (:mod:`selfnorm.locking`) and the temporary
        files of writes a kill interrupted (``.NAME.*.tmp``; :meth:`prepare` removes them,
        under the lock)."""
        if not self.root.exists():
            return False
        return any(p.name != LOCK_NAME and not _is_temporary(p) for p in self.root.iterdir())

    def is_run_dir(self) -> bool:
        return self.config.exists()

    def prepare(
        self,
        config: dict[str, Any],
        resume: bool,
        overwrite: bool,
        normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """Create the folder, or check it for ``resume``, or clear it for ``overwrite``.
        ``normalize`` maps the stored config before the comparison (e.g. fills in fields
        added since it was written, with their defaults). Every refusal comes from
        :meth:`check_prepare`, before anything is touched.

        Raises:
            ValueError: the folder exists and neither flag is given, or ``resume`` finds a
                different config, or ``overwrite`` would delete something that is not a run.
        """
        action = self.check_prepare(config, resume, overwrite, normalize)
        remove_temporary_files(self.root)
        if action == "resume":
            return
        if action == "replace":
            for p in self.root.iterdir():  # all but the lock this process holds
                if p.name != LOCK_NAME:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        make_dirs(self.root)
        atomic_write_json(self.config, config)

    def check_prepare(
        self,
        config: dict[str, Any],
        resume: bool,
        overwrite: bool,
        normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> str:
        """What :meth:`prepare` would do (``"create"``, ``"resume"`` or ``"replace"``), or
        the ``ValueError`` it would raise; writes nothing."""
        if resume and overwrite:
            raise ValueError("pass either --resume or --overwrite, not both")
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"{self.root} is a file, not a folder; choose another --out")
        if not self.exists():
            if resume:
                raise ValueError(f"--resume: {self.root} does not exist; nothing to resume")
            return "create"
        if resume:
            if not self.is_run_dir():
                raise ValueError(
                    f"--resume: {self.root} holds no config.json, so it is not a selfnorm "
                    "run directory; pass the directory of an earlier run"
                )
            stored = read_json(self.config)
            if not isinstance(stored, dict):
                raise RunDirError(
                    f"{self.config} holds a {type(stored).__name__}, not a JSON object; "
                    "restore it from the run's report (Configuration) or start again"
                )
            if normalize is not None:
                stored = normalize(stored)
            if stored != config:
                diff = _diff(stored, config)
                raise ValueError(
                    f"--resume: the settings differ from those stored in {self.config} "
                    f"({diff}); resume with the same settings, or use --overwrite"
                )
            return "resume"
        if not overwrite:
            raise ValueError(
                f"output directory {self.root} already exists; pass --resume to continue it, "
                "--overwrite to replace it, or --out NEW_DIR"
            )
        if not self.is_run_dir():
            raise ValueError(
                f"--overwrite: {self.root} is not empty and holds no config.json; refusing "
                "to delete a folder that is not a selfnorm run, choose another --out"
            )
        return "replace"


def _diff(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')}: stored {a!r}, now {b!r}"


def _is_temporary(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()


def remove_temporary_files(directory: Path) -> None:
    """Remove what writes interrupted by a kill left in ``directory`` (``.NAME.*.tmp``); only
    call it while holding the folder's lock (a running writer's file looks the same)."""
    if directory.is_dir():
        for p in directory.iterdir():
            if _is_temporary(p):
                p.unlink(missing_ok=True)


def _load_state(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(state, "")`` for a good checkpoint file, ``(None, what is wrong)`` otherwise."""
    with path.open("rb") as f:  # an OSError here is not damage: it propagates
        data = f.read()
    try:  # the bytes are in memory: whatever torch.load raises now is about their content
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - RuntimeError, EOFError, UnpicklingError, ...
        first = (str(exc).splitlines() or ["empty or cut short"])[0][:120]
        return None, f"{type(exc).__name__}: {first}"
    if not isinstance(state, dict) or not {"epoch", "model", "optimizer", "rng"} <= set(state):
        return None, "not a selfnorm checkpoint"
    digest = state.pop("digest", None)
    if digest is not None and digest != _state_digest(state):
        return None, "its contents do not match their digest"
    return state, ""
