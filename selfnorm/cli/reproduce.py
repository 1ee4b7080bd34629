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


_COMPARE_RUNS = ("seed-tf", "seed-keras", "activation-histograms")
"""The reproductions that are ``selfnorm compare`` runs (seeds, resume); the rest is figure1."""
_DEFAULT_EPOCHS = {"seed-tf": 3, "seed-keras": 20, "activation-histograms": 1}


def cmd_reproduce(args: argparse.Namespace) -> int:
    from selfnorm import reproduce

    if args.name == "seed-tf-bugs":  # the earlier name
        args.name = "seed-tf"
    out = Path(args.out or f"runs/reproduce-{args.name}")
    figure1_only = {"paper": "--paper", "lr": "--lr", "depths": "--depths",
                    "train_samples": "--train-samples"}  # fmt: skip
    compare_only = {"seeds": "--seeds", "resume": "--resume"}
    only = figure1_only if args.name in _COMPARE_RUNS else compare_only
    for attr, flag in only.items():
        if getattr(args, attr):
            owner = (
                "figure1" if only is figure1_only else "seed-tf, seed-keras, activation-histograms"
            )
            raise CliError(f"{flag} belongs to `reproduce {owner}`, not {args.name}; drop it")
    if args.name in _COMPARE_RUNS:
        run = {
            "seed-tf": reproduce.run_seed_tf,
            "seed-keras": reproduce.run_seed_keras,
            "activation-histograms": reproduce.run_activation_histograms,
        }[args.name]
        epochs = _DEFAULT_EPOCHS[args.name] if args.epochs is None else args.epochs
        summary = run(
            out,
            epochs=epochs,
            seeds=tuple(_ints("--seeds", args.seeds or "0")),
            dataset=args.dataset or "mnist",
            data_dir=args.data_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
        if args.name == "seed-tf":
            from selfnorm.tables import comparison_table

            print(comparison_table(summary, "text"))
        elif args.name == "activation-histograms":
            from selfnorm.reproduce.activation_histograms import summary_table

            print(summary_table(summary, "text"))
        else:
            from selfnorm.reproduce import seed_keras

            rows = seed_keras.selection_rows(summary)
            print(seed_keras.selection_table(rows, epochs, "text"))
            print(seed_keras.selection_verdict(rows, epochs))
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
        help="seed-tf, seed-keras (the seed examples as they ran vs corrected) or figure1 "
        "(the paper's)",
    )
    p.add_argument("name",
                   choices=["seed-tf", "seed-tf-bugs", "seed-keras", "activation-histograms",
                            "figure1"],
                   help="seed-tf (also seed-tf-bugs): the seed TensorFlow MLP as written, with "
                   "training=True, and corrected; seed-keras: the seed Keras MLP (SELU vs ReLU) "
                   "as written and corrected; activation-histograms: the seed CNN comparing "
                   "SELU, ReLU, Leaky ReLU, as written and corrected; figure1: the paper's "
                   "Figure 1")  # fmt: skip
    p.add_argument(
        "--epochs",
        type=int,
        help="seed-tf: 3 (the seed's 50); seed-keras: 20 (the seed's); figure1: 2",
    )
    p.add_argument("--seeds", help="seed-tf, seed-keras: comma-separated seeds (default 0)")
    p.add_argument("--dataset", help="mnist (default); figure1 also takes cifar10")
    p.add_argument("--data-dir", help="dataset folder or cache root")
    p.add_argument("--lr", type=float, help="figure1: SGD learning rate (default 0.01)")
    p.add_argument("--depths", help="figure1: comma-separated depths (default 8,16,32)")
    p.add_argument("--train-samples", type=int, help="figure1: first N images (default 10000)")
    p.add_argument("--paper", action="store_true", help="figure1: the paper's exact settings")
    p.add_argument("--out", help="output folder (default runs/reproduce-NAME)")
    p.add_argument("--resume", action="store_true", help="seed-tf, seed-keras: continue a run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)
