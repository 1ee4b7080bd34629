"""The one training loop: K runs of one variant stepped together (K = 1: one run alone).

Every variant sees the same data in the same order: the data are preloaded as tensors on the
device and shuffled by index once per epoch with a generator seeded by ``(seed, epoch)``. One seed
also fixes the weights (an explicit ``torch.Generator``) and the dropout masks (a run alone draws
them from the global torch RNG, a stacked run from its own generator of the same stream; seeded
per run and saved in every checkpoint), so the same seed gives the same numbers and a resumed run
continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from selfnorm._io import atomic_write_json
from selfnorm.config import ExperimentConfig, ModelConfig, TrainConfig
from selfnorm.data import Dataset
from selfnorm.interrupts import Interrupted
from selfnorm.models import build_avh, build_cnn, build_factory, build_mlp
from selfnorm.recording import ActivationRecorder
from selfnorm.sinks import NpzChunkSink, TensorBoardSink
from selfnorm.specs import get_spec
from selfnorm.stacked import StackedRuns, seeded_rng_state
from selfnorm.storage import (
    RunDirError,
    RunPaths,
    config_digest,
    remove_temporary_files,
)

__all__ = ["DeviceData", "make_optimizer", "resolve_device", "train_run", "train_runs"]

EVAL_BATCH = 4096
CHECKPOINT_SECONDS = 10.0
"""A run checkpoints after an epoch once this many seconds passed since its last checkpoint,
and after its last epoch: a crash loses at most this much training (resumed exactly), and
short epochs (digits: ~0.1 s) do not spend a quarter of their time writing checkpoints."""


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
    """Raised by the epoch loop when ``stop()`` asked for it before a step: the epoch's
    progress so far (``batch`` steps done, each run's running sums ``(K,)``), to checkpoint
    and resume from."""

    def __init__(self, batch: int, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        super().__init__(f"stopped before batch {batch}")
        self.batch, self.loss_sum, self.correct = batch, loss_sum, correct


class _Single:
    """One run's model and optimizer, stepped as :class:`~selfnorm.stacked.StackedRuns`
    steps K: the engine of the sequential mode (``selfnorm.linear``'s oneDNN products, the
    model's own dropout on the global RNG)."""

    runs = 1

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.models, self.optimizer = [model], optimizer

    def train_step(
        self, xb: torch.Tensor, yb: torch.Tensor, record: bool = False, clip: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.models[0]
        out = model(xb[0])
        loss = F.cross_entropy(out, yb[0])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        self.optimizer.step()
        return loss.detach().view(1), out.detach().unsqueeze(0)

    def train(self) -> None:
        self.models[0].train()

    def model(self, k: int) -> nn.Module:
        return self.models[k]

    def sync(self) -> None:
        pass


def _epoch(
    engine: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    perms: torch.Tensor,
    batch_size: int,
    recorders: list[ActivationRecorder],
    step_losses: torch.Tensor | None,
    start_batch: int,
    sums: tuple[torch.Tensor, torch.Tensor] | None,
    stop: Callable[[], bool] | None,
    clip_grad_norm: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The hot loop: one epoch of the ``engine``'s K runs, run k on ``x[perms[k]]``.

    Returns each run's loss sum and correct count ``(K,)``, on the device."""
    engine.train()  # once per epoch, not per step (evaluation between epochs sets eval)
    n = perms.shape[1]
    xs, ys = x[perms], y[perms]  # (K, n, ...): one gather per epoch, then contiguous slices
    if sums is None:
        loss_sum = torch.zeros(engine.runs, device=x.device)
        correct = torch.zeros(engine.runs, device=x.device, dtype=torch.int64)
    else:
        loss_sum, correct = (t.to(x.device).clone() for t in sums)
    for k, (i, j) in enumerate(batch_bounds(n, batch_size)):
        if k < start_batch:
            continue
        if stop is not None and stop():
            raise StopTraining(k, loss_sum, correct)
        record = False
        for recorder in recorders:
            record = recorder.step() or record
        yb = ys[:, i:j]
        losses, out = engine.train_step(xs[:, i:j], yb, record, clip_grad_norm)
        loss_sum += losses * (j - i)
        correct += (out.argmax(-1) == yb).sum(-1)
        if step_losses is not None:
            step_losses[:, k] = losses
    return loss_sum, correct


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
    """One pass of one model over ``x[perm]`` in mini-batches (the loop every run takes).
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
    if sums is not None:
        sums = (sums[0].reshape(1), sums[1].reshape(1))
    loss_sum, correct = _epoch(
        _Single(model, optimizer), x, y, perm.unsqueeze(0), batch_size,
        [recorder] if recorder is not None else [],
        step_losses.unsqueeze(0) if step_losses is not None else None,
        start_batch, sums, stop, clip_grad_norm,
    )  # fmt: skip
    n = len(perm)
    return float(loss_sum[0]) / n, int(correct[0]) / n


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


@dataclass(frozen=True)
class _Setting:
    """What the runs of one :func:`train_runs` call share."""

    data: DeviceData
    config: ExperimentConfig
    activation: str
    digest: str
    steps_per_epoch: int
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    stop: Callable[[], bool] | None = None


@dataclass
class _Run:
    """One (variant, seed) run's state in :func:`train_runs`: its model, optimizer, mask-RNG
    state, history and where it resumes."""

    seed: int
    paths: RunPaths
    model: nn.Module
    optimizer: torch.optim.Optimizer
    rng: dict[str, Any]
    history: list[dict[str, Any]]
    start_epoch: int = 1
    start_batch: int = 0
    sums: tuple[torch.Tensor, torch.Tensor] | None = None
    seconds_before: float = 0.0
    recorder: ActivationRecorder | None = None
    board: TensorBoardSink | None = None
    diverged_reason: str | None = None


def _open_run(at: _Setting, seed: int, paths: RunPaths, checkpoint: str = "latest") -> _Run:
    """Build a run's model and optimizer, and load its checkpoint (or reset its folder):
    ``checkpoint`` is ``latest`` (the newest good one), ``previous`` (the one before it) or
    ``none`` (start afresh)."""
    data, config, activation, digest = at.data, at.config, at.activation, at.digest
    steps_per_epoch = at.steps_per_epoch
    device = data.x_train.device
    model = build_model(
        config.model,
        activation,
        config.dropout_for(activation),
        tuple(data.x_train.shape[1:]),
        data.num_classes,
        seed,
    ).to(device)
    optimizer = make_optimizer(model.parameters(), config.train)
    run = _Run(seed, paths, model, optimizer, seeded_rng_state(seed, device), [])
    remove_temporary_files(paths.root)  # what a killed write left (the caller holds the lock)
    ckpt = {"latest": paths.load_checkpoint, "previous": paths.load_previous_checkpoint,
            "none": lambda: None}[checkpoint]()  # on the CPU; load_state_dict moves it  # fmt: skip
    if ckpt is None:
        paths.reset()
        return run
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
    run.rng = dict(ckpt["rng"])
    run.start_batch = int(ckpt.get("batch", 0))
    if run.start_batch:
        run.sums = (ckpt["loss_sum"], ckpt["correct"])
        run.seconds_before = float(ckpt.get("seconds", 0.0))
    run.history = paths.truncate_metrics(ckpt["epoch"])
    resume_step = ckpt["epoch"] * steps_per_epoch + run.start_batch
    paths.check_records(resume_step)
    paths.truncate_records(resume_step)
    run.start_epoch = ckpt["epoch"] + 1
    return run


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
    """Train one (variant, seed) run to the end: :func:`train_runs` of that one run.

    Example: see :func:`selfnorm.comparing.compare`, which calls :func:`train_runs` for each
    variant's seeds.
    """
    report = None if on_epoch is None else (lambda _seed, row: on_epoch(row))
    return train_runs(
        data, config, activation, [seed], [paths], report, checkpoint_seconds, stop, digest,
        stack=1,
    )[0]  # fmt: skip


def train_runs(
    data: DeviceData,
    config: ExperimentConfig,
    activation: str,
    seeds: Sequence[int],
    paths: Sequence[RunPaths],
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    stop: Callable[[], bool] | None = None,
    digest: str | None = None,
    stack: int = 1,
) -> list[dict[str, Any]]:
    """Train the (variant, seed) runs of ``seeds`` to the end, resuming each from its
    checkpoint if it has one; ``stack`` > 1 trains up to that many of them as one stacked
    model (:class:`~selfnorm.stacked.StackedRuns`; the model must be one it can stack), 1
    one after another.

    Each run appends one metrics row per epoch to its ``paths[k].metrics``, checkpoints after
    an epoch when ``checkpoint_seconds`` (default :data:`CHECKPOINT_SECONDS`; 0: every epoch)
    have passed since the last checkpoint and after the last epoch, and writes its
    ``result.json`` at the end. A resumed run continues from its checkpoint, drops the metrics
    and records of later epochs and takes them again, with the same numbers. A non-finite
    training loss stops that run alone with ``diverged: true`` and the reason; stacked runs
    go on without it. With ``config.record.enabled`` an
    :class:`~selfnorm.recording.ActivationRecorder` per run records every
    ``config.record.every`` steps; each epoch's records become one chunk in the run's
    ``records`` folder (and TensorBoard events with ``config.record.tensorboard``), written
    before the checkpoint.

    Stacked runs keep everything a run alone has: its initial weights, data order
    (:func:`epoch_permutation` of its seed), dropout-mask stream, metrics, records,
    checkpoint (in the same format: a stacked run can resume alone, and the other way) and
    result. Their numbers equal the runs alone within float32 rounding (the batched products
    sum in another order); ``epoch_seconds`` is the stacked epoch's time divided by the runs
    in it. A crash between the checkpoint writes of a stack's runs leaves some of them one
    checkpoint ahead: they resume from their previous one, so the stack forms again as it was
    (runs further apart train in separate stacks).

    ``stop`` (e.g. the flag of :func:`selfnorm.interrupts.graceful_stop`) is asked before every
    step; once it says yes the runs flush their records, checkpoint exactly where they are
    (mid-epoch: a resumed run finishes that epoch with the same numbers) and raise
    :class:`~selfnorm.interrupts.Interrupted`.

    ``digest`` identifies the settings (default :func:`~selfnorm.storage.config_digest` of
    ``config``; :func:`compare` passes that of the run directory's ``config.json`` as written):
    it is stored in the checkpoint and the result, and a checkpoint with another one is refused.

    Raises:
        RunDirError: a checkpoint was made with other settings than ``config`` (an edited
            ``config.json``) or does not fit the model built now (its code edited), or no good
            checkpoint is left.

    Returns:
        The result dicts in the order of ``seeds`` (also written to each ``result.json``).
    """
    _check_checkpoint_seconds(checkpoint_seconds)
    digest = config_digest(config.to_dict()) if digest is None else digest
    steps_per_epoch = len(batch_bounds(len(data.x_train), config.train.batch_size))
    at = _Setting(
        data, config, activation, digest, steps_per_epoch, on_epoch, checkpoint_seconds, stop
    )
    size = max(stack, 1)
    results: list[dict[str, Any]] = []
    for i in range(0, len(seeds), size):  # one stack at a time: opened, trained, written
        results += _train_stack(at, seeds[i : i + size], paths[i : i + size], stack > 1)
    return results


def _train_stack(
    at: _Setting, seeds: Sequence[int], paths: Sequence[RunPaths], stacked: bool
) -> list[dict[str, Any]]:
    """The runs of one stack (or one run) from their checkpoints to their results."""
    runs = [_open_run(at, s, p) for s, p in zip(seeds, paths, strict=True)]
    stacked = stacked and len(runs) > 1  # a stack of one: the sequential engine, faster
    if stacked:
        _align(at, runs)
    if at.on_epoch:
        for run in runs:
            for row in run.history:
                at.on_epoch(run.seed, row)
    groups: dict[tuple[int, int], list[_Run]] = {}  # runs stack only at the same point
    for run in runs:
        groups.setdefault((run.start_epoch, run.start_batch), []).append(run)
    with ExitStack() as stack_of:
        for run in runs:
            step = (run.start_epoch - 1) * at.steps_per_epoch + run.start_batch
            run.recorder = _recorder(run.model, at.config, run.paths, step, at.steps_per_epoch)
            if run.recorder is not None:
                stack_of.enter_context(run.recorder)
                sinks = run.recorder.sinks
                run.board = next((k for k in sinks if isinstance(k, TensorBoardSink)), None)
        for group in groups.values():
            _train_group(at, group, stacked)
        results = [_finish_run(at, run) for run in runs]
    for run, result in zip(runs, results, strict=True):
        result["config_digest"] = at.digest
        atomic_write_json(run.paths.result, result)
    return results


def _position(ckpt: dict[str, Any] | None) -> tuple[int, int]:
    """Where a run resumes from ``ckpt``: (epoch, steps done in it); (1, 0) for none."""
    return (1, 0) if ckpt is None else (ckpt["epoch"] + 1, int(ckpt.get("batch", 0)))


def _align(at: _Setting, members: list[_Run]) -> None:
    """Bring the runs of one stack back to one point where a crash split them.

    The runs of a stack checkpoint together, one file after another, so a crash between two
    of those writes leaves some runs one checkpoint ahead. They go back to their previous
    checkpoint (or to the start, before the first one), so the stack forms again as it was:
    a run's stacked numbers may differ in the last bit with the number of runs beside it
    (MKL's batched product of small matrices), and resuming in another stack would not give
    exactly the uninterrupted numbers."""
    behind = min((r.start_epoch, r.start_batch) for r in members)
    for i, run in enumerate(members):
        if (run.start_epoch, run.start_batch) == behind:
            continue
        if behind == (1, 0):
            choice = "none"
        elif _position(run.paths.load_previous_checkpoint()) == behind:
            choice = "previous"
        else:
            continue  # further apart than one crash leaves: train in separate stacks
        members[i] = _open_run(at, run.seed, run.paths, choice)


def _train_group(at: _Setting, group: list[_Run], stacked: bool) -> None:
    """Train runs that resume at the same point to the end: as one stacked model, or (one
    run) alone. Each diverged run leaves with its reason in ``diverged_reason``."""
    data, config, activation, digest = at.data, at.config, at.activation, at.digest
    steps_per_epoch, on_epoch, stop = at.steps_per_epoch, at.on_epoch, at.stop
    device = data.x_train.device
    cfg = config.train
    n = len(data.x_train)
    engine: Any
    if stacked:
        engine = StackedRuns(
            [r.model for r in group], [r.optimizer for r in group],
            # a run started on a CPU that resumes on a GPU has no CUDA stream saved yet
            [{**seeded_rng_state(r.seed, device), **r.rng} for r in group],
            lambda params: make_optimizer(params, cfg),
        )  # fmt: skip
    else:
        (run,) = group
        _set_rng_state(run.rng, device)  # the dropout masks' stream
        engine = _Single(run.model, run.optimizer)
    active = list(group)
    last_save = time.perf_counter()

    def checkpoint(runs: list[_Run], epoch: int, **extra: Any) -> None:
        engine.sync()
        for k, run in enumerate(runs):
            more = {key: v[k] if key in ("loss_sum", "correct") else v for key, v in extra.items()}
            run.paths.save_checkpoint(
                {
                    "epoch": epoch,
                    "model": run.model.state_dict(),
                    "optimizer": run.optimizer.state_dict(),
                    "rng": engine.rng_states[k] if stacked else _rng_state(device),
                    "config_digest": digest,
                    **more,
                }
            )

    start_epoch, start_batch = group[0].start_epoch, group[0].start_batch
    sums = None
    if start_batch:
        sums = tuple(torch.stack([r.sums[i].reshape(()) for r in group]) for i in (0, 1))
    seconds_before = group[0].seconds_before
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter() - seconds_before
        perms = torch.stack([epoch_permutation(n, r.seed, epoch) for r in active]).to(device)
        recorders = [r.recorder for r in active if r.recorder is not None]
        try:
            loss_sum, correct = _epoch(
                engine, data.x_train, data.y_train, perms, cfg.batch_size, recorders, None,
                start_batch, sums, stop, cfg.clip_grad_norm,
            )  # fmt: skip
        except StopTraining as st:
            for recorder in recorders:
                recorder.flush()  # the records of the steps done, before the checkpoint
            extra = {"batch": st.batch, "loss_sum": st.loss_sum, "correct": st.correct}
            checkpoint(active, epoch - 1, **extra, seconds=time.perf_counter() - t0)
            seeds = ", ".join(str(r.seed) for r in active)
            signum = getattr(stop, "signum", None) or 2
            raise Interrupted(
                f"{activation} seed{'s' if len(active) > 1 else ''} {seeds} stopped in epoch "
                f"{epoch} after step {st.batch} of {steps_per_epoch}; "
                f"{'their' if len(active) > 1 else 'its'} state is saved",
                signum,
            ) from None
        start_batch, sums, seconds_before = 0, None, 0.0
        seconds = (time.perf_counter() - t0) / len(active)
        for recorder in recorders:
            recorder.flush()  # this epoch's chunk, before the checkpoint that covers it
        train_loss = (loss_sum.double() / n).tolist()
        train_acc = (correct.double() / n).tolist()
        gone = set()
        for k, run in enumerate(active):
            if not math.isfinite(train_loss[k]):
                run.diverged_reason = f"non-finite training loss ({train_loss[k]}) in epoch {epoch}"
                gone.add(k)
        if gone:
            engine = engine.without(gone) if stacked else None
            active = [r for k, r in enumerate(active) if k not in gone]
            train_loss = [v for k, v in enumerate(train_loss) if k not in gone]
            train_acc = [v for k, v in enumerate(train_acc) if k not in gone]
            if not active:
                return
        rows = []
        for k, run in enumerate(active):
            model = engine.model(k)
            val_loss, val_acc = evaluate(model, data.x_val, data.y_val)
            row = {
                "epoch": epoch,
                "train_loss": train_loss[k],
                "train_accuracy": train_acc[k],
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "epoch_seconds": seconds,
            }
            if cfg.test_every_epoch:
                row["test_loss"], row["test_accuracy"] = evaluate(model, data.x_test, data.y_test)
            run.paths.append_metrics(row)
            run.history.append(row)
            if run.board is not None:  # on the step axis of the records: the epoch's last step
                run.board.write_scalars(
                    {"train/loss": row["train_loss"], "train/accuracy": row["train_accuracy"],
                     "val/loss": val_loss, "val/accuracy": val_acc},
                    epoch * steps_per_epoch - 1,
                )  # fmt: skip
            rows.append(row)
        now = time.perf_counter()
        if epoch == cfg.epochs or now - last_save >= at.checkpoint_seconds:
            checkpoint(active, epoch)
            last_save = now
        if on_epoch:
            for run, row in zip(active, rows, strict=True):
                on_epoch(run.seed, row)
    engine.sync()  # each run's own model holds its final weights


def _finish_run(at: _Setting, run: _Run) -> dict[str, Any]:
    """A trained run's result: its test score (none when it diverged)."""
    data, config = at.data, at.config
    result: dict[str, Any] = {
        "activation": at.activation,
        "seed": run.seed,
        "epochs_completed": len(run.history),
        "diverged": run.diverged_reason is not None,
        "diverged_reason": run.diverged_reason,
    }
    if run.diverged_reason is None:
        test = evaluate(run.model, data.x_test, data.y_test)
        result["test_loss"], result["test_accuracy"] = test
        if run.board is not None:
            run.board.write_scalars({"test/loss": test[0], "test/accuracy": test[1]},
                                    config.train.epochs * at.steps_per_epoch - 1)  # fmt: skip
    else:
        result["test_loss"] = result["test_accuracy"] = None
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
