"""The one training loop, and ``compare``: that loop over variants and seeds.

Every variant sees the same data in the same order: the data are preloaded as tensors on the
device and shuffled by index once per epoch with a generator seeded by ``(seed, epoch)``. One seed
also fixes the weights (an explicit ``torch.Generator``) and the dropout masks (the global torch
RNG, seeded per run and saved in every checkpoint), so the same seed gives the same numbers and a
resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from selfnorm._io import atomic_write_json
from selfnorm.auditing import audit
from selfnorm.config import ExperimentConfig, ModelConfig, TrainConfig, experiment_from_dict
from selfnorm.data import Dataset, load_dataset, restandardize
from selfnorm.interrupts import Interrupted, graceful_stop
from selfnorm.locking import RunLock
from selfnorm.models import build_avh, build_cnn, build_factory, build_mlp, layer_widths
from selfnorm.recording import ActivationRecorder
from selfnorm.resources import check_fits, mlp_training_bytes
from selfnorm.sinks import NpzChunkSink, TensorBoardSink
from selfnorm.specs import get_spec
from selfnorm.storage import (
    RunDir,
    RunDirError,
    RunPaths,
    config_digest,
    read_json,
    read_jsonl,
    remove_temporary_files,
)
from selfnorm.summary import summarize

__all__ = ["DeviceData", "compare", "make_optimizer", "resolve_device", "train_run"]

EVAL_BATCH = 4096
CHECKPOINT_SECONDS = 10.0
"""A run checkpoints after an epoch once this many seconds passed since its last checkpoint,
and after its last epoch: a crash loses at most this much training (resumed exactly), and
short epochs (digits: ~0.1 s) do not spend a quarter of their time writing checkpoints."""
AUDIT_BATCH = 512


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


@dataclass(frozen=True)
class DeviceData:
    """The splits as tensors on the training device (loaded once, shared by every run)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @classmethod
    def from_dataset(cls, ds: Dataset, device: torch.device) -> DeviceData:
        def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

        return cls(
            t(ds.x_train, torch.float32),
            t(ds.y_train, torch.int64),
            t(ds.x_val, torch.float32),
            t(ds.y_val, torch.int64),
            t(ds.x_test, torch.float32),
            t(ds.y_test, torch.int64),
            ds.num_classes,
        )


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (fused kernel where this torch build has one), SGD or RMSprop."""
    params = list(params)
    if cfg.optimizer == "adam":
        try:
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):  # no fused Adam for this device/build: plain one
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.RMSprop(
        params,
        lr=cfg.lr,
        alpha=cfg.rmsprop_alpha,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )


def build_model(
    cfg: ModelConfig,
    activation: str,
    dropout: float,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
) -> nn.Module:
    """The model of one run, initialized from ``seed``."""
    spec = get_spec(activation)
    gen = torch.Generator().manual_seed(seed)
    if cfg.kind == "cnn":
        return build_cnn(input_shape, num_classes, spec, cfg.channels, dropout, gen)
    if cfg.kind == "avh":
        return build_avh(input_shape, num_classes, spec, cfg, dropout, gen)
    if cfg.kind == "factory":
        return build_factory(cfg.factory, input_shape, num_classes, spec, dropout, gen)
    return build_mlp(
        math.prod(input_shape), num_classes, cfg.depth, cfg.width, spec, dropout, cfg.shape, gen
    )


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch: the same for every variant with this seed."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@torch.no_grad()
def logit_batches(model: nn.Module, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, logits)`` of ``x`` in batches of :data:`EVAL_BATCH`, in eval mode without
    gradients: the one way selfnorm evaluates a model (:func:`evaluate`, the benchmark's scores).

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> [(i, tuple(o.shape)) for i, o in logit_batches(net, torch.zeros(5, 3))]
        [(0, (5, 2))]
    """
    model.eval()
    for i in range(0, len(x), EVAL_BATCH):
        yield i, model(x[i : i + EVAL_BATCH])


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode, in large batches."""
    loss = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for i, out in logit_batches(model, x):
        yb = y[i : i + EVAL_BATCH]
        loss += F.cross_entropy(out, yb, reduction="sum").double()
        correct += (out.argmax(1) == yb).sum()
    n = len(x)
    return float(loss) / n, int(correct) / n


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each mini-batch; a last batch of a single sample joins the one before
    (BatchNorm cannot normalize one sample), the same for every variant.

    Example:
        >>> batch_bounds(9, 4)
        [(0, 4), (4, 9)]
        >>> batch_bounds(10, 4)
        [(0, 4), (4, 8), (8, 10)]
    """
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


class StopTraining(Exception):
    """Raised by :func:`train_epoch` when ``stop()`` asked for it before a step: the epoch's
    progress so far (``batch`` steps done, the running sums), to checkpoint and resume from."""

    def __init__(self, batch: int, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        super().__init__(f"stopped before batch {batch}")
        self.batch, self.loss_sum, self.correct = batch, loss_sum, correct


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    perm: torch.Tensor,
    batch_size: int,
    recorder: ActivationRecorder | None = None,
    step_losses: torch.Tensor | None = None,
    *,
    start_batch: int = 0,
    sums: tuple[torch.Tensor, torch.Tensor] | None = None,
    stop: Callable[[], bool] | None = None,
    clip_grad_norm: float = 0.0,
) -> tuple[float, float]:
    """One pass over ``x[perm]`` in mini-batches: the hot loop, shared by every variant.
    ``clip_grad_norm`` > 0 rescales each step's gradient to at most that global norm.

    The data are gathered in epoch order once (one copy, then contiguous slices); loss and
    accuracy accumulate on the device and are read back once at the end. With a ``recorder``,
    ``recorder.step()`` starts every step (it arms hooks on recording steps only); flushing
    its records is the caller's business, out of this loop. With ``step_losses`` (a tensor of
    one entry per step, on the device) each step's loss is stored there, without a host sync.

    An interrupted epoch continues with ``start_batch`` (the steps already done) and ``sums``
    (the loss sum and correct count they accumulated): the rest of the epoch is then the same
    as without the interruption. ``stop`` is asked before every step; when it returns True the
    loop raises :class:`StopTraining` with that progress.

    Returns:
        Mean training loss and training accuracy of the epoch (with dropout active).
    """
    model.train()
    n = len(perm)
    xs, ys = x[perm], y[perm]
    if sums is None:
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.int64)
    else:
        loss_sum, correct = (t.to(x.device).clone() for t in sums)
    for k, (i, j) in enumerate(batch_bounds(n, batch_size)):
        if k < start_batch:
            continue
        if stop is not None and stop():
            raise StopTraining(k, loss_sum, correct)
        if recorder is not None:
            recorder.step()
        xb, yb = xs[i:j], ys[i:j]
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        loss_sum += loss.detach() * len(yb)
        correct += (out.detach().argmax(1) == yb).sum()
        if step_losses is not None:
            step_losses[k] = loss.detach()
    return float(loss_sum) / n, int(correct) / n


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _check_checkpoint_seconds(value: Any) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
        raise ValueError(
            f"checkpoint_seconds={value!r} must be a number >= 0 (0: after every epoch)"
        )


def train_run(
    data: DeviceData,
    config: ExperimentConfig,
    activation: str,
    seed: int,
    paths: RunPaths,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    stop: Callable[[], bool] | None = None,
    digest: str | None = None,
) -> dict[str, Any]:
    """Train one (variant, seed) run to the end, resuming from its checkpoint if there is one.

    Appends one metrics row per epoch to ``paths.metrics``, checkpoints after an epoch when
    ``checkpoint_seconds`` (default :data:`CHECKPOINT_SECONDS`; 0: every epoch) have passed
    since the last checkpoint and after the last epoch, and writes ``paths.result`` at the
    end. A resumed run continues from its checkpoint, drops the metrics and records of later
    epochs and takes them again, with the same numbers. A non-finite training loss stops the
    run with ``diverged: true`` and the reason. With ``config.record.enabled`` an
    :class:`~selfnorm.recording.ActivationRecorder` records every ``config.record.every``
    steps; each epoch's records become one chunk in ``paths.records`` (and TensorBoard events
    in ``paths.tensorboard`` with ``config.record.tensorboard``), written before the checkpoint.

    ``stop`` (e.g. the flag of :func:`selfnorm.interrupts.graceful_stop`) is asked before every
    step; once it says yes the run flushes its records, checkpoints exactly where it is (mid-
    epoch: the resumed run finishes that epoch with the same numbers) and raises
    :class:`~selfnorm.interrupts.Interrupted`.

    ``digest`` identifies the settings (default :func:`~selfnorm.storage.config_digest` of
    ``config``; :func:`compare` passes that of the run directory's ``config.json`` as written):
    it is stored in the checkpoint and the result, and a checkpoint with another one is refused.

    Raises:
        RunDirError: the checkpoint was made with other settings than ``config`` (an edited
            ``config.json``) or does not fit the model built now (its code edited), or no good
            checkpoint is left.

    Returns:
        The result dict (also written to ``result.json``).
    """
    _check_checkpoint_seconds(checkpoint_seconds)
    device = data.x_train.device
    cfg = config.train
    digest = config_digest(config.to_dict()) if digest is None else digest
    model = build_model(
        config.model,
        activation,
        config.dropout_for(activation),
        tuple(data.x_train.shape[1:]),
        data.num_classes,
        seed,
    ).to(device)
    optimizer = make_optimizer(model.parameters(), cfg)
    torch.manual_seed(seed)  # dropout masks
    history: list[dict[str, Any]] = []
    start_epoch = 1
    n = len(data.x_train)
    bs = cfg.batch_size
    steps_per_epoch = len(batch_bounds(n, bs))
    remove_temporary_files(paths.root)  # what a killed write left (the caller holds the lock)
    ckpt = paths.load_checkpoint()  # on the CPU; load_state_dict moves it to the device
    start_batch, sums, seconds_before = 0, None, 0.0
    if ckpt is not None:
        if ckpt.get("config_digest", digest) != digest:
            raise RunDirError(
                f"{paths.checkpoint} was written with other settings than the run directory's "
                "config.json holds now (was it edited?); restore config.json, or delete "
                f"{paths.root} to train this run again with the new settings"
            )
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:  # same settings, another model: its code was edited
            why = (str(exc).splitlines()[1:] or [str(exc)])[0].strip().rstrip(".")
            raise RunDirError(
                f"{paths.checkpoint} does not fit the model built now ({why}); was the model's "
                f"code (a --model factory) edited since the run started? restore it, or delete "
                f"{paths.root} to train this run again"
            ) from None
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"], device)
        start_batch = int(ckpt.get("batch", 0))
        if start_batch:
            sums = (ckpt["loss_sum"], ckpt["correct"])
            seconds_before = float(ckpt.get("seconds", 0.0))
        history = paths.truncate_metrics(ckpt["epoch"])
        resume_step = ckpt["epoch"] * steps_per_epoch + start_batch
        paths.check_records(resume_step)
        paths.truncate_records(resume_step)
        start_epoch = ckpt["epoch"] + 1
    else:
        paths.reset()
    for row in history:
        if on_epoch:
            on_epoch(row)

    start_step = (start_epoch - 1) * steps_per_epoch + start_batch
    recorder = _recorder(model, config, paths, start_step, steps_per_epoch)
    sinks = recorder.sinks if recorder is not None else []
    board = next((k for k in sinks if isinstance(k, TensorBoardSink)), None)
    diverged_reason = None
    last_save = time.perf_counter()

    def checkpoint(epoch: int, **extra: Any) -> None:
        paths.save_checkpoint(
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(device),
                "config_digest": digest,
                **extra,
            }
        )

    with recorder if recorder is not None else nullcontext():
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter() - seconds_before
            perm = epoch_permutation(n, seed, epoch).to(device)
            try:
                train_loss, train_acc = train_epoch(
                    model, optimizer, data.x_train, data.y_train, perm, bs, recorder,
                    start_batch=start_batch, sums=sums, stop=stop,
                    clip_grad_norm=cfg.clip_grad_norm,
                )  # fmt: skip
            except StopTraining as st:
                if recorder is not None:
                    recorder.flush()  # the records of the steps done, before the checkpoint
                extra = {"batch": st.batch, "loss_sum": st.loss_sum, "correct": st.correct}
                checkpoint(epoch - 1, **extra, seconds=time.perf_counter() - t0)
                signum = getattr(stop, "signum", None) or 2
                raise Interrupted(
                    f"{activation} seed {seed} stopped in epoch {epoch} after step "
                    f"{st.batch} of {steps_per_epoch}; its state is saved",
                    signum,
                ) from None
            start_batch, sums, seconds_before = 0, None, 0.0
            seconds = time.perf_counter() - t0
            if recorder is not None:
                recorder.flush()  # this epoch's chunk, before the checkpoint that covers it
            if not math.isfinite(train_loss):
                diverged_reason = f"non-finite training loss ({train_loss}) in epoch {epoch}"
                break
            val_loss, val_acc = evaluate(model, data.x_val, data.y_val)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "epoch_seconds": seconds,
            }
            if cfg.test_every_epoch:
                row["test_loss"], row["test_accuracy"] = evaluate(model, data.x_test, data.y_test)
            paths.append_metrics(row)
            history.append(row)
            if board is not None:  # on the step axis of the records: the epoch's last step
                board.write_scalars(
                    {"train/loss": train_loss, "train/accuracy": train_acc,
                     "val/loss": val_loss, "val/accuracy": val_acc},
                    epoch * steps_per_epoch - 1,
                )  # fmt: skip
            now = time.perf_counter()
            if epoch == cfg.epochs or now - last_save >= checkpoint_seconds:
                checkpoint(epoch)
                last_save = now
            if on_epoch:
                on_epoch(row)

        result: dict[str, Any] = {
            "activation": activation,
            "seed": seed,
            "epochs_completed": len(history),
            "diverged": diverged_reason is not None,
            "diverged_reason": diverged_reason,
        }
        if diverged_reason is None:
            test = evaluate(model, data.x_test, data.y_test)
            result["test_loss"], result["test_accuracy"] = test
            if board is not None:
                board.write_scalars({"test/loss": test[0], "test/accuracy": test[1]},
                                    cfg.epochs * steps_per_epoch - 1)  # fmt: skip
        else:
            result["test_loss"] = result["test_accuracy"] = None
    result["config_digest"] = digest
    atomic_write_json(paths.result, result)
    return result


def _recorder(
    model: nn.Module,
    config: ExperimentConfig,
    paths: RunPaths,
    start_step: int,
    steps_per_epoch: int,
) -> ActivationRecorder | None:
    """The run's recorder with its sinks (chunks in the run folder, TensorBoard), or None."""
    rc = config.record
    if not rc.enabled:
        return None
    rc = dataclasses.replace(rc, every=rc.resolve_every(steps_per_epoch))
    sinks: list[Any] = [NpzChunkSink(paths.records)]
    if rc.tensorboard:
        if paths.tensorboard is None:
            raise ValueError(f"{paths.root}: no TensorBoard folder; get paths from RunDir.run")
        sinks.append(TensorBoardSink(paths.tensorboard, purge_step=start_step or None))
    return ActivationRecorder(
        model, rc, sinks=sinks, start_step=start_step, steps_per_epoch=steps_per_epoch
    )


def compare(
    config: ExperimentConfig,
    out_dir: str,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train every variant for every seed, one after another in this process; write summary.

    Finished runs (``result.json`` present) are skipped on ``resume``; an interrupted run
    continues from its last checkpoint. The folder is locked for the whole call
    (:class:`~selfnorm.locking.RunLock`: a second process is refused). Every run's files are
    checked before anything trains (:class:`~selfnorm.storage.RunDirError` names a damaged or
    edited one). Ctrl-C or SIGTERM stops after the current step with everything saved
    (:func:`~selfnorm.interrupts.graceful_stop`, raising
    :class:`~selfnorm.interrupts.Interrupted`); ``stop`` replaces those signal handlers with
    a caller's own test (a sweep's workers get theirs from the parent).

    Returns:
        The summary dict, also written to ``out_dir/summary.json``.
    """
    from tqdm.auto import tqdm

    _check_checkpoint_seconds(checkpoint_seconds)  # before anything is written
    run_dir = RunDir(out_dir)
    device = resolve_device(config.train.device)
    if config.record.enabled and config.record.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError(
                "--tensorboard needs the tensorboard package: pip install 'selfnorm[tensorboard]' "
                "(or drop --tensorboard; the records are stored in the run directory anyway)"
            )

    def say(text: str) -> None:  # what the slow steps before training are doing
        if progress:
            print(text, file=sys.stderr, flush=True)

    ds = dataset
    if ds is None:
        say(f"loading {config.data.dataset} ...")
        ds = load_dataset(config.data, progress=progress)
        say(f"  {len(ds.x_train)} training, {len(ds.x_val)} validation, {len(ds.x_test)} test "
            f"samples of shape {tuple(ds.input_shape)}, {ds.num_classes} classes")  # fmt: skip
    if config.model.kind == "mlp":
        m = config.model
        widths = layer_widths(m.depth, m.width, ds.num_classes, m.shape)
        check_fits(
            mlp_training_bytes(widths, math.prod(ds.input_shape), ds.num_classes),
            f"training the MLP ({m.depth} hidden layers of {m.width})",
            "choose a smaller --width or --depth",
            device,
        )

    # Every variant's initial model (first seed) is built before anything is written, so a model
    # that cannot be built fails cleanly; each is audited on a batch of the training data.
    # a variant with its own input scaling gets the same splits scaled its way (one per mode)
    def scaling(activation: str) -> str | None:
        return config.standardize_by_activation.get(activation)

    scaled = {
        mode: ds if mode is None else restandardize(ds, mode)
        for mode in dict.fromkeys(map(scaling, config.activations))
    }
    say(f"auditing each variant's initial model on {min(AUDIT_BATCH, len(ds.x_train))} "
        "training samples ...")  # fmt: skip

    def sample(activation: str) -> torch.Tensor:
        x = scaled[scaling(activation)].x_train[:AUDIT_BATCH]
        return torch.from_numpy(np.ascontiguousarray(x))

    findings = {
        activation: [
            f.to_dict()
            for f in audit(
                build_model(
                    config.model, activation, config.dropout_for(activation), ds.input_shape,
                    ds.num_classes, config.seeds[0],
                ),
                sample(activation),
            )
            # a ReLU variant is meant to have no SELU: no news there (a SELU one still hears)
            if f.kind != "no_selu" or get_spec(activation).family.selu is not None
        ]
        for activation in config.activations
    }  # fmt: skip

    def normalize(stored: dict[str, Any]) -> dict[str, Any]:  # fields added since, defaulted
        return experiment_from_dict(stored).to_dict()

    # refusals before the lock (which would touch the folder), and again under it
    run_dir.check_prepare(config.to_dict(), resume, overwrite, normalize)
    lock = RunLock(run_dir.root, "compare").acquire()
    try:
        run_dir.prepare(
            config.to_dict(),
            resume=resume,
            overwrite=overwrite,
            normalize=normalize,
        )
        # each run stores the digest of config.json as written, not as read by this version
        # (which may add fields with defaults): an edit is caught, an upgrade is not refused
        digest = config_digest(read_json(run_dir.config))
        _check_runs(
            run_dir, config, digest, len(batch_bounds(len(ds.x_train), config.train.batch_size))
        )
    except BaseException:
        lock.abandon()  # a refused start leaves nothing behind
        raise
    with lock, nullcontext(stop) if stop is not None else graceful_stop() as stop:
        atomic_write_json(run_dir.root / "audit.json", findings)
        on_device = {mode: DeviceData.from_dataset(d, device) for mode, d in scaled.items()}
        results: dict[str, list[dict[str, Any]]] = {}
        histories: dict[str, list[list[dict[str, Any]]]] = {}
        n_seeds, total = len(config.seeds), config.train.epochs * len(config.seeds)
        unit = "epochs" if n_seeds == 1 else f"epochs ({n_seeds} seeds x {config.train.epochs})"
        for activation in config.activations:
            if progress and not sys.stderr.isatty():  # a log file: plain lines, no \r frames
                bar: Any = _LineProgress(total, activation, unit)
            else:
                bar = tqdm(total=total, desc=f"{activation:>10}", disable=not progress,
                           leave=True, unit="ep")  # fmt: skip
            for seed in config.seeds:
                paths = run_dir.run(activation, seed)
                if paths.result.exists():
                    result = paths.read_result()
                    bar.update(config.train.epochs)
                else:

                    def on_epoch(row: dict[str, Any], seed: int = seed, bar=bar) -> None:
                        bar.update(1)
                        bar.set_postfix(seed=seed, val_acc=f"{row['val_accuracy']:.4f}")

                    try:
                        result = train_run(
                            on_device[scaling(activation)], config, activation, seed, paths,
                            on_epoch, checkpoint_seconds, stop, digest,
                        )  # fmt: skip
                    except Interrupted:
                        bar.close()
                        raise
                    if result["diverged"]:
                        bar.update(config.train.epochs - result["epochs_completed"])
                results.setdefault(activation, []).append(result)
                histories.setdefault(activation, []).append(read_jsonl(paths.metrics))
            bar.close()
        summary = summarize(config, results, histories, device=str(device), dataset=ds)
        atomic_write_json(run_dir.summary, summary)
    return summary


class _LineProgress:
    """The part of tqdm's interface that :func:`compare` uses, as plain lines on stderr: at most
    one every :attr:`EVERY` seconds, and one at the end (for output redirected to a file)."""

    EVERY = 10.0

    def __init__(self, total: int, name: str, unit: str = "epochs") -> None:
        self.total, self.name, self.unit, self.n = total, name, unit, 0
        self.postfix: dict[str, Any] = {}
        self.t0 = self.last = time.perf_counter()
        self.printed = -1

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **postfix: Any) -> None:
        self.postfix = postfix
        if time.perf_counter() - self.last >= self.EVERY:
            self._line()

    def _line(self) -> None:
        self.last = time.perf_counter()
        self.printed = self.n
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.name}: {self.n}/{self.total} {self.unit}{extra} "
              f"({self.last - self.t0:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip

    def close(self) -> None:
        if self.printed != self.n:
            self._line()


def _check_runs(
    run_dir: RunDir, config: ExperimentConfig, digest: str, steps_per_epoch: int
) -> None:
    """Before training anything, every run's files must be usable: finished runs trained with
    these settings (``digest``), checkpoints readable (a damaged one falls back to the
    previous one), metrics without damaged lines, the records a resume keeps readable. Raises
    :class:`~selfnorm.storage.RunDirError` naming the file."""
    for activation in config.activations:
        for seed in config.seeds:
            paths = run_dir.run(activation, seed)
            if not paths.root.exists():
                continue
            if paths.result.exists():
                got = paths.read_result().get("config_digest", digest)
                if got != digest:
                    raise RunDirError(
                        f"{paths.result}: this run was trained with other settings than "
                        f"{run_dir.config} holds now (was it edited?); restore config.json, or "
                        f"start again with --overwrite"
                    )
                continue
            read_jsonl(paths.metrics)
            ckpt = paths.load_checkpoint()
            if ckpt is not None:
                paths.check_records(ckpt["epoch"] * steps_per_epoch + int(ckpt.get("batch", 0)))
