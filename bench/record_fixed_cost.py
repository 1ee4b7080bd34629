"""Fixed cost of one record, measured where the statistics themselves cost next to nothing.

``bench/record_overhead.py`` answers the question users ask (how much slower is training with
recording?) but its ratio moves by ±1-2% from run to run on a shared machine, more than most
single changes to the recorder are worth. This benchmark isolates the part that does not grow
with the layer sizes: hooks, Python around a record, C++ calls, gradient hooks, the flush. It
trains the seed-tf layout shrunk to width 16 (784 -> 16 inputs, 4 SELU layers + alpha dropout,
batch 4) so that a training step is mostly framework overhead, interleaving 1000-step blocks
with and without a recorder that records every step (flushed at the end of each block into NPZ
chunks, timed in). Reported: the median over rounds of the extra microseconds per recorded step,
and of the flush alone. The absolute figures hold for this tiny model; in the real network the
same work runs with colder caches (about 1.5x).

    python bench/record_fixed_cost.py [--rounds 10] [--threads 1] [--backend torch|kernel]
                                      [--json]

With ``--json`` the last line is ``{"per_record_us": x, "flush_us_per_record": y}``.
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
from selfnorm.training import make_optimizer, train_epoch

STEPS = 1000
BATCH = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--backend", choices=["torch", "kernel"], default="torch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * BATCH, 16, generator=g)
    y = torch.randint(0, 10, (STEPS * BATCH,), generator=g)
    perm = torch.arange(STEPS * BATCH)
    model = build_mlp(16, 10, 4, 16, "selu", 0.3, generator=torch.Generator().manual_seed(0))
    opt = make_optimizer(model.parameters(), TrainConfig(lr=1e-3))
    tmp = tempfile.TemporaryDirectory(prefix="record-fixed-cost-")
    rec = ActivationRecorder(
        model, RecordConfig(every=1, backend=args.backend), sinks=[NpzChunkSink(Path(tmp.name))]
    )

    def block(recorder: ActivationRecorder | None) -> tuple[float, float]:
        t = time.perf_counter()
        train_epoch(model, opt, x, y, perm, BATCH, recorder)
        t1 = time.perf_counter()
        if recorder is not None:
            recorder.flush()
        t2 = time.perf_counter()
        return (t2 - t) / STEPS * 1e6, (t2 - t1) / STEPS * 1e6

    block(None)  # warm-up: allocations, the recorder's first pass, the kernel's build
    block(rec)
    extra, flush = [], []
    for r in range(args.rounds):
        if r % 2:  # alternate which way goes first
            with_rec, fl = block(rec)
            without, _ = block(None)
        else:
            without, _ = block(None)
            with_rec, fl = block(rec)
        extra.append(with_rec - without)
        flush.append(fl)
        print(f"round {r + 1:2d}: step {without:7.1f} us, +{extra[-1]:6.1f} us", flush=True)
    rec.close()
    tmp.cleanup()
    per_record, per_flush = statistics.median(extra), statistics.median(flush)
    path = "C++ kernel" if args.backend == "kernel" else "torch ops"
    print(f"per recorded step: +{per_record:.1f} us (of which flush {per_flush:.1f} us); {path}")
    if args.json:
        print(json.dumps({"per_record_us": per_record, "flush_us_per_record": per_flush}))


if __name__ == "__main__":
    main()
