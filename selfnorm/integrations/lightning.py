r"""A Lightning callback that records a LightningModule's training into a selfnorm run directory.

:class:`SelfnormCallback` is a thin layer over :class:`~selfnorm.integrations.run.TrainingRun`:
the one recorder (:class:`~selfnorm.recording.ActivationRecorder`) records the activations every
``every`` training batches into ``OUT``, the epoch's losses and accuracies come from what the
LightningModule logs (``trainer.callback_metrics``), and at the end of ``trainer.fit`` it writes
``OUT/report.html`` (``selfnorm report OUT`` rebuilds it): the learning curves, the per-layer
histograms over training, the moments and, for SELU layers, the distance from the fixed point
(0, 1). With ``tensorboard=True`` the records also go to the trainer's TensorBoard logger.

Needs ``lightning`` (``pip install 'selfnorm[lightning]'`` after torch) and is written for its
``lightning.pytorch`` API; a Trainer of the older standalone package ``pytorch_lightning`` (the
same code under another import name) runs it too, TensorBoardLogger included.

Example:
    >>> import tempfile, warnings, torch, lightning.pytorch as L
    >>> from lightning.fabric.utilities.warnings import PossibleUserWarning
    >>> from torch import nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> warnings.simplefilter("ignore", PossibleUserWarning)  # Lightning's DataLoader hints
    >>> warnings.filterwarnings("ignore", ".*LeafSpec", FutureWarning)  # Lightning on torch 2.13
    >>> class Net(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Sequential(nn.Linear(8, 16), nn.SELU(), nn.Linear(16, 2))
    ...
    ...     def forward(self, x):
    ...         return self.net(x)
    ...
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         loss = nn.functional.cross_entropy(self(x), y)
    ...         self.log("train_loss", loss, on_step=False, on_epoch=True)
    ...         return loss
    ...
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    >>> data = TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    >>> callback = SelfnormCallback(tempfile.mkdtemp(), every=2)
    >>> trainer = L.Trainer(
    ...     accelerator="cpu", max_epochs=2, callbacks=[callback], logger=False,
    ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    ... )
    >>> trainer.fit(Net(), DataLoader(data, batch_size=16))
    >>> callback.report_path.name, callback.run.records().steps.tolist()
    ('report.html', [0, 2, 4, 6])
    >>> [sorted(row) for row in callback.run.history][0]
    ['epoch', 'epoch_seconds', 'train_loss']
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from collections.abc import Mapping, Sized
from pathlib import Path
from typing import Any

try:
    import lightning
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
except ImportError as exc:
    raise ImportError(
        f"selfnorm.integrations.lightning needs Lightning ({exc}); install it after torch, so "
        f"it keeps your torch build: {sys.executable} -m pip install 'selfnorm[lightning]'"
    ) from None

from torch import nn

from selfnorm.integrations.run import TrainingRun
from selfnorm.recording.config import RecordConfig

__all__ = ["METRIC_NAMES", "SelfnormCallback"]

METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "train_loss": ("train_loss_epoch", "train_loss", "train/loss", "loss_epoch", "loss"),
    "train_accuracy": (
        "train_acc_epoch", "train_acc", "train_accuracy_epoch", "train_accuracy", "train/acc",
        "train/accuracy",
    ),
    "val_loss": ("val_loss_epoch", "val_loss", "val/loss", "valid_loss", "validation_loss"),
    "val_accuracy": (
        "val_acc_epoch", "val_acc", "val_accuracy_epoch", "val_accuracy", "val/acc",
        "val/accuracy", "valid_acc", "validation_accuracy",
    ),
}  # fmt: skip
"""The names in ``trainer.callback_metrics`` each metric of a run's ``metrics.jsonl`` is read
from, the first present one winning (``self.log("train_loss", ..., on_epoch=True)`` also logs
``train_loss_epoch``, the epoch mean, which is preferred). Other logged metrics are ignored."""


class SelfnormCallback(pl.Callback):
    r"""Record a LightningModule's activations during ``trainer.fit`` into a run directory.

    On every training batch the recorder takes a step; every ``every``-th one (0, every,
    2·every, ...) records the training forward pass of the recorded module (the LightningModule,
    or its submodule ``module``) and its backward. Validation runs in eval mode and is not
    recorded, nor is the sanity check before training. After each epoch a row of
    ``metrics.jsonl`` takes the losses and accuracies the module logged
    (:data:`METRIC_NAMES`, or the names given in ``metrics``; validation numbers only for the
    epochs in which validation ran); at the end of training it writes ``summary.json`` and
    ``report.html``. Only global rank 0 records (in a multi-process run it sees its own
    batches).

    Args:
        out: the run directory; refused if it exists and is not empty, unless ``overwrite``.
        every: record every N training batches; default: a quarter epoch, at most 50 batches
            (:meth:`~selfnorm.recording.RecordConfig.resolve_every`). Shorthand for
            ``record=RecordConfig(every=N)``; give one or the other.
        record: what to record and how often (:class:`~selfnorm.recording.RecordConfig`: bins,
            range, ``every``; ``tensorboard=True`` there writes to ``OUT/tensorboard/``).
        name: the variant name in the report (a folder under ``OUT/runs/``); default the
            LightningModule's class name.
        seed: the run's seed, only a label (``runs/<name>/seed<k>``): pass the seed given to
            ``lightning.seed_everything``.
        tensorboard: also write the records and epoch metrics into the ``log_dir`` of the
            trainer's :class:`~lightning.pytorch.loggers.TensorBoardLogger` (an error at
            ``fit`` when it has none).
        module: the attribute name (dotted for deeper ones, ``"encoder.mlp"``) of the submodule
            to record, for a ``training_step`` that calls it (``self.net(x)``) instead of
            ``self(x)``; default the LightningModule itself.
        metrics: per metric of ``metrics.jsonl`` (``train_loss``, ``train_accuracy``,
            ``val_loss``, ``val_accuracy``) the logged name to read it from, instead of those in
            :data:`METRIC_NAMES`, e.g. ``{"val_loss": "val_nll"}``. Accuracies are fractions
            in [0, 1].
        dataset: ``name`` and sizes ``train``/``val``/``test`` for the report's header; default
            the sizes of the trainer's DataLoaders where they have one, and the DataModule's
            class name.
        report: write ``report.html`` when training ends (``False``: only ``summary.json``;
            ``selfnorm report OUT`` writes the report later).
        overwrite: replace an earlier selfnorm run at ``out``.
        recorder_options: more keyword arguments of
            :class:`~selfnorm.recording.ActivationRecorder` (``activation_types``, ...).

    Attributes:
        run: the :class:`~selfnorm.integrations.run.TrainingRun`, from the start of training
            (``run.records()``, ``run.history`` stay readable after it).
        report_path: the path of ``report.html`` once training has ended (with ``report``).

    Warning:
        A step is a training batch: with ``accumulate_grad_batches=k`` an optimizer step takes
        k of them, so the records' step numbers count batches, not ``trainer.global_step``.
        Metrics logged in the LightningModule's ``on_train_epoch_end`` are in the epoch's row
        (written when the next epoch starts, or at the end of training); a later
        ``trainer.test`` is not (the run is finished when ``fit`` ends). An exception during
        ``fit`` closes the run without a summary or a report; the records of the epochs before
        it stay in ``OUT``. Resuming ``fit`` from a checkpoint starts a new run (a new ``out``,
        or ``overwrite``) whose steps count from 0.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        every: int | None = None,
        record: RecordConfig | None = None,
        name: str | None = None,
        seed: int = 0,
        tensorboard: bool = False,
        module: str | None = None,
        metrics: Mapping[str, str] | None = None,
        dataset: Mapping[str, Any] | None = None,
        report: bool = True,
        overwrite: bool = False,
        **recorder_options: Any,
    ) -> None:
        if every is not None and record is not None:
            raise ValueError(
                f"every={every!r} and record= both set how often to record; give one, e.g. "
                f"record=RecordConfig(every={every!r}, ...)"
            )
        flags = {"tensorboard": tensorboard, "report": report, "overwrite": overwrite}
        for key, flag in flags.items():
            if not isinstance(flag, bool):
                raise ValueError(f"{key}={flag!r} must be True or False")
        if module is not None and (not isinstance(module, str) or not module.strip()):
            raise ValueError(
                f"module={module!r} must be None (the LightningModule) or the attribute name of "
                "the submodule training_step calls, e.g. 'net'"
            )
        self.out = Path(out)
        self.record = record if record is not None else RecordConfig(every=every)
        self.name, self.seed, self.tensorboard, self.module = name, seed, tensorboard, module
        self.metric_names = _metric_names(metrics or {})
        self.dataset = dict(dataset or {})
        self.write_report = report
        self.overwrite = overwrite
        self.recorder_options = recorder_options
        self.run: TrainingRun | None = None
        self.report_path: Path | None = None
        self._board_dir: str | None = None
        self._active = False  # a run is open: between the start of training and its end
        self._recording = False  # this batch's forward pass is armed
        self._validated = False  # validation ran since the last epoch row
        self._t_epoch = 0.0
        self._epoch_seconds: float | None = None  # an epoch ended whose row is not written yet

    # -- hooks -----------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find the TensorBoard folder before the sanity check, so a missing logger fails
        before anything runs."""
        if stage == "fit" and self.tensorboard:
            self._board_dir = _tensorboard_dir(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open the run (the DataLoaders are known now: the number of batches per epoch)."""
        if not trainer.is_global_zero:
            return
        self.run = TrainingRun(
            self.out,
            self._recorded(pl_module),
            name=self.name or type(pl_module).__name__,
            seed=self.seed,
            record=self.record,
            steps_per_epoch=_batches_per_epoch(trainer),
            tensorboard=self._board_dir,
            source="lightning",
            settings=_settings(trainer, pl_module, self.module),
            dataset=_dataset(trainer) | self.dataset,
            overwrite=self.overwrite,
            **self.recorder_options,
        )
        self._active = True
        self._recording = self._validated = False
        self._epoch_seconds = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the last epoch's row (all it logged is in now); time this epoch."""
        self._write_epoch(trainer)
        self._t_epoch = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """A step of the recorder: on a recording step it arms the batch's forward pass."""
        if self._active:
            self._recording = self.run.step()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Check that the first recording step recorded something: a ``training_step`` that
        does not call the recorded module as ``module(x)`` would leave every record empty."""
        if not (self._active and self._recording):
            return
        recorder = self.run.recorder
        if recorder.armed and not recorder.layers:
            model = type(recorder.model).__name__
            raise RuntimeError(
                f"SelfnormCallback armed a record of {model}, but training_step never called "
                f"{model} in training mode: if it calls a submodule (self.net(x)), pass "
                "module='net'; call modules as m(x), never m.forward(x), which skips the hooks"
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note that validation ran (the sanity check does not count): the epoch's row takes
        its numbers."""
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Mark the epoch's row due; it is written once the LightningModule's own
        ``on_train_epoch_end`` (which runs after the callbacks') has logged its metrics."""
        if self._active:
            self._epoch_seconds = time.perf_counter() - self._t_epoch

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the last epoch's row, the summary and (``report``) the report."""
        if not self._active:
            return
        self._write_epoch(trainer)
        self._active = False
        written = self.run.finish(report=self.write_report)
        self.report_path = written if self.write_report else None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Remove the hooks and release ``out``, without a summary or a report."""
        if self._active:
            self._active = False
            self.run.close(flush=False)

    # -- helpers ---------------------------------------------------------------------------

    def _recorded(self, pl_module: pl.LightningModule) -> nn.Module:
        """The module the recorder wraps: the LightningModule or its submodule ``module``."""
        if self.module is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError:
            children = ", ".join(n for n, _ in pl_module.named_children()) or "none"
            raise ValueError(
                f"module={self.module!r} is not a submodule of {type(pl_module).__name__} (its "
                f"submodules: {children}); pass the attribute name training_step calls"
            ) from None

    def _write_epoch(self, trainer: pl.Trainer) -> None:
        """Write the row of an ended epoch, if one is due."""
        if not self._active or self._epoch_seconds is None:
            return
        row = self._epoch_metrics(trainer.callback_metrics)
        self.run.end_epoch(epoch_seconds=self._epoch_seconds, **row)
        self._epoch_seconds = None
        self._validated = False

    def _epoch_metrics(self, logged: Mapping[str, Any]) -> dict[str, float]:
        """The metrics of ``metrics.jsonl`` found in ``logged`` (validation ones only if
        validation ran this epoch)."""
        row = {}
        for key, names in self.metric_names.items():
            if key.startswith("val_") and not self._validated:
                continue
            found = next((n for n in names if n in logged), None)
            if found is None:
                continue
            value = float(logged[found])
            if key.endswith("accuracy") and math.isfinite(value) and not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"the logged {found}={value:g} is not a fraction in [0, 1], which is what "
                    f"selfnorm stores as {key}; log the accuracy as a fraction, or map {key} to "
                    f"another name with SelfnormCallback(metrics={{{key!r}: ...}})"
                )
            row[key] = value
        return row


def _metric_names(given: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """:data:`METRIC_NAMES` with the names the user gave in their place."""
    unknown = sorted(set(given) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(
            f"metrics= names {', '.join(map(repr, unknown))}; the metrics a run stores per epoch "
            f"are {', '.join(METRIC_NAMES)}"
        )
    for key, name in given.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"metrics[{key!r}]={name!r} must be the name a metric is logged as")
    return METRIC_NAMES | {key: (name,) for key, name in given.items()}


def _tensorboard_dir(trainer: pl.Trainer) -> str:
    """The ``log_dir`` of the trainer's TensorBoardLogger."""
    for logger in trainer.loggers:
        if isinstance(logger, _tensorboard_loggers()):
            return logger.log_dir
    got = ", ".join(type(lg).__name__ for lg in trainer.loggers) or "no logger"
    raise ValueError(
        f"SelfnormCallback(tensorboard=True) writes into the trainer's TensorBoardLogger, but the "
        f"trainer has {got}: pass Trainer(logger=TensorBoardLogger(save_dir)), or "
        "tensorboard=False (record=RecordConfig(tensorboard=True) writes to OUT/tensorboard/)"
    )


def _tensorboard_loggers() -> tuple[type, ...]:
    """``lightning.pytorch``'s TensorBoardLogger, and the standalone ``pytorch_lightning``'s
    where that package is in use (imported: its logger cannot exist otherwise)."""
    if "pytorch_lightning" not in sys.modules:
        return (TensorBoardLogger,)
    return TensorBoardLogger, importlib.import_module("pytorch_lightning.loggers").TensorBoardLogger


def _batches_per_epoch(trainer: pl.Trainer) -> int | None:
    """Training batches per epoch, None for a DataLoader without a length."""
    n = trainer.num_training_batches
    return int(n) if math.isfinite(n) else None


def _settings(
    trainer: pl.Trainer, pl_module: pl.LightningModule, module: str | None
) -> dict[str, Any]:
    """What trained, for ``config.json``: the trainer's limits and the module's hyperparameters
    (those JSON cannot hold as their ``repr``)."""
    plain = (str, int, float, bool, type(None))
    hparams = {k: v if isinstance(v, plain) else repr(v) for k, v in pl_module.hparams.items()}
    return {
        "lightning": lightning.__version__,
        "recorded_module": module,
        "max_epochs": trainer.max_epochs,
        "max_steps": trainer.max_steps,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "precision": str(trainer.precision),
        "hparams": hparams,
    }


def _dataset(trainer: pl.Trainer) -> dict[str, Any]:
    """The report header's dataset: the DataModule's class name and the DataLoaders' sizes."""
    ds: dict[str, Any] = {}
    if trainer.datamodule is not None:
        ds["name"] = type(trainer.datamodule).__name__
    for key, loader in (("train", trainer.train_dataloader), ("val", trainer.val_dataloaders)):
        size = _size(loader)
        if size is not None:
            ds[key] = size
    return ds


def _size(loader: Any) -> int | None:
    """The number of samples of a DataLoader whose dataset has a length, else None."""
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if isinstance(dataset, Sized) else None
