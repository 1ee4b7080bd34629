"""The Lightning callback: its records equal the recorder's own on the same training, its run
directory makes the usual report, TensorBoard output goes to the trainer's logger."""

import copy
import importlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_records, no_module_hooks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import selfnorm
from selfnorm.recording import ActivationRecorder
from selfnorm.recording.config import RecordConfig
from selfnorm.records import read_records
from selfnorm.storage import read_jsonl

L = pytest.importorskip("lightning.pytorch")
from selfnorm.integrations.lightning import SelfnormCallback  # noqa: E402

pytestmark = [  # Lightning's own warnings, not ours
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)` is deprecated"),
    pytest.mark.filterwarnings("ignore:The '\\w+' does not have many workers"),
    pytest.mark.filterwarnings("ignore:GPU available but not used"),
]

LIGHTNING = re.compile(r"^\s*(import|from)\s+(lightning|pytorch_lightning)\b", re.MULTILINE)
EPOCHS, BATCHES, EVERY = 3, 6, 3  # 96 samples in batches of 16


class Net(L.LightningModule):
    """20-32-32-3 with a SELU and a ReLU layer, trained by SGD; no validation."""

    def __init__(self, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(20, 32), selfnorm.SELU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def scores(logits, y):
    return nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()


class MLP(Net):
    """Logs the loss and accuracy of training (epoch means) and validation."""

    def training_step(self, batch, batch_idx):
        loss, acc = scores(self(batch[0]), batch[1])
        self.log_dict({"train_loss": loss, "train_acc": acc}, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, acc = scores(self(batch[0]), batch[1])
        self.log_dict({"val_loss": loss, "val_acc": acc})


class CallsNet(Net):
    """A training_step that calls its submodule, not itself."""

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])


class Sparse(MLP):
    """Logs only a ``score``, ``scale`` times the epoch, at the epoch's end, and validation."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def training_step(self, batch, batch_idx):
        return Net.training_step(self, batch, batch_idx)

    def on_train_epoch_end(self):
        self.log("score", self.scale * (self.current_epoch + 1))


def loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 20, generator=g), torch.randint(0, 3, (96,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=16)
    return train, DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16)


def trainer(callback, epochs=EPOCHS, **over):
    quiet = dict(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(callbacks=[callback], **(quiet | over))


def plain_training(model, train, val):
    """Lightning's training in a plain loop under the recorder used directly; returns its
    records and per epoch (train loss, val loss, val accuracy)."""
    opt = torch.optim.SGD(model.parameters(), lr=model.lr)
    rows = []
    with ActivationRecorder(model, RecordConfig(every=EVERY), steps_per_epoch=BATCHES) as rec:
        for _ in range(EPOCHS):
            model.train()
            losses = []
            for x, y in train:
                rec.step()
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            model.eval()
            with torch.no_grad():
                val_scores = [[float(v) for v in scores(model(x), y)] for x, y in val]
            rows.append((np.mean(losses), *np.mean(val_scores, axis=0)))
        return rec.records(), rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory of 3 epochs (18 batches, every 3rd recorded), its callback and the
    model's initial state."""
    out = tmp_path_factory.mktemp("lightning") / "run"
    torch.manual_seed(0)
    model = MLP()
    start = copy.deepcopy(model)
    callback = SelfnormCallback(out, every=EVERY, report=False)  # the doctest makes one
    trainer(callback).fit(model, *loaders())
    return out, callback, start


def test_records_and_metrics_equal_those_of_the_recorder_used_directly(run):
    out, callback, start = run
    want, rows = plain_training(start, *loaders())
    got = read_records(out / "runs" / "MLP" / "seed0")
    assert got.steps.tolist() == list(range(0, EPOCHS * BATCHES, EVERY))
    assert (got.layers, got.family) == (("net.1", "net.3"), ("selu", "relu"))
    assert_same_records(got, want)
    history = read_jsonl(out / "runs" / "MLP" / "seed0" / "metrics.jsonl")
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for r, (train_loss, val_loss, val_acc) in zip(history, rows, strict=True):
        assert 0.0 <= r["train_accuracy"] <= 1.0
        np.testing.assert_allclose(
            [r["train_loss"], r["val_loss"], r["val_accuracy"]],
            [train_loss, val_loss, val_acc],
            rtol=1e-6,
        )
    assert no_module_hooks(callback.run.recorder.model)


def test_the_run_directory_makes_the_usual_report(run, capsys):
    from selfnorm.cli import main

    out, callback, _ = run
    assert callback.report_path is None and not (out / "report.html").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["source"] == "lightning" and config["activations"] == ["MLP"]
    assert config["settings"]["hparams"] == {"lr": 0.1}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == {"name": "?", "train": 96, "val": 48, "test": None}
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "MLP" in html and "net.1" in html and "net.3" in html


def test_tensorboard_writes_the_records_into_the_trainers_logger(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "logs", name="mlp")
    callback = SelfnormCallback(tmp_path / "run", every=EVERY, tensorboard=True, report=False)
    trainer(callback, epochs=1, logger=logger, log_every_n_steps=1).fit(MLP(), *loaders())
    acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Histograms("net.0/net.1/post")] == [0, 3]
    assert {"net.2/net.3/pre", "net.2/net.3/post"} <= set(acc.Tags()["histograms"])
    assert {"train/loss", "val/accuracy", "train_loss"} <= set(acc.Tags()["scalars"])


def test_tensorboard_without_a_tensorboard_logger_is_an_error(tmp_path):
    callback = SelfnormCallback(tmp_path / "run", tensorboard=True)
    with pytest.raises(ValueError, match="has no logger: pass Trainer\\(logger=TensorBoardLogger"):
        trainer(callback).fit(Net(), loaders()[0])
    assert not (tmp_path / "run").exists()


def test_a_training_step_that_calls_a_submodule_needs_module(tmp_path):
    with pytest.raises(RuntimeError, match="pass module='net'"):
        trainer(SelfnormCallback(tmp_path / "a")).fit(CallsNet(), loaders()[0])
    with pytest.raises(ValueError, match="module='nett' is not a submodule of CallsNet .*: net"):
        trainer(SelfnormCallback(tmp_path / "b", module="nett")).fit(CallsNet(), loaders()[0])
    callback = SelfnormCallback(tmp_path / "c", every=EVERY, module="net", report=False)
    trainer(callback, epochs=1).fit(CallsNet(), loaders()[0])
    records = callback.run.records()
    assert records.layers == ("1", "3") and records.steps.tolist() == [0, 3]
    settings = json.loads((tmp_path / "c" / "config.json").read_text())["settings"]
    assert settings["recorded_module"] == "net"


def test_an_epoch_row_holds_what_that_epoch_logged(tmp_path):
    names = {"train_accuracy": "score"}
    callback = SelfnormCallback(tmp_path / "a", metrics=names, report=False)
    trainer(callback, check_val_every_n_epoch=2).fit(Sparse(0.25), *loaders())
    rows = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in callback.run.history]
    val = {k: rows[1].get(k) for k in ("val_loss", "val_accuracy")}
    assert None not in val.values()  # validation ran after epoch 2 only: no stale numbers
    assert rows == [
        {"epoch": 1, "train_accuracy": 0.25},
        {"epoch": 2, "train_accuracy": 0.5, **val},
        {"epoch": 3, "train_accuracy": 0.75},
    ]
    model = Sparse(50)
    callback = SelfnormCallback(tmp_path / "b", metrics=names)
    with pytest.raises(ValueError, match="score=50 is not a fraction in \\[0, 1\\]"):
        trainer(callback).fit(model, *loaders())
    assert no_module_hooks(model)  # closed by on_exception
    assert not (tmp_path / "b" / "summary.json").exists()


def test_bad_arguments_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="give one, e.g. record=RecordConfig\\(every=5"):
        SelfnormCallback(tmp_path, every=5, record=RecordConfig())
    with pytest.raises(ValueError, match="'test_loss'; the metrics a run stores per epoch are"):
        SelfnormCallback(tmp_path, metrics={"test_loss": "loss"})
    with pytest.raises(ValueError, match="record.every=0 must be"):
        SelfnormCallback(tmp_path, every=0)
    with pytest.raises(ValueError, match="module='' must be None"):
        SelfnormCallback(tmp_path, module="")


def test_selfnorm_imports_without_lightning_and_the_callback_says_how_to_install(monkeypatch):
    package = Path(selfnorm.__file__).parent
    ours = package / "integrations" / "lightning.py"
    for path in package.rglob("*.py"):  # no other module imports lightning, even lazily
        if path != ours:
            assert not LIGHTNING.search(path.read_text(encoding="utf-8")), path
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.delitem(sys.modules, "selfnorm.integrations.lightning")
    with pytest.raises(ImportError, match="-m pip install 'selfnorm\\[lightning\\]'"):
        importlib.import_module("selfnorm.integrations.lightning")
