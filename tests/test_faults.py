"""What a run directory survives: damaged files, a second process, Ctrl-C, SIGTERM, kill -9.

Every resume here ends with exactly the metrics, results and records of an uninterrupted run
(on the CPU: same seeds, same data order, same dropout masks, the RNG state in the checkpoint).
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import assert_same_records

from selfnorm.comparing import compare
from selfnorm.config import experiment_from_dict
from selfnorm.data import DataConfig, load_dataset
from selfnorm.interrupts import Interrupted
from selfnorm.locking import LOCK_NAME, LockedError, RunLock
from selfnorm.records import read_records
from selfnorm.storage import RunDir, RunDirError, read_jsonl

CFG = {
    "model": {"depth": 2, "width": 32},
    "train": {"epochs": 3, "batch_size": 64},
    "activations": ["selu", "relu"],
    "seeds": [0, 1],
    "dropout": 0.05,
    "record": {"every": 4},
}
RUNS = [(a, s) for a in ("selu", "relu") for s in (0, 1)]


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(), progress=False)


def _uninterrupted(tmp_path_factory, digits, cfg, name):
    """An uninterrupted run of ``cfg`` that checkpoints after every epoch."""
    out = tmp_path_factory.mktemp(name) / "run"
    compare(experiment_from_dict(cfg), str(out), progress=False, dataset=digits,
            checkpoint_seconds=0)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits):
    return _uninterrupted(tmp_path_factory, digits, CFG, "ref")


def _numbers(root: Path):
    rd = RunDir(root)
    out = {}
    for a, s in RUNS:
        p = rd.run(a, s)
        rows = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in read_jsonl(p.metrics)]
        out[a, s] = (rows, json.loads(p.result.read_text()))
    summary = json.loads((root / "summary.json").read_text())
    return out, _no_times(summary["variants"])


def _no_times(obj):
    if isinstance(obj, dict):
        return {k: _no_times(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_no_times(v) for v in obj]
    return obj


def assert_same_run(a: Path, b: Path) -> None:
    assert _numbers(a) == _numbers(b)
    for act, seed in RUNS:
        assert_same_records(read_records(RunDir(a).run(act, seed).root),
                            read_records(RunDir(b).run(act, seed).root))  # fmt: skip


def _copy(ref: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    return out


def _unfinish(root: Path, act: str, seed: int) -> None:
    """Make a finished run look interrupted after its last checkpoint was written."""
    (root / "summary.json").unlink()
    RunDir(root).run(act, seed).result.unlink()


def _resume(root, digits, cfg=CFG):
    return compare(experiment_from_dict(cfg), str(root), resume=True, progress=False,
                   dataset=digits, checkpoint_seconds=0)  # fmt: skip


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, digits, damage):
    root = _copy(reference, tmp_path)
    _unfinish(root, "relu", 1)
    ckpt = RunDir(root).run("relu", 1).checkpoint
    data = bytearray(ckpt.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a checkpoint" * 100)
    else:  # one flipped byte inside a tensor: only the digest notices
        data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=r"checkpoint\.pt is damaged.*checkpoint\.prev\.pt"):
        _resume(root, digits)
    assert (ckpt.parent / "checkpoint.damaged.pt").exists()
    assert_same_run(reference, root)


def test_no_good_checkpoint_left_is_one_clear_error_and_nothing_is_touched(
    reference, tmp_path, digits
):
    root = _copy(reference, tmp_path)
    _unfinish(root, "selu", 1)
    run = RunDir(root).run("selu", 1)
    run.checkpoint.write_bytes(b"x")
    run.previous_checkpoint.write_bytes(b"")
    before = _snapshot(root)
    with pytest.raises(RunDirError) as e:
        _resume(root, digits)
    msg = str(e.value)
    assert "\n" not in msg and "checkpoint.pt is damaged" in msg
    assert f"delete {run.root}" in msg and "the other runs are kept" in msg
    assert _snapshot(root) == before
    assert not (root / LOCK_NAME).exists()


def test_a_checkpoint_stores_its_predecessor(reference):
    run = RunDir(reference).run("selu", 0)
    cur = run.load_checkpoint()
    prev = torch.load(run.previous_checkpoint, weights_only=True)
    assert (cur["epoch"], prev["epoch"]) == (3, 2)


# --- damaged or edited files -------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_dropped_and_retrained(reference, tmp_path, digits):
    root = _copy(reference, tmp_path)
    _unfinish(root, "selu", 0)
    run = RunDir(root).run("selu", 0)
    run.previous_checkpoint.replace(run.checkpoint)  # the checkpoint of epoch 2 ...
    with run.metrics.open("ab") as f:  # ... and a half-written row after the third
        f.write(b'{"epoch": 4, "train_lo')
    _resume(root, digits)
    assert_same_run(reference, root)


def test_a_damaged_line_inside_the_metrics_is_refused(reference, tmp_path, digits):
    root = _copy(reference, tmp_path)
    _unfinish(root, "selu", 0)
    run = RunDir(root).run("selu", 0)
    lines = run.metrics.read_text().splitlines()
    lines[1] = lines[1][:20]
    run.metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match=r"metrics\.jsonl line 2 is not a JSON object"):
        _resume(root, digits)


def test_a_cut_records_chunk_is_refused_with_the_choice(reference, tmp_path, digits):
    root = _copy(reference, tmp_path)
    _unfinish(root, "relu", 0)
    chunk = sorted(RunDir(root).run("relu", 0).records.glob("chunk-*.npz"))[0]
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(RunDirError, match="delete that file to resume with a gap"):
        _resume(root, digits)


def test_config_edited_to_other_settings_is_caught(reference, tmp_path, digits):
    from selfnorm.cli import main

    root = _copy(reference, tmp_path)
    _unfinish(root, "relu", 1)
    cfg = json.loads((root / "config.json").read_text())
    cfg["train"]["epochs"] = 2
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match="trained with other settings"):
        compare(experiment_from_dict(cfg), str(root), resume=True, progress=False, dataset=digits)
    # the same through the CLI: one line, exit 2
    before = _snapshot(root)
    code, err = _cli_in_process(main, ["compare", "--resume", str(root), "--quiet"])
    assert code == 2 and err.count("\n") == 1 and "other settings" in err
    assert _snapshot(root) == before


def _cli_in_process(main, argv):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize(
    "text, match",
    [("{not json", r"config\.json is not valid JSON"), ("[1, 2]", "holds a list")],
)
def test_a_garbled_config_json_names_the_file(reference, tmp_path, text, match):
    from selfnorm.cli import main

    root = _copy(reference, tmp_path)
    (root / "config.json").write_text(text)
    code, err = _cli_in_process(main, ["compare", "--resume", str(root), "--quiet"])
    assert code == 2 and err.count("\n") == 1, err
    assert str(root / "config.json") in err and re.search(match, err), err


def test_a_garbled_result_json_names_the_file(reference, tmp_path, digits):
    root = _copy(reference, tmp_path)
    (root / "summary.json").unlink()
    result = RunDir(root).run("selu", 1).result
    result.write_text("{")
    with pytest.raises(RunDirError, match=r"result\.json is not valid JSON"):
        _resume(root, digits)


# --- one process per directory -----------------------------------------------------------------


def test_a_second_process_is_refused_with_the_holder_named(reference, tmp_path, digits):
    root = _copy(reference, tmp_path)
    _unfinish(root, "relu", 1)
    code = (
        "import sys, time; from selfnorm.locking import RunLock\n"
        f"l = RunLock({str(root)!r}, 'compare').acquire(); print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout.readline().strip() == "held"
        before = _snapshot(root)
        with pytest.raises(LockedError, match=rf"in use by selfnorm compare \(pid {p.pid} on "):
            _resume(root, digits)
        assert _snapshot(root) == before  # nothing written, the holder's lock untouched
        p.kill()  # kill -9: the kernel drops its lock; the stale file is taken over
    _resume(root, digits)
    assert_same_run(reference, root)
    assert not (root / LOCK_NAME).exists()


def test_a_refused_start_leaves_no_folder(tmp_path):
    target = tmp_path / "a" / "b"
    lock = RunLock(target, "compare").acquire()
    try:
        with pytest.raises(LockedError):
            RunLock(target, "report").acquire()
    finally:
        lock.abandon()
    assert not (tmp_path / "a").exists()


def test_report_is_refused_while_compare_runs(reference, tmp_path):
    from selfnorm.cli import main

    root = _copy(reference, tmp_path)
    with RunLock(root, "compare"):
        code, err = _cli_in_process(main, ["report", str(root)])
    assert code == 2 and "is in use by selfnorm compare" in err and err.count("\n") == 1


# --- Ctrl-C, SIGTERM ---------------------------------------------------------------------------


class _StopAfter:
    """A stop flag that says yes after ``n`` questions (one per optimizer step)."""

    signum = signal.SIGINT

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self) -> bool:
        self.n -= 1
        return self.n < 0


# 21 steps per epoch: mid-epoch 1, before epoch 2's first step, epoch 3 after step 5
@pytest.mark.parametrize("steps", [5, 21, 47])
def test_a_stop_mid_epoch_saves_and_resumes_exactly(reference, tmp_path, digits, steps):
    out = tmp_path / "run"
    cfg = experiment_from_dict(CFG)
    with pytest.raises(Interrupted, match=r"stopped in epoch \d+ after step \d+ of \d+"):
        compare(cfg, str(out), progress=False, dataset=digits, checkpoint_seconds=0,
                stop=_StopAfter(steps))  # fmt: skip
    assert not (out / "summary.json").exists() and not (out / LOCK_NAME).exists()
    _resume(out, digits)
    assert_same_run(reference, out)


def _default_signals() -> None:
    """In the child: SIGINT and SIGTERM as in a terminal (a test runner started in the
    background may pass them on ignored, and an ignored signal stays ignored by design)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _popen(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "selfnorm", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals, **kw,
    )  # fmt: skip


CLI = ["compare", "--activations", "selu,relu", "--seeds", "0,1", "--epochs", "3", "--depth", "2",
       "--width", "32", "--batch-size", "64", "--dropout", "0.05", "--record-every", "4",
       "--checkpoint-seconds", "0", "--quiet"]  # fmt: skip


def _rows(out: Path) -> int:
    return sum(len(read_jsonl(p)) for p in out.glob("runs/*/*/metrics.jsonl"))


def _wait_for(path: Path, p, rows: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None and len(read_jsonl(path)) < rows:
        time.sleep(0.002)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_step_says_how_to_resume(reference, tmp_path, digits, sig, code):
    out = tmp_path / "run"
    with _popen([*CLI, "--out", str(out)]) as p:
        _wait_for(RunDir(out).run("selu", 0).metrics, p, 1)  # 11 of 12 epochs still to go
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("selfnorm compare: interrupted: ") and last.endswith(
        f"continue with: selfnorm compare --resume {out}"
    )
    _resume(out, digits)
    assert_same_run(reference, out)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_run(
    reference, tmp_path, digits
):
    """SIGKILL at seeded random moments of training (with a checkpoint and a records flush
    after every epoch, many land in or next to a write), then resume, again and again."""
    out = tmp_path / "run"
    rng = random.Random(1234)
    total = 3 * len(RUNS)  # metrics rows of the whole comparison
    for target in sorted(rng.sample(range(1, total - 3), 3)):
        if (out / "config.json").exists():
            args = ["compare", "--resume", str(out), "--quiet", "--checkpoint-seconds", "0"]
        else:
            args = [*CLI, "--out", str(out)]
        with _popen(args) as p:
            deadline = time.monotonic() + 120
            while p.poll() is None and time.monotonic() < deadline and _rows(out) < target:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.05))  # somewhere in the steps and writes after it
            p.kill()
            p.communicate(timeout=120)
        assert not (out / "summary.json").exists(), "it finished before the kill"
    _resume(out, digits)
    assert_same_run(reference, out)
    assert not list(out.rglob(".*.tmp"))


def test_a_second_signal_aborts_at_once_and_stays_resumable(reference, tmp_path, digits):
    """Two signals in a row: ``KeyboardInterrupt`` wherever it lands; what is on disk resumes."""
    from selfnorm.interrupts import graceful_stop

    out = tmp_path / "run"
    cfg = experiment_from_dict(CFG)
    calls = {"n": 0}

    def twice() -> bool:
        calls["n"] += 1
        if calls["n"] == 30:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return False  # the handler's flag is not asked: only the second signal acts

    with graceful_stop(announce=False), pytest.raises(KeyboardInterrupt):
        compare(cfg, str(out), progress=False, dataset=digits, checkpoint_seconds=0,
                stop=twice)  # fmt: skip
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _resume(out, digits)
    assert_same_run(reference, out)


def test_report_skips_a_cut_records_chunk_with_one_warning_line(reference, tmp_path):
    from selfnorm.cli import main

    root = _copy(reference, tmp_path)
    chunk = sorted(RunDir(root).run("selu", 0).records.glob("chunk-*.npz"))[0]
    chunk.write_bytes(chunk.read_bytes()[:100])
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as outside pytest, which turns warnings into errors
        code, err = _cli_in_process(main, ["report", str(root)])
    assert code == 0 and (root / "report.html").exists()
    assert err.count("\n") == 1 and err.startswith("selfnorm report: warning: skipping ")
    assert str(chunk) in err


def test_an_inherited_ignored_sigint_stays_ignored():
    """A background job of a script starts with SIGINT ignored; Ctrl-C in the terminal must not
    reach it, so graceful_stop leaves an ignored signal alone (and restores everything)."""
    from selfnorm.interrupts import graceful_stop

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with graceful_stop(announce=False) as flag:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # handled
            os.kill(os.getpid(), signal.SIGINT)
            assert not flag.requested
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# --- stacked runs (train.stack): the same guarantees ---------------------------------------------

STACKED = {**CFG, "train": {**CFG["train"], "stack": 2}}


@pytest.fixture(scope="module")
def stacked_reference(tmp_path_factory, digits):
    return _uninterrupted(tmp_path_factory, digits, STACKED, "ref-stacked")


def test_stacked_runs_stop_mid_epoch_and_resume_exactly(stacked_reference, tmp_path, digits):
    out = tmp_path / "run"
    cfg = experiment_from_dict(STACKED)
    with pytest.raises(Interrupted, match=r"selu seeds 0, 1 stopped in epoch 2 after step 5 of 21"):
        compare(cfg, str(out), progress=False, dataset=digits, checkpoint_seconds=0,
                stop=_StopAfter(26))  # fmt: skip
    _resume(out, digits, STACKED)
    assert_same_run(stacked_reference, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stacking"]["selu"] == {"mode": "stacked", "runs_per_stack": 2, "requested": 2}


@pytest.mark.parametrize("behind", [[("selu", 1)], [("selu", 0), ("relu", 1)]])
def test_a_crash_between_a_stacks_checkpoints_resumes_the_stack_as_it_was(
    stacked_reference, tmp_path, digits, behind
):
    """The runs of a stack checkpoint one after another: a crash in between leaves some one
    checkpoint behind. The others step back to their previous checkpoint and the stack forms
    again, so the numbers are exact (a smaller stack may differ in the last bit)."""
    out = _copy(stacked_reference, tmp_path)
    (out / "summary.json").unlink()
    for act, seed in RUNS:
        RunDir(out).run(act, seed).result.unlink()
    for act, seed in behind:  # its last checkpoint never reached the disk
        p = RunDir(out).run(act, seed)
        shutil.copy(p.previous_checkpoint, p.checkpoint)
    _resume(out, digits, STACKED)
    assert_same_run(stacked_reference, out)


@pytest.mark.slow
def test_kill_9_of_stacked_runs_then_resume_gives_the_uninterrupted_run(
    stacked_reference, tmp_path, digits
):
    """SIGKILL of a stacked comparison at seeded random moments, then resume, again and again:
    the numbers and records of the uninterrupted stacked comparison, exactly."""
    out = tmp_path / "run"
    rng = random.Random(99)
    for target in sorted(rng.sample(range(1, 3 * len(RUNS) - 3), 3)):
        if (out / "config.json").exists():
            args = ["compare", "--resume", str(out), "--quiet", "--checkpoint-seconds", "0"]
        else:
            args = [*CLI, "--stack", "2", "--out", str(out)]
        with _popen(args) as p:
            deadline = time.monotonic() + 120
            while p.poll() is None and time.monotonic() < deadline and _rows(out) < target:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.05))
            p.kill()
            p.communicate(timeout=120)
        assert not (out / "summary.json").exists(), "it finished before the kill"
    _resume(out, digits, STACKED)
    assert_same_run(stacked_reference, out)
