"""What the reproductions made of several ``compare`` runs share: run each, then give each its
notes and its report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selfnorm._io import atomic_write_json
from selfnorm.comparing import compare
from selfnorm.data import Dataset
from selfnorm.storage import RunDir


def compare_runs(
    configs: Mapping[str, Any],
    out: Path,
    notes: Mapping[str, Mapping[str, str]],
    resume: bool,
    overwrite: bool,
    progress: bool,
    datasets: Mapping[str, Dataset] | None = None,
) -> dict[str, dict[str, Any]]:
    """``compare`` each experiment of ``configs`` into ``out / name`` (with ``datasets[name]``
    where given), then write that run's ``notes.json`` (``notes[name]``: title, intro) and its
    report. Returns the summaries by name."""
    from selfnorm.report.html import build_report

    datasets = datasets or {}
    # resuming: a run the interruption never reached starts afresh
    summaries = {
        name: compare(
            cfg,
            str(out / name),
            resume and RunDir(out / name).is_run_dir(),
            overwrite,
            progress,
            dataset=datasets.get(name),
        )  # fmt: skip
        for name, cfg in configs.items()
    }
    for name in configs:
        atomic_write_json(out / name / "notes.json", dict(notes[name]))
        build_report(out / name)
    return summaries
