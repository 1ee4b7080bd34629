"""``selfnorm report RUN_DIR``: rebuild report.html and summary.md from a run directory."""

from __future__ import annotations

import argparse

from selfnorm.cli.common import CliError


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from selfnorm.locking import RunLock
    from selfnorm.report.html import build_report

    if not (Path(args.run_dir) / "config.json").is_file():
        raise CliError(
            f"{args.run_dir} holds no config.json, so it is not a selfnorm run directory; "
            "pass the folder that `selfnorm compare` wrote"
        )
    with RunLock(args.run_dir, "report"):  # not while a compare writes there
        html_path, md_path = build_report(args.run_dir)
    print(f"wrote {html_path}")
    print(f"wrote {md_path}")
    return 0


def register(sub) -> None:
    """Add the ``report`` subcommand."""
    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report.html and summary.md from a finished run (no retraining)",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the folder of a `selfnorm compare` run")
    p.set_defaults(func=cmd_report)
