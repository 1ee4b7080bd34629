import json
import os
import shutil

import pytest

from selfnorm.cli import main
from selfnorm.report.html import verdict

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["compare", "--activations", "selu,relu,lrelu,tanh", "--depth", "2", "--width", "32",
        "--epochs", "3", "--seeds", "0,1", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


def test_compare_writes_report_and_summary_md(run_dir):
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "summary.md").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["ranking"][0]
    acc = f"{100 * summary['variants'][best]['test_accuracy']:.2f}"
    assert 'id="comparison"' in html and acc in html
    assert f"| {best} | {acc} ±" in md
    assert verdict(summary).split(",")[0] in html  # the verdict names the winner
    # self-contained: nothing fetched from anywhere
    for marker in ("http://", "https://", 'src="/', "src='//"):
        assert marker not in html.replace("http://www.w3.org", "")


def test_report_is_rebuilt_without_retraining(run_dir, capsys):
    before = (run_dir / "report.html").read_text()
    metrics = sorted(run_dir.glob("runs/*/*/metrics.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in metrics]
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in metrics] == stamps
    assert (run_dir / "report.html").read_text() == before


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_verdict_reads_the_numbers():
    v = {"test_accuracy": 0.90, "test_accuracy_std": 0.05, "epochs_to_97": 3.0,
         "epoch_seconds": 1.0, "diverged": 0.0, "seeds": [0, 1, 2]}  # fmt: skip
    w = dict(v, test_accuracy=0.89)
    text = verdict({"ranking": ["a", "b"], "variants": {"a": v, "b": w}})
    assert "1.00 points above b" in text and "a tie: within the spread over seeds" in text
    assert "first" not in text  # both reached 97% of their best at epoch 3: nothing to say
    assert "no spread over seeds to judge them by" in text  # no timing std in this summary
    # one seed is no evidence; a loss winner other than the accuracy winner is named; a speed
    # difference inside twice the timing spread is not reported
    one = {**v, "seeds": [0], "test_accuracy_std": None, "test_loss": 0.3, "test_loss_std": None}
    text = verdict(
        {
            "ranking": ["a", "b"],
            "variants": {"a": one, "b": dict(one, test_accuracy=0.5, test_loss=0.2)},
        }
    )
    assert "one seed: no evidence of a difference either way" in text
    assert "b has the lowest test loss, 0.200 (a 0.300)" in text
    t = dict(v, test_loss=0.1, test_loss_std=0.01, epoch_seconds_std=0.2)
    text = verdict(
        {
            "ranking": ["a", "b"],
            "variants": {"a": t, "b": dict(t, test_accuracy=0.8, epoch_seconds=1.3)},
        }
    )
    assert "no speed difference to report" in text and "It also has the lowest test loss" in text
    text = verdict(
        {"ranking": ["a"], "variants": {"a": v, "c": dict(v, diverged=1.0)}},
        drift={"a": [], "c": [("act2", 1.7)]},
    )
    assert "c diverged in 100% of its seeds" in text
    assert "every layer of a stayed within" in text and "farthest act2 at 1.70" in text


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed"
)
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "CI must install Debian's chromium (see .ci/run)"
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto((run_dir / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        rows = page.locator("#comparison tbody tr").count()
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
        table_box = page.locator("#comparison").bounding_box()
        # what each figure needs to be read, as the page carries it (figure_keys)
        keys = page.evaluate(
            "Array.from(document.querySelectorAll('figure')).map(f => [f.id, "
            "Object.fromEntries(Object.entries(f.dataset).map(([k, v]) => [k, Number(v)]))])"
        )
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        narrow = browser.new_page(viewport={"width": 800, "height": 900})
        narrow.goto((run_dir / "report.html").resolve().as_uri())
        narrow.wait_for_load_state("load")
        widths = narrow.evaluate(
            "[document.documentElement.scrollWidth, "
            "...Array.from(document.images).map(i => i.getBoundingClientRect().right)]"
        )
        browser.close()
    assert rows == 4
    # every figure with more than one series has a legend, every colour-mapped one a scale
    assert {k for k, _ in keys} >= {"fig-curves", "fig-histograms", "fig-heatmaps", "fig-moments"}
    for key, k in keys:
        assert set(k) == {"series", "legends", "mappables", "colorbars"}, key
        if k["series"] > 1:
            assert k["legends"] >= 1, key
        if k["mappables"]:
            assert k["colorbars"] >= 1, key
    assert dict(keys)["fig-heatmaps"]["mappables"] >= 4  # a panel per variant and layer
    # at 800 px nothing is wider than the window: the figures scale down
    assert max(widths) <= 800
    assert table_box and table_box["height"] > 40
    n_figures = (run_dir / "report.html").read_text().count("<figure")
    assert n_figures >= 1 and len(images) == n_figures
    for complete, width, height in images:
        assert complete and width > 300 and height > 100
    remote = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert remote == []
    assert shot.stat().st_size > 20_000


def test_the_report_audit_leaves_out_what_a_variant_means_to_be(run_dir):
    # a ReLU variant has no SELU by design: "no_selu" is no finding in a comparison; the tanh
    # variant's Glorot init is its proper one, so nothing is reported for any variant here
    audit = json.loads((run_dir / "audit.json").read_text())
    assert set(audit) == {"selu", "relu", "lrelu", "tanh"}
    assert all(not findings for findings in audit.values()), audit
    assert "no_selu" not in (run_dir / "report.html").read_text()
