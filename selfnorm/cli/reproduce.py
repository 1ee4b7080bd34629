"""``selfnorm reproduce NAME``: the seed example's bugs, the paper's Figure 1."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfnorm.cli.common import CliError, csv_list


def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise CliError(f"{flag} {text!r}: pass comma-separated integers, e.g. 0,1") from None


def cmd_reproduce(args: argparse.Namespace) -> int:
    from selfnorm import reproduce

    if args.name == "seed-tf-bugs":  # the earlier name
        args.name = "seed-tf"
    out = Path(args.out or f"runs/reproduce-{args.name}")
    only = {
        "seed-tf": {"paper": "--paper", "lr": "--lr", "depths": "--depths",
                         "train_samples": "--train-samples"},
        "figure1": {"seeds": "--seeds", "resume": "--resume"},
    }[args.name]  # fmt: skip
    for attr, flag in only.items():
        if getattr(args, attr):
            other = "figure1" if args.name == "seed-tf" else "seed-tf"
            raise CliError(f"{flag} belongs to `reproduce {other}`, not {args.name}; drop it")
    if args.name == "seed-tf":
        summary = reproduce.run_seed_tf(
            out,
            epochs=args.epochs or 3,
            seeds=tuple(_ints("--seeds", args.seeds or "0")),
            dataset=args.dataset or "mnist",
            data_dir=args.data_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
        from selfnorm.tables import comparison_table

        print(comparison_table(summary, "text"))
    else:
        over = {
            k: v
            for k, v in {
                "dataset": args.dataset,
                "data_dir": args.data_dir,
                "epochs": args.epochs,
                "lr": args.lr,
                "train_samples": args.train_samples,
                "depths": tuple(_ints("--depths", args.depths)) if args.depths else None,
            }.items()
            if v is not None
        }
        config = (
            reproduce.Figure1Config.paper(**over) if args.paper else reproduce.Figure1Config(**over)
        )
        if (out / "figure1.json").exists() and not args.overwrite:
            raise CliError(f"{out} already holds a figure1 run; pass --overwrite or --out NEW_DIR")
        result = reproduce.run_figure1(config, out, progress=not args.quiet)
        for key, c in result["curves"].items():
            if c["roughness"] is None:
                print(f"{key:>20}: diverged")
            else:
                print(f"{key:>20}: roughness {c['roughness']:.4f}, "
                      f"final loss {c['final_loss']:.4g}")  # fmt: skip
    print(f"wrote {out / 'report.html'} and {out / 'summary.md'}")
    return 0


def register(sub) -> None:
    """Add the ``reproduce`` subcommand."""
    p = sub.add_parser(
        "reproduce",
        help="seed-tf (the seed TF example as written vs corrected) or figure1 (the paper's)",
    )
    p.add_argument("name", choices=["seed-tf", "seed-tf-bugs", "figure1"],
                   help="seed-tf (also seed-tf-bugs): the seed TensorFlow MLP as written vs "
                   "corrected; figure1: the paper's Figure 1")  # fmt: skip
    p.add_argument("--epochs", type=int, help="seed-tf: 3 (original 50); figure1: 2")
    p.add_argument("--seeds", help="seed-tf: comma-separated seeds (default 0)")
    p.add_argument("--dataset", help="mnist (default); figure1 also takes cifar10")
    p.add_argument("--data-dir", help="dataset folder or cache root")
    p.add_argument("--lr", type=float, help="figure1: SGD learning rate (default 0.01)")
    p.add_argument("--depths", help="figure1: comma-separated depths (default 8,16,32)")
    p.add_argument("--train-samples", type=int, help="figure1: first N images (default 10000)")
    p.add_argument("--paper", action="store_true", help="figure1: the paper's exact settings")
    p.add_argument("--out", help="output folder (default runs/reproduce-NAME)")
    p.add_argument("--resume", action="store_true", help="seed-tf: continue a run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)
