"""The ``selfnorm`` command: parse, print the resolved settings, call the library.

Every subcommand is a function ``cmd_<name>(args) -> int`` that only uses the public library, so
``main([...])`` runs the CLI in-process (that is how the tests drive it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from selfnorm import __version__


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def cmd_theory(args: argparse.Namespace) -> int:
    from selfnorm.constants import ALPHA_01, LAMBDA_01, SATURATION_01
    from selfnorm.theory import check_theorems, fixed_point, jacobian, spectral_norm

    fp = fixed_point(0.0, 1.0)
    jac = jacobian(fp.mean, 0.0, fp.var, 1.0)
    norm = float(spectral_norm(jac))
    checks = check_theorems(points_per_axis=args.grid)
    if args.plot:
        from selfnorm.report.plots import mapping_field_figure, save_figure

        save_figure(mapping_field_figure(), args.plot)
    if args.json:
        _print_json(
            {
                "lambda": LAMBDA_01,
                "alpha": ALPHA_01,
                "saturation": SATURATION_01,
                "fixed_point": {"mean": fp.mean, "var": fp.var},
                "jacobian": jac.tolist(),
                "spectral_norm": norm,
                "theorems": [c.to_dict() for c in checks],
            }
        )
        return 0
    print("SELU constants (derived from the closed form, Eq. 14)")
    print(f"  lambda_01 = {LAMBDA_01:.16f}")
    print(f"  alpha_01  = {ALPHA_01:.16f}")
    print(f"  alpha'    = -lambda*alpha = {SATURATION_01:.16f}")
    print(f"Fixed point of g (omega=0, tau=1): mean = {fp.mean:.3e}, var = {fp.var:.12f}")
    print("Jacobian of g w.r.t. (mu, nu) at the fixed point:")
    for row in jac:
        print("  [" + ", ".join(f"{v:9.6f}" for v in row) + "]")
    print(f"  spectral norm = {norm:.6f} (< 1: the fixed point attracts)")
    print(f"Theorems checked on grids of {args.grid}^4 points:")
    for c in checks:
        where = ", ".join(f"{k}={v:.3g}" for k, v in c.worst_at.items())
        print(
            f"  {c.name}: {'holds' if c.holds else 'FAILS'}; {c.claim}; worst {c.worst:.6f} at "
            f"({where}); {c.grid_size:,} points in {c.seconds:.2f} s"
        )
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def cmd_solve(args: argparse.Namespace) -> int:
    from selfnorm.theory import solve_selu_parameters

    lam, alpha = solve_selu_parameters(args.mean, args.var, convention=args.convention)
    if args.json:
        _print_json({"lambda": lam, "alpha": alpha})
    else:
        print(f"fixed point (mean={args.mean}, var={args.var}), convention={args.convention}")
        print(f"  lambda = {lam:.16f}")
        print(f"  alpha  = {alpha:.16f}")
    return 0


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _parse_seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
    except ValueError:
        raise CliError(
            f"--seeds {text!r}: pass comma-separated integers >= 0, e.g. 0,1,2"
        ) from None


def _parse_dropout(text: str) -> dict:
    """``0.1`` -> every variant; ``selu=0.1,relu=0.2`` -> per variant; both may be mixed."""
    out: dict = {}
    for item in _csv_list(text):
        key, sep, value = item.rpartition("=")
        try:
            rate = float(value)
        except ValueError:
            raise CliError(
                f"--dropout {text!r}: {value!r} is not a number; pass e.g. 0.1 or selu=0.1,relu=0.2"
            ) from None
        if sep:
            out.setdefault("dropout_by_activation", {})[key.strip().lower()] = rate
        else:
            out["dropout"] = rate
    return out


def _compare_overrides(args: argparse.Namespace) -> dict:
    """The experiment settings given explicitly on the command line, as a nested dict."""
    flags = {
        "data": {
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "target": (int(args.target) if args.target.lstrip("-").isdigit() else args.target)
            if args.target is not None
            else None,
            "standardize": args.standardize,
            "val_fraction": args.val_fraction,
        },
        "model": {
            "kind": args.model,
            "depth": args.depth,
            "width": args.width,
            "shape": args.shape,
            "channels": [int(c) for c in _csv_list(args.channels)] if args.channels else None,
        },
        "train": {
            "optimizer": args.optimizer,
            "lr": args.lr,
            "momentum": args.momentum,
            "weight_decay": args.weight_decay,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "device": args.device,
        },
        "activations": _csv_list(args.activations) if args.activations else None,
        "seeds": _parse_seeds(args.seeds) if args.seeds is not None else None,
    }
    out = {
        k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
        for k, v in flags.items()
    }
    out = {k: v for k, v in out.items() if v not in (None, {})}
    if args.dropout is not None:
        out.update(_parse_dropout(args.dropout))
    return out


def resolve_compare_config(args: argparse.Namespace):
    """defaults < --preset < --config < the stored config of --resume < explicit flags."""
    from selfnorm.config import PRESETS, experiment_from_dict, load_toml, merge

    layers: list[dict] = []
    if args.preset:
        if args.preset not in PRESETS:
            raise CliError(f"--preset {args.preset!r} is unknown; valid: {', '.join(PRESETS)}")
        layers.append(PRESETS[args.preset])
    if args.config:
        layers.append(load_toml(args.config))
    if args.resume:
        stored = Path(args.resume) / "config.json"
        if not stored.exists():
            raise CliError(
                f"--resume {args.resume}: no config.json there; pass the folder of an earlier run"
            )
        layers.append(json.loads(stored.read_text(encoding="utf-8")))
    layers.append(_compare_overrides(args))
    merged: dict = {}
    for layer in layers:
        merged = merge(merged, layer)
    return experiment_from_dict(merged)


def cmd_compare(args: argparse.Namespace) -> int:
    from selfnorm.summary import format_table
    from selfnorm.training import compare

    config = resolve_compare_config(args)
    out = args.resume or args.out
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = str(
            Path("runs") / f"{config.data.dataset.replace(':', '_').replace('/', '_')}-{stamp}"
        )
    if not args.quiet:
        print(f"selfnorm compare -> {out}")
        print(json.dumps(config.to_dict(), separators=(", ", ": ")))
    summary = compare(
        config, out, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet
    )
    if args.json:
        _print_json(summary)
    else:
        print(format_table(summary))
        print(f"wrote {Path(out) / 'summary.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfnorm",
        description="Self-Normalizing Neural Networks: building blocks, theory, comparisons.",
    )
    parser.add_argument("--version", action="version", version=f"selfnorm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("theory", help="constants, fixed point, Jacobian, Theorems 1-3 checked")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of g's vector field (Figure 2)")
    p.add_argument(
        "--grid", type=int, default=32, metavar="N", help="grid points per axis (default 32)"
    )
    p.set_defaults(func=cmd_theory)

    p = sub.add_parser("solve", help="SELU (lambda, alpha) for a target fixed point")
    p.add_argument("--mean", type=float, default=0.0, help="fixed-point mean (default 0)")
    p.add_argument("--var", type=float, default=1.0, help="fixed-point variance (default 1)")
    p.add_argument(
        "--convention",
        choices=["paper", "notebook"],
        default="paper",
        help="paper: z ~ N(0, var) (omega=0); notebook: z ~ N(mean, var) (omega=1)",
    )
    p.add_argument("--json", action="store_true", help='print {"lambda": .., "alpha": ..}')
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser(
        "compare",
        help="train activations side by side on real data (the main job)",
        description="Train every activation variant for every seed under identical conditions "
        "(same data order, each with its proper init and dropout) and compare them.",
    )
    g = p.add_argument_group("experiment")
    g.add_argument("--preset", help="a named experiment: seed-keras, seed-tf")
    g.add_argument("--config", metavar="TOML", help="experiment file ([data], [model], [train])")
    g.add_argument(
        "--activations", help="comma-separated variants (default selu,relu,lrelu), e.g. relu+bn"
    )
    g.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    g.add_argument(
        "--dropout", help="drop rate for every variant (0.1) or per variant (selu=0.1,relu=0.2)"
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="digits (default), mnist, fashion-mnist, cifar10, csv:PATH")
    g.add_argument("--data-dir", help="dataset cache (default $SELFNORM_DATA or ~/.cache/selfnorm)")
    g.add_argument("--target", help="CSV target column: name or index (default: last)")
    g.add_argument("--standardize", choices=["feature", "global", "none"], default=None)
    g.add_argument("--val-fraction", type=float, help="validation share of train (default 0.1)")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["mlp", "cnn"], default=None)
    g.add_argument("--depth", type=int, help="hidden layers (default 4)")
    g.add_argument("--width", type=int, help="hidden units (default 512)")
    g.add_argument("--shape", choices=["rect", "conic"], default=None)
    g.add_argument("--channels", help="CNN channels, e.g. 32,64,128")
    g = p.add_argument_group("training")
    g.add_argument("--optimizer", choices=["adam", "sgd", "rmsprop"], default=None)
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    g.add_argument("--momentum", type=float, help="sgd/rmsprop momentum (default 0)")
    g.add_argument("--weight-decay", type=float, help="L2 weight decay (default 0)")
    g.add_argument("--batch-size", type=int, help="mini-batch size (default 128)")
    g.add_argument("--epochs", type=int, help="epochs (default 30)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    g = p.add_argument_group("output")
    g.add_argument("--out", help="run directory (default runs/<dataset>-<time>)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    g.add_argument("--quiet", action="store_true", help="no progress bars or config echo")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from selfnorm.data import DownloadError

    try:
        return args.func(args)
    except (CliError, ValueError) as exc:
        print(f"selfnorm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except DownloadError as exc:
        print(f"selfnorm {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
