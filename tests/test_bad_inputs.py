"""The bad-input table: every case is exit code 2, one error line on stderr that names the
value (and the fix), no traceback, and no file written.

Each case runs the real CLI in-process in an empty working folder beside a folder of prepared
inputs; the test snapshots both and asserts that nothing appeared or changed.
"""

import contextlib
import io
import math
import socket

import pytest
import torch

from selfnorm.cli import main

SWEEP = 'activations = ["selu"]\nseeds = [0]\n[train]\nepochs = 1\n[grid]\n'


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rows = "\n".join(f"{i},{i * 2},{i % 2}" for i in range(40))
    files = {
        "ok.csv": "a,b,y\n" + rows + "\n",
        "empty.csv": "",
        "one_class.csv": "a,b,y\n" + "\n".join(f"{i},{i},1" for i in range(40)) + "\n",
        "continuous.csv": "a,b,y\n" + "\n".join(f"{i},{i},{i}.5" for i in range(200)) + "\n",
        "dup_header.csv": "a,a,y\n" + rows + "\n",
        "text_feature.csv": "a,b,y\n1,x,0\n2,3,1\n",
        "ragged.csv": "a,b,y\n1,2\n3,4,1\n",
        "bad.toml": "[train\nepochs = 1\n",
        "unknown_key.toml": "[train]\nepoks = 3\n",
        "letters.toml": 'activations = "selu"\n',
        "model_not_table.toml": "model = 3\n",
        "seeds_text.toml": 'seeds = "0,1"\n',
        "raising.py": "raise RuntimeError('boom on import')\n",
        "factories.py": (
            "import torch\n"
            "def raises(**kw):\n    raise KeyError('no such layer')\n"
            "def number(**kw):\n    return 3\n"
            "def needs(width):\n    return torch.nn.Linear(width, 2)\n"
            "def fine():\n    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.SELU())\n"
            "def narrow(*, activation, **kw):\n"
            "    return torch.nn.Sequential(torch.nn.Linear(7, 2), activation())\n"
        ),
        "factory_without_target.toml": '[model]\nkind = "factory"\n',
        "sweep_depth0.toml": SWEEP + "depth = [0]\n",
        "sweep_unknown.toml": SWEEP + "colour = [1]\n",
        "sweep_ok.toml": SWEEP + "depth = [1]\n",
        "a_file": "not a folder\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    (d / "garbled.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x81")
    (d / "a_folder").mkdir()
    (d / "not_a_run").mkdir()
    (d / "not_a_run" / "x.txt").write_text("x")
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


I = "{in}"  # replaced by the inputs folder
C = ["compare", "--epochs", "1", "--quiet"]
CASES = [
    # compare: names and lists
    ([*C, "--activations", ""], "--activations ''"),
    ([*C, "--activations", "foo"], "unknown activation 'foo'"),
    ([*C, "--activations", "selu,selu"], "name a variant twice"),
    ([*C, "--activations", "lrelu:7"], "lrelu"),
    ([*C, "--activations", "selu@nope"], "nope"),
    ([*C, "--seeds", "a,b"], "--seeds 'a,b'"),
    ([*C, "--seeds", "-1"], "-1"),
    ([*C, "--seeds", "0,0"], "0"),
    ([*C, "--preset", "nosuch"], "--preset 'nosuch'"),
    # compare: numbers out of range and not finite
    ([*C[:1], "--epochs", "0", "--quiet"], "epochs=0"),
    ([*C, "--lr", "-1"], "lr=-1"),
    ([*C, "--lr", "nan"], "lr=nan"),
    ([*C, "--lr", "inf"], "lr=inf"),
    ([*C, "--batch-size", "0"], "batch_size=0"),
    ([*C, "--width", "0"], "width=0"),
    ([*C, "--depth", "0"], "depth=0"),
    ([*C, "--width", "100000000000"], "needs"),
    ([*C, "--dropout", "1.5"], "1.5"),
    ([*C, "--dropout", "-0.1"], "-0.1"),
    ([*C, "--dropout", "nan"], "nan"),
    ([*C, "--dropout", "selu=abc"], "'abc' is not a number"),
    ([*C, "--dropout", "tanh=0.1"], "'tanh'"),
    ([*C, "--val-fraction", "1.5"], "val_fraction=1.5"),
    ([*C, "--val-fraction", "nan"], "val_fraction=nan"),
    ([*C, "--momentum", "-1"], "momentum=-1"),
    ([*C, "--weight-decay", "-1"], "weight_decay=-1"),
    ([*C, "--rmsprop-alpha", "2"], "rmsprop_alpha=2"),
    ([*C, "--checkpoint-seconds", "-1"], "--checkpoint-seconds -1"),
    ([*C, "--record-every", "0"], "every=0"),
    ([*C, "--epochs", "x"], "invalid int value: 'x'"),
    ([*C, "--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    # compare: model flags of the other kind, malformed lists
    ([*C, "--model", "cnn", "--depth", "2"], "--depth does not apply to --model cnn"),
    ([*C, "--channels", "8,16"], "--channels does not apply to --model mlp"),
    ([*C, "--model", "cnn", "--channels", "8,x"], "--channels '8,x'"),
    ([*C, "--model", "cnn", "--channels", "0"], "channels"),
    # compare: your own model, --model FILE:FACTORY
    ([*C, "--model", "nosuch"], "--model 'nosuch': pass mlp, cnn or FILE:FACTORY"),
    ([*C, "--model", f"{I}/missing.py:make"], "no such file"),
    ([*C, "--model", f"{I}/factories.py:raises"], "raised KeyError: 'no such layer'"),
    ([*C, "--model", f"{I}/factories.py:needs"], "requires width and does not take activation"),
    ([*C, "--model", f"{I}/factories.py:narrow"], "rejects a batch of shape (2, 1, 8, 8)"),
    ([*C, "--model", f"{I}/factories.py:narrow", "--activations", "relu+bn"], "cannot add the +bn"),
    ([*C, "--model", f"{I}/factories.py:narrow", "--channels", "8"], "--channels does not apply"),
    ([*C, "--config", f"{I}/factory_without_target.toml"], "kind = 'factory' needs the callable"),
    # compare: data
    ([*C, "--dataset", "nosuch"], "'nosuch'"),
    ([*C, "--dataset", f"csv:{I}/missing.csv"], "missing.csv"),
    ([*C, "--dataset", f"csv:{I}/empty.csv"], "empty.csv is empty"),
    ([*C, "--dataset", f"csv:{I}/garbled.csv"], "garbled.csv"),
    ([*C, "--dataset", f"csv:{I}/one_class.csv"], "holds one class ('1')"),
    ([*C, "--dataset", f"csv:{I}/continuous.csv"], "200 distinct values in 200 rows"),
    ([*C, "--dataset", f"csv:{I}/dup_header.csv"], "the header names 'a' more than once"),
    ([*C, "--dataset", f"csv:{I}/text_feature.csv"], "b='x'"),
    ([*C, "--dataset", f"csv:{I}/ragged.csv"], "2 values, expected 3"),
    ([*C, "--dataset", f"csv:{I}/ok.csv", "--target", "nosuch"], "no column 'nosuch'"),
    ([*C, "--dataset", f"csv:{I}/ok.csv", "--target", "99"], "target=99 is out of range"),
    ([*C, "--dataset", f"csv:{I}/ok.csv", "--standardize", "x"], "'x' is not one of feature"),
    ([*C, "--standardize", "nosuch=none"], "standardize is set for 'nosuch'"),
    # compare: config files
    ([*C, "--config", f"{I}/missing.toml"], "missing.toml' does not exist"),
    ([*C, "--config", f"{I}/a_folder"], "is a folder"),
    ([*C, "--config", f"{I}/bad.toml"], "is not valid TOML"),
    ([*C, "--config", f"{I}/unknown_key.toml"], "epoks"),
    ([*C, "--config", f"{I}/letters.toml"], "activations = 'selu' must be a list"),
    ([*C, "--config", f"{I}/seeds_text.toml"], "seeds = '0,1' must be a list"),
    ([*C, "--config", f"{I}/model_not_table.toml"], "model"),
    # compare: output paths and conflicting flags
    ([*C, "--out", f"{I}/a_file"], "a_file is a file, not a folder"),
    ([*C, "--out", f"{I}/a_file/run"], "a_file/run"),
    ([*C, "--out", "/sys/selfnorm-test-run"], "/sys/selfnorm-test-run"),
    ([*C, "--out", f"{I}/not_a_run"], "already exists"),
    ([*C, "--out", f"{I}/not_a_run", "--overwrite"], "refusing to delete"),
    ([*C, "--resume", f"{I}/nothing_here"], "no config.json there"),
    ([*C, "--resume", f"{I}/not_a_run"], "no config.json there"),
    ([*C, "--resume", f"{I}/not_a_run", "--overwrite"], "not both"),
    ([*C, "--resume", f"{I}/not_a_run", "--out", "x"], "--out x and --resume"),
    # theory and solve
    (["solve", "--mean", "1e300"], "mean=1e+300"),
    (["solve", "--var", "1e-300"], "var=1e-300"),
    (["solve", "--var", "-1"], "var=-1"),
    (["solve", "--mean", "nan"], "mean=nan"),
    (["solve", "--mean", "0.9", "--var", "0.01"], "no SELU with alpha > 0"),
    (["theory", "--grid", "0"], "--grid 0"),
    (["theory", "--plot", f"{I}/a_file/fig.png"], "a_file"),
    # check
    (["check", f"{I}/raising.py:make"], "importing"),
    (["check", f"{I}/factories.py:raises"], "raised KeyError: 'no such layer'"),
    (["check", f"{I}/factories.py:number"], "returned a int, not a torch.nn.Module"),
    (["check", f"{I}/factories.py:needs"], "requires width"),
    (["check", f"{I}/factories.py:nosuch"], "has no attribute 'nosuch'"),
    (["check", f"{I}/missing.py:make"], "no such file"),
    (["check", "no_such_module_here:make"], "no module named 'no_such_module_here'"),
    (["check", "justtext"], "expected MODULE_OR_FILE:FACTORY, got 'justtext'"),
    (["check", f"{I}/factories.py:fine", "--input-shape", "0,4"], "--input-shape '0,4'"),
    (["check", f"{I}/factories.py:fine", "--input-shape", "100000,100000,1000"], "needs"),
    # report, depth, reproduce
    (["report", f"{I}/not_a_run"], "not_a_run holds no config.json"),
    (["report", f"{I}/nothing_here"], "nothing_here holds no config.json"),
    (["depth", "--depth", "0"], "depth"),
    (["depth", "--width", "0"], "width"),
    (["depth", "--activations", "foo"], "'foo'"),
    (["reproduce", "nosuch"], "invalid choice: 'nosuch'"),
    (["reproduce", "figure1", "--depths", "8,x"], "8,x"),
    (["reproduce", "figure1", "--seeds", "1"], "--seeds belongs to `reproduce seed-tf, seed-keras"),
    (["reproduce", "seed-keras", "--paper"], "--paper belongs to `reproduce figure1`"),
    (["reproduce", "seed-keras", "--seeds", "0,x"], "0,x"),
    (["reproduce", "seed-keras", "--epochs", "0"], "epochs=0"),
    (["reproduce", "seed-tf", "--epochs", "0"], "epochs=0"),
    # sweep and benchmark
    (["sweep", f"{I}/missing.toml"], "missing.toml"),
    (["sweep", f"{I}/sweep_depth0.toml"], "depth=0 must be an integer >= 1"),
    (["sweep", f"{I}/sweep_unknown.toml"], "colour"),
    (["sweep", f"{I}/sweep_ok.toml", "--workers", "0"], "workers=0"),
    (["sweep", f"{I}/sweep_ok.toml", "--threads", "0"], "threads=0"),
    (["sweep", f"{I}/sweep_ok.toml", "--ray", "auto", "--workers", "2"], "--workers is for"),
    (["sweep", f"{I}/sweep_ok.toml", "--ray", "127.0.0.1:{port}"], "no Ray cluster answers"),
    (["sweep", f"{I}/sweep_ok.toml", "--out", f"{I}/a_file"], "a_file is a file"),
    (["benchmark", f"csv:{I}/missing.csv"], "missing.csv"),
    (["benchmark", f"csv:{I}/ok.csv", "--folds", "1"], "folds"),
]


def _snapshot(*roots):
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for root in roots
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(c[0])[:70] for c in CASES])
def test_a_bad_input_is_one_clear_line_exit_2_and_nothing_written(
    argv, names, inputs, tmp_path, monkeypatch
):
    if "--ray" in argv and "127.0.0.1:{port}" in argv:
        pytest.importorskip("ray")
    argv = [a.replace(I, str(inputs)).replace("{port}", str(_free_port())) for a in argv]
    names = names.replace(I, str(inputs))
    monkeypatch.chdir(tmp_path)
    before = _snapshot(inputs, tmp_path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    err = err.getvalue()
    assert code == 2, f"exit {code}\nstderr: {err}\nstdout: {out.getvalue()[-500:]}"
    assert "Traceback" not in err + out.getvalue()
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    assert names in errors[0], errors[0]
    assert _snapshot(inputs, tmp_path) == before, "a file was written or changed"


def test_the_table_is_large_enough():
    assert len(CASES) >= 60


# --- the Python API ----------------------------------------------------------------------------


def test_api_bad_values_are_value_errors_that_name_them():
    from selfnorm import functional as F
    from selfnorm.config import ExperimentConfig, TrainConfig
    from selfnorm.theory import solve_selu_parameters

    x = torch.zeros(4)
    cases = [
        (lambda: F.selu(x, alpha=math.nan), "alpha=nan"),
        (lambda: F.selu(x, scale=math.inf), "scale=inf"),
        (lambda: F.alpha_dropout(x, 0.1, True, var=-1.0), "var=-1.0"),
        (lambda: F.alpha_dropout(x, 1.0, True), "p=1.0"),
        (lambda: F.alpha_dropout(x, 0.1, True, mean=math.nan), "mean=nan"),
        (lambda: F.alpha_dropout_coefficients(-0.1), "p=-0.1"),
        (lambda: solve_selu_parameters(0.0, 0.0), "var=0.0"),
        (lambda: solve_selu_parameters(math.inf, 1.0), "mean=inf"),
        (lambda: ExperimentConfig(activations=()), "activations is empty"),
        (lambda: TrainConfig(epochs=0), "epochs=0"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert name in str(e.value) and "\n" not in str(e.value), str(e.value)
