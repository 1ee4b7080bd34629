"""``selfnorm check MODULE_OR_FILE:FACTORY``: audit a model for self-normalization mistakes.

Exit code 1 when an error-level finding exists, 0 otherwise, 2 for bad usage (one line on
stderr). The factory is any callable with no required arguments that returns the model.
"""

from __future__ import annotations

import argparse
import math

from selfnorm.cli.common import CliError, print_json


def parse_shape(text: str) -> tuple[int, ...]:
    """``"256,784"`` -> ``(256, 784)``; every entry an integer >= 1."""
    parts = [t.strip() for t in text.split(",")]
    try:
        shape = tuple(int(t) for t in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise CliError(
            f"--input-shape {text!r}: expected positive integers separated by commas, batch "
            "first, e.g. 256,784 or 64,3,32,32"
        )
    return shape


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _fmt_dict(d) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in d.items())


def _print_table(findings, types: dict[str, str] | None = None) -> None:
    """The findings as a table: one row per kind and fix, the layers it applies to named with
    their module type (``fc1 (Linear)``), details wrapped at the terminal's width."""
    import shutil
    import textwrap

    if not findings:
        print("no findings: the model looks self-normalizing")
        return
    types = types or {}
    groups: dict[tuple, list] = {}
    for f in findings:  # the same finding on several layers: one row
        groups.setdefault((f.severity, f.kind, f.fix, _fmt_dict(f.expected)), []).append(f)

    def where(fs) -> str:
        named = [f"{f.layer} ({types[f.layer]})" if f.layer in types else f.layer for f in fs]
        return ", ".join(dict.fromkeys(named))

    rows = [(fs[0].severity, where(fs), fs[0].kind, fs) for fs in groups.values()]
    width = max(60, min(140, shutil.get_terminal_size((120, 24)).columns))
    w_sev = max(len("SEVERITY"), *(len(r[0]) for r in rows))
    w_kind = max(len("KIND"), *(len(r[2]) for r in rows))
    indent = " " * (w_sev + w_kind + 4)
    print(f"{'SEVERITY'.ljust(w_sev)}  {'KIND'.ljust(w_kind)}  LAYERS, DETAILS")
    for severity, layers, kind, fs in rows:
        if len(fs) == 1:
            measured = _fmt_dict(fs[0].measured)
        else:
            measured = "; ".join(f"{f.layer}: {_fmt_dict(f.measured)}" for f in fs)
        lines = [
            ("", layers),
            ("measured: ", measured),
            ("expected: ", _fmt_dict(fs[0].expected)),
            ("fix: ", fs[0].fix),
        ]
        first = True
        for label, text in lines:
            wrapped = textwrap.wrap(
                label + text, width=width - len(indent), subsequent_indent="  "
            ) or [label]
            for line in wrapped:
                head = f"{severity.ljust(w_sev)}  {kind.ljust(w_kind)}  " if first else indent
                print(head + line)
                first = False


def cmd_check(args: argparse.Namespace) -> int:
    import torch
    from torch import nn

    from selfnorm.auditing import audit, infer_input_shape

    shape = parse_shape(args.input_shape) if args.input_shape is not None else None
    if shape is not None:
        from selfnorm.resources import check_fits

        check_fits(4 * math.prod(shape), f"the --input-shape {args.input_shape} batch (float32)",
                   "pass a smaller shape, e.g. 256,784: a few hundred samples are enough",
                   "cpu")  # fmt: skip
    from selfnorm.factory import load_factory

    model = load_factory(args.target)()
    if not isinstance(model, nn.Module):
        raise CliError(f"{args.target} returned a {type(model).__name__}, not a torch.nn.Module")
    source = "--input-shape"
    if shape is None:
        shape = infer_input_shape(model)
        source = "inferred from a Linear's in_features"
    findings = audit(model, input_shape=shape, generator=torch.Generator().manual_seed(0))
    errors = sum(f.severity == "error" for f in findings)
    if args.json:
        print_json({"findings": [f.to_dict() for f in findings]})
        return 1 if errors else 0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.target} -> {type(model).__name__}, {n_params:,} parameters")
    if shape is None:
        print("input: none could be inferred: static checks only, pass --input-shape")
    else:
        print(
            f"input: standardized Gaussian of shape {shape} ({source}), seed 0; "
            "a forward pass in eval mode and one in training mode (for the dropout and "
            "activation calls inside forward), no gradients"
        )
    types = {name or "<model>": type(m).__name__ for name, m in model.named_modules()}
    _print_table(findings, types)
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    print(
        f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info"
        f" -> exit {1 if errors else 0}"
    )
    return 1 if errors else 0


def register(sub) -> None:
    """Add the ``check`` subcommand."""
    p = sub.add_parser(
        "check",
        help="audit a model for what stops it from self-normalizing (init, biases, dropout, ...)",
        description="Audit the model returned by FACTORY: weights vs LeCun init, biases, dropout "
        "kind and rate, norms and activations next to SELU, and the mean/variance of every SELU "
        "output on a standardized Gaussian input. Exit 1 if an error-level finding exists.",
    )
    p.add_argument(
        "target",
        metavar="MODULE_OR_FILE:FACTORY",
        help="e.g. models.py:make_model or mypackage.models:make_model (no required arguments)",
    )
    p.add_argument(
        "--input-shape",
        metavar="N,D,...",
        help="shape of the made-up standardized Gaussian input, batch first (e.g. 256,784 or "
        "64,3,32,32); default (256, in_features of the first Linear the model accepts)",
    )
    p.add_argument("--json", action="store_true", help='print {"findings": [...]}')
    p.set_defaults(func=cmd_check)
