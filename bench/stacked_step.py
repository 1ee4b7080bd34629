"""What a stacked step buys: K runs' training steps one after another vs one StackedMLP step.

Issue 12's base (``selfnorm.stacked.StackedMLP``), before it is wired into the training loop:
a full step (forward, cross-entropy, backward, Adam as ``selfnorm.training.make_optimizer``
makes it) of K models of one shape, each on its own batch, either one model at a time (what
``selfnorm compare`` runs today: ``selfnorm.linear`` products through oneDNN, fused Adam) or as
one stacked model (``torch.baddbmm`` per layer, alpha dropout masks from K generators, one
fused Adam over the stacked tensors). Two nets: the default ``compare`` net on digits
(64-512x4-10, batch 128, no dropout) and the seed-tf net (784-512x4-10, batch 100, alpha
dropout 0.3). Blocks of ``--steps`` steps alternate (rotating order) over ``--rounds`` rounds
after a warm-up; reported: the median ms per step of K runs and the ratio sequential/stacked.
With ``--json`` the last line is an object keyed ``<net>_k<K>_speedup``.

With ``--products`` it times instead the batched product alone: one 512x512 layer's forward
and backward for K = 8 runs at batch 100, as eight ``selfnorm.linear`` oneDNN products, one
``torch.baddbmm``, and one grouped 1x1 convolution (oneDNN's convolution, ``groups=8``).

    python bench/stacked_step.py [--rounds 7] [--steps 30] [--threads 2] [--json] [--products]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as TF

from selfnorm.config import TrainConfig
from selfnorm.models import build_mlp
from selfnorm.stacked import StackedMLP
from selfnorm.training import make_optimizer

NETS = {"digits": (64, 128, 0.0), "seed_tf": (784, 100, 0.3)}  # inputs, batch, dropout


def _setup(net: str, k: int):
    inputs, batch, p = NETS[net]
    models = [
        build_mlp(inputs, 10, 4, 512, "selu", p, generator=torch.Generator().manual_seed(s))
        for s in range(k)
    ]
    gens = [torch.Generator().manual_seed(100 + s) for s in range(k)]
    stacked = StackedMLP(
        [build_mlp(inputs, 10, 4, 512, "selu", p, generator=torch.Generator().manual_seed(s))
         for s in range(k)],
        gens,
    )  # fmt: skip
    opts = [make_optimizer(m.parameters(), TrainConfig(lr=1e-3)) for m in models]
    opt = make_optimizer(stacked.parameters(), TrainConfig(lr=1e-3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(k, batch, inputs, generator=g)
    y = torch.randint(0, 10, (k, batch), generator=g)

    def sequential() -> None:
        for i, (m, o) in enumerate(zip(models, opts, strict=True)):
            loss = TF.cross_entropy(m(x[i]), y[i])
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

    def together() -> None:
        out = stacked(x)
        loss = TF.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="sum") / y.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"sequential": sequential, "stacked": together}


def _products(rounds: int, steps: int) -> None:
    from selfnorm.linear import Linear

    k, b, n = 8, 100, 512
    g = torch.Generator().manual_seed(0)
    layers = [Linear(n, n) for _ in range(k)]
    xs = [torch.randn(b, n, generator=g, requires_grad=True) for _ in range(k)]
    xb = torch.randn(k, b, n, generator=g, requires_grad=True)
    wb = torch.randn(k, n, n, generator=g, requires_grad=True)
    bb = torch.zeros(k, 1, n, requires_grad=True)
    xc = torch.randn(b, k * n, 1, 1, generator=g, requires_grad=True)
    wc = torch.randn(k * n, n, 1, 1, generator=g, requires_grad=True)
    bc = torch.zeros(k * n, requires_grad=True)
    ways = {
        "8 oneDNN products": lambda: [
            m(x).sum().backward() for m, x in zip(layers, xs, strict=True)
        ],
        "baddbmm": lambda: torch.baddbmm(bb, xb, wb).sum().backward(),
        "grouped 1x1 conv": lambda: TF.conv2d(xc, wc, bc, groups=k).sum().backward(),
    }
    times: dict[str, list[float]] = {w: [] for w in ways}
    for f in ways.values():
        f()
    for r in range(rounds):
        names = list(ways)
        for w in names[r % 3 :] + names[: r % 3]:
            t = time.perf_counter()
            for _ in range(steps):
                ways[w]()
            times[w].append((time.perf_counter() - t) / steps * 1e3)
    for w, v in times.items():
        print(f"{w:>18}: {statistics.median(v):6.2f} ms (forward + backward, K=8 x 512x512)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30, help="steps per timed block")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--products", action="store_true", help="time the batched product alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.products:
        _products(args.rounds, args.steps)
        return
    result: dict[str, float] = {}
    for net in NETS:
        for k in (3, 8):
            ways = _setup(net, k)
            for f in ways.values():  # warm-up: first optimizer steps, oneDNN plans
                for _ in range(3):
                    f()
            times: dict[str, list[float]] = {w: [] for w in ways}
            for r in range(args.rounds):
                for w in list(ways)[r % 2 :] + list(ways)[: r % 2]:
                    t = time.perf_counter()
                    for _ in range(args.steps):
                        ways[w]()
                    times[w].append((time.perf_counter() - t) / args.steps * 1e3)
            seq, st = (statistics.median(times[w]) for w in ("sequential", "stacked"))
            ratio = statistics.median(a / b for a, b in zip(*times.values(), strict=True))
            result[f"{net}_k{k}_speedup"] = ratio
            print(
                f"{net:>8} K={k}: sequential {seq:7.2f} ms, stacked {st:7.2f} ms per step of "
                f"{k} runs; sequential/stacked {ratio:.2f}x",
                flush=True,
            )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
