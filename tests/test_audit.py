"""selfnorm.audit and ``selfnorm check``: every trap caught once, on the right layer; correct SNNs
pass clean; hooks, modes and inputs left as they were."""

import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from selfnorm import SELU, AlphaDropout, FeatureAlphaDropout, init_snn_
from selfnorm.auditing import KINDS, Finding, audit, infer_input_shape
from selfnorm.cli import main
from selfnorm.findings import MODEL as MODEL_NAME
from selfnorm.models import build_cnn, build_mlp
from selfnorm.theory import g, solve_selu_parameters


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def seq(*named):
    return nn.Sequential(OrderedDict(named))


def snn(inp=64, width=256, depth=3, act=SELU, drop=None, seed=0):
    """fc{i} -> act{i} [-> drop{i}] blocks and a linear ``out``, LeCun init, zero biases."""
    layers, prev = [], inp
    for i in range(1, depth + 1):
        layers += [(f"fc{i}", nn.Linear(prev, width)), (f"act{i}", act())]
        if drop is not None:
            layers.append((f"drop{i}", drop()))
        prev = width
    layers.append(("out", nn.Linear(prev, 10)))
    return init_snn_(seq(*layers), gen(seed))


def problems(findings):
    """(severity, kind, layer) of every warning and error."""
    return [(f.severity, f.kind, f.layer) for f in findings if f.severity != "info"]


def infos(findings):
    return [(f.kind, f.layer) for f in findings if f.severity == "info"]


class Scale(nn.Module):
    """A module the audit cannot see through: multiplies by a constant."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return self.c * x


# --- correct networks pass clean -------------------------------------------------------------


def test_build_mlp_snn_has_no_findings():
    net = build_mlp(784, 10, depth=4, width=256, spec="selu", dropout=0.05, generator=gen())
    assert audit(net) == []


def test_hand_built_snn_has_no_findings():
    net = snn(drop=lambda: AlphaDropout(0.05))
    assert audit(net) == []
    net = snn(act=nn.SELU, drop=lambda: nn.AlphaDropout(0.1))  # torch's own SELU and dropout
    assert audit(net) == []


def test_cnn_snn_has_no_findings_with_an_input_shape():
    net = build_cnn((1, 28, 28), 10, "selu", channels=(8, 16), dropout=0.05, generator=gen())
    assert audit(net, input_shape=(64, 1, 28, 28)) == []


@pytest.mark.parametrize("width", [8, 16, 64, 512])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_false_drift_in_deep_correct_networks(width, seed):
    """Finite width makes a correct network wander off (0, 1) (width 8: variance 0.3-3); the
    band's finite-width terms keep that from being reported as a problem."""
    inp = 784 if width > 32 else 20
    net = build_mlp(inp, 10, depth=16, width=width, spec="selu", generator=gen(seed))
    assert audit(net) == []


def test_custom_fixed_point_snn_passes_and_mismatched_dropout_is_caught():
    lam, alpha = solve_selu_parameters(0.0, 1.5)
    matched = AlphaDropout(0.1, mean=0.0, var=1.5, saturation=-lam * alpha)
    net = snn(depth=6, act=lambda: SELU(alpha, lam), drop=lambda: matched)
    assert audit(net) == []  # the made-up input is drawn at the fixed point (0, 1.5)
    net = snn(depth=2, act=lambda: SELU(alpha, lam), drop=lambda: AlphaDropout(0.1))
    found = audit(net)
    assert problems(found) == [
        ("warning", "alpha_dropout_mismatch", "drop1"),
        ("warning", "alpha_dropout_mismatch", "drop2"),
    ]
    assert found[0].expected["var"] == pytest.approx(1.5, abs=1e-6)
    assert found[0].expected["saturation"] == pytest.approx(-lam * alpha, abs=1e-5)


# --- the seed TensorFlow example's three bugs ------------------------------------------------


def test_keep_prob_passed_as_rate():
    net = snn(depth=1, drop=lambda: AlphaDropout(0.7))
    (f,) = audit(net)
    assert (f.severity, f.kind, f.layer) == ("error", "dropout_rate_looks_like_keep_prob", "drop1")
    assert f.measured["p"] == 0.7 and "p=0.3" in f.fix
    net = snn(depth=1, drop=lambda: nn.Dropout(0.8), act=nn.ReLU)
    assert ("warning", "dropout_rate_looks_like_keep_prob", "drop1") in problems(audit(net))


def test_biases_drawn_from_standard_normal():
    net = snn()
    nn.init.normal_(net.fc2.bias, 0.0, 1.0, generator=gen(1))
    found = audit(net)
    assert problems(found) == [("error", "bias_nonzero", "fc2")]
    (f,) = [f for f in found if f.kind == "bias_nonzero"]
    assert 0.8 < f.measured["bias_rms"] < 1.2 and f.expected["bias_rms"] == 0.0
    # the drift it causes is shown, as info that points at the cause
    drift = [f for f in found if f.kind == "activation_drift"]
    assert all(d.severity == "info" and "bias_nonzero on fc2" in d.fix for d in drift)


def test_small_biases_are_info_and_middling_ones_warnings():
    net = snn()
    with torch.no_grad():
        net.fc1.bias.fill_(0.05)
        net.fc2.bias.fill_(0.3)
    found = audit(net)
    assert problems(found) == [("warning", "bias_nonzero", "fc2")]
    assert ("bias_nonzero", "fc1") in infos(found)


def test_xavier_instead_of_lecun():
    net = snn(inp=64, width=256)
    nn.init.xavier_normal_(net.fc1.weight, generator=gen(1))
    found = audit(net)
    assert problems(found) == [("error", "weight_init", "fc1")]
    f = found[0]
    assert f.measured["tau_mean"] == pytest.approx(2 * 64 / (64 + 256), abs=0.03)
    assert f.expected["weight_std"] == pytest.approx(1 / 8, abs=1e-6)
    assert f.measured["looks_like"] == "xavier_glorot" and "Xavier" in f.fix


def test_seed_tf_network_as_written():
    """The seed's 4x512 network: keep_prob 0.7 as rate, N(0, 1) biases, Xavier init. Xavier
    equals LeCun for the square 512x512 layers, so only the 784->512 layer has a bad init."""
    layers, prev = [], 784
    for i in range(1, 5):
        fc = nn.Linear(prev, 512)
        nn.init.xavier_normal_(fc.weight, generator=gen(i))
        nn.init.normal_(fc.bias, 0.0, 1.0, generator=gen(10 + i))
        layers += [(f"fc{i}", fc), (f"act{i}", SELU()), (f"drop{i}", AlphaDropout(0.7))]
        prev = 512
    layers.append(("out", nn.Linear(512, 10)))
    found = audit(seq(*layers))
    expected = [("error", "weight_init", "fc1"), ("error", "bias_nonzero", "fc1")]
    expected.append(("error", "dropout_rate_looks_like_keep_prob", "drop1"))
    for i in range(2, 5):
        expected += [
            ("error", "bias_nonzero", f"fc{i}"),
            ("error", "dropout_rate_looks_like_keep_prob", f"drop{i}"),
        ]
    assert problems(found) == expected
    assert infos(found) == [("activation_drift", "act1")]


# --- PyTorch and Keras init traps ------------------------------------------------------------


def test_kaiming_normal_with_selu_gain():
    net = snn(inp=64, width=256, depth=3)
    for i in (1, 2, 3):
        nn.init.kaiming_normal_(
            getattr(net, f"fc{i}").weight, nonlinearity="selu", generator=gen(i)
        )
    found = audit(net)
    assert problems(found) == [("error", "weight_init", f"fc{i}") for i in (1, 2, 3)]
    for f in found:
        if f.kind == "weight_init":
            assert f.measured["tau_mean"] == pytest.approx(9 / 16, abs=0.03)
            assert f.measured["looks_like"] == "selu_gain_3/4" and "3/4" in f.fix


def test_pytorch_default_linear_init():
    torch.manual_seed(0)
    net = seq(("fc1", nn.Linear(256, 256)), ("act1", SELU()), ("out", nn.Linear(256, 10)))
    found = audit(net)
    assert problems(found) == [("error", "weight_init", "fc1")]
    assert found[0].measured["tau_mean"] == pytest.approx(1 / 3, abs=0.02)
    assert found[0].measured["looks_like"] == "torch_default"
    # uniform(-1/sqrt(n), 1/sqrt(n)) biases: rms 1/sqrt(3n) = 0.036, harmless, reported as info
    assert ("bias_nonzero", "fc1") in infos(found)


def test_keras_style_glorot_uniform():
    net = snn(inp=256, width=64, depth=2)
    nn.init.xavier_uniform_(net.fc1.weight, generator=gen(1))
    found = audit(net)
    assert problems(found) == [("error", "weight_init", "fc1")]
    assert found[0].measured["tau_mean"] == pytest.approx(2 * 256 / 320, abs=0.05)
    assert found[0].measured["looks_like"] == "xavier_glorot"


def test_unit_normal_weights():
    net = snn(inp=64, width=128, depth=1)
    nn.init.normal_(net.fc1.weight, 0.0, 1.0, generator=gen(1))
    (f,) = [f for f in audit(net) if f.severity == "error"]
    assert (f.kind, f.layer, f.measured["looks_like"]) == ("weight_init", "fc1", "unit_normal")


def test_weight_tolerance_follows_the_number_of_weights():
    """Theorem 1's tau in [0.95, 1.1], widened by 4 standard errors sqrt(2/N)."""

    def flagged(fan_in, fan_out, tau, seed):
        net = snn(inp=fan_in, width=fan_out, depth=1, seed=seed)
        with torch.no_grad():
            net.fc1.weight.mul_(math.sqrt(tau))
        return any(f.kind == "weight_init" for f in audit(net))

    # 401,408 weights: the band is [0.941, 1.109]
    assert flagged(784, 512, 0.92, 0) and flagged(784, 512, 1.13, 0)
    assert not flagged(784, 512, 0.96, 0) and not flagged(784, 512, 1.08, 0)
    # few weights: chance alone moves tau far, a correct init is never flagged
    assert not any(flagged(8, 4, 1.0, seed) for seed in range(100))


def test_omega_far_from_zero_is_a_weight_init_error():
    net = snn(inp=64, width=256, depth=1)
    with torch.no_grad():
        net.fc1.weight.abs_()  # all weights positive: omega ~ 6.4, tau still 1
    (f,) = problems(audit(net))
    assert f == ("error", "weight_init", "fc1")


# --- dropout, norms, activations -------------------------------------------------------------


def test_plain_dropout_with_selu():
    net = snn(depth=1, drop=lambda: nn.Dropout(0.1))
    assert problems(audit(net)) == [("error", "dropout_with_selu", "drop1")]
    # dropout before the activation is next to it too
    net = init_snn_(
        seq(
            ("fc1", nn.Linear(64, 128)),
            ("drop1", nn.Dropout(0.1)),
            ("act1", SELU()),
            ("out", nn.Linear(128, 10)),
        ),
        gen(),
    )
    assert problems(audit(net)) == [("error", "dropout_with_selu", "drop1")]


def test_alpha_dropout_with_relu():
    net = snn(depth=1, act=nn.ReLU, drop=lambda: AlphaDropout(0.1))
    found = audit(net)
    assert problems(found) == [("error", "alpha_dropout_without_selu", "drop1")]
    assert infos(found) == [("no_selu", "<model>")]


def test_batchnorm_around_selu():
    net = build_mlp(64, 10, depth=1, width=128, spec="selu+bn", generator=gen())
    found = audit(net)
    assert problems(found) == [("warning", "norm_with_selu", "bn1")]
    net = init_snn_(
        seq(
            ("fc1", nn.Linear(64, 128)),
            ("act1", SELU()),
            ("ln1", nn.LayerNorm(128)),
            ("out", nn.Linear(128, 10)),
        ),
        gen(),
    )
    assert problems(audit(net)) == [("warning", "norm_with_selu", "ln1")]


def test_activation_after_the_output_layer():
    net = snn(depth=2)
    net.add_module("softmax", nn.Softmax(dim=-1))
    assert problems(audit(net)) == [("warning", "output_activation", "softmax")]
    net = snn(depth=2)
    net.add_module("logsoftmax", nn.LogSoftmax(dim=-1))
    found = audit(net)
    assert problems(found) == [] and infos(found) == [("output_activation", "logsoftmax")]


def test_inplace_activation_is_info_and_measured_correctly():
    net = init_snn_(
        seq(
            ("fc1", nn.Linear(64, 256)),
            ("act1", nn.SELU(inplace=True)),
            ("drop1", nn.AlphaDropout(0.1, inplace=True)),
            ("out", nn.Linear(256, 10)),
        ),
        gen(),
    )
    x = torch.randn(128, 64, generator=gen(3))
    before = x.clone()
    found = audit(net, x)
    assert problems(found) == []
    assert infos(found) == [("inplace_op", "act1"), ("inplace_op", "drop1")]
    assert torch.equal(x, before)  # the audit ran on a copy


# --- dynamic findings ------------------------------------------------------------------------


def test_non_standardized_input():
    net = snn()
    raw = torch.rand(256, 64, generator=gen(1))  # pixels in [0, 1]: mean 0.5, var 1/12
    found = audit(net, raw)
    assert problems(found) == [("warning", "input_not_standardized", "<input>")]
    f = found[0]
    assert f.measured["mean"] == pytest.approx(0.5, abs=0.02)
    assert f.measured["var"] == pytest.approx(1 / 12, abs=0.01)
    assert all(d.severity == "info" for d in found if d.kind == "activation_drift")
    standardized = (raw - raw.mean(0)) / raw.std(0)
    assert audit(net, standardized) == []


def test_drift_agrees_with_the_mapping_g_and_names_the_layer():
    """A x3 scaling before act3 (invisible to the static checks) puts nu = 9 into the SELU;
    the measured output variance is g's prediction, and the drift is reported at act3."""
    named = list(snn(depth=6).named_children())
    net = seq(*named[:5], ("scale", Scale(3.0)), *named[5:])
    assert [n for n, _ in net.named_children()][4:7] == ["fc3", "scale", "act3"]
    found = audit(net)
    assert problems(found) == [("error", "activation_drift", "act3")]
    f = found[0]
    _, nu = g(0.0, 0.0, 9.0, 1.0)
    assert f.measured["var"] == pytest.approx(float(nu), rel=0.05)
    assert f.measured["selu_index"] == 3 and f.measured["selu_count"] == 6
    assert f.expected["var"][0] < 0.8 and f.expected["var"][1] > 1.5


def test_drift_that_recovers_is_a_warning():
    net = snn(depth=12)
    named = list(net.named_children())
    net = seq(*named[:3], ("scale", Scale(2.0)), *named[3:])  # fc1 act1 fc2 scale act2 ...
    found = audit(net)
    assert problems(found) == [("warning", "activation_drift", "act2")]
    assert found[0].measured["last_in_band"] is True


# --- order, fallbacks, side effects ----------------------------------------------------------


class OutOfOrder(nn.Module):
    """Registered in an order that differs from the order forward() uses them."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(128, 10)
        self.softmax = nn.Softmax(dim=-1)
        self.fc1 = nn.Linear(64, 128)
        self.act1 = SELU()

    def forward(self, x):
        return self.softmax(self.out(self.act1(self.fc1(x))))


def test_neighbours_follow_execution_order():
    net = init_snn_(OutOfOrder(), gen())
    assert infer_input_shape(net) == (256, 64)  # out (128 inputs) is registered first
    nn.init.kaiming_normal_(net.fc1.weight, nonlinearity="selu", generator=gen(1))
    found = audit(net)
    assert problems(found) == [
        ("error", "weight_init", "fc1"),
        ("warning", "output_activation", "softmax"),
    ]


def test_registration_order_when_no_input_can_be_made():
    net = build_cnn((1, 28, 28), 10, "selu", channels=(8, 16), generator=gen())
    named = list(net.named_children())  # conv1 act1 conv2 act2 pool flatten out
    net = seq(*named[:2], ("drop1", nn.Dropout2d(0.1)), *named[2:])
    assert infer_input_shape(net) is None  # the first layer is a Conv: no spatial size
    found = audit(net)
    assert problems(found) == [("error", "dropout_with_selu", "drop1")]
    assert infos(found) == [("dynamic_check_skipped", "<model>")]


def test_inferred_input_that_does_not_fit_is_reported_a_given_one_raises():
    net = seq(("split", nn.Unflatten(1, (2, 6))), ("fc", nn.Linear(6, 32)), ("act", SELU()))
    assert infer_input_shape(net) is None  # in_features 6, but the model takes 12 features
    found = audit(net)
    assert infos(found)[0] == ("dynamic_check_skipped", "<model>")
    assert "(N, 6) failed" in found[0].measured["input"]
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        audit(snn(), input_shape=(4, 3))
    with pytest.raises(ValueError, match="not both"):
        audit(snn(), torch.zeros(2, 64), input_shape=(2, 64))
    with pytest.raises(ValueError, match="positive integers"):
        audit(snn(), input_shape=(0, 64))


def test_hooks_removed_modes_restored_state_untouched():
    net = build_mlp(64, 10, depth=2, width=128, spec="selu+bn", dropout=0.1, generator=gen())
    net.train()
    net.bn2.eval()  # a mixed state must come back exactly
    modes = {n: m.training for n, m in net.named_modules()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    audit(net)
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN stats too
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_hooks_removed_when_the_forward_raises():
    net = snn()
    with pytest.raises(ValueError):
        audit(net, torch.zeros(3, 5))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert net.training


def test_findings_are_frozen_and_json_ready():
    f = Finding("error", "fc1", "weight_init", {"tau_mean": float("nan")}, {"tau": [0.9, 1.1]}, "x")
    assert f.to_dict() == {
        "severity": "error",
        "layer": "fc1",
        "kind": "weight_init",
        "measured": {"tau_mean": "nan"},
        "expected": {"tau": [0.9, 1.1]},
        "fix": "x",
    }
    with pytest.raises(AttributeError):
        f.severity = "info"
    with pytest.raises(TypeError):
        f.measured["tau_mean"] = 1.0
    assert hash(f) == hash(Finding("error", "fc1", "weight_init", {}, {}, "x"))
    with pytest.raises(ValueError, match="kind"):
        Finding("error", "fc1", "nope", {}, {}, "x")
    with pytest.raises(ValueError, match="severity"):
        Finding("fatal", "fc1", "weight_init", {}, {}, "x")


def test_every_finding_has_a_one_line_fix_and_a_known_kind():
    nets = [snn(drop=lambda: nn.Dropout(0.9)), snn(act=nn.ReLU, drop=lambda: AlphaDropout(0.6))]
    for net in nets:
        for f in audit(net):
            assert f.kind in KINDS and f.fix and "\n" not in f.fix
            json.dumps(f.to_dict())


def test_feature_alpha_dropout_after_conv_selu_is_fine():
    net = build_cnn((3, 16, 16), 10, "selu", channels=(16, 32), dropout=0.1, generator=gen())
    assert isinstance(net.drop1, FeatureAlphaDropout)
    assert audit(net, input_shape=(32, 3, 16, 16)) == []


# --- the CLI ---------------------------------------------------------------------------------

FACTORIES = """
import torch
from torch import nn
import selfnorm
from selfnorm.models import build_mlp


def good():
    return build_mlp(784, 10, depth=3, width=128, spec="selu", dropout=0.05,
                     generator=torch.Generator().manual_seed(0))


def seed_tf():
    torch.manual_seed(0)
    layers, prev = [], 784
    for _ in range(2):
        fc = nn.Linear(prev, 512)
        nn.init.xavier_normal_(fc.weight)
        nn.init.normal_(fc.bias, 0.0, 1.0)
        layers += [fc, selfnorm.SELU(), selfnorm.AlphaDropout(0.7)]
        prev = 512
    return nn.Sequential(*layers, nn.Linear(512, 10))


def warn_only():
    net = good()
    net.add_module("softmax", nn.Softmax(dim=-1))
    return net


def cnn():
    from selfnorm.models import build_cnn
    return build_cnn((1, 12, 12), 10, "selu", channels=(8,),
                     generator=torch.Generator().manual_seed(0))


def needs_args(width, depth=2):
    return good()


def not_a_model():
    return 42


NOT_CALLABLE = 3
"""


@pytest.fixture
def models_py(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(FACTORIES)
    return path


def test_cli_clean_model_exits_0(models_py, capsys):
    assert main(["check", f"{models_py}:good"]) == 0
    out = capsys.readouterr().out
    assert "(256, 784)" in out and "no findings" in out and "exit 0" in out


def test_cli_batch_of_one_correct_model_is_clean(models_py, capsys):
    """The issue's example shape: one sample; statistics across units still hold."""
    assert main(["check", f"{models_py}:good", "--input-shape", "1,784", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"findings": []}


def test_cli_seed_bugs_exit_1_with_a_table(models_py, capsys):
    assert main(["check", f"{models_py}:seed_tf"]) == 1
    out = capsys.readouterr().out
    assert "SEVERITY" in out and "dropout_rate_looks_like_keep_prob" in out and "fix:" in out


def test_cli_json(models_py, capsys):
    assert main(["check", f"{models_py}:seed_tf", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["findings"]
    rows = doc["findings"]
    assert all(
        list(r) == ["severity", "layer", "kind", "measured", "expected", "fix"] for r in rows
    )
    got = [(r["severity"], r["kind"], r["layer"]) for r in rows if r["severity"] != "info"]
    assert got == [
        ("error", "weight_init", "0"),
        ("error", "bias_nonzero", "0"),
        ("error", "dropout_rate_looks_like_keep_prob", "2"),
        ("error", "bias_nonzero", "3"),
        ("error", "dropout_rate_looks_like_keep_prob", "5"),
    ]


def test_cli_warnings_exit_0(models_py, capsys):
    assert main(["check", f"{models_py}:warn_only", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["findings"]
    assert [(r["severity"], r["kind"], r["layer"]) for r in rows] == [
        ("warning", "output_activation", "softmax")
    ]


def test_cli_input_shape_for_a_cnn(models_py, capsys):
    assert main(["check", f"{models_py}:cnn", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["findings"]
    assert [r["kind"] for r in rows] == ["dynamic_check_skipped"]
    assert main(["check", f"{models_py}:cnn", "--input-shape", "64,1,12,12", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"findings": []}


def test_cli_module_name_from_the_working_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "audit_cli_factories.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "audit_cli_factories", raising=False)
    assert main(["check", "audit_cli_factories:good", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"findings": []}
    __import__("sys").modules.pop("audit_cli_factories", None)


@pytest.mark.parametrize(
    ("target", "extra", "message"),
    [
        ("{path}", [], "MODULE_OR_FILE:FACTORY"),
        ("{dir}/missing.py:good", [], "no such file"),
        ("no_such_module_xyz:good", [], "no module named 'no_such_module_xyz'"),
        ("{path}:nope", [], "callables defined there: cnn, good, needs_args"),
        ("{path}:NOT_CALLABLE", [], "not a callable"),
        ("{path}:needs_args", [], "requires width"),
        ("{path}:not_a_model", [], "not a torch.nn.Module"),
        ("{path}:good", ["--input-shape", "256,x"], "positive integers"),
        ("{path}:good", ["--input-shape", "0,784"], "positive integers"),
        ("{path}:good", ["--input-shape", "8,5"], "shape (8, 5)"),
    ],
)
def test_cli_bad_usage_exits_2_with_one_line(models_py, capsys, target, extra, message):
    target = target.format(path=models_py, dir=models_py.parent)
    assert main(["check", target, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("selfnorm check: error:")
    assert message in err


# --- functional calls: the inert-dropout trap ---------------------------------------------------


class _SeedTfAsWritten(nn.Module):
    """The seed TensorFlow network as written, in PyTorch: Glorot weights, N(0, 1) biases, and
    its dropout_selu(x, keep_prob) call, whose ``training`` defaulted to False, as
    ``F.alpha_dropout(x, p)``, whose ``training`` defaults to False as well."""

    def __init__(self, fixed: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in
                                    [(784, 512), (512, 512), (512, 512), (512, 512)])  # fmt: skip
        self.out = nn.Linear(512, 10)
        for m in [*self.layers, self.out]:
            nn.init.xavier_uniform_(m.weight, generator=g)
            nn.init.normal_(m.bias, generator=g)
        self.fixed = fixed

    def forward(self, x):
        for layer in self.layers:
            x = F.selu(layer(x))
            if self.fixed:
                x = F.alpha_dropout(x, 0.3, training=self.training)
            else:
                x = F.alpha_dropout(x, 0.7)
        return self.out(x)


def test_the_seed_tf_network_as_written_has_inert_dropout():
    found = audit(_SeedTfAsWritten())
    inert = [f for f in found if f.kind == "inert_dropout"]
    assert [(f.severity, f.layer, f.measured["call"]) for f in inert] == [
        ("error", MODEL_NAME, k) for k in (1, 3, 5, 7)
    ]
    assert inert[0].measured["function"] == "F.alpha_dropout" and inert[0].measured["p"] == 0.7
    assert "training=self.training" in inert[0].fix
    kinds = {f.kind for f in found}
    assert "no_selu" not in kinds  # F.selu is seen
    info = [f for f in found if f.kind == "functional_activation"]
    assert [f.measured["functions"] for f in info] == ["selu x4"]
    # its train-mode forward is deterministic given the weights: the dropout never fires
    net = _SeedTfAsWritten().train()
    x = torch.randn(8, 784, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)


def test_passing_training_fixes_it_and_default_true_dropout_is_fine():
    kinds = {f.kind for f in audit(_SeedTfAsWritten(fixed=True))}
    assert "inert_dropout" not in kinds

    class PlainDropout(nn.Module):
        def __init__(self, training_arg):
            super().__init__()
            self.fc = nn.Linear(16, 16)
            self.training_arg = training_arg

        def forward(self, x):
            if self.training_arg is None:
                return F.dropout(F.relu(self.fc(x)), 0.1)  # F.dropout defaults to True
            return F.dropout(F.relu(self.fc(x)), 0.1, training=self.training_arg)

    assert "inert_dropout" not in {f.kind for f in audit(PlainDropout(None))}
    bad = [f for f in audit(PlainDropout(False)) if f.kind == "inert_dropout"]
    assert len(bad) == 1 and bad[0].measured["function"] == "F.dropout"


def test_a_dropout_module_switched_to_eval_is_inert():
    net = nn.Sequential(nn.Linear(16, 16), SELU(), AlphaDropout(0.1), nn.Linear(16, 4))
    init_snn_(net, torch.Generator().manual_seed(0))
    assert "inert_dropout" not in {f.kind for f in audit(net)}
    net[2].eval()
    bad = [f for f in audit(net) if f.kind == "inert_dropout"]
    assert [(f.layer, f.measured["module_training"]) for f in bad] == [("2", False)]
    assert net.training and not net[2].training  # the audit changed no flag


def test_the_training_mode_trace_restores_buffers_and_flags():
    from selfnorm.tracing import trace_calls

    net = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0)) * 3 + 2
    calls = trace_calls(net, x)
    assert [(c.module, c.function, c.in_module) for c in calls] == [("2", "relu", True)]
    assert not any(m.training for m in net.modules())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert trace_calls(net, x) == calls  # the same keys on every forward


def test_check_flags_the_functional_dropout_trap(tmp_path, capsys):
    from selfnorm.cli import main

    f = tmp_path / "seed_tf.py"
    f.write_text(
        "import torch\nfrom torch import nn\nfrom torch.nn import functional as F\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(32, 32)\n        self.out = nn.Linear(32, 4)\n"
        "    def forward(self, x):\n"
        "        return self.out(F.alpha_dropout(F.selu(self.fc(x)), 0.1))\n"
        "def make():\n    return Net()\n"
    )
    assert main(["check", f"{f}:make"]) == 1
    out = capsys.readouterr().out
    assert "inert_dropout" in out and "training=self.training" in out


def test_check_groups_a_finding_repeated_on_layers_and_names_module_types(tmp_path, capsys):
    f = tmp_path / "net.py"
    f.write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    layers = []\n"
        "    for _ in range(3):\n"
        "        lin = nn.Linear(64, 64)\n"
        "        nn.init.normal_(lin.weight, 0, 64 ** -0.5, generator=g)\n"
        "        nn.init.normal_(lin.bias, generator=g)\n"
        "        layers += [lin, nn.SELU()]\n"
        "    return nn.Sequential(*layers, nn.Linear(64, 2))\n"
    )
    assert main(["check", f"{f}:make"]) == 1
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "bias_nonzero" in line]
    assert len(rows) == 1 and rows[0].endswith("0 (Linear), 2 (Linear), 4 (Linear)")


def test_weight_layers_feeding_a_functional_selu_get_the_weight_checks():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 3)

        def forward(self, x):
            h = F.selu(self.fc1(x))
            h = F.selu(torch.flatten(self.fc2(h), 1))  # a function between: still fc2's output
            return self.out(h)  # no SELU after it: not checked

    net = Functional()  # PyTorch's default init: tau = 1/3, biases drawn
    found = audit(net, input_shape=(256, 64))
    kinds = {(f.layer, f.kind, f.severity) for f in found}
    for layer in ("fc1", "fc2"):
        assert (layer, "weight_init", "error") in kinds
        assert (layer, "bias_nonzero", "info") in kinds
    assert not [f for f in found if f.layer == "out" and f.kind == "weight_init"]
    assert "no_selu" not in {f.kind for f in found}
    init_snn_(net)
    assert not [f for f in audit(net, input_shape=(256, 64)) if f.kind == "weight_init"]
