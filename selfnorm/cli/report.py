"""``selfnorm report RUN_DIR``: rebuild report.html and summary.md from a run directory."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from selfnorm.report.html import build_report

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
