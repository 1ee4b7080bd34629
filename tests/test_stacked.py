"""StackedMLP: K runs as one model equal each run alone (issue 12's base)."""

import pytest
import torch
from torch.nn import functional as TF

from selfnorm.config import TrainConfig
from selfnorm.models import build_mlp
from selfnorm.stacked import StackedMLP
from selfnorm.training import make_optimizer

SEEDS = (0, 1, 2)


def _runs(spec="selu", dropout=0.1):
    return [
        build_mlp(20, 4, 3, 32, spec, dropout, generator=torch.Generator().manual_seed(s))
        for s in SEEDS
    ]


def test_each_run_keeps_its_weights_masks_and_steps_as_alone():
    alone, stacked_from = _runs(), _runs()
    stacked = StackedMLP(stacked_from, [torch.Generator().manual_seed(100 + s) for s in SEEDS])
    for k in range(3):  # the initial weights: each run's own seed's
        torch.testing.assert_close(
            stacked.weights["fc1"][k].t(), alone[k].fc1.weight, rtol=0, atol=0
        )
    opts = [make_optimizer(m.parameters(), TrainConfig(lr=1e-2)) for m in alone]
    opt = make_optimizer(stacked.parameters(), TrainConfig(lr=1e-2))
    g = torch.Generator().manual_seed(7)
    rngs = [torch.Generator().manual_seed(100 + s) for s in SEEDS]  # the runs' mask streams
    for _ in range(5):
        x = torch.randn(3, 16, 20, generator=g)
        y = torch.randint(0, 4, (3, 16), generator=g)
        for k, (model, o) in enumerate(zip(alone, opts, strict=True)):
            torch.set_rng_state(rngs[k].get_state())  # the run alone draws from the global RNG
            loss = TF.cross_entropy(model(x[k]), y[k])
            rngs[k].set_state(torch.get_rng_state())
            o.zero_grad()
            loss.backward()
            o.step()
        out = stacked(x)
        loss = sum(TF.cross_entropy(out[k], y[k]) for k in range(3))  # disjoint slices
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k in range(3):
        run = stacked.load_run(k, _runs()[k])
        for a, b in zip(run.parameters(), alone[k].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_what_cannot_be_stacked_is_refused_with_its_name():
    with pytest.raises(ValueError, match=r"layer bn1 \(BatchNorm1d\) cannot be stacked"):
        StackedMLP(_runs("relu+bn", 0.0))
    with pytest.raises(ValueError, match="layer drop1 .Dropout. cannot be stacked"):
        StackedMLP(_runs("relu", 0.2))
    with pytest.raises(ValueError, match="one generator per run"):
        StackedMLP(_runs())
    with pytest.raises(ValueError, match="other layers"):
        StackedMLP([*_runs("selu", 0.0)[:2], *_runs("relu", 0.0)[:1]])
