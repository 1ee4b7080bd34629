"""What durability costs: the writes of one epoch with and without fsync, interleaved.

Every durable write of a run (the checkpoint, the metrics row, the epoch's records chunk) is
fsync-ed, file and folder, so that a power loss or a crashed VM leaves the last complete state
(docs/run-directory.md). This benchmark times those writes for the default ``selfnorm compare``
network (digits, 4 x 512 SELU, Adam: a 9.5 MB checkpoint) and for the seed-tf MNIST network
(784-512x4-10: 13.7 MB), alternating rounds with the real ``os.fsync`` and with a
no-op in its place, and reports medians per write and per epoch (one metrics row and one
records chunk per epoch; a checkpoint per epoch is the worst case, ``--checkpoint-seconds 0``;
the default checkpoints every 10 s).

    python bench/durable_writes.py [--rounds 15] [--json]

With ``--json`` the last line is ``{"<net>": {"checkpoint_fsync_ms": .., ...}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from selfnorm.config import RecordConfig, TrainConfig
from selfnorm.models import build_mlp
from selfnorm.recording import ActivationRecorder
from selfnorm.sinks import NpzChunkSink
from selfnorm.specs import get_spec
from selfnorm.storage import RunPaths
from selfnorm.training import make_optimizer, train_epoch

NETS = {
    "digits-default": (64, 10, 4, 512, 1437, 128),
    "seed-tf-mnist": (784, 10, 4, 512, 6000, 100),
}
"""name -> (in, classes, depth, width, samples per timed epoch, batch)."""


def _state(model, opt) -> dict:
    return {"epoch": 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": {"cpu": torch.get_rng_state()}, "config_digest": "x"}  # fmt: skip


def _records(model, x, y, opt, batch):
    """One epoch's records, as the default cadence takes them (a quarter epoch, at most 50)."""
    steps = len(x) // batch
    rc = RecordConfig(every=max(1, min(50, steps // 4)))
    chunks = []

    class Keep:
        def write(self, r):
            chunks.append(r)

        def close(self):
            pass

    with ActivationRecorder(model, rc, sinks=[Keep()], steps_per_epoch=steps) as rec:
        train_epoch(model, opt, x, y, torch.randperm(len(x)), batch, rec)
        rec.flush()
    return chunks[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    real_fsync = os.fsync
    out = {}
    for name, (d_in, k, depth, width, n, batch) in NETS.items():
        g = torch.Generator().manual_seed(0)
        model = build_mlp(d_in, k, depth, width, get_spec("selu"), 0.05, "rect", g)
        opt = make_optimizer(model.parameters(), TrainConfig())
        x, y = torch.randn(n, d_in, generator=g), torch.randint(0, k, (n,), generator=g)
        records = _records(model, x, y, opt, batch)
        state = _state(model, opt)
        row = {"epoch": 1, "train_loss": 0.1, "train_accuracy": 0.9, "val_loss": 0.2,
               "val_accuracy": 0.9, "epoch_seconds": 0.5}  # fmt: skip
        times: dict[str, dict[bool, list[float]]] = {
            w: {True: [], False: []} for w in ("checkpoint", "metrics", "records")
        }
        with tempfile.TemporaryDirectory() as tmp:
            paths = RunPaths(Path(tmp) / "run")
            sink = NpzChunkSink(paths.records)
            for r in range(args.rounds):
                for durable in (r % 2 == 0, r % 2 == 1):  # interleaved, order alternating
                    os.fsync = real_fsync if durable else (lambda fd: None)
                    try:
                        t0 = time.perf_counter()
                        paths.save_checkpoint(state)
                        t1 = time.perf_counter()
                        paths.append_metrics(row)
                        t2 = time.perf_counter()
                        sink.write(records)
                        t3 = time.perf_counter()
                    finally:
                        os.fsync = real_fsync
                    times["checkpoint"][durable].append(t1 - t0)
                    times["metrics"][durable].append(t2 - t1)
                    times["records"][durable].append(t3 - t2)
            size = paths.checkpoint.stat().st_size
        med = {w: {d: statistics.median(v) * 1e3 for d, v in t.items()} for w, t in times.items()}
        per_epoch = {d: med["metrics"][d] + med["records"][d] for d in (True, False)}
        out[name] = {
            "checkpoint_mb": round(size / 2**20, 1),
            **{f"{w}_fsync_ms": round(med[w][True], 2) for w in med},
            **{f"{w}_no_fsync_ms": round(med[w][False], 2) for w in med},
            "epoch_extra_ms": round(per_epoch[True] - per_epoch[False], 2),
            "epoch_extra_ms_with_checkpoint": round(
                per_epoch[True] + med["checkpoint"][True]
                - per_epoch[False] - med["checkpoint"][False], 2
            ),
        }  # fmt: skip
        print(f"{name}: checkpoint {out[name]['checkpoint_mb']} MB")
        for w in med:
            print(f"  {w:<10} fsync {med[w][True]:8.2f} ms   no fsync {med[w][False]:8.2f} ms")
        print(f"  per epoch (metrics row + records chunk): +{out[name]['epoch_extra_ms']:.2f} ms;"
              f" with a checkpoint every epoch: +{out[name]['epoch_extra_ms_with_checkpoint']:.2f}"
              " ms")  # fmt: skip
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
