"""``selfnorm compare --model FILE:FACTORY``: your own network, built for every variant from its
spec by a factory (here a small residual MLP written into a temporary folder), initialized,
audited, trained, recorded, reported and resumed like the built-in models."""

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from selfnorm import SELU, AlphaDropout
from selfnorm.cli import main
from selfnorm.comparing import compare
from selfnorm.config import FactoryConfig, experiment_from_dict
from selfnorm.interrupts import Interrupted
from selfnorm.records import read_records
from selfnorm.storage import RunDir, read_jsonl
from selfnorm.training import build_model

RESMLP = """
from collections import OrderedDict

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width, activation, dropout):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = activation()
        self.drop = dropout()

    def forward(self, x):
        return x + self.drop(self.act(self.fc(x)))


def make(*, activation, dropout, in_features, num_classes, **kwargs):
    torch.rand(3)  # a draw from the global RNG: seeded per run, restored after
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), stem=nn.Linear(in_features, 32), act=activation(),
        block1=Block(32, activation, dropout), block2=Block(32, activation, dropout),
        out=nn.Linear(32, num_classes),
    ))


def relu_only(*, in_features, num_classes, **kwargs):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))


def number(**kwargs):
    return 3
"""
RUN = ["--activations", "selu,relu", "--seeds", "0", "--epochs", "2", "--dropout", "0.05",
       "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    (d / "resmlp.py").write_text(RESMLP)
    return d


@pytest.fixture(scope="module")
def run(models):
    """A comparison of the residual MLP, its target given relative to the working folder."""
    out = models.parent / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(models)
        assert main(["compare", "--model", "resmlp.py:make", *RUN, "--out", str(out)]) == 0
    return out


def _cli(argv):
    """(exit code, stderr) of the CLI run in-process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def test_every_variant_is_built_audited_trained_recorded_and_reported(run, models):
    config = json.loads((run / "config.json").read_text())
    # stored absolute: --resume from anywhere builds the same model
    assert config["model"] == {"kind": "factory", "factory": f"{models / 'resmlp.py'}:make"}
    summary = json.loads((run / "summary.json").read_text())
    assert sorted(summary["variants"]) == ["relu", "selu"]
    assert all(v["diverged"] == 0.0 for v in summary["variants"].values())
    assert sorted(json.loads((run / "audit.json").read_text())) == ["relu", "selu"]
    for name in ("selu", "relu"):
        rec = read_records(RunDir(run).run(name, 0).root)
        assert rec.layers == ("act", "block1.act", "block2.act")  # the blocks' activations
        assert set(rec.family) == {name}
        assert rec.weight_layers == ("stem", "block1.fc", "block2.fc", "out")
    assert 'id="comparison"' in (run / "report.html").read_text()
    assert (run / "summary.md").exists()


def _linears(net):
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize(
    ("variant", "act", "drop", "gain"),
    [
        ("selu", SELU, AlphaDropout, 1.0),  # LeCun normal
        ("relu", nn.ReLU, nn.Dropout, math.sqrt(2)),  # He normal
        ("lrelu:0.2", nn.LeakyReLU, nn.Dropout, math.sqrt(2 / (1 + 0.2**2))),
        ("selu@he", SELU, AlphaDropout, math.sqrt(2)),  # a forced init
    ],
)
def test_each_variant_gets_its_activation_dropout_and_init(models, variant, act, drop, gain):
    cfg = FactoryConfig(f"{models / 'resmlp.py'}:make")
    rng = torch.get_rng_state()
    net = build_model(cfg, variant, 0.1, (1, 8, 8), 10, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the factory's draws left no trace
    acts = [m for m in net.modules() if isinstance(m, (SELU, nn.ReLU, nn.LeakyReLU))]
    assert len(acts) == 3 and {type(m) for m in acts} == {act}
    assert {type(m) for m in net.modules() if "drop" in type(m).__name__.lower()} == {drop}
    for m in _linears(net):  # std of N(0, gain^2 / fan_in) within 5 standard errors
        n = m.weight.numel()
        std = float(m.weight.detach().std()) * math.sqrt(m.in_features)
        assert abs(std / gain - 1) < 5 / math.sqrt(2 * n), (variant, m, std)
        assert not m.bias.any()
    same = build_model(cfg, variant, 0.1, (1, 8, 8), 10, seed=0)
    for a, b in zip(net.parameters(), same.parameters(), strict=True):
        assert torch.equal(a, b)  # one seed, one model
    if variant == "lrelu:0.2":
        assert acts[0].negative_slope == 0.2


def test_rate_0_is_an_identity_and_lazy_modules_get_their_sizes(tmp_path):
    (tmp_path / "lazy.py").write_text(
        "from torch import nn\n"
        "def make(*, activation, dropout, num_classes, **kwargs):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(16), activation(), dropout(),\n"
        "                         nn.Linear(16, num_classes))\n"
    )
    net = build_model(FactoryConfig(f"{tmp_path / 'lazy.py'}:make"), "selu", 0.0, (4, 4), 3, 0)
    assert isinstance(net[3], nn.Identity)
    assert net[1].in_features == 16  # materialized by the shape check, then LeCun
    assert abs(float(net[1].weight.detach().std()) * 4 - 1) < 5 / math.sqrt(2 * 256)


def _snapshot(*roots):
    return {str(p): p.stat().st_mtime_ns for root in roots for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{m}/resmlp.py:relu_only"],
         "resmlp.py:relu_only ignores the variant selu: its model holds no SELU(alpha=1.6733, "
         "scale=1.0507), what activation() returns (its activations: ReLU()); call activation() "
         "for each activation instead of building one"),
        (["--model", "{m}/resmlp.py:nosuch"],
         "resmlp.py has no attribute 'nosuch'; callables defined there: Block, make, number, "
         "relu_only"),
        (["--model", "{m}/resmlp.py:number"], "resmlp.py:number returned a int, not a torch.nn"),
        (["--model", "{m}/resmlp.py:make", "--depth", "3"],
         "--depth does not apply to --model {m}/resmlp.py:make (the factory builds the whole "
         "network: set its sizes there); drop --depth"),
    ],
)  # fmt: skip
def test_a_bad_factory_is_one_line_exit_2_and_nothing_written(models, tmp_path, args, message):
    out = tmp_path / "never"
    before = _snapshot(models, tmp_path)
    code, err = _cli(["compare", *[a.replace("{m}", str(models)) for a in args], *RUN,
                      "--out", str(out)])  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message.replace("{m}", str(models)) in err, err
    assert _snapshot(models, tmp_path) == before and not out.exists()


class _StopAfter:
    """A stop flag that says yes after ``n`` questions (one per optimizer step)."""

    signum = 2

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self) -> bool:
        self.n -= 1
        return self.n < 0


def _metrics(root, name):
    rows = read_jsonl(RunDir(root).run(name, 0).metrics)
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


def test_resume_from_another_folder_rebuilds_the_same_model(run, tmp_path, monkeypatch):
    # stopped in the relu run's second epoch (11 steps an epoch), resumed from another working
    # folder as `compare --resume` does (the report aside): the uninterrupted run's numbers
    from selfnorm.cli import build_parser
    from selfnorm.cli.compare import resolve_compare_config

    cut = tmp_path / "cut"
    config = experiment_from_dict(json.loads((run / "config.json").read_text()))
    with pytest.raises(Interrupted):
        compare(config, str(cut), progress=False, stop=_StopAfter(2 * 11 + 14))
    assert (cut / "runs/selu/seed0/result.json").exists()
    assert not (cut / "runs/relu/seed0/result.json").exists()
    monkeypatch.chdir(tmp_path)
    resumed = resolve_compare_config(build_parser().parse_args(["compare", "--resume", str(cut)]))
    assert resumed == config
    compare(resumed, str(cut), resume=True, progress=False)
    for name in ("selu", "relu"):
        assert _metrics(cut, name) == _metrics(run, name)
        result = json.loads(RunDir(cut).run(name, 0).result.read_text())
        assert result == json.loads(RunDir(run).run(name, 0).result.read_text())


def test_a_module_name_target(tmp_path, monkeypatch):
    pkg = tmp_path / "snn_factory_test_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(RESMLP)
    monkeypatch.chdir(tmp_path)  # importable with the working directory on sys.path
    target = "snn_factory_test_pkg.nets:make"
    argv = ["compare", "--model", target, "--activations", "selu", "--seeds", "0", "--epochs",
            "1", "--no-record", "--quiet", "--out", "run"]  # fmt: skip
    try:
        assert _cli(argv) == (0, "")
    finally:  # forget the import
        for name in [n for n in sys.modules if n.partition(".")[0] == pkg.name]:
            del sys.modules[name]
    assert json.loads((tmp_path / "run/config.json").read_text())["model"]["factory"] == target


def test_the_summary_names_the_factory_and_each_variants_init_and_dropout():
    from selfnorm.cli.compare import describe

    cfg = experiment_from_dict({"model": {"kind": "factory", "factory": "nets/m.py:make"},
                                "activations": ["selu", "relu"], "dropout": 0.1})  # fmt: skip
    text = describe(cfg, "x")
    assert f"  model: {Path('nets/m.py').resolve()}:make (your factory); adam" in text
    assert "selu: lecun_normal init, alpha_dropout 0.1; relu: he_normal init, dropout 0.1" in text


def test_the_spec_check_takes_any_module_of_the_same_activation():
    from selfnorm.models import _same_activation
    from selfnorm.specs import get_spec

    selu, lrelu = get_spec("selu").activation(), get_spec("lrelu:0.2").activation()
    assert _same_activation(nn.SELU(), selu)  # torch's SELU is the same function
    assert not _same_activation(nn.ELU(), selu)
    assert _same_activation(nn.LeakyReLU(0.2), lrelu)
    assert not _same_activation(nn.LeakyReLU(0.01), lrelu)  # the variant's slope was ignored
