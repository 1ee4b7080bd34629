"""The run directory: config, per-run metrics, checkpoints and results, written crash-safely.

Layout::

    RUN_DIR/
      config.json                      the resolved ExperimentConfig
      summary.json                     per-variant means/stds over seeds (written last)
      runs/<variant>/seed<k>/
        metrics.jsonl                  one JSON line per epoch, appended as it happens
        checkpoint.pt                  model + optimizer + RNG state after the last epoch
        records/chunk-<k>.npz          activation statistics, one chunk per epoch (records.py)
        result.json                    final numbers; its presence marks the run complete
      tensorboard/<variant>/seed<k>/   TensorBoard event files (``--tensorboard``)

Appends are flushed and fsync'ed; whole-file writes are atomic (temporary file + rename), so a
``kill -9`` at any moment leaves either the old or the new version of every file. On resume the
metrics and records beyond the checkpoint are dropped before training continues.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfnorm._io import atomic_write_bytes, atomic_write_json
from selfnorm.records import truncate_records

__all__ = ["RunDir", "RunPaths", "read_jsonl"]


def slug(name: str) -> str:
    """A variant name as a folder name (``lrelu:0.2+bn`` -> ``lrelu_0.2+bn``)."""
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", name)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read complete JSON lines; a torn last line (crash mid-write) is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
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
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def records(self) -> Path:
        return self.root / "records"

    def append_metrics(self, row: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, epochs: int) -> list[dict[str, Any]]:
        """Keep the first ``epochs`` rows (those covered by the checkpoint) and return them."""
        rows = read_jsonl(self.metrics)[:epochs]
        if len(rows) < epochs:
            raise RuntimeError(
                f"{self.metrics} has {len(rows)} complete rows but the checkpoint is at epoch "
                f"{epochs}; the run directory was edited by hand: start it again with --overwrite"
            )
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.metrics, text.encode("utf-8"))
        return rows

    def truncate_records(self, before_step: int) -> None:
        """Drop the records taken at or after ``before_step`` (those a resumed run takes
        again), and any temporary file an interrupted write left."""
        truncate_records(self.records, before_step)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint, buf.getvalue(), fsync=False)

    def load_checkpoint(self, device: torch.device) -> dict[str, Any] | None:
        if not self.checkpoint.exists():
            return None
        return torch.load(self.checkpoint, map_location=device, weights_only=True)

    def reset(self) -> None:
        """Delete everything a previous attempt of this run wrote."""
        for p in (self.metrics, self.checkpoint, self.result):
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
        return self.root.exists() and any(self.root.iterdir())

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
        added since it was written, with their defaults).

        Raises:
            ValueError: the folder exists and neither flag is given, or ``resume`` finds a
                different config, or ``overwrite`` would delete something that is not a run.
        """
        if resume and overwrite:
            raise ValueError("pass either --resume or --overwrite, not both")
        if self.exists():
            if resume:
                if not self.is_run_dir():
                    raise ValueError(
                        f"--resume: {self.root} holds no config.json, so it is not a selfnorm "
                        "run directory; pass the directory of an earlier run"
                    )
                stored = json.loads(self.config.read_text(encoding="utf-8"))
                if normalize is not None:
                    stored = normalize(stored)
                if stored != config:
                    diff = _diff(stored, config)
                    raise ValueError(
                        f"--resume: the settings differ from those stored in {self.config} "
                        f"({diff}); resume with the same settings, or use --overwrite"
                    )
                return
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
            shutil.rmtree(self.root)
        elif resume:
            raise ValueError(f"--resume: {self.root} does not exist; nothing to resume")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config, config)


def _diff(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')}: stored {a!r}, now {b!r}"
