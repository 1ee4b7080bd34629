"""The ``selfnorm`` command: parse, print the resolved settings, call the library.

One module per command group (``theory``, ``compare``, ...), each with ``register(sub)`` that
adds its subcommands; every handler is ``cmd_<name>(args) -> int`` and only uses the public
library, so ``main([...])`` runs the CLI in-process (that is how the tests drive it).
"""

from __future__ import annotations

import argparse
import errno
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


def _one_line_warnings(command: str) -> None:
    """Warnings reach a terminal user as one line each, ``selfnorm CMD: warning: ...``."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"selfnorm {command}: warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; user errors are one line on stderr and exit code 2, an interrupt
    says how to resume and exits 128 + signal (130 for Ctrl-C)."""
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    from selfnorm.data import DownloadError
    from selfnorm.interrupts import Interrupted

    shown = warnings.showwarning
    _one_line_warnings(args.command)
    try:
        return args.func(args)
    except (CliError, ValueError) as exc:
        print(f"selfnorm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except DownloadError as exc:
        print(f"selfnorm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in _USER_PATH_ERRORS:
            raise  # not about a path the user chose: a bug, with its traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"selfnorm {args.command}: error: cannot use{where}: {exc.strerror or exc}; "
            "choose another path (a folder you can write to, a file that exists)",
            file=sys.stderr,
        )
        return 2
    except Interrupted as exc:
        print(f"selfnorm {args.command}: interrupted: {exc}; {_resume_hint(args)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            f"selfnorm {args.command}: aborted; every file is complete up to the last "
            f"checkpoint: {_resume_hint(args)}",
            file=sys.stderr,
        )
        return 130
    finally:
        warnings.showwarning = shown


_USER_PATH_ERRORS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
    errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG,
}  # fmt: skip
"""OSErrors that mean the path or disk the user chose cannot be used (exit 2, one line)."""


def _resume_hint(args) -> str:
    """How to continue the command that was stopped (set by the handlers that train)."""
    return getattr(args, "resume_hint", None) or "run the same command again to continue"


if __name__ == "__main__":
    sys.exit(main())
