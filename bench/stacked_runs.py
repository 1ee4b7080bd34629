"""What stacked training buys end to end: K runs one after another vs as one stacked model.

Issue 12's benchmark. Two measurements, each sequential (``train.stack = "off"``) against
stacked, in blocks that alternate (rotating order) over ``--rounds`` rounds after a warm-up;
reported: medians and the median of the per-round ratios sequential/stacked.

1. ``selfnorm.training.train_runs`` of K = 3 and K = 8 seeds, wall time of whole runs
   (training, per-epoch evaluation, metrics, records at the default cadence, checkpoints):
   - ``digits``: the default ``compare`` net, 64-512x4-10 SELU, batch 128, ``--epochs``;
   - ``seed_tf``: the seed-tf net, 784-512x4-10 SELU with alpha dropout 0.05, batch 100, Adam
     1e-3, on ``--train-samples`` MNIST training images (and the same share of the validation
     and test splits) for one epoch.
2. ``compare_default``: the default ``selfnorm compare`` (digits; selu, relu, lrelu; seeds 0, 1,
   2; 30 epochs), end to end through :func:`selfnorm.comparing.compare` (loading aside), with
   ``--stack off`` against ``--stack 3``.

For seed-tf at K = 8 it also times the stacked runs with and without records (the
recorder's cost in stacked mode, ``seed_tf_k8_stacked_record_overhead``).

On a GPU (``--device cuda``; the data are resident on the device) it prints the absolute
seconds per epoch as well. With ``--json`` the last line is an object with
``compare_default_speedup``, ``seed_tf_k8_speedup`` and ``<net>_k<K>_speedup``.

    python bench/stacked_runs.py --data-dir ../shared/data/mnist [--rounds 3] [--threads 2]
        [--device cpu|cuda] [--skip-compare] [--no-record] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from selfnorm.comparing import compare
from selfnorm.config import experiment_from_dict
from selfnorm.data import DataConfig, load_dataset
from selfnorm.storage import RunDir
from selfnorm.training import DeviceData, train_runs

NETS = {
    "digits": {
        "data": {"dataset": "digits"},
        "model": {"depth": 4, "width": 512},
        "train": {"batch_size": 128},
        "dropout": 0.0,
    },
    "seed_tf": {
        "data": {"dataset": "mnist", "standardize": "global"},
        "model": {"depth": 4, "width": 512},
        "train": {"batch_size": 100, "lr": 1e-3},
        "dropout": 0.05,
    },
}


def _runs_once(config, data, k: int, stack: int, root: Path) -> float:
    """Seconds to train K fresh runs of ``config``'s selu variant."""
    shutil.rmtree(root, ignore_errors=True)
    rd = RunDir(root)
    rd.root.mkdir(parents=True)
    seeds = list(range(k))
    t = time.perf_counter()
    train_runs(data, config, "selu", seeds, [rd.run("selu", s) for s in seeds], stack=stack)
    if data.x_train.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _compare_once(ds, stack: str, root: Path, device: str, record: bool) -> float:
    shutil.rmtree(root, ignore_errors=True)
    config = experiment_from_dict(
        {"train": {"stack": stack, "device": device}, "record": {"enabled": record}}
    )
    t = time.perf_counter()
    compare(config, str(root), progress=False, dataset=ds)
    return time.perf_counter() - t


def _interleaved(ways: dict, rounds: int) -> tuple[dict[str, float], float]:
    """Median seconds of each way and the median per-round ratio first/second."""
    times: dict[str, list[float]] = {w: [] for w in ways}
    names = list(ways)
    for r in range(rounds):
        for w in names[r % 2 :] + names[: r % 2]:
            times[w].append(ways[w]())
    a, b = names
    ratio = statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
    return {w: statistics.median(v) for w, v in times.items()}, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="where MNIST is (default: $SELFNORM_DATA or the cache)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--epochs", type=int, default=5, help="digits epochs per run (default 5)")
    ap.add_argument("--train-samples", type=int, default=12000, help="seed_tf MNIST subset")
    ap.add_argument("--skip-compare", action="store_true", help="only the train_runs part")
    ap.add_argument("--no-record", action="store_true", help="everything without records")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict[str, float | str | None] = {"device": args.device, "threads": args.threads}
    work = Path(tempfile.mkdtemp(prefix="stacked-runs-"))
    try:
        for net, spec in NETS.items():
            data_cfg = DataConfig(**spec["data"], data_dir=args.data_dir)
            ds = load_dataset(data_cfg, progress=False)
            epochs = args.epochs
            if net == "seed_tf":
                share = min(args.train_samples, len(ds.y_train)) / len(ds.y_train)
                ds = dataclasses.replace(  # the same share of every split: evaluation keeps
                    ds, **{f"{a}_{split}": getattr(ds, f"{a}_{split}")[: round(share * len(
                        getattr(ds, f"y_{split}")))] for a in "xy" for split in
                        ("train", "val", "test")},  # its weight of a whole epoch
                )  # fmt: skip
                epochs = 1
            data = DeviceData.from_dataset(ds, device)
            config = experiment_from_dict(
                {**{k: v for k, v in spec.items() if k != "data"},
                 "train": {**spec["train"], "epochs": epochs, "device": args.device},
                 "activations": ["selu"], "record": {"enabled": not args.no_record}}
            )  # fmt: skip
            for k in (3, 8):
                ways = {
                    "sequential": lambda k=k, c=config, d=data: _runs_once(c, d, k, 1, work / "a"),
                    "stacked": lambda k=k, c=config, d=data: _runs_once(c, d, k, k, work / "b"),
                }
                for stack in (1, 2):  # warm-up: allocator, oneDNN plans, first steps
                    _runs_once(config, data, 2, stack, work / "w")
                med, ratio = _interleaved(ways, args.rounds)
                per_epoch = {w: v / (k * epochs) for w, v in med.items()}
                result[f"{net}_k{k}_speedup"] = ratio
                print(
                    f"{net:>8} K={k}: sequential {med['sequential']:6.2f} s, stacked "
                    f"{med['stacked']:6.2f} s for {k} runs x {epochs} epoch(s) "
                    f"({per_epoch['sequential']:.3f} / {per_epoch['stacked']:.3f} s per run-epoch)"
                    f"; sequential/stacked {ratio:.2f}x",
                    flush=True,
                )
            if net == "seed_tf" and not args.no_record:  # the recorder's cost, stacked
                bare = dataclasses.replace(
                    config, record=dataclasses.replace(config.record, enabled=False)
                )
                ways = {
                    "records": lambda c=config, d=data: _runs_once(c, d, 8, 8, work / "a"),
                    "none": lambda c=bare, d=data: _runs_once(c, d, 8, 8, work / "b"),
                }
                med, ratio = _interleaved(ways, args.rounds)
                result["seed_tf_k8_stacked_record_overhead"] = ratio
                print(
                    f"{net:>8} K=8 stacked: with records (default cadence) {med['records']:6.2f} "
                    f"s, without {med['none']:6.2f} s; records cost {ratio:.3f}x",
                    flush=True,
                )
        if not args.skip_compare:
            ds = load_dataset(DataConfig(), progress=False)
            ways = {
                "off": lambda: _compare_once(
                    ds, "off", work / "c", args.device, not args.no_record
                ),
                "stack 3": lambda: _compare_once(
                    ds, "3", work / "d", args.device, not args.no_record
                ),
            }
            med, ratio = _interleaved(ways, args.rounds)
            result["compare_default_speedup"] = ratio
            print(
                f"default compare (3 variants x 3 seeds, 30 epochs): --stack off "
                f"{med['off']:.1f} s, --stack 3 {med['stack 3']:.1f} s; off/stacked {ratio:.2f}x",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.setdefault("compare_default_speedup", None)  # --skip-compare
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
