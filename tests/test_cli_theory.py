import json

from selfnorm.cli import main
from selfnorm.constants import ALPHA_01, LAMBDA_01
from selfnorm.theory import solve_selu_parameters


def test_theory_json(capsys, tmp_path):
    png = tmp_path / "g.png"
    assert main(["theory", "--json", "--grid", "8", "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lambda"] == LAMBDA_01 and out["alpha"] == ALPHA_01
    assert abs(out["jacobian"][0][1] - 0.088834) < 1e-6
    assert abs(out["jacobian"][1][1] - 0.782648) < 1e-6
    assert round(out["spectral_norm"], 4) == 0.7877
    assert [t["name"] for t in out["theorems"]] == ["theorem1", "theorem2", "theorem3", "theorem3b"]
    assert all(t["holds"] and t["grid_size"] == 8**4 for t in out["theorems"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_theory_text(capsys):
    assert main(["theory", "--grid", "6"]) == 0
    out = capsys.readouterr().out
    assert "1.0507009873554805" in out and "theorem3: holds" in out


def test_solve_json(capsys):
    argv = ["solve", "--mean", "0.1", "--var", "1.5", "--convention", "notebook", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["lambda"], out["alpha"]) == solve_selu_parameters(0.1, 1.5, "notebook")


def test_solve_bad_input_exits_2_with_one_line(capsys):
    assert main(["solve", "--var", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "var=0.0 is outside [1e-08, 1e+08]" in err
