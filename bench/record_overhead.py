"""Overhead of recording activations, interleaved in one process.

The seed-tf network (784-512x4-10, SELU + alpha dropout 0.3, Adam lr 1e-3, batch 100) on
MNIST-shaped Gaussian data, trained with ``selfnorm.training.train_epoch`` (the real hot loop)
in blocks of steps, four ways, all on the same model and optimizer (so memory layout and
numerics are identical and only the recording differs):

  none            no recording;
  every_step      ``ActivationRecorder`` every step: all 4 layers, pre and post, 64 bins, all
                  statistics, gradients, ω/τ of all 5 weight layers;
  every_50        the same every 50 steps;
  tensorboard     the reference: ``SummaryWriter.add_histogram`` of every activation output
                  every step (forward hooks), as monitors built on TensorBoard do.

The recorders use ``--backend``: ``torch`` (default, the torch-ops reductions of
``selfnorm.recording.reduce``) or ``kernel`` (the opt-in C++ ones of ``selfnorm.recording.kernel``).
A recorder flushes at the end of each of its blocks (``--block`` steps, default 600: one MNIST
epoch, after which ``selfnorm compare`` flushes too) into NPZ chunks in a
temporary folder, timed with the block; the TensorBoard way runs ``--tb-block`` steps (it is
~15x slower) and flushes its writer. Blocks go round-robin, the order rotating every round,
after one untimed warm-up round. Reported per way: the median over rounds of its time per step
divided by the ``none`` time per step of the same round (paired, so drift of the machine
cancels), and the median ms per step. With ``--json`` the last line is
``{"every_step": r, "every_50": r, "tensorboard_every_step": r}``.

    python bench/record_overhead.py [--rounds 20] [--block 600] [--tb-block 50] [--threads 2]
                                    [--backend torch|kernel] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from selfnorm.config import RecordConfig, TrainConfig
from selfnorm.models import build_mlp
from selfnorm.recording import ActivationRecorder
from selfnorm.sinks import NpzChunkSink
from selfnorm.taxonomy import activation_types
from selfnorm.training import make_optimizer, train_epoch

WAYS = ("none", "every_step", "every_50", "tensorboard")


class _TensorBoardHooks:
    """The reference monitor: add_histogram(output) of every activation, every step."""

    def __init__(self, model: torch.nn.Module, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.model = model
        self.writer = SummaryWriter(log_dir)
        self.step = 0
        self.handles: list = []

    def attach(self) -> None:
        for name, m in self.model.named_modules():
            if isinstance(m, activation_types()):
                self.handles.append(m.register_forward_hook(self._hook(name)))
        self.handles.append(self.model.register_forward_hook(self._advance))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.writer.flush()

    def _hook(self, name: str):
        def hook(module, args, out):
            if module.training:
                self.writer.add_histogram(f"act/{name}", out.detach(), self.step)

        return hook

    def _advance(self, module, args, out) -> None:
        if module.training:
            self.step += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds (default 20)")
    ap.add_argument("--block", type=int, default=600, help="steps per block (default 600)")
    ap.add_argument("--tb-block", type=int, default=50, help="TensorBoard steps per block")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", choices=["torch", "kernel"], default="torch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.block % 50:
        ap.error("--block must be a multiple of 50 (every_50 then records a fixed count)")
    torch.set_num_threads(args.threads)
    bs = args.batch_size
    steps = {w: args.tb_block if w == "tensorboard" else args.block for w in WAYS}
    g = torch.Generator().manual_seed(0)
    n = 60000
    x = torch.randn(n, 784, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    tmp = tempfile.TemporaryDirectory(prefix="record-overhead-")

    torch.manual_seed(0)
    model = build_mlp(784, 10, 4, 512, "selu", 0.3, generator=torch.Generator().manual_seed(0))
    opt = make_optimizer(model.parameters(), TrainConfig(lr=1e-3))
    recorders = {
        "every_step": ActivationRecorder(
            model,
            RecordConfig(every=1, backend=args.backend),
            sinks=[NpzChunkSink(Path(tmp.name) / "every_step")],
        ),
        "every_50": ActivationRecorder(
            model,
            RecordConfig(every=50, backend=args.backend),
            sinks=[NpzChunkSink(Path(tmp.name) / "every_50")],
        ),
    }
    tb = _TensorBoardHooks(model, str(Path(tmp.name) / "tb"))
    offset = 0

    def block(way: str) -> float:
        nonlocal offset
        k = steps[way]
        start = offset % (n - k * bs + 1)
        perm = torch.arange(start, start + k * bs)
        offset += k * bs
        rec = recorders.get(way)
        t = time.perf_counter()
        if way == "tensorboard":
            tb.attach()
        train_epoch(model, opt, x, y, perm, bs, rec)
        if rec is not None:
            rec.flush()
        if way == "tensorboard":
            tb.detach()
        return (time.perf_counter() - t) / k

    for way in WAYS:  # warm-up: allocations, first-record plans, TensorBoard writer
        block(way)
    per_step: dict[str, list[float]] = {w: [] for w in WAYS}
    for r in range(args.rounds):
        order = WAYS[r % len(WAYS) :] + WAYS[: r % len(WAYS)]
        for way in order:
            per_step[way].append(block(way))
        line = "  ".join(f"{w} {per_step[w][-1] * 1e3:7.2f}" for w in WAYS)
        print(f"round {r + 1:2d} ms/step: {line}", flush=True)

    ratio = {
        w: statistics.median(a / b for a, b in zip(per_step[w], per_step["none"], strict=True))
        for w in WAYS
    }
    for w in WAYS:
        ms = statistics.median(per_step[w]) * 1e3
        print(f"{w:>12}: {ms:8.3f} ms/step  {ratio[w]:6.3f}x")
    for rec in recorders.values():
        rec.close()
    tb.writer.close()
    tmp.cleanup()
    print(f"backend {args.backend}: {'C++ kernel' if args.backend == 'kernel' else 'torch ops'}")
    if args.json:
        print(
            json.dumps(
                {
                    "every_step": ratio["every_step"],
                    "every_50": ratio["every_50"],
                    "tensorboard_every_step": ratio["tensorboard"],
                }
            )
        )


if __name__ == "__main__":
    main()
