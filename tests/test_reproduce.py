import json

import numpy as np
import pytest

from selfnorm.cli import main
from selfnorm.reproduce import roughness


@pytest.mark.slow
def test_seed_tf_trains_both_and_audits_the_bugs(tmp_path, capsys):
    out = tmp_path / "bugs"
    # the earlier name, seed-tf-bugs, still works
    args = ["reproduce", "seed-tf-bugs", "--dataset", "digits", "--epochs", "2", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["variants"]) == {"selu@seed-tf", "selu"}
    cfg = json.loads((out / "config.json").read_text())
    # as written, the seed's dropout never fires (training defaulted to False): no dropout
    assert cfg["dropout_by_activation"] == {"selu@seed-tf": 0.0, "selu": 0.3}
    findings = json.loads((out / "audit.json").read_text())
    bugged = {(f["kind"], f["severity"]) for f in findings["selu@seed-tf"]}
    assert ("bias_nonzero", "error") in bugged
    assert ("weight_init", "error") in bugged  # Glorot on the 64 -> 512 input layer
    assert not [f for f in findings["selu"] if f["severity"] == "error"]
    html = (out / "report.html").read_text()
    assert "seed TensorFlow example" in html and "id=audit" in html
    assert "defaults to False" in html and "bias_nonzero" in (out / "summary.md").read_text()


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
