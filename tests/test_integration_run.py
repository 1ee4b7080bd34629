"""TrainingRun: the run directory of a training selfnorm does not drive."""

import pytest
import torch
from torch import nn

from selfnorm.cli import main
from selfnorm.integrations import TrainingRun


def test_a_refused_recorder_leaves_nothing_written_and_a_retry_works(tmp_path):
    out = tmp_path / "run"
    net = nn.Sequential(nn.Linear(4, 4))  # no activation module
    with pytest.raises(ValueError, match="no activation modules"):
        TrainingRun(out, net, functional=False)
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    with TrainingRun(out, nn.Sequential(nn.Linear(4, 4), nn.ReLU())) as run:
        run.step()
        run.recorder.model(torch.randn(2, 4))
    with pytest.raises(ValueError, match="pass overwrite=True"):
        TrainingRun(out, nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


def test_a_step_based_loop_without_epochs_gets_a_report(tmp_path, capsys):
    net = nn.Sequential(nn.Linear(4, 8), nn.SELU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with TrainingRun(tmp_path / "run", net) as run:
        for _ in range(60):
            run.step()
            loss = net(torch.randn(8, 4)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        report = run.finish()
    assert report.is_file()
    assert main(["report", str(tmp_path / "run")]) == 0
    r = run.records()
    assert r.steps.tolist() == [0, 50] and r.epochs.tolist() == [0.0, 50 / 60]
