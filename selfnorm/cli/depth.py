"""``selfnorm depth``: signal propagation through deep random networks at initialization."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfnorm.cli.common import CliError, csv_list
from selfnorm.cli.common import print_json as _print_json


def cmd_depth(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from selfnorm._io import atomic_write_json
    from selfnorm.depth import DepthConfig, depth_propagation
    from selfnorm.report.plots import depth_figure, save_figure

    config = DepthConfig(
        activations=tuple(csv_list(args.activations)),
        depth=args.depth,
        width=args.width,
        batch=args.batch,
        init=args.init,
        seed=args.seed,
        networks=args.networks,
    )
    inputs = None
    if args.dataset:
        from selfnorm.data import DataConfig, load_dataset

        ds = load_dataset(DataConfig(args.dataset, data_dir=args.data_dir), progress=False)
        if len(ds.x_train) < 2:
            raise CliError(f"--dataset {args.dataset} has too few samples")
        rows = np.random.default_rng(args.seed).permutation(len(ds.x_train))[: args.batch]
        inputs = torch.from_numpy(ds.x_train[rows]).flatten(1)
    curves = depth_propagation(config, inputs)
    out = Path(args.out)
    save_figure(depth_figure(curves), out / "depth.png")
    payload = {
        "config": {**config.__dict__, "activations": list(config.activations),
                   "dataset": args.dataset},
        "curves": {n: c.to_dict() for n, c in curves.items()},
    }  # fmt: skip
    atomic_write_json(out / "depth.json", payload)
    if args.json:
        _print_json(payload)
        return 0
    n_in = len(inputs) if inputs is not None else config.batch
    nets = f"mean of {config.networks} networks" if config.networks > 1 else "one network"
    print(f"depth {config.depth}, width {config.width}, {n_in} inputs, init {config.init}, "
          f"{nets}")  # fmt: skip
    print(f"{'last layer':>12}  {'mean':>8} {'var':>9} {'g var':>9} {'mean-field':>10} "
          f"{'grad layer 1':>12} {'mean-field':>10}")  # fmt: skip

    def cell(v: float, width: int, fmt: str) -> str:
        return f"{v:{width}{fmt}}" if v == v else f"{'—':>{width}}"

    for n, c in curves.items():
        print(f"{n:>12}  {c.mean[-1]:8.4f} {c.var[-1]:9.4f} {cell(c.theory_var[-1], 9, '.4f')} "
              f"{cell(c.mf_var[-1], 10, '.4f')} {cell(c.grad_norm[1], 12, '.4g')} "
              f"{cell(c.mf_grad[1], 10, '.4g')}")  # fmt: skip
    print(f"wrote {out / 'depth.png'} and {out / 'depth.json'}")
    return 0


def register(sub) -> None:
    """Add the ``depth`` subcommand."""
    p = sub.add_parser(
        "depth",
        help="per-layer mean/variance and gradient norm of deep random nets at init vs theory",
    )
    p.add_argument("--activations", default="selu,relu,lrelu,tanh", help="comma list of specs")
    p.add_argument("--depth", type=int, default=64, help="hidden layers (default 64)")
    p.add_argument("--width", type=int, default=512, help="units per layer (default 512)")
    p.add_argument("--batch", type=int, default=1024, help="input samples (default 1024)")
    p.add_argument(
        "--init",
        default="proper",
        help="proper (each spec's own), lecun, he, glorot, torch (nn.Linear's default), "
        "selu-gain (calculate_gain('selu') = 3/4), seed-tf (Glorot + N(0,1) biases)",
    )
    p.add_argument("--dataset", help="push a batch of this dataset instead of Gaussian inputs")
    p.add_argument("--data-dir", help="dataset folder or cache root")
    p.add_argument("--seed", type=int, default=0, help="weights and inputs seed (default 0)")
    p.add_argument("--networks", type=int, default=4,
                   help="random networks per activation, averaged (default 4): one finite "
                   "network wanders around the infinite-width theory")  # fmt: skip
    p.add_argument("--out", default="depth", help="folder for depth.png and depth.json")
    p.add_argument("--json", action="store_true", help="print depth.json")
    p.set_defaults(func=cmd_depth)
