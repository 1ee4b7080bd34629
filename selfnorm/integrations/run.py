r"""A run directory for a training selfnorm does not drive: a plain loop, Lightning, Keras.

:class:`TrainingRun` records a model with the one recorder
(:class:`~selfnorm.recording.ActivationRecorder`) into the layout ``selfnorm compare`` writes
(``docs/run-directory.md``), with the model as the one variant and its seed as the one run::

    OUT/config.json                   what trained (source, name, seed, record settings, ...)
    OUT/runs/<name>/seed<k>/metrics.jsonl, records/, result.json
    OUT/summary.json, report.html, summary.md     written by finish()
    OUT/tensorboard/<name>/seed<k>/   with RecordConfig(tensorboard=True), or tensorboard=DIR

so ``selfnorm report OUT`` rebuilds the usual report from it: the learning curves, the
per-layer histograms over training, the moments and, for SELU layers, the distance from the
fixed point (0, 1). The Lightning and Keras callbacks (:mod:`selfnorm.integrations.lightning`,
:mod:`selfnorm.integrations.keras`) are thin layers over it.

Example (a plain loop):
    >>> import tempfile, torch
    >>> from torch import nn
    >>> from selfnorm.recording.config import RecordConfig
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.SELU(), nn.Linear(16, 2))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    >>> out = tempfile.mkdtemp()
    >>> with TrainingRun(out, net, name="snn", record=RecordConfig(every=1)) as run:
    ...     for epoch in range(2):
    ...         for i in range(0, 64, 16):
    ...             _ = run.step()
    ...             loss = nn.functional.cross_entropy(net(x[i : i + 16]), y[i : i + 16])
    ...             opt.zero_grad()
    ...             loss.backward()
    ...             opt.step()
    ...         _ = run.end_epoch(train_loss=loss.item())
    ...     report = run.finish()
    >>> report.name, len(run.records().steps)
    ('report.html', 8)
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from selfnorm._io import atomic_write_json
from selfnorm.locking import LOCK_NAME, RunLock
from selfnorm.recording import ActivationRecorder
from selfnorm.recording.config import RecordConfig
from selfnorm.records import Records, read_records
from selfnorm.sinks import NpzChunkSink, TensorBoardSink
from selfnorm.storage import RunDir, read_jsonl
from selfnorm.summary import summarize

__all__ = ["TrainingRun"]

_ROW_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
             "test_accuracy")  # fmt: skip


class TrainingRun:
    """Record ``model``'s training into a run directory ``out``; a context manager.

    Call :meth:`step` before each optimizer step's forward pass, :meth:`end_epoch` after each
    epoch with what the training knows (losses and accuracies; missing ones are left out of
    the curves), and :meth:`finish` at the end (it writes the summary and the report).

    Args:
        out: the run directory; refused if it exists and is not empty, unless ``overwrite``
            (which replaces only an earlier selfnorm run).
        model: the ``nn.Module`` to record (a Keras 3 model on the torch backend is one).
        name: the variant name in the report (a folder name under ``runs/``).
        seed: the run's seed, only a label here (``runs/<name>/seed<k>``).
        record: what to record and how often (:class:`~selfnorm.recording.RecordConfig`);
            ``every=None`` resolves to a quarter epoch (at most 50 steps) from
            ``steps_per_epoch``, or 50 without.
        steps_per_epoch: optimizer steps per epoch, for the epoch axis of the records.
        tensorboard: a folder for TensorBoard event files of the records and the epoch
            metrics (e.g. a trainer's logger directory); default ``OUT/tensorboard/...`` when
            ``record.tensorboard``, else none.
        source: what trained it (``"python"``, ``"lightning"``, ``"keras"``), stored in
            ``config.json`` and shown in the report's configuration.
        model_label: what ``config.json`` calls the model (default: ``model``'s class name;
            a callback that records through stand-in modules names the user's model).
        settings: anything else worth keeping in ``config.json`` (JSON-serializable).
        dataset: ``name`` and the sizes ``train``/``val``/``test`` for the report's header.
        overwrite: replace an earlier selfnorm run at ``out``.
        recorder_options: more keyword arguments of
            :class:`~selfnorm.recording.ActivationRecorder` (``activation_types``,
            ``functional``, ...).
    """

    def __init__(
        self,
        out: str | Path,
        model: nn.Module,
        *,
        name: str = "model",
        seed: int = 0,
        record: RecordConfig | None = None,
        steps_per_epoch: int | None = None,
        tensorboard: str | Path | None = None,
        source: str = "python",
        model_label: str | None = None,
        settings: Mapping[str, Any] | None = None,
        dataset: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        **recorder_options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name={name!r} must be a non-empty string, e.g. 'model'")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r} must be an integer >= 0")
        rc = record if record is not None else RecordConfig()
        if not isinstance(rc, RecordConfig):
            raise TypeError(f"record must be a RecordConfig, got {type(rc).__name__}")
        if steps_per_epoch is not None:
            rc = dataclasses.replace(rc, every=rc.resolve_every(steps_per_epoch))
        self.name, self.seed, self.record = name, seed, rc
        self.dataset = dict(dataset or {})
        self.run_dir = RunDir(out)
        self.paths = self.run_dir.run(name, seed)
        config = {
            "source": source,
            "activations": [name],
            "seeds": [seed],
            "model": model_label or type(model).__name__,
            "record": dataclasses.asdict(rc),
            "settings": dict(settings or {}),
        }
        self._lock = RunLock(out, "training").acquire()
        action = None
        try:
            try:
                action = self.run_dir.check_prepare(config, resume=False, overwrite=overwrite)
            except ValueError as exc:
                if "already exists" not in str(exc):
                    raise
                raise ValueError(
                    f"{out} already exists; pass overwrite=True to replace an earlier selfnorm "
                    "run there, or choose another folder"
                ) from None
            self.run_dir.prepare(config, resume=False, overwrite=overwrite)
            self.paths.root.mkdir(parents=True, exist_ok=True)
            board_dir = tensorboard
            if board_dir is None and rc.tensorboard:
                board_dir = self.paths.tensorboard
            self._board = TensorBoardSink(board_dir) if board_dir is not None else None
            sinks: list[Any] = [NpzChunkSink(self.paths.records)]
            if self._board is not None:
                sinks.append(self._board)
            self.recorder = ActivationRecorder(
                model, rc, sinks=sinks, steps_per_epoch=steps_per_epoch, **recorder_options
            )
        except BaseException:
            try:  # a refusal (e.g. of the recorder's arguments) leaves nothing written
                if action == "create":
                    for p in self.run_dir.root.iterdir():
                        if p.name != LOCK_NAME:
                            shutil.rmtree(p) if p.is_dir() else p.unlink()
            finally:
                self._lock.release()
            raise
        self.history: list[dict[str, Any]] = []
        self._steps = 0
        self._t_epoch = time.perf_counter()
        self._closed = False

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(flush=exc_type is None)

    def step(self) -> bool:
        """Start an optimizer step (before its forward pass); whether it is recorded."""
        self._steps += 1
        return self.recorder.step()

    def end_epoch(self, *, epoch_seconds: float | None = None, **metrics: float | None) -> dict:
        """Close an epoch: write its records (one chunk) and its row of ``metrics.jsonl``.

        Args:
            epoch_seconds: the epoch's training time (default: since the last call).
            metrics: any of ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``,
                ``test_loss``, ``test_accuracy`` (accuracies as fractions in [0, 1]); None
                values are left out.

        Returns:
            The row written.
        """
        unknown = sorted(set(metrics) - set(_ROW_KEYS))
        if unknown:
            raise ValueError(
                f"end_epoch got {', '.join(unknown)}; the metrics it stores are "
                f"{', '.join(_ROW_KEYS)}"
            )
        now = time.perf_counter()
        if self.recorder.steps_per_epoch is None and self._steps:  # learned from the first epoch
            self.recorder.steps_per_epoch = self._steps
        self.recorder.flush()
        row: dict[str, Any] = {"epoch": len(self.history) + 1}
        row |= {k: float(v) for k, v in metrics.items() if v is not None}
        seconds = now - self._t_epoch if epoch_seconds is None else epoch_seconds
        row["epoch_seconds"] = float(seconds)
        self._t_epoch = now
        self.paths.append_metrics(row)
        self.history.append(row)
        if self._board is not None:
            scalars = {k.replace("_", "/", 1): v for k, v in row.items() if k in _ROW_KEYS}
            self._board.write_scalars(scalars, max(self._steps - 1, 0))
        return row

    def finish(
        self,
        *,
        test_loss: float | None = None,
        test_accuracy: float | None = None,
        diverged_reason: str | None = None,
        report: bool = True,
    ) -> Path:
        """Write ``result.json``, ``summary.json`` and (``report``) the report; release the
        folder. Returns the path of ``report.html`` (or of ``summary.json``)."""
        if self._closed:
            raise RuntimeError("this TrainingRun is finished already")
        if self.recorder.steps_per_epoch is None and self._steps:  # no end_epoch: one epoch
            self.recorder.steps_per_epoch = self._steps
        self.recorder.flush()
        result = {
            "activation": self.name,
            "seed": self.seed,
            "epochs_completed": len(self.history),
            "diverged": diverged_reason is not None,
            "diverged_reason": diverged_reason,
            "test_loss": _number(test_loss),
            "test_accuracy": _number(test_accuracy),
        }
        atomic_write_json(self.paths.result, result)
        history = read_jsonl(self.paths.metrics)
        ds = {"name": "?", "train": None, "val": None, "test": None} | self.dataset
        device = str(self.recorder.device)
        summary = summarize(None, {self.name: [result]}, {self.name: [history]}, device, ds)
        atomic_write_json(self.run_dir.summary, summary)
        out = self.run_dir.summary
        self.close(flush=False)
        if report:
            from selfnorm.report.html import build_report  # matplotlib: only when reporting

            with RunLock(self.run_dir.root, "report"):
                out = build_report(self.run_dir.root)[0]
        return out

    def records(self) -> Records:
        """What was recorded so far, read back from the run folder."""
        return read_records(self.paths.root)

    def close(self, flush: bool = True) -> None:
        """Flush (unless ``flush=False``), remove the hooks, release the folder. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if flush:
                self.recorder.flush()
        finally:
            try:
                self.recorder.close()
            finally:
                self._lock.release()


def _number(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None
