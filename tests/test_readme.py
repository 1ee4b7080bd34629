"""The README's snippets of "Inside your own training" run as written."""

import re
import warnings
from importlib.util import find_spec
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _snippets(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {section}\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


SNIPPETS = _snippets("Inside your own training")
NEEDS = {"lightning": "lightning", "keras": "keras"}


def test_the_section_has_a_snippet_per_route():
    routes = " ".join(SNIPPETS)
    for route in ("TrainingRun", "lightning import SelfnormCallback", "keras import", "--model"):
        assert route in routes


@pytest.mark.parametrize("code", SNIPPETS, ids=lambda c: c.split("import selfnorm")[-1][:40])
def test_snippet_runs_and_writes_a_report(code, tmp_path, monkeypatch):
    for word, package in NEEDS.items():
        if (f"import {word}" in code or f"integrations.{word}" in code) and not find_spec(package):
            pytest.skip(f"{package} is not installed")  # found, not imported: Keras picks
            # its backend on its first import, which the snippet does
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():  # what a library warns about is printed, not an error here
        warnings.simplefilter("default")
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    reports = list(tmp_path.glob("runs/*/report.html"))
    assert reports, "the snippet wrote no report"
    page = reports[0].read_text(encoding="utf-8")
    assert "Figures" in page and "heatmaps" in page
