"""``compare``: the one training loop (:mod:`selfnorm.training`) over variants and seeds, in a
run directory.

Every variant sees the same data in the same order (:func:`~selfnorm.training.epoch_permutation`
of each seed); each variant's seeds train one after another or stacked as one model
(``train.stack``, :mod:`selfnorm.stacked`); the run directory holds each run's metrics,
records, checkpoints and result, and the comparison's summary.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from selfnorm._io import atomic_write_json
from selfnorm.auditing import audit
from selfnorm.config import ExperimentConfig, experiment_from_dict
from selfnorm.data import Dataset, load_dataset, restandardize
from selfnorm.interrupts import Interrupted, graceful_stop
from selfnorm.locking import RunLock
from selfnorm.models import layer_widths
from selfnorm.resources import check_fits, mlp_training_bytes
from selfnorm.specs import get_spec
from selfnorm.stacked import stack_size, unstackable
from selfnorm.storage import RunDir, RunDirError, config_digest, read_json, read_jsonl
from selfnorm.summary import summarize
from selfnorm.training import (
    CHECKPOINT_SECONDS,
    DeviceData,
    _check_checkpoint_seconds,
    batch_bounds,
    build_model,
    resolve_device,
    train_runs,
)

__all__ = ["compare"]

AUDIT_BATCH = 512


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
    """Train every variant for every seed in this process; write the summary. A variant's seeds
    train one after another or stacked as one model (``train.stack``).

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
    stacking = _stacking(config, ds, device)
    if config.model.kind == "mlp":
        m = config.model
        widths = layer_widths(m.depth, m.width, ds.num_classes, m.shape)
        k = max(stacking.values())  # a stack holds K models and K copies of the epoch's data
        per_run = mlp_training_bytes(widths, math.prod(ds.input_shape), ds.num_classes)
        check_fits(
            k * per_run + (k - 1) * ds.x_train.nbytes,
            f"training the MLP ({m.depth} hidden layers of {m.width})"
            + (f", {k} runs stacked" if k > 1 else ""),
            "choose a smaller --width or --depth" + (", or --stack off" if k > 1 else ""),
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
            todo = [s for s in config.seeds if not run_dir.run(activation, s).result.exists()]
            stack = stacking[activation]
            done: dict[int, dict[str, Any]] = {}

            def on_epoch(seed: int, row: dict[str, Any], bar=bar) -> None:
                bar.update(1)
                bar.set_postfix(seed=seed, val_acc=f"{row['val_accuracy']:.4f}")

            if todo:
                try:
                    trained = train_runs(
                        on_device[scaling(activation)], config, activation, todo,
                        [run_dir.run(activation, s) for s in todo], on_epoch,
                        checkpoint_seconds, stop, digest, stack=stack,
                    )  # fmt: skip
                except Interrupted:
                    bar.close()
                    raise
                for seed, result in zip(todo, trained, strict=True):
                    done[seed] = result
                    if result["diverged"]:
                        bar.update(config.train.epochs - result["epochs_completed"])
            for seed in config.seeds:
                paths = run_dir.run(activation, seed)
                if seed not in done:
                    done[seed] = paths.read_result()
                    bar.update(config.train.epochs)
                results.setdefault(activation, []).append(done[seed])
                histories.setdefault(activation, []).append(read_jsonl(paths.metrics))
            bar.close()
        plan = {a: {"runs_per_stack": k, "requested": config.train.stack}
                for a, k in stacking.items()}  # fmt: skip
        summary = summarize(config, results, histories, str(device), ds, stacking=plan)
        atomic_write_json(run_dir.summary, summary)
    return summary


def _stacking(config: ExperimentConfig, ds: Dataset, device: torch.device) -> dict[str, int]:
    """Each variant's runs per stacked model under ``train.stack`` (1: one at a time).

    ``auto`` stacks what :func:`~selfnorm.stacked.stack_size` says pays and the model allows;
    a number given for a variant whose model cannot be stacked is refused (ValueError)."""
    out = {}
    for activation in config.activations:
        k = stack_size(config.train.stack, device, len(config.seeds))
        if k > 1 or config.train.stack not in ("auto", "off"):  # a number given: checked
            if config.model.kind == "mlp":  # its layers, at a small width
                small = dataclasses.replace(config.model, width=min(config.model.width, 8))
                model = build_model(
                    small, activation, config.dropout_for(activation), ds.input_shape,
                    ds.num_classes, config.seeds[0],
                )  # fmt: skip
                why = unstackable(model)
            else:
                why = f"only selfnorm's MLP stacks, not --model {config.model.kind}"
            if why is not None:
                if config.train.stack != "auto":
                    raise ValueError(
                        f"--stack {config.train.stack}: variant {activation} cannot train "
                        f"stacked: {why}; use --stack auto (stacks what it can) or --stack off"
                    )
                k = 1
        out[activation] = k
    return out


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
