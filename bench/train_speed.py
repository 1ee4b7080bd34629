"""Training speed: selfnorm's loop vs a plain PyTorch loop, interleaved in one process.

The seed-tf network (784-512x4-10, SELU + alpha dropout 0.3, Adam lr 1e-3, batch 100) on
MNIST-shaped data (real MNIST with ``--data mnist``, else Gaussian inputs with random labels):

  (a) selfnorm: ``selfnorm.training.train_epoch`` on a model from ``selfnorm.models`` (data
      preloaded as tensors, shuffled by index, fast alpha dropout masks, fused Adam, ...);
  (b) plain PyTorch: TensorDataset + DataLoader(shuffle=True) + nn.Linear/nn.SELU/
      nn.AlphaDropout + torch.optim.Adam, the loop from the tutorials;
  (c) Keras 3 on the torch backend, the seed Keras example's route (``Sequential`` of
      ``Dense(512, activation="selu")`` + ``AlphaDropout``, ``compile``, ``fit`` on NumPy
      arrays, one epoch per call) with the same network, optimizer and batch size; skipped with
      a line saying why when keras is not installed (``pip install 'selfnorm[keras]'``) or was
      imported on another backend.

Epochs rotate the order of the sides every epoch so drift of the machine hits all alike.
Prints the median seconds per epoch, the ratios b/a and c/a, and the fraction of the compute
floor (training FLOPs / the best fp32 matmul throughput measured here at these layer shapes).
With ``--json`` the last line is a JSON object.

    python bench/train_speed.py --epochs 3 [--data mnist [--data-dir DIR]] [--threads 2]
                                [--no-keras] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from selfnorm.config import TrainConfig
from selfnorm.models import build_mlp
from selfnorm.training import epoch_permutation, evaluate, make_optimizer, train_epoch

WIDTHS = [784, 512, 512, 512, 512, 10]


def load(data: str, n: int, data_dir: str | None):
    if data == "mnist":
        from selfnorm.data import DataConfig, load_dataset

        cfg = DataConfig("mnist", data_dir=data_dir, val_fraction=1 / 60, standardize="global")
        ds = load_dataset(cfg)
        x = torch.from_numpy(ds.x_train).flatten(1)[:n]
        y = torch.from_numpy(ds.y_train)[:n]
        xt = torch.from_numpy(ds.x_test).flatten(1)
        yt = torch.from_numpy(ds.y_test)
        return x, y, xt, yt
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 784, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y, x[:10000], y[:10000]


def plain_model() -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Linear(WIDTHS[i], WIDTHS[i + 1]), nn.SELU(), nn.AlphaDropout(0.3)]
    layers.append(nn.Linear(512, 10))
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
    return model


def plain_epoch(model, optimizer, loader) -> None:
    model.train()
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()


def keras_side(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """An epoch of the seed's Keras route on Keras 3 (torch backend), or the reason it cannot
    run here."""
    os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported
    try:
        import keras
    except ImportError as exc:
        return None, f"keras is not installed ({exc}): pip install 'selfnorm[keras]'"
    if keras.config.backend() != "torch":
        return None, f"keras runs on {keras.config.backend()!r}; set KERAS_BACKEND=torch"
    keras.utils.set_random_seed(0)
    layers = [keras.Input((784,))]
    for _ in range(4):
        layers += [
            keras.layers.Dense(512, activation="selu", kernel_initializer="lecun_normal"),
            keras.layers.AlphaDropout(0.3),
        ]
    layers.append(keras.layers.Dense(10))
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    xs, ys = x.numpy(), y.numpy()

    def epoch() -> None:
        model.fit(xs, ys, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)

    def accuracy(xt: torch.Tensor, yt: torch.Tensor) -> float:
        return float(model.evaluate(xt.numpy(), yt.numpy(), verbose=0, batch_size=1000)[1])

    return (epoch, accuracy), None


def measure_matmul_gflops(batch: int) -> dict[str, float]:
    """Best fp32 throughput at the layer shapes: MKL (torch.mm) and oneDNN where present."""

    def best(f, flops):
        for _ in range(3):
            f()
        times = []
        for _ in range(20):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return flops / min(times) / 1e9

    out = {}
    a, w = torch.randn(batch, 512), torch.randn(512, 512)
    flops = 2 * batch * 512 * 512
    out["mkl_mm"] = best(lambda: a @ w.t(), flops)
    try:
        op = torch.ops.mkldnn._linear_pointwise
        out["onednn_linear"] = best(lambda: op(a, w, None, "none", [], ""), flops)
    except (AttributeError, RuntimeError):
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3, help="epochs per loop (default 3)")
    ap.add_argument("--n", type=int, default=60000, help="training samples (default 60000)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", choices=["synthetic", "mnist"], default="synthetic")
    ap.add_argument("--data-dir", help="folder with the MNIST files (default: the cache)")
    ap.add_argument("--no-keras", action="store_true", help="leave out side (c)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y, xt, yt = load(args.data, args.n, args.data_dir)
    n = len(x)

    torch.manual_seed(0)
    ours = build_mlp(784, 10, 4, 512, "selu", 0.3, generator=torch.Generator().manual_seed(0))
    ours_opt = make_optimizer(ours.parameters(), TrainConfig(lr=1e-3))
    plain = plain_model()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=args.batch_size, shuffle=True
    )

    times: dict[str, list[float]] = {"selfnorm": [], "plain": []}
    keras_run, keras_why = (None, "left out (--no-keras)")
    if not args.no_keras:
        keras_run, keras_why = keras_side(x, y, args.batch_size)
    if keras_run is None:
        print(f"  side (c) Keras 3 skipped: {keras_why}")
    else:
        times["keras"] = []

    def run(which: str, epoch: int) -> None:
        t = time.perf_counter()
        if which == "selfnorm":
            perm = epoch_permutation(n, 0, epoch)
            train_epoch(ours, ours_opt, x, y, perm, args.batch_size)
        elif which == "plain":
            plain_epoch(plain, plain_opt, loader)
        else:
            keras_run[0]()
        times[which].append(time.perf_counter() - t)
        print(f"  epoch {epoch} {which:>8}: {times[which][-1]:.3f} s", flush=True)

    sides = list(times)
    for epoch in range(1, args.epochs + 1):
        shift = (epoch - 1) % len(sides)
        for which in sides[shift:] + sides[:shift]:
            run(which, epoch)

    a = statistics.median(times["selfnorm"])
    b = statistics.median(times["plain"])
    flops_per_sample = 2 * sum(WIDTHS[i] * WIDTHS[i + 1] for i in range(len(WIDTHS) - 1))
    # forward + weight gradient for every layer + input gradient for all but the first
    train_flops = n * (3 * flops_per_sample - 2 * WIDTHS[0] * WIDTHS[1])
    gflops = measure_matmul_gflops(args.batch_size)
    floor = train_flops / (max(gflops.values()) * 1e9)
    _, acc_a = evaluate(ours, xt, yt)
    _, acc_b = evaluate(plain, xt, yt)
    result = {
        "speedup": b / a,
        "floor_fraction": floor / a,
        "selfnorm_s_per_epoch": a,
        "plain_s_per_epoch": b,
        "floor_s_per_epoch": floor,
        "matmul_gflops": gflops,
        "selfnorm_test_accuracy": acc_a,
        "plain_test_accuracy": acc_b,
        "keras_s_per_epoch": statistics.median(times["keras"]) if keras_run else None,
        "keras_speedup": statistics.median(times["keras"]) / a if keras_run else None,
        "keras_test_accuracy": keras_run[1](xt, yt) if keras_run else None,
        "keras_skipped": keras_why,
        "epochs": args.epochs,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "data": args.data,
        "torch": torch.__version__,
    }
    print(f"selfnorm loop : {a:.3f} s/epoch (median of {args.epochs})")
    print(f"plain PyTorch : {b:.3f} s/epoch")
    print(f"speedup b/a   : {b / a:.2f}x")
    print(
        f"compute floor : {floor:.3f} s/epoch at {max(gflops.values()):.0f} GFLOP/s "
        f"({', '.join(f'{k} {v:.0f}' for k, v in gflops.items())}); selfnorm reaches "
        f"{floor / a:.0%} of it"
    )
    if keras_run is not None:
        k = result["keras_s_per_epoch"]
        print(f"Keras 3 fit   : {k:.3f} s/epoch (torch backend); speedup c/a: {k / a:.2f}x")
    print(
        f"test accuracy : selfnorm {acc_a:.4f}, plain {acc_b:.4f} ({args.data})"
        + (f", keras {result['keras_test_accuracy']:.4f}" if keras_run else "")
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
