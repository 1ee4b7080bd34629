"""Overhead of recording activations, interleaved in one process.

The seed-tf network (784-512x4-10, SELU + alpha dropout 0.3, Adam lr 1e-3, batch 100) on
MNIST-shaped Gaussian data, trained with ``selfnorm.training.train_epoch`` (the real hot loop)
in blocks of ``--block`` steps, four ways, each with its own copy of the model:

  none            no recording;
  every_step      ``ActivationRecorder`` every step: all 4 layers, pre and post, 64 bins, all
                  statistics, gradients, ω/τ of all 5 weight layers;
  every_50        the same every 50 steps;
  tensorboard     the reference: ``SummaryWriter.add_histogram`` of every activation output
                  every step (forward hooks), as monitors built on TensorBoard do.

The recorders flush at the end of every block (what ``selfnorm compare`` does once per epoch,
so this is the heavier case) into NPZ chunks in a temporary folder; the flush is timed with the
block. Blocks go round-robin, the order rotating every round, after one untimed warm-up round.
Reported per way: the median over rounds of its block time divided by the ``none`` block time
of the same round (paired, so drift of the machine cancels), and the median seconds per step.
With ``--json`` the last line is ``{"every_step": r, "every_50": r, "tensorboard_every_step": r}``.

    python bench/record_overhead.py [--rounds 12] [--block 100] [--threads 2] [--json]
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
from selfnorm.recording import ACTIVATION_TYPES, ActivationRecorder
from selfnorm.sinks import NpzChunkSink
from selfnorm.training import make_optimizer, train_epoch

WAYS = ("none", "every_step", "every_50", "tensorboard")


class _TensorBoardHooks:
    """The reference monitor: add_histogram(output) of every activation, every step."""

    def __init__(self, model: torch.nn.Module, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)
        self.step = 0
        self.handles = [
            m.register_forward_hook(self._hook(name))
            for name, m in model.named_modules()
            if isinstance(m, ACTIVATION_TYPES)
        ]
        # the step counter advances once per forward pass of the whole model
        self.handles.append(model.register_forward_hook(self._advance))

    def _hook(self, name: str):
        def hook(module, args, out):
            if module.training:
                self.writer.add_histogram(f"act/{name}", out.detach(), self.step)

        return hook

    def _advance(self, module, args, out) -> None:
        if module.training:
            self.step += 1

    def flush(self) -> None:
        self.writer.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12, help="timed rounds (default 12)")
    ap.add_argument("--block", type=int, default=100, help="steps per block (default 100)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.block % 50:
        ap.error("--block must be a multiple of 50 (every_50 then records a fixed count)")
    torch.set_num_threads(args.threads)
    bs, k = args.batch_size, args.block
    g = torch.Generator().manual_seed(0)
    n = 60000
    x = torch.randn(n, 784, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    tmp = tempfile.TemporaryDirectory(prefix="record-overhead-")

    state = {}
    for way in WAYS:
        torch.manual_seed(0)
        model = build_mlp(784, 10, 4, 512, "selu", 0.3, generator=torch.Generator().manual_seed(0))
        opt = make_optimizer(model.parameters(), TrainConfig(lr=1e-3))
        rec = tb = None
        if way in ("every_step", "every_50"):
            every = 1 if way == "every_step" else 50
            sink = NpzChunkSink(Path(tmp.name) / way)
            rec = ActivationRecorder(model, RecordConfig(every=every), sinks=[sink])
        elif way == "tensorboard":
            tb = _TensorBoardHooks(model, str(Path(tmp.name) / "tb"))
        state[way] = {"model": model, "opt": opt, "rec": rec, "tb": tb, "offset": 0}

    def block(way: str) -> float:
        st = state[way]
        start = st["offset"] % (n - k * bs + 1)
        perm = torch.arange(start, start + k * bs)
        st["offset"] += k * bs
        t = time.perf_counter()
        train_epoch(st["model"], st["opt"], x, y, perm, bs, st["rec"])
        if st["rec"] is not None:
            st["rec"].flush()
        if st["tb"] is not None:
            st["tb"].flush()
        return time.perf_counter() - t

    for way in WAYS:  # warm-up: allocations, first-record plans, TensorBoard writer
        block(way)
    times: dict[str, list[float]] = {w: [] for w in WAYS}
    for r in range(args.rounds):
        order = WAYS[r % len(WAYS) :] + WAYS[: r % len(WAYS)]
        for way in order:
            times[way].append(block(way))
        line = "  ".join(f"{w} {times[w][-1] / k * 1e3:7.2f}" for w in WAYS)
        print(f"round {r + 1:2d} ms/step: {line}", flush=True)

    ratio = {
        w: statistics.median(a / b for a, b in zip(times[w], times["none"], strict=True))
        for w in WAYS
    }
    per_step = {w: statistics.median(times[w]) / k for w in WAYS}
    for w in WAYS:
        print(f"{w:>12}: {per_step[w] * 1e3:8.3f} ms/step  {ratio[w]:6.3f}x")
    for way in WAYS:
        if state[way]["rec"] is not None:
            state[way]["rec"].close()
        if state[way]["tb"] is not None:
            state[way]["tb"].writer.close()
    tmp.cleanup()
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
