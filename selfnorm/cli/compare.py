"""``selfnorm compare``: train activations side by side (the main job)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selfnorm.cli.common import CliError, csv_list
from selfnorm.cli.common import print_json as _print_json


def _parse_seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise CliError(
            f"--seeds {text!r}: pass comma-separated integers >= 0, e.g. 0,1,2"
        ) from None


def _parse_activations(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = csv_list(text)
    if not names:
        raise CliError(
            f"--activations {text!r} names no variant; pass comma-separated names, e.g. "
            "selu,relu,lrelu (or leave the flag out for those three)"
        )
    return names


def _per_variant(flag: str, text: str, parse, example: str) -> tuple[Any, dict]:
    """``V`` -> (V, {}): one value for every variant; ``selu=V1,relu=V2`` -> (None, per
    variant); both may be mixed. ``parse`` turns a value's text into the value or raises
    ValueError."""
    default, by_variant = None, {}
    for item in csv_list(text):
        key, sep, value = item.rpartition("=")
        try:
            parsed = parse(value.strip())
        except ValueError:
            raise CliError(f"{flag} {text!r}: {value!r} is not {example}") from None
        if sep:
            by_variant[key.strip().lower()] = parsed
        else:
            default = parsed
    return default, by_variant


def _parse_dropout(text: str) -> dict:
    """``0.1`` -> every variant; ``selu=0.1,relu=0.2`` -> per variant; both may be mixed."""
    rate, by_variant = _per_variant(
        "--dropout", text, float, "a number; pass e.g. 0.1 or selu=0.1,relu=0.2"
    )
    out: dict = {} if rate is None else {"dropout": rate}
    return {**out, "dropout_by_activation": by_variant} if by_variant else out


def _parse_standardize(text: str) -> dict:
    """``global`` -> every variant; ``written=selu=none`` -> that variant; both may be mixed."""
    from selfnorm.data import STANDARDIZE_MODES

    def mode_of(value: str) -> str:
        if value not in STANDARDIZE_MODES:
            raise ValueError(value)
        return value

    mode, by_variant = _per_variant(
        "--standardize", text, mode_of,
        f"one of {', '.join(STANDARDIZE_MODES)}; pass e.g. global or relu=none,selu=global",
    )  # fmt: skip
    out: dict = {} if mode is None else {"data": {"standardize": mode}}
    return {**out, "standardize_by_activation": by_variant} if by_variant else out


def _parse_ints(flag: str, text: str) -> list[int]:
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise CliError(f"{flag} {text!r}: pass comma-separated integers, e.g. 32,64") from None


def _parse_model(text: str | None) -> dict:
    """``mlp`` / ``cnn`` -> that kind; ``FILE.py:NAME`` or ``MODULE:NAME`` -> your factory."""
    if text is None or text in ("mlp", "cnn"):
        return {"kind": text}
    if ":" not in text:
        raise CliError(
            f"--model {text!r}: pass mlp, cnn or FILE:FACTORY (a .py path or a module name and "
            "the function that builds the model, e.g. models.py:make)"
        )
    return {"kind": "factory", "factory": text}


def _compare_overrides(args: argparse.Namespace) -> dict:
    """The experiment settings given explicitly on the command line, as a nested dict."""
    flags = {
        "data": {
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "target": (int(args.target) if args.target.lstrip("-").isdigit() else args.target)
            if args.target is not None
            else None,
            "val_fraction": args.val_fraction,
        },
        "model": {
            **_parse_model(args.model),
            "depth": args.depth,
            "width": args.width,
            "shape": args.shape,
            "channels": _parse_ints("--channels", args.channels) if args.channels else None,
        },
        "train": {
            "optimizer": args.optimizer,
            "lr": args.lr,
            "momentum": args.momentum,
            "rmsprop_alpha": args.rmsprop_alpha,
            "weight_decay": args.weight_decay,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "device": args.device,
            "stack": args.stack,
        },
        "record": {
            "every": args.record_every,
            "enabled": False if args.no_record else None,
            "tensorboard": True if args.tensorboard else None,
            "backend": args.record_backend,
        },
        "activations": _parse_activations(args.activations),
        "seeds": _parse_seeds(args.seeds) if args.seeds is not None else None,
    }
    out = {
        k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
        for k, v in flags.items()
    }
    out = {k: v for k, v in out.items() if v not in (None, {})}
    if args.dropout is not None:
        out.update(_parse_dropout(args.dropout))
    if args.standardize is not None:
        from selfnorm.config import merge

        out = merge(out, _parse_standardize(args.standardize))
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
        from selfnorm.storage import RunDirError, read_json

        layer = read_json(stored, "restore it from the run's report (Configuration) or start again")
        if not isinstance(layer, dict):
            raise RunDirError(
                f"{stored} holds a {type(layer).__name__}, not a JSON object; restore it from "
                "the run's report (Configuration) or start again"
            )
        layers.append(layer)
    flags = _compare_overrides(args)
    merged: dict = {}
    for layer in layers:
        merged = merge(merged, layer)
    # one value on the command line means one value: the layers' per-variant ones go
    if "dropout" in flags and "dropout_by_activation" not in flags:
        merged.pop("dropout_by_activation", None)
    if "standardize" in flags.get("data", {}) and "standardize_by_activation" not in flags:
        merged.pop("standardize_by_activation", None)
    merged = merge(merged, flags)
    model = merged.get("model", {})
    if isinstance(model, Mapping):  # else experiment_from_dict says what [model] must be
        _check_model_flags(flags.get("model", {}), model)
    # per-variant rates a preset or file set for variants that are not compared now
    for key in ("dropout_by_activation", "standardize_by_activation"):
        if key in merged and "activations" in flags:
            chosen = {a.strip().lower() for a in merged["activations"]}
            merged[key] = {k: v for k, v in merged[key].items() if k in chosen}
    return experiment_from_dict(merged)


_SUMMARY_WIDTH = 94
"""The longest variants line kept on one line (indented by 2: under 100 columns with room)."""


_INPUTS = {
    "feature": "inputs standardized per feature",
    "global": "inputs standardized globally",
    "none": "inputs unstandardized",
}


def describe(config, out: str, resume: bool = False) -> str:
    """What a comparison trains and where it writes, in plain words (the first lines printed).

    Example:
        >>> from selfnorm.config import ExperimentConfig
        >>> print(describe(ExperimentConfig(), "runs/x"))
        selfnorm compare: selu, relu, lrelu on digits, 3 seeds (0, 1, 2) each
          model: MLP, 4 hidden layers of 512 (rect); adam lr 0.001, batch 128, 30 epochs
          selu: lecun_normal init, no dropout; relu, lrelu: he_normal init, no dropout
          writing runs/x (the full configuration: runs/x/config.json, or --show-config)
    """
    from selfnorm.specs import get_spec

    m, t = config.model, config.train
    if m.kind == "mlp":
        model = f"MLP, {m.depth} hidden layers of {m.width} ({m.shape})"
    elif m.kind == "factory":
        model = f"{m.factory} (your factory)"
    elif m.kind == "avh":
        from selfnorm.config import AVH_FLAGS

        on = [f for f in AVH_FLAGS if getattr(m, f)]
        how = "as written" if m.as_written else "corrected" if not on else "with " + ", ".join(on)
        model = (
            f"the activation-histograms CNN {how}, conv channels {', '.join(map(str, m.channels))}"
        )
    else:
        model = f"CNN, conv channels {', '.join(map(str, m.channels))}"
    seeds = ", ".join(map(str, config.seeds))
    n = len(config.seeds)
    kinds: dict[str, list[str]] = {}  # variants with the same init and dropout: one clause
    for a in config.activations:
        spec, p = get_spec(a), config.dropout_for(a)
        kind = spec.feature_dropout_name if m.kind == "cnn" else spec.dropout_name  # CNN: channels
        init = f"{spec.init_name} init"
        if m.kind == "avh" and m.plain_dropout:  # the project's own, for every variant
            kind = "dropout"
        if m.kind == "avh" and m.project_init:
            init = "truncated N(0, 0.02^2) conv / glorot_uniform fc init"
        drop = f"{kind} {p:g}" if p > 0 else "no dropout"
        inputs = ""
        if config.standardize_by_activation:  # say each variant's inputs where they differ
            inputs = f", {_INPUTS[config.standardize_for(a)]}"
        kinds.setdefault(f"{init}, {drop}{inputs}", []).append(a)
    clauses = [f"{', '.join(names)}: {kind}" for kind, names in kinds.items()]
    joined = "; ".join(clauses)
    variants = joined if len(joined) <= _SUMMARY_WIDTH else "\n  ".join(clauses)
    verb = "resuming" if resume else "writing"
    return (
        f"selfnorm compare: {', '.join(config.activations)} on {config.data.dataset}, "
        f"{n} seed{'s' if n > 1 else ''} ({seeds}) each\n"
        f"  model: {model}; {t.optimizer} lr {t.lr:g}, batch {t.batch_size}, "
        f"{t.epochs} epoch{'s' if t.epochs != 1 else ''}\n"
        f"  {variants}\n"
        f"  {verb} {out} (the full configuration: {Path(out) / 'config.json'}, or --show-config)"
    )


def _check_model_flags(given: dict, model: Mapping) -> None:
    """A model flag of another kind than the one that trains is refused, not ignored."""
    from selfnorm.config import MODEL_KINDS, model_keys

    kind = model.get("kind", "mlp")
    if kind not in MODEL_KINDS:
        return  # the config names the valid kinds
    keys = model_keys(kind)
    for key in given:
        if key in ("kind", "factory") or key in keys:
            continue
        if kind == "factory":
            raise CliError(
                f"--{key} does not apply to --model {model.get('factory')} (the factory builds "
                f"the whole network: set its sizes there); drop --{key}"
            )
        own = ", ".join(f"--{k}" for k in keys)
        raise CliError(
            f"--{key} does not apply to --model {kind} (its options: {own}); drop --{key}"
        )


def cmd_compare(args: argparse.Namespace) -> int:
    from selfnorm.comparing import compare
    from selfnorm.tables import comparison_table
    from selfnorm.training import CHECKPOINT_SECONDS

    if args.resume and args.overwrite:
        raise CliError("pass either --resume or --overwrite, not both")
    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise CliError(f"--out {args.out} and --resume {args.resume} differ; --resume continues "
                       "the run in its own folder, so drop --out")  # fmt: skip
    config = resolve_compare_config(args)
    out = args.resume or args.out
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = str(
            Path("runs") / f"{config.data.dataset.replace(':', '_').replace('/', '_')}-{stamp}"
        )
    args.resume_hint = f"continue with: selfnorm compare --resume {out}"
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
    if not args.quiet:
        print(describe(config, out, resume=bool(args.resume)), flush=True)
    if args.checkpoint_seconds is not None and not args.checkpoint_seconds >= 0:
        raise CliError(
            f"--checkpoint-seconds {args.checkpoint_seconds}: pass a number of seconds >= 0 "
            "(0 checkpoints after every epoch)"
        )
    summary = compare(
        config,
        out,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        progress=not args.quiet,
        checkpoint_seconds=(
            CHECKPOINT_SECONDS if args.checkpoint_seconds is None else args.checkpoint_seconds
        ),
    )
    from selfnorm.report.html import build_report

    html_path, _ = build_report(out)
    if args.json:
        _print_json(summary)
    else:
        import shutil
        import textwrap

        from selfnorm.report.html import verdict

        print(comparison_table(summary, "text"))
        width = min(100, shutil.get_terminal_size((100, 24)).columns)
        print(textwrap.fill(verdict(summary), width=width))
        print(f"wrote {Path(out) / 'summary.json'}, {html_path} and summary.md")
    return 0


def register(sub) -> None:
    """Add the ``compare`` subcommand."""
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
        "--dropout",
        help="drop rate (default 0): one for every variant, e.g. 0.05, or per variant, e.g. "
        "selu=0.05,relu=0.2",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset", help="digits (default), mnist, fashion-mnist, cifar10, svhn, csv:PATH"
    )
    g.add_argument("--data-dir", help="dataset cache (default $SELFNORM_DATA or ~/.cache/selfnorm)")
    g.add_argument("--target", help="CSV target column: name or index (default: last)")
    g.add_argument(
        "--standardize",
        metavar="MODE",
        help="inputs standardized per feature (default) or by one global mean/std, fitted on "
        "the training split; none: the values as stored (image pixels scaled to [0, 1]); one "
        "mode for every variant, or per variant, e.g. global,written=selu@seed-tf=none",
    )
    g.add_argument("--val-fraction", type=float, help="validation share of train (default 0.1)")
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        metavar="mlp|cnn|FILE:FACTORY",
        help="network kind (default mlp), or your own: FILE a .py path or a module name, "
        "FACTORY a function called with activation=, dropout= (callables returning fresh "
        "modules of the variant), in_features=, input_shape=, num_classes= (and **kwargs) "
        "that returns the model; each variant is built, initialized and trained from it",
    )
    g.add_argument("--depth", type=int, help="hidden layers (default 4)")
    g.add_argument("--width", type=int, help="hidden units (default 512)")
    g.add_argument(
        "--shape",
        choices=["rect", "conic"],
        default=None,
        help="MLP widths: rect, all --width (default), or conic, narrowing with depth",
    )
    g.add_argument("--channels", help="CNN channels, e.g. 32,64,128")
    g = p.add_argument_group("training")
    g.add_argument(
        "--optimizer", choices=["adam", "sgd", "rmsprop"], default=None, help="default adam"
    )
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    g.add_argument("--momentum", type=float, help="sgd/rmsprop momentum (default 0)")
    g.add_argument(
        "--rmsprop-alpha", type=float, help="RMSprop smoothing (default 0.99; Keras' rho 0.9)"
    )
    g.add_argument("--weight-decay", type=float, help="L2 weight decay (default 0)")
    g.add_argument("--batch-size", type=int, help="mini-batch size (default 128)")
    g.add_argument("--epochs", type=int, help="epochs (default 30)")
    g.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="auto (default): cuda when torch sees a GPU, else cpu",
    )
    g.add_argument(
        "--stack",
        metavar="auto|off|K",
        help="train a variant's seeds as one stacked model: auto (default: on a GPU, or 8+ "
        "seeds on a CPU, where it is faster), off, or at most K runs per stack",
    )
    g = p.add_argument_group("recording (activation statistics per layer, runs/*/seed*/records)")
    g.add_argument(
        "--record-every",
        type=int,
        metavar="N",
        help="record activation statistics every N optimizer steps (default: a quarter epoch, "
        "at most 50); with 1, the weight sums (omega, tau) every 10th step only",
    )
    g.add_argument("--no-record", action="store_true", help="do not record activation statistics")
    g.add_argument(
        "--record-backend",
        choices=["torch", "kernel"],
        default=None,
        help="how records are reduced: torch ops (default; any device, compiles nothing) or "
        "kernel (opt-in C++ for the CPU, compiled on first use; pip install 'selfnorm[kernel]')",
    )
    g.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files to RUN_DIR/tensorboard/<variant>/seed<k>",
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", help="run directory (default runs/<dataset>-<time>)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    g.add_argument("--quiet", action="store_true", help="no progress bars or config echo")
    g.add_argument(
        "--checkpoint-seconds",
        type=float,
        metavar="S",
        help="checkpoint a run after an epoch once S seconds passed since its last checkpoint, "
        "and after its last epoch (default 10; 0: every epoch); --resume continues from it",
    )
    g.add_argument(
        "--show-config",
        "--print-config",
        dest="print_config",
        action="store_true",
        help="print the full resolved configuration (JSON) before the summary",
    )
    p.set_defaults(func=cmd_compare)
