import json
import shutil
import statistics

import pytest
import torch

from selfnorm.cli import main
from selfnorm.data import load_dataset
from selfnorm.storage import RunDir, read_jsonl
from selfnorm.sweep import (
    LocalExecutor,
    RayExecutor,
    SweepSpec,
    load_sweep,
    run_sweep,
    summarize_sweep,
    sweep_from_dict,
)
from selfnorm.training import DeviceData, train_run

# 2 variants x depth {1, 2} x 2 seeds = 8 jobs of a few hundred ms each
SMALL = {
    "activations": ["selu", "relu"],
    "seeds": [0, 1],
    "model": {"width": 16},
    "train": {"epochs": 2, "batch_size": 128},
    "grid": {"depth": [1, 2], "dropout": {"selu": [0.0]}},
}
TOML = """\
datasets = ["digits"]
activations = ["selu", "relu"]
seeds = [0, 1]
[model]
width = 16
[train]
epochs = 2
batch_size = 128
[grid]
depth = [1, 2]
dropout = { selu = [0] }
"""


def _metrics(summary):
    return {r["name"]: r["metrics"] for r in summary["jobs"]}


@pytest.fixture(scope="module")
def spec() -> SweepSpec:
    return sweep_from_dict(SMALL)


@pytest.fixture(scope="module")
def local(spec, tmp_path_factory):
    """The sweep run once on 2 local worker processes, 1 torch thread each."""
    out = tmp_path_factory.mktemp("local")
    events = []
    summary = run_sweep(spec, out, executor=LocalExecutor(2, 1), progress=events.append)
    return out, summary, events


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# --- the sweep file ---------------------------------------------------------------------------


def test_spec_expands_grid_in_a_fixed_order_with_stable_names(spec, tmp_path):
    jobs = spec.jobs()
    assert len(jobs) == 8 and spec.varied == ("depth",)
    assert [(j.activation, j.params["depth"], j.seed) for j in jobs[:4]] == [
        ("selu", 1, 0), ("selu", 1, 1), ("selu", 2, 0), ("selu", 2, 1),
    ]  # fmt: skip
    assert jobs[0].name.startswith("digits-selu-d1-s0-") and len({j.name for j in jobs}) == 8
    for j in jobs:
        assert j.config.activations == (j.activation,) and j.config.seeds == (j.seed,)
        assert j.config.model.width == 16 and j.config.train.epochs == 2
    # the same settings from TOML, from to_dict() and from a dict give the same jobs
    (tmp_path / "s.toml").write_text(TOML)
    for other in (load_sweep(tmp_path / "s.toml"), sweep_from_dict(spec.to_dict())):
        assert [j.name for j in other.jobs()] == [j.name for j in jobs]


def test_per_variant_grid_and_base_dropout():
    spec = sweep_from_dict(
        {
            "activations": ["selu", "relu"],
            "dropout_by_activation": {"relu": 0.2},
            "grid": {"dropout": {"selu": [0, 0.05]}, "lr": [1e-3, 1e-2]},
        }
    )
    drops = {(j.activation, j.params["dropout"], j.params["lr"]) for j in spec.jobs()}
    assert drops == {
        ("selu", 0.0, 1e-3), ("selu", 0.05, 1e-3), ("selu", 0.0, 1e-2), ("selu", 0.05, 1e-2),
        ("relu", 0.2, 1e-3), ("relu", 0.2, 1e-2),
    }  # fmt: skip
    for j in spec.jobs():  # the job's own config holds the effective rate
        assert j.config.dropout_for(j.activation) == j.params["dropout"]


def test_per_variant_input_scaling_becomes_each_jobs_own():
    spec = sweep_from_dict(
        {"datasets": ["digits"], "activations": ["selu", "relu"],
         "standardize_by_activation": {"selu": "none"}, "grid": {}}
    )  # fmt: skip
    scaling = {j.activation: j.config.data.standardize for j in spec.jobs()}
    assert scaling == {"selu": "none", "relu": "feature"}
    assert all(j.config.standardize_by_activation == {} for j in spec.jobs())


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"grid": {"depht": [2]}}, "unknown grid key 'depht'; valid: depth"),
        ({"grid": {"depth": []}}, "grid.depth is empty"),
        ({"grid": {"depth": [2, 2]}}, "repeats a value"),
        ({"grid": {"depth": [0]}}, "depth=0 must be an integer >= 1"),
        ({"grid": {"dropout": {"tanh": [0.1]}}}, "names variant 'tanh'"),
        ({"seeds": [0], "grid": {"seeds": [1]}}, "seeds are given twice"),
        ({"select": "test_accuracy"}, "select='test_accuracy'; choose one of"),
        ({"datasets": ["digits"], "data": {"dataset": "iris"}}, "names its data twice"),
        ({"activations": ["swish"]}, "unknown activation 'swish'"),
        ({"modle": {}}, "unknown key(s) ['modle']"),
    ],
)
def test_bad_sweep_files_name_the_problem(d, message):
    with pytest.raises(ValueError, match=None) as exc:
        sweep_from_dict(d)
    assert message in str(exc.value)


# --- running it -------------------------------------------------------------------------------


def test_local_sweep_writes_job_dirs_and_picks_best_on_validation(local, spec):
    out, summary, events = local
    assert summary["jobs_total"] == summary["jobs_ok"] == 8 and summary["jobs_failed"] == []
    assert [e["done"] for e in events] == list(range(1, 9))
    assert all(e["total"] == 8 and e["eta"] >= 0 for e in events) and events[-1]["eta"] == 0
    for job in spec.jobs():
        d = out / "jobs" / job.name
        rec = json.loads((d / "job.json").read_text())
        assert rec["status"] == "ok" and rec["threads"] == 1
        run = RunDir(d).run(job.activation, job.seed)
        result = json.loads(run.result.read_text())
        rows = read_jsonl(run.metrics)
        assert len(rows) == 2 and not run.checkpoint.exists()  # deleted once finished
        assert rec["metrics"]["test_accuracy"] == result["test_accuracy"]
        assert rec["metrics"]["final_val_accuracy"] == rows[-1]["val_accuracy"]
        assert json.loads((d / "config.json").read_text()) == job.config.to_dict()
    # best per variant, recomputed from the job files: highest mean final val accuracy
    for act in spec.activations:
        by_depth = {}
        for job in spec.jobs():
            if job.activation == act:
                rec = json.loads((out / "jobs" / job.name / "job.json").read_text())
                by_depth.setdefault(job.params["depth"], []).append(rec["metrics"])
        means = {
            k: statistics.fmean(m["final_val_accuracy"] for m in v) for k, v in by_depth.items()
        }
        best = summary["best"]["digits"][act]
        assert best["params"]["depth"] == max(means, key=means.get)
        assert best["val_accuracy"] == means[best["params"]["depth"]]
        tests = [m["test_accuracy"] for m in by_depth[best["params"]["depth"]]]
        assert best["test_accuracy"] == statistics.fmean(tests)
    assert json.loads((out / "sweep.json").read_text()) == summary
    md = (out / "summary.md").read_text()
    assert "## Best configuration per variant" in md and md.count("| digits-") == 8


@pytest.mark.slow
def test_ray_executor_gives_the_same_numbers(local, spec, ray_instance, tmp_path):
    _, expected, _ = local
    summary = run_sweep(spec, tmp_path, executor=RayExecutor(threads=1))
    assert _metrics(summary) == _metrics(expected)  # exact: same seeds, same thread count
    assert summary["best"] == expected["best"]
    with pytest.raises(ValueError, match="already connected to Ray"):
        run_sweep(spec, tmp_path, executor=RayExecutor("auto"))


def test_cli_ray_local_uses_the_connection(local, ray_instance, tmp_path, capsys):
    _, expected, _ = local
    (tmp_path / "s.toml").write_text(TOML)
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "s.toml"), "--ray", "local", "--out", str(out),
                 "--json"]) == 0  # fmt: skip
    assert _metrics(json.loads(capsys.readouterr().out)) == _metrics(expected)


def test_resume_skips_finished_and_completes_unfinished(local, spec, tmp_path):
    src, expected, _ = local
    out = tmp_path / "sweep"
    shutil.copytree(src, out)
    jobs = spec.jobs()
    # job 0: interrupted after epoch 1 of 2 (checkpoint + 1 metrics row, no result)
    j0 = jobs[0]
    d0 = out / "jobs" / j0.name
    shutil.rmtree(d0)
    RunDir(d0).prepare(j0.config.to_dict(), resume=False, overwrite=False)
    data = DeviceData.from_dataset(
        load_dataset(j0.config.data, progress=False), torch.device("cpu")
    )

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, for bit-equal numbers
    try:
        with pytest.raises(KeyboardInterrupt):
            train_run(data, j0.config, j0.activation, j0.seed, RunDir(d0).run(j0.activation, 0),
                      stop_after_first, checkpoint_seconds=0)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert RunDir(d0).run(j0.activation, 0).checkpoint.exists()
    # job 1: never started; job 2: trained, but the driver died before job.json
    shutil.rmtree(out / "jobs" / jobs[1].name)
    (out / "jobs" / jobs[2].name / "job.json").unlink()
    untouched = out / "jobs" / jobs[3].name / "job.json"
    before = untouched.stat().st_mtime_ns

    events = []
    summary = run_sweep(spec, out, executor=LocalExecutor(2, 1), progress=events.append)
    assert [e["skipped"] for e in events] == [5, 5, 5] and events[-1]["done"] == 8
    assert {e["record"]["name"] for e in events} == {j.name for j in jobs[:3]}
    assert untouched.stat().st_mtime_ns == before
    assert _metrics(summary) == _metrics(expected)  # the resumed run is bit-identical
    rows = read_jsonl(RunDir(d0).run(j0.activation, 0).metrics)
    assert [r["epoch"] for r in rows] == [1, 2]

    # nothing left to do: no job runs, the summary is rebuilt from the job files
    events.clear()
    again = run_sweep(spec, out, executor=LocalExecutor(2, 1), progress=events.append)
    assert events == [] and _metrics(again) == _metrics(expected)


def test_failing_job_is_recorded_and_others_finish(tmp_path, capsys):
    toml = tmp_path / "s.toml"
    missing = tmp_path / "missing.csv"
    toml.write_text(
        TOML.replace('datasets = ["digits"]', f'datasets = ["digits", "csv:{missing}"]')
    )
    out = tmp_path / "out"
    code = main(["sweep", str(toml), "--workers", "2", "--threads", "1", "--out", str(out)])
    assert code == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.err and "8 job(s) failed" in captured.err
    assert "| missing-selu-d1-s0-" in captured.out
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["jobs_ok"] == 8 and len(summary["jobs_failed"]) == 8
    for rec in summary["jobs"]:
        d = out / "jobs" / rec["name"]
        if rec["dataset"].startswith("csv:"):
            assert rec["status"] == "failed" and "there is no file" in rec["error"]
            assert str(missing) in rec["error"]
            assert "Traceback" in (d / "error.txt").read_text()
            assert json.loads((d / "job.json").read_text())["status"] == "failed"
        else:
            assert rec["status"] == "ok" and not (d / "error.txt").exists()
    assert summary["best"][f"csv:{missing}"] == {"selu": None, "relu": None}
    assert summary["best"]["digits"]["selu"] is not None
    assert "## Failed jobs" in (out / "summary.md").read_text()

    # the file appears: running again retries only the failed jobs
    missing.write_text("a,b,y\n" + "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(60)))
    assert main(["sweep", str(toml), "--workers", "2", "--threads", "1", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["jobs_ok"] == 16 and not any((out / "jobs").glob("*/error.txt"))


def test_summarize_selects_on_validation_loss_when_asked(local, spec):
    _, summary, _ = local
    by_loss = summarize_sweep(
        sweep_from_dict({**spec.to_dict(), "select": "val_loss"}), summary["jobs"]
    )
    for act, best in by_loss["best"]["digits"].items():
        mean_loss = {
            depth: statistics.fmean(
                r["metrics"]["final_val_loss"]
                for r in summary["jobs"]
                if r["activation"] == act and r["params"]["depth"] == depth
            )
            for depth in (1, 2)
        }
        assert best["params"]["depth"] == min(mean_loss, key=mean_loss.get)
        assert best["val_loss"] == min(mean_loss.values())


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(TOML)
    assert main(["sweep", str(tmp_path / "s.toml"), "--ray", "auto", "--workers", "2"]) == 2
    assert "--workers is for local processes" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[grid]\ndepth = [0]\n")
    assert main(["sweep", str(tmp_path / "bad.toml")]) == 2
    assert "depth=0 must be an integer >= 1" in capsys.readouterr().err
    # a grid over a setting the model kind does not have would train identical models
    (tmp_path / "cnn.toml").write_text('[model]\nkind = "cnn"\n[grid]\ndepth = [2, 4]\n')
    assert main(["sweep", str(tmp_path / "cnn.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "grid.depth does not apply to model kind 'cnn'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # a CNN sweep over what a CNN has: its jobs carry the CNN's settings, no MLP ones
    cnn = sweep_from_dict(
        {"activations": ["selu"], "model": {"kind": "cnn", "channels": [4]},
         "grid": {"lr": [1e-3, 1e-2]}}
    )  # fmt: skip
    jobs = cnn.jobs()
    assert len(jobs) == 2 and {j.params["lr"] for j in jobs} == {1e-3, 1e-2}
    assert "depth" not in jobs[0].params and jobs[0].config.model.channels == (4,)
    assert main(["sweep", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _default_signals() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal (see test_faults)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _sweep_process(toml, out):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "selfnorm", "sweep", str(toml), "--out", str(out),
         "--workers", "2", "--threads", "1", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=_default_signals,
    )  # fmt: skip


def _wait_for_jobs(out, p, n, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        if len(list(out.glob("jobs/*/job.json"))) >= n:
            return
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_an_interrupted_sweep_resumes_to_the_same_job_results(local, spec, tmp_path, how):
    """Ctrl-C in a terminal reaches the whole process group: the sweep stops its workers after
    their step (exit 130, one line); a kill -9 of every process is a crashed machine. Either
    way the next start skips the finished jobs, resumes the rest, and every job's numbers are
    those of the uninterrupted sweep."""
    import os
    import signal

    _, expected, _ = local
    toml = tmp_path / "s.toml"
    toml.write_text(TOML)
    out = tmp_path / "out"
    with _sweep_process(toml, out) as p:
        _wait_for_jobs(out, p, 2)
        assert p.poll() is None, "the sweep finished before it could be interrupted"
        os.killpg(p.pid, signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        _, err = p.communicate(timeout=120)
    if how == "ctrl-c":
        assert p.returncode == 130, err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("selfnorm sweep: interrupted: ")
        assert "run the same command again" in err
    assert not (out / "sweep.json").exists()
    done_before = len(list(out.glob("jobs/*/job.json")))
    events = []
    summary = run_sweep(spec, out, executor=LocalExecutor(2, 1), progress=events.append)
    assert events and events[0]["skipped"] >= 2
    assert len(events) <= 8 - 2 and done_before >= 2
    assert _metrics(summary) == _metrics(expected)


def test_a_ray_address_with_no_cluster_is_an_error_within_seconds(spec, tmp_path, monkeypatch):
    import socket
    import time

    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "o"
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=rf"no Ray cluster answers at '127.0.0.1:{port}'"):
        run_sweep(spec, out, executor=RayExecutor(f"127.0.0.1:{port}"))
    assert time.monotonic() - t0 < 30
    assert not out.exists()
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        run_sweep(spec, out, executor=RayExecutor("head-without-port"))
    assert not out.exists()


def test_a_sweep_on_a_ray_address_connects_once_and_runs(spec, tmp_path, monkeypatch):
    """``--ray HOST:PORT``: probed, connected once for the whole sweep (the jobs do not try to
    connect again), disconnected at the end. Ray itself is replaced by an in-process stand-in
    that runs each task at once; the head is a listening socket."""
    import socket
    import sys
    import types

    from selfnorm import executors

    calls = []

    class Ref:
        def __init__(self, value):
            self.value = value

    def remote(fn):
        task = types.SimpleNamespace()
        task.options = lambda **kw: types.SimpleNamespace(remote=lambda *a: Ref(fn(*a)))
        return task

    state = {"up": False}
    fake = types.SimpleNamespace(
        is_initialized=lambda: state["up"],
        init=lambda address=None: (calls.append(("init", address)), state.update(up=True)),
        shutdown=lambda: (calls.append(("shutdown",)), state.update(up=False)),
        remote=remote,
        wait=lambda pending, num_returns=1, timeout=None: (pending[:1], pending[1:]),
        get=lambda ref: ref.value,
        cancel=lambda ref, force=False: None,
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(executors, "_CONNECTED", False)
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        small = sweep_from_dict({**SMALL, "grid": {"depth": [1]}, "seeds": [0]})
        threads = torch.get_num_threads()  # run_job sets the task's thread count
        try:
            summary = run_sweep(small, tmp_path / "o", executor=RayExecutor(address))
        finally:
            torch.set_num_threads(threads)
    assert calls == [("init", address), ("shutdown",)]
    assert summary["jobs_total"] == 2 and not summary["jobs_failed"]


def test_narrowing_a_grid_axis_reuses_the_finished_jobs(local, tmp_path):
    """depth [1, 2] -> [1]: the depth-1 jobs have the same settings, so the same hash; their
    folder names (whose readable prefix named the varied depth) are found by that hash and
    nothing trains again."""
    src, expected, _ = local
    out = tmp_path / "sweep"
    shutil.copytree(src, out)
    narrow = sweep_from_dict({**SMALL, "grid": {"depth": [1], "dropout": {"selu": [0.0]}}})
    assert {j.name for j in narrow.jobs()}.isdisjoint(p.name for p in (out / "jobs").iterdir())
    events = []
    summary = run_sweep(narrow, out, executor=LocalExecutor(2, 1), progress=events.append)
    assert events == []  # every job was finished already
    kept = {n: m for n, m in _metrics(expected).items() if "-d1-" in n}
    assert len(kept) == 4 and _metrics(summary) == kept


def test_a_jobs_name_does_not_depend_on_train_stack():
    """A job trains one seed: train.stack changes nothing, and names stay those of before."""
    from selfnorm.config import experiment_from_dict
    from selfnorm.sweep import Job

    base = {"activations": ["selu"], "seeds": [0]}
    names = {
        Job.make(experiment_from_dict({**base, "train": {"stack": s}}), {}, []).name
        for s in ("auto", "off", 4)
    }
    assert names == {"digits-selu-s0-8224be37595c"}
