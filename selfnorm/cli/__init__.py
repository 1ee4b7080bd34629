"""The ``selfnorm`` command: parse, print the resolved settings, call the library.

One module per command group (``theory``, ``compare``, ...), each with ``register(sub)`` that
adds its subcommands; every handler is ``cmd_<name>(args) -> int`` and only uses the public
library, so ``main([...])`` runs the CLI in-process (that is how the tests drive it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from selfnorm import __version__
from selfnorm.cli import check, compare, depth, report, reproduce, sweep, theory
from selfnorm.cli.common import CliError

COMMAND_MODULES = (theory, compare, report, check, depth, reproduce, sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfnorm",
        description="Self-Normalizing Neural Networks: building blocks, theory, comparisons.",
    )
    parser.add_argument("--version", action="version", version=f"selfnorm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
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
