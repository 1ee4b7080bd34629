"""Shared test helpers: an independent reference for the recorder (plain hooks that clone what
they see, statistics in float64 NumPy), small nets and batches, and where ``../shared`` is."""

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import selfnorm
from selfnorm.recording import SATURATION_RTOL

SHARED = Path(__file__).resolve().parents[2] / "shared"
"""The ``shared/`` folder beside the repository (MNIST and the seed texts), where there is one."""

EDGES = np.linspace(-4.0, 4.0, 65)
RELU_LIKE = ("relu", "lrelu")


# ---------------------------------------------------------------------------------------------
# Independent reference: plain hooks that clone what they see, statistics in float64 numpy
# ---------------------------------------------------------------------------------------------


class Spy:
    """Clones every activation's input, output and output gradient (its own plain hooks)."""

    def __init__(self, model, types=(nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh)):
        self.pre, self.post, self.grad, self.handles = {}, {}, {}, []
        for name, m in model.named_modules():
            if isinstance(m, (*types, nn.SELU, selfnorm.SELU, nn.Sigmoid, nn.SiLU)):
                self.handles.append(m.register_forward_pre_hook(self._pre(name)))
                self.handles.append(m.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(m, args):
            self.pre[name] = args[0].detach().clone()

        return hook

    def _post(self, name):
        def hook(m, args, out):
            self.post[name] = out.detach().clone()
            if out.requires_grad:
                out.register_hook(lambda g: self.grad.__setitem__(name, g.detach().clone()))

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def hand_stats(t: torch.Tensor, family: str, saturation: float | None, post: bool) -> dict:
    x = t.double().numpy()
    flat = x.ravel()
    mean, var = flat.mean(), flat.var()
    units = x.reshape(x.shape[0], x.shape[1], -1)
    never_positive = ~(units > 0).any(axis=(0, 2))
    return {
        "mean": mean,
        "std": math.sqrt(var),
        "min": flat.min(),
        "max": flat.max(),
        "zero_frac": np.mean(flat == 0),
        "dead_frac": never_positive.mean() if family in RELU_LIKE else np.nan,
        "saturation_frac": np.mean(np.abs(flat - saturation) <= SATURATION_RTOL * abs(saturation))
        if post and saturation is not None
        else np.nan,
        "fp_distance": math.hypot(mean, var - 1.0),
    }


def hand_hist(t: torch.Tensor, edges=EDGES) -> np.ndarray:
    """[x < e0, [e0, e1), ..., [e_B-1, e_B), x >= e_B or NaN] by binary search on the edges."""
    flat = t.double().numpy().ravel()
    idx = np.searchsorted(edges, flat, side="right")  # NaN sorts last -> overflow
    return np.bincount(idx, minlength=len(edges) + 1)


def near_edges(t: torch.Tensor, edges=EDGES, tol=1e-5) -> int:
    flat = t.double().numpy().ravel()
    return int((np.abs(flat[:, None] - edges[None, :]) < tol).any(axis=1).sum())


def train_steps(model, rec, x, y, steps, lr=0.01, eval_between=False):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        if rec is not None:
            rec.step()
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if eval_between:
            model.eval()
            with torch.no_grad():
                model(x)
    return opt


def no_module_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks
        and not m._forward_pre_hooks
        and not m._backward_hooks
        and not m._backward_pre_hooks
        for m in model.modules()
    )


def mixed_net(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(12, 32),
        selfnorm.SELU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.LeakyReLU(0.1),
        nn.Linear(32, 32),
        nn.SELU(),
        nn.Linear(32, 32),
        nn.GELU(),
        nn.Linear(32, 32),
        nn.Tanh(),
        nn.Linear(32, 3),
    )
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.5 / math.sqrt(m.in_features), generator=g)
            nn.init.normal_(m.bias, 0.0, 0.5, generator=g)
    with torch.no_grad():
        net[2].bias[:6] = -50.0  # 6 of 32 ReLU units never fire: dead
        net[4].bias[:4] = -50.0  # leaky units that never turn positive
        net[6].bias[:5] = -20.0  # SELU units pinned at the saturation value
    return net


def batch(n=64, d=12, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 2.0, torch.randint(0, classes, (n,), generator=g)


def assert_same_records(a, b):
    assert len(a.steps) > 0
    assert (a.layers, a.family, a.weight_layers) == (b.layers, b.family, b.weight_layers)
    for name in ("steps", "epochs", "depth", "bin_edges", "hist_post", "hist_pre"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    # Exact on the CPU; CUDA's float64 reductions may differ in the last bit between processes.
    rtol = 1e-12 if torch.cuda.is_available() else 0.0
    np.testing.assert_allclose(a.grad_std, b.grad_std, rtol=rtol, atol=0, err_msg="grad_std")
    for name in ("post", "pre", "weights"):
        for key, value in getattr(a, name).items():
            np.testing.assert_allclose(
                value, getattr(b, name)[key], rtol=rtol, atol=0, err_msg=f"{name}.{key}"
            )
