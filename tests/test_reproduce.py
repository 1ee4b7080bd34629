import json
import shutil

import numpy as np
import pytest
import torch

from selfnorm.cli import main
from selfnorm.dropout import AlphaDropout
from selfnorm.reproduce import roughness
from selfnorm.reproduce.seed_tf import SEED_TF_VARIANTS, printed_comparison, seed_tf_config


@pytest.mark.slow
def test_seed_tf_trains_three_variants_and_audits_the_bugs(tmp_path, capsys):
    out = tmp_path / "bugs"
    # the earlier name, seed-tf-bugs, still works
    args = ["reproduce", "seed-tf-bugs", "--dataset", "digits", "--epochs", "2", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    written, training, corrected = SEED_TF_VARIANTS
    assert set(summary["variants"]) == {written, training, corrected}
    cfg = json.loads((out / "config.json").read_text())
    # as written, the seed's dropout never fires (training defaulted to False): no dropout;
    # with training=True, keep_prob 0.7 lands in the drop-rate slot: 70% dropped
    assert cfg["dropout_by_activation"] == {written: 0.0, training: 0.7, corrected: 0.3}
    assert cfg["standardize_by_activation"] == {written: "none", training: "none"}
    assert cfg["data"]["standardize"] == "global"
    findings = json.loads((out / "audit.json").read_text())
    bugged = {(f["kind"], f["severity"]) for f in findings[written]}
    assert ("bias_nonzero", "error") in bugged
    assert ("weight_init", "error") in bugged  # Glorot on the 64 -> 512 input layer
    assert "input_not_standardized" in {f["kind"] for f in findings[written]}  # [0, 1] pixels
    assert not [f for f in findings[corrected] if f["severity"] == "error"]
    assert "input_not_standardized" not in {f["kind"] for f in findings[corrected]}
    html = (out / "report.html").read_text()
    assert "seed TensorFlow example" in html and "id=audit" in html
    assert 'id="carries"' in html and "defaults to False" in html
    assert "0.9764 after 50 epochs; this run trained 2 epochs" in html
    assert "bias_nonzero" in (out / "summary.md").read_text()


def test_seed_tf_as_written_never_drops_a_unit_and_training_true_drops_70_percent():
    from selfnorm.config import experiment_from_dict
    from selfnorm.training import build_model

    cfg = experiment_from_dict(seed_tf_config())
    written, training, _ = SEED_TF_VARIANTS
    x = torch.randn(256, 1, 28, 28)
    net = build_model(cfg.model, written, cfg.dropout_for(written), (1, 28, 28), 10, 0).train()
    assert torch.equal(net(x), net(x))  # train mode, yet deterministic: nothing is dropped
    net = build_model(cfg.model, training, cfg.dropout_for(training), (1, 28, 28), 10, 0).train()
    assert not torch.equal(net(x), net(x))
    acts = {}
    first = next(m for m in net.modules() if isinstance(m, AlphaDropout))
    first.register_forward_hook(lambda m, i, o: acts.update(inp=i[0], out=o))
    net(x)
    # a dropped unit is set to the same value a * alpha' + b; the kept ones vary
    dropped = acts["out"] == acts["out"].flatten().mode().values
    assert abs(float(dropped.float().mean()) - 0.7) < 0.01


def test_seed_tf_printed_comparison_at_the_seeds_epoch_count():
    written = next(iter(SEED_TF_VARIANTS))
    summary = {"variants": {written: {"test_accuracy": 0.9712}}}
    assert printed_comparison(summary, 50).endswith("as written here: 0.9712.")
    summary = {"variants": {written: {"test_accuracy": None}}}
    assert printed_comparison(summary, 50).endswith("as written here: diverged.")
    assert "--epochs 50" in printed_comparison(summary, 3)


def test_figure1_curves_and_variability(tmp_path, capsys):
    out = tmp_path / "f1"
    args = ["reproduce", "figure1", "--dataset", "digits", "--depths", "2,3", "--epochs", "2",
            "--train-samples", "600", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    result = json.loads((out / "figure1.json").read_text())
    assert set(result["curves"]) == {
        "selu depth 2", "selu depth 3", "relu+bn depth 2", "relu+bn depth 3",
    }  # fmt: skip
    assert result["config"]["steps_per_epoch"] == 5  # 600 samples, batch 128: 4 full + 88
    assert result["config"]["partial_steps_left_out"] == 2
    for c in result["curves"].values():
        loss = np.array(c["loss"])
        assert len(loss) == 8 and c["step"] == [1, 2, 3, 4, 6, 7, 8, 9]  # full batches only
        assert c["roughness"] == pytest.approx(np.std(np.diff(np.log(loss))))
        assert c["mean_log_loss"] == pytest.approx(np.mean(np.log(loss)))
    assert "lr 0.01 for 2 epoch(s) over 600 training images" in (out / "report.html").read_text()
    assert (out / "figure1.png").read_bytes()[:4] == b"\x89PNG"
    assert main(args) == 2  # never overwritten silently
    assert "--overwrite" in capsys.readouterr().err


def test_roughness_of_known_curves():
    assert roughness(np.array([1.0, 0.5, 0.25])) == pytest.approx(0.0)
    zigzag = np.array([1.0, 0.5, 1.0, 0.5, 1.0])
    assert roughness(zigzag) == pytest.approx(np.log(2))


@pytest.mark.slow
def test_seed_keras_as_written_validates_on_test_and_corrected_picks_on_validation(tmp_path):
    from selfnorm.reproduce.seed_keras import selection_rows

    out = tmp_path / "keras"
    args = ["reproduce", "seed-keras", "--dataset", "digits", "--epochs", "3", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    written = json.loads((out / "as-written/summary.json").read_text())
    corrected = json.loads((out / "corrected/summary.json").read_text())
    # as written: every training image, and the test set is the validation data
    assert written["dataset"]["val"] == written["dataset"]["test"] == corrected["dataset"]["test"]
    assert (
        written["dataset"]["train"] == corrected["dataset"]["train"] + corrected["dataset"]["val"]
    )
    run = written["variants"]["selu@glorot-uniform"]["runs"][0]
    rows = [json.loads(x) for x in (out / "as-written/runs/selu_glorot-uniform/seed0/metrics.jsonl")
            .read_text().splitlines()]  # fmt: skip
    assert rows[-1]["val_accuracy"] == pytest.approx(run["test_accuracy"])  # the same set
    cfg = json.loads((out / "as-written/config.json").read_text())
    assert cfg["data"]["standardize"] == "none" and cfg["train"]["optimizer"] == "rmsprop"
    assert cfg["train"]["rmsprop_alpha"] == 0.9 and cfg["train"]["batch_size"] == 128
    assert cfg["dropout_by_activation"] == {"selu@glorot-uniform": 0.1, "relu@glorot-uniform": 0.2}
    # corrected: the test set scored every epoch; the pick on validation is its own epoch's
    for name in ("selu", "relu"):
        history = [json.loads(x) for x in (out / f"corrected/runs/{name}/seed0/metrics.jsonl")
                   .read_text().splitlines()]  # fmt: skip
        tests = [r["test_accuracy"] for r in history]
        vals = [r["val_accuracy"] for r in history]
        m = corrected["variants"][name]["runs"][0]
        assert m["best_test_accuracy"] == max(tests)
        assert m["test_accuracy_at_best_val"] == tests[vals.index(max(vals))]
        assert m["test_accuracy"] == pytest.approx(tests[-1])  # the last epoch's model
    picked = {(r["net"], r["activation"]): r for r in selection_rows(
        {"as-written": written, "corrected": corrected})}  # fmt: skip
    assert picked["as-written", "selu"]["picked_on_val"] == (None, None)
    assert picked["corrected", "relu"]["optimism"][0] >= 0  # picking on test never reports less
    page = (out / "report.html").read_text()
    assert 'id="selection"' in page and 'href="as-written/report.html"' in page
    assert "this run trained 3" in page
    assert (out / "as-written/report.html").exists() and (out / "corrected/report.html").exists()
    assert "validation_data" in (out / "as-written/report.html").read_text()
    assert main(args) == 2  # an existing run is neither replaced nor mixed into
    assert main([*args, "--resume"]) == 0  # finished: resumes to the same numbers
    shutil.rmtree(out / "corrected")  # stopped before the second run had started
    assert main([*args, "--resume"]) == 0  # it starts afresh, the first is kept
    assert (
        json.loads((out / "corrected/summary.json").read_text())["variants"]["selu"][
            "test_accuracy"
        ]
        == corrected["variants"]["selu"]["test_accuracy"]
    )


@pytest.mark.slow
def test_activation_histograms_as_written_and_corrected(tmp_path):
    out = tmp_path / "avh"
    args = ["reproduce", "activation-histograms", "--dataset", "digits", "--epochs", "1",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    written = json.loads((out / "as-written/config.json").read_text())
    flags = ["project_init", "bn_after_relus", "plain_dropout", "activated_logits"]
    assert written["model"] == {
        "kind": "avh",
        "channels": [32, 64, 128],
        **dict.fromkeys(flags, True),
    }
    assert json.loads((out / "corrected/config.json").read_text())["model"] == {
        "kind": "avh", "channels": [32, 64, 128], **dict.fromkeys(flags, False)}  # fmt: skip
    # one run per confound, for the variants it touches
    no_bn = json.loads((out / "no-bn/config.json").read_text())
    assert no_bn["activations"] == ["relu", "lrelu:0.2"] and not no_bn["model"]["bn_after_relus"]
    assert json.loads((out / "alpha-dropout/config.json").read_text())["activations"] == ["selu"]
    assert written["train"]["clip_grad_norm"] == 20.0 and written["train"]["lr"] == 1e-4
    assert written["data"]["standardize"] == "none" and written["dropout"] == 0.5
    findings = json.loads((out / "as-written/audit.json").read_text())
    selu = {f["kind"] for f in findings["selu"]}
    assert "output_activation" in selu  # the activation on the logits
    assert {"dropout_with_selu", "weight_init", "input_not_standardized"} <= selu
    assert "norm_with_selu" not in selu  # BatchNorm only for the ReLUs
    assert "output_activation" in {f["kind"] for f in findings["relu"]}
    corrected = json.loads((out / "corrected/audit.json").read_text())
    # (on 8x8 digits the zero padding of 5x5 convolutions still shrinks SELU's variance: drift)
    fixed = {f["kind"] for f in corrected["selu"]}
    assert not fixed & {"dropout_with_selu", "weight_init", "output_activation", "bias_nonzero"}
    page = (out / "report.html").read_text()
    assert 'href="as-written/report.html"' in page and "BatchNorm after ReLU" in page
    assert "Without the BatchNorm after the ReLUs: " in page and "With linear logits: " in page
    assert "histograms" in (out / "corrected/report.html").read_text()


def test_the_activation_histograms_network_as_written():
    from selfnorm.config import AvhConfig
    from selfnorm.models import build_avh

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        relu = dict(build_avh((1, 28, 28), 10, "relu", generator=gen).named_children())
    names = list(relu)
    assert names.index("bn1") == names.index("act1") + 1  # BatchNorm after the activation
    assert isinstance(relu["act_out"], torch.nn.ReLU)  # activated logits
    assert relu["fc4"].out_features == 160 and relu["fc5"].out_features == 40
    w = relu["conv1"].weight.detach()
    assert float(w.abs().max()) <= 0.04 and abs(float(w.std()) - 0.0176) < 0.002  # 2-std cut
    bound = (6 / (128 * 4 * 4 + 160)) ** 0.5  # Glorot uniform
    assert float(relu["fc4"].weight.detach().abs().max()) <= bound
    selu = dict(build_avh((1, 28, 28), 10, "selu", generator=gen).named_children())
    assert "bn1" not in selu and type(selu["drop1"]) is torch.nn.Dropout  # plain, as written
    fixed = dict(build_avh((1, 28, 28), 10, "selu", AvhConfig.corrected(), generator=gen)
                 .named_children())  # fmt: skip
    assert isinstance(fixed["drop1"], AlphaDropout) and "act_out" not in fixed
    with pytest.raises(ValueError, match=r"takes no \+ln"):
        build_avh((1, 28, 28), 10, "relu+ln")
    with pytest.raises(ValueError, match="bn_after_relus = false"):
        build_avh((1, 28, 28), 10, "selu+bn")
    net = build_avh((1, 28, 28), 10, "selu+bn", AvhConfig.corrected())
    assert isinstance(dict(net.named_children())["bn1"], torch.nn.BatchNorm2d)
    assert abs(float(fixed["fc5"].weight.detach().var()) * 160 - 1) < 0.1  # LeCun: var 1 / fan_in
