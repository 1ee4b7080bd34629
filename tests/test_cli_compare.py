import json
import math

import numpy as np
import pytest
import torch

from selfnorm.cli import main
from selfnorm.records import read_records

FAST = ["--depth", "2", "--width", "32", "--epochs", "2", "--seeds", "0", "--quiet"]


def test_compare_prints_table_and_writes_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", *FAST, "--activations", "selu,relu+bn", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "relu+bn" in text and "test acc %" in text and "±" not in text
    summary = json.loads((out / "summary.json").read_text())
    for name in ("selu", "relu+bn"):
        v = summary["variants"][name]
        for key in ("test_accuracy", "test_loss", "best_val_accuracy", "epoch_seconds"):
            # one seed: a mean, and no spread to show (std None, the table prints no "±")
            assert isinstance(v[key], float) and v[f"{key}_std"] is None
        assert v["diverged"] == 0.0
    assert summary["dataset"]["name"] == "digits"


def test_compare_json_and_toml_config(tmp_path, capsys):
    toml = tmp_path / "exp.toml"
    toml.write_text(
        'activations = ["tanh"]\nseeds = [0]\n[model]\ndepth = 1\nwidth = 16\n'
        "[train]\nepochs = 2\noptimizer = 'sgd'\nlr = 0.05\nmomentum = 0.9\n"
    )
    out = tmp_path / "run"
    assert main(["compare", "--config", str(toml), "--epochs", "1", "--out", str(out), "--json",
                 "--quiet"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["variants"]) == ["tanh"]
    cfg = json.loads((out / "config.json").read_text())
    # the explicit flag beats the file, the file beats the defaults
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["optimizer"] == "sgd"
    assert cfg["model"]["width"] == 16


def test_per_variant_dropout(tmp_path, capsys):
    out = tmp_path / "run"
    loud = [a for a in FAST if a != "--quiet"]
    args = ["compare", *loud, "--activations", "selu,relu", "--dropout", "0.05,relu=0.2"]
    assert main([*args, "--out", str(out), "--show-config"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dropout"] == 0.05 and cfg["dropout_by_activation"] == {"relu": 0.2}
    captured = capsys.readouterr()
    # --show-config: the full configuration first, as stored; then the summary, a variant a
    # line here, each with its own init and dropout kind and rate
    shown, _, rest = captured.out.partition("\nselfnorm compare: ")
    assert json.loads(shown) == cfg
    line = "  selu: lecun_normal init, alpha_dropout 0.05; relu: he_normal init, dropout 0.2"
    assert line in rest.splitlines()
    # the data's sizes once loaded (stderr: progress), as the dataset that trains has them
    sizes = json.loads((out / "summary.json").read_text())["dataset"]
    assert (f"  {sizes['train']} training, {sizes['val']} validation, {sizes['test']} test "
            "samples of shape (1, 8, 8), 10 classes") in captured.err  # fmt: skip


def test_labelled_variants_with_their_own_dropout_and_input_scaling(tmp_path, capsys):
    # one spec twice under two labels: each its own folder, drop rate and inputs
    out = tmp_path / "run"
    loud = [a for a in FAST if a != "--quiet"]
    args = ["compare", *loud, "--activations", "raw=selu,std=selu", "--dropout", "raw=selu=0.1",
            "--standardize", "global,raw=selu=none", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dropout_by_activation"] == {"raw=selu": 0.1}
    assert cfg["standardize_by_activation"] == {"raw=selu": "none"}
    assert cfg["data"]["standardize"] == "global"
    rest = capsys.readouterr().out.splitlines()
    assert "  raw=selu: lecun_normal init, alpha_dropout 0.1, inputs unstandardized" in rest
    assert "  std=selu: lecun_normal init, no dropout, inputs standardized globally" in rest
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["raw_selu", "std_selu"]
    # the raw variant's audit saw its own inputs (digits pixels in [0, 1]); the other's did not
    findings = json.loads((out / "audit.json").read_text())
    raw = [f for f in findings["raw=selu"] if f["kind"] == "input_not_standardized"]
    assert raw and 0.2 < raw[0]["measured"]["mean"] < 0.5
    assert "input_not_standardized" not in {f["kind"] for f in findings["std=selu"]}
    # a label changes nothing about the network: same spec and seed, the same initial weights
    from selfnorm.config import MlpConfig
    from selfnorm.training import build_model

    nets = [build_model(MlpConfig(2, 32), v, 0.1, (64,), 10, 0) for v in ("raw=selu", "selu")]
    for (k, a), (_, b) in zip(*(n.state_dict().items() for n in nets), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--activations", "selu,swish"], "unknown activation 'swish'"),
        (["--depth", "0"], "depth=0 must be an integer >= 1"),
        (["--width", "-5"], "width=-5"),
        (["--lr", "0"], "lr=0.0 must be > 0"),
        (["--dropout", "1.0"], r"dropout=1.0 is outside [0, 1)"),
        (["--epochs", "0"], "epochs=0"),
        (["--batch-size", "0"], "batch_size=0"),
        (["--preset", "nope"], "--preset 'nope' is unknown"),
        (["--seeds", "a,b"], "--seeds"),
        (["--dataset", "imagenet"], "imagenet"),
        (["--record-every", "0"], "record.every=0 must be an integer >= 1"),
        (["--no-record", "--tensorboard"], "drop --no-record or --tensorboard"),
        (["--stack", "1"], "stack='1'; choose auto, off, or the most runs per stack (>= 2)"),
        (
            ["--stack", "2", "--activations", "selu,relu+bn"],
            "--stack 2: variant relu+bn cannot train stacked: layer bn1 (BatchNorm1d)",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["compare", *FAST, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err
    assert not out.exists()


def test_missing_csv_column_is_a_clean_error(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n" * 10)
    out = tmp_path / "never"
    assert main(["compare", *FAST, "--dataset", f"csv:{csv}", "--target", "klass",
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "klass" in err and "label" in err
    assert not out.exists()


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", *FAST, "--activations", "selu", "--out", str(out)]) == 0
    before = (out / "summary.json").read_bytes()
    assert main(["compare", *FAST, "--activations", "selu", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == before
    # resuming a finished run recomputes nothing and gives the same summary
    assert main(["compare", "--resume", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_bytes()) == json.loads(before)


@pytest.mark.slow
def test_cnn_variant_on_image_data(tmp_path):
    out = tmp_path / "cnn"
    args = ["compare", "--model", "cnn", "--channels", "8,16", "--activations", "selu,relu",
            "--dropout", "0.05", "--epochs", "8", "--seeds", "0", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["input_shape"] == [1, 8, 8]
    for name in ("selu", "relu"):
        assert summary["variants"][name]["test_accuracy"] > 0.7  # chance is 0.1


def test_cnn_on_tabular_data_is_a_clean_error(tmp_path, capsys):
    args = ["compare", "--model", "cnn", "--dataset", "iris", "--epochs", "1", "--seeds", "0",
            "--quiet", "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(args) == 2
    assert "needs input_shape (C, H, W)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_compare_records_by_default_and_writes_tensorboard_on_request(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["compare", *FAST, "--activations", "selu,relu", "--record-every", "5"]
    assert main([*args, "--tensorboard", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["record"] == {
        "enabled": True,
        "every": 5,
        "bins": 64,
        "range": [-4.0, 4.0],
        "tensorboard": True,
        "backend": "torch",
    }
    spe = math.ceil(json.loads((out / "summary.json").read_text())["dataset"]["train"] / 128)
    for name in ("selu", "relu"):
        r = read_records(out / "runs" / name / "seed0")
        assert r.steps.tolist() == list(range(0, 2 * spe, 5))
        np.testing.assert_array_equal(r.bin_edges, np.linspace(-4, 4, 65))
        tb = out / "tensorboard" / name / "seed0"
        acc = EventAccumulator(str(tb), size_guidance={"histograms": 0, "scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Histograms("fc2/act2/post")] == r.steps.tolist()
        tags = acc.Tags()["scalars"]
        # statistics only where they mean something: zeros for ReLU, (0, 1) distance for SELU
        assert ("fc1/act1/fp_distance" in tags) == (name == "selu")
        assert ("fc1/act1/zero_frac" in tags) == (name == "relu")
        assert {"fc1/weight/tau_mean", "out/weight/tau_mean"} <= set(tags)  # one group a layer
        # the run's numbers as scalars, at each epoch's last step, equal to metrics.jsonl
        rows = [json.loads(x) for x in (out / "runs" / name / "seed0" / "metrics.jsonl")
                .read_text().splitlines()]  # fmt: skip
        for tag, key in (("train/loss", "train_loss"), ("val/accuracy", "val_accuracy")):
            events = acc.Scalars(tag)
            assert [e.step for e in events] == [r["epoch"] * spe - 1 for r in rows]
            np.testing.assert_allclose([e.value for e in events], [r[key] for r in rows],
                                       rtol=1e-6)  # fmt: skip
        result = json.loads((out / "runs" / name / "seed0" / "result.json").read_text())
        (test_acc,) = acc.Scalars("test/accuracy")
        assert test_acc.step == 2 * spe - 1
        assert test_acc.value == pytest.approx(result["test_accuracy"], rel=1e-6)

    plain = tmp_path / "plain"
    assert main(["compare", *FAST, "--activations", "selu", "--out", str(plain)]) == 0
    assert json.loads((plain / "config.json").read_text())["record"]["every"] is None  # auto
    auto = min(50, spe // 4)  # a quarter epoch, at most 50 steps
    assert read_records(plain / "runs" / "selu" / "seed0").steps.tolist() == list(
        range(0, 2 * spe, auto)
    )
    assert not (plain / "tensorboard").exists()

    off = tmp_path / "off"
    assert main(["compare", *FAST, "--activations", "selu", "--no-record", "--out", str(off)]) == 0
    assert not (off / "runs" / "selu" / "seed0" / "records").exists()


def test_preset_rates_yield_to_a_single_dropout_flag(tmp_path):
    from selfnorm.cli import build_parser
    from selfnorm.cli.compare import resolve_compare_config

    parse = build_parser().parse_args
    cfg = resolve_compare_config(parse(["compare", "--preset", "seed-keras", "--dropout", "0.3"]))
    assert cfg.dropout_for("selu") == 0.3 and cfg.dropout_for("relu") == 0.3
    cfg = resolve_compare_config(
        parse(["compare", "--preset", "seed-keras", "--activations", "selu,lrelu"])
    )
    assert cfg.dropout_for("selu") == 0.1 and cfg.dropout_for("lrelu") == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channels", "32,x"], "--channels '32,x'"),
        (["--momentum", "0.9"], "does nothing with adam"),
        (["--optimizer", "sgd", "--rmsprop-alpha", "0.9"], "only applies to --optimizer rmsprop"),
        (["--dataset", "csv:/nonexistent/file.csv"], "there is no file"),
    ],
)
def test_more_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["compare", *FAST, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_batchnorm_with_a_last_batch_of_one(tmp_path):
    # digits has 1293 training samples: batch 4 leaves one sample, which BatchNorm cannot take
    out = tmp_path / "bn"
    args = ["compare", "--activations", "relu+bn", "--batch-size", "4", "--depth", "1",
            "--width", "8", "--epochs", "1", "--seeds", "0", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "cnn", "--depth", "3"], "--depth does not apply to --model cnn (its options: "
         "--channels); drop --depth"),
        (["--model", "cnn", "--shape", "conic"], "--shape does not apply to --model cnn"),
        (["--channels", "8,16"], "--channels does not apply to --model mlp (its options: "
         "--depth, --width, --shape); drop --channels"),
    ],
)  # fmt: skip
def test_a_model_flag_of_another_kind_is_refused(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    base = ["--epochs", "1", "--seeds", "0", "--quiet", "--out", str(out)]
    assert main(["compare", *args, *base]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_model_kind_from_a_file_and_a_flag(tmp_path, capsys):
    from selfnorm.cli import build_parser
    from selfnorm.cli.compare import resolve_compare_config
    from selfnorm.config import CnnConfig, MlpConfig

    parse = build_parser().parse_args
    # a flag of another kind replaces the preset's model table (depth, width are not a CNN's)
    cfg = resolve_compare_config(parse(["compare", "--preset", "seed-keras", "--model", "cnn"]))
    assert cfg.model == CnnConfig()
    cfg = resolve_compare_config(parse(["compare", "--preset", "seed-keras", "--depth", "3"]))
    assert cfg.model == MlpConfig(depth=3, width=512)
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\nkind = "cnn"\ndepth = 3\n')
    out = tmp_path / "never"
    assert main(["compare", "--config", str(toml), "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "[model] depth does not apply to model kind 'cnn' (its settings: channels)" in err
    toml.write_text('[model]\nkind = "cnn"\n')
    assert main(["compare", "--config", str(toml), "--depth", "3", "--out", str(out)]) == 2
    assert "--depth does not apply to --model cnn" in capsys.readouterr().err
    toml.write_text('model = "cnn"\n')  # a value where a table belongs: an error, no traceback
    assert main(["compare", "--config", str(toml), "--out", str(out)]) == 2
    assert "[model] must be a table" in capsys.readouterr().err
    assert not out.exists()


def test_every_subcommand_and_option_has_help():
    import argparse

    from selfnorm.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    for name, sp in sub.choices.items():
        assert helps.get(name), f"selfnorm {name} has no help line"
        missing = [a.option_strings or a.dest for a in sp._actions if not a.help]
        assert not missing, f"selfnorm {name}: options without help: {missing}"


def test_the_summary_names_the_dropout_each_model_kind_uses():
    from selfnorm.cli.compare import describe
    from selfnorm.config import experiment_from_dict

    cfg = {"activations": ["selu", "relu"], "dropout": 0.1}
    mlp = describe(experiment_from_dict(cfg), "x")
    cnn = describe(experiment_from_dict({**cfg, "model": {"kind": "cnn"}}), "x")
    assert "selu: lecun_normal init, alpha_dropout 0.1; relu: he_normal init, dropout 0.1" in mlp
    # a CNN drops whole channels (spec.feature_dropout)
    assert "selu: lecun_normal init, feature_alpha_dropout 0.1" in cnn
    assert "relu: he_normal init, dropout2d 0.1" in cnn


def test_stack_refuses_a_cnn_with_one_line(tmp_path, capsys):
    out = tmp_path / "never"
    args = ["--epochs", "1", "--seeds", "0,1", "--quiet", "--stack", "2", "--model", "cnn"]
    assert main(["compare", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--stack 2: variant selu cannot train stacked: " in err and "--stack auto" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_stack_says_which_mode_ran_in_the_summary_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--depth", "2", "--width", "32", "--epochs", "2", "--seeds", "0,1", "--quiet"]
    assert main(["compare", *args, "--activations", "selu,relu+bn", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stacking"]["selu"] == {
        "mode": "sequential",
        "runs_per_stack": 1,
        "requested": "auto",
    }  # two seeds on a CPU: auto trains them one after another
    assert "one run at a time" in (out / "summary.md").read_text()
    out = tmp_path / "stacked"
    assert main(["compare", *args, "--stack", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {v["runs_per_stack"] for v in summary["stacking"].values()} == {2}
    text = (out / "summary.md").read_text()
    assert "seeds stacked: selu 2 per model; relu 2 per model; lrelu 2 per model" in text
    assert "Per-epoch times of stacked seeds are their stack's time shared out" in text
    alone = json.loads((tmp_path / "run" / "summary.json").read_text())["variants"]["selu"]
    for a, b in zip(summary["variants"]["selu"]["runs"], alone["runs"], strict=True):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.02)
