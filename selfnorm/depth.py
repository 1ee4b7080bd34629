r"""Depth propagation at initialization: measured per-layer moments and gradient norms of deep
random networks, against the mean-field prediction of the theory.

For each activation spec a ``depth``-layer MLP of width ``width`` is built with its proper init
(or the ``init`` given). A batch of standardized inputs (Gaussian, or a batch of a dataset) goes
forward; every layer's post-activation mean and variance are measured; a random projection of the
output goes backward and the gradient's RMS norm per sample is measured at every layer.

The prediction iterates :func:`selfnorm.theory.propagate_layer` through the layers, with each
layer's measured per-unit :math:`\omega_j = \sum_i w_{ji}` and :math:`\tau_j = \sum_i w_{ji}^2`,
from the measured input moments. For SELU with LeCun init this is the paper's mapping g: the
curve stays at (0, 1). Variants with BatchNorm/LayerNorm, and inits that draw biases
(``seed-tf``), have no such mapping here (NaN).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from selfnorm import _validate, taxonomy
from selfnorm.init import INIT_SCHEMES
from selfnorm.meanfield import signal_propagation
from selfnorm.models import build_mlp
from selfnorm.specs import get_spec
from selfnorm.theory import propagate_layer

__all__ = ["DepthConfig", "DepthCurves", "depth_propagation"]


@dataclass(frozen=True)
class DepthConfig:
    """What to propagate through which networks."""

    activations: tuple[str, ...] = ("selu", "relu", "lrelu", "tanh")
    depth: int = 64
    width: int = 512
    batch: int = 1024
    init: str = "proper"
    seed: int = 0
    networks: int = 4
    """Independent random networks measured per activation (seeds ``seed + 1`` on); the curves
    are their means, with the range over them."""

    def __post_init__(self) -> None:
        _validate.positive_int("networks", self.networks)
        for a in self.activations:
            get_spec(a)
        _validate.positive_int("depth", self.depth)
        _validate.positive_int("width", self.width)
        _validate.positive_int("batch", self.batch)
        if self.init != "proper" and self.init not in INIT_SCHEMES:
            raise ValueError(
                f"init={self.init!r}; choose proper (each activation's own) or one of "
                f"{', '.join(INIT_SCHEMES)}"
            )


@dataclass(frozen=True)
class DepthCurves:
    """Per-layer curves of one activation (index 0 = the input)."""

    activation: str
    mean: list[float]
    var: list[float]
    grad_norm: list[float]
    theory_mean: list[float]
    theory_var: list[float]
    omega_mean: list[float] = field(default_factory=list)
    tau_mean: list[float] = field(default_factory=list)
    mf_mean: list[float] = field(default_factory=list)
    """Mean-field recursion (:mod:`selfnorm.meanfield`): post-activation mean per layer."""
    mf_var: list[float] = field(default_factory=list)
    """Mean-field recursion: post-activation variance per layer."""
    mf_grad: list[float] = field(default_factory=list)
    r"""Mean-field gradient norm per layer, anchored at the last hidden layer's measured one and
    carried back by :math:`\sqrt{\chi}` per layer (NaN with a norm layer)."""
    var_range: list[list[float]] = field(default_factory=list)
    """[min, max] of the variance over the networks measured, per layer."""
    grad_range: list[list[float]] = field(default_factory=list)
    """[min, max] of the gradient norm over the networks measured, per layer."""

    def to_dict(self) -> dict:
        return {k: ([_finite(x) for x in v] if isinstance(v, list) else v)
                for k, v in asdict(self).items()}  # fmt: skip


def _finite(x: Any) -> Any:
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return float(x) if math.isfinite(x) else None


def _inputs(config: DepthConfig, x: torch.Tensor | None) -> torch.Tensor:
    if x is not None:
        return x.flatten(1).float()
    gen = torch.Generator().manual_seed(config.seed)
    return torch.randn(config.batch, config.width, generator=gen)


def depth_propagation(
    config: DepthConfig, inputs: torch.Tensor | None = None
) -> dict[str, DepthCurves]:
    """Measured and predicted per-layer moments for every activation in ``config``.

    Args:
        config: the networks.
        inputs: optional standardized input batch (N, ...), e.g. from a dataset; default a
            Gaussian N(0, 1) batch of shape (batch, width).

    Example:
        >>> c = depth_propagation(DepthConfig(("selu",), depth=8, width=256, batch=512))["selu"]
        >>> abs(c.var[-1] - 1) < 0.1, abs(c.theory_var[-1] - 1) < 0.1
        (True, True)
    """
    x = _inputs(config, inputs)
    out: dict[str, DepthCurves] = {}
    for name in config.activations:
        spec = get_spec(name)
        if config.init != "proper":
            spec = dataclasses.replace(spec, init=config.init)
        nets = [_measure(spec, x, config, config.seed + 1 + k) for k in range(config.networks)]
        first = nets[0]
        mean = np.mean([n["mean"] for n in nets], axis=0).tolist()
        var_all = np.array([n["var"] for n in nets])
        grad_all = np.array([n["grad"] for n in nets])
        var, grad = var_all.mean(0).tolist(), grad_all.mean(0).tolist()
        bias_var = INIT_SCHEMES[spec.init].bias_std ** 2 if spec.init is not None else 0.0
        t_mean, t_var = [mean[0]], [var[0]]
        if spec.norm is None and bias_var == 0:  # the map g, with the first network's weights
            mu, nu = first["mean"][0], first["var"][0]
            for om, ta in zip(first["omegas"], first["taus"], strict=True):
                mu, nu = propagate_layer(spec.moments, mu, nu, om, ta)
                t_mean.append(mu)
                t_var.append(nu)
        else:
            t_mean += [float("nan")] * config.depth
            t_var += [float("nan")] * config.depth
        taus = np.mean([[float(np.mean(t)) for t in n["taus"]] for n in nets], axis=0)
        mf = signal_propagation(
            spec.moments, _derivative(spec), taus, float((x.double() ** 2).mean()), bias_var,
            normalized=spec.norm is not None,
        )  # fmt: skip
        mf_grad = [float("nan")] * (config.depth + 1)
        if spec.norm is None:  # back from the last hidden layer, sqrt(chi) per layer
            mf_grad[-1] = grad[-1]
            for layer in range(config.depth - 1, 0, -1):
                mf_grad[layer] = mf_grad[layer + 1] * math.sqrt(mf["chi"][layer])
        out[name] = DepthCurves(
            activation=name,
            mean=mean,
            var=var,
            grad_norm=grad,
            theory_mean=t_mean,
            theory_var=t_var,
            omega_mean=[float(np.mean(o)) for o in first["omegas"]],
            tau_mean=[float(t) for t in taus],
            mf_mean=[mean[0], *mf["mean"]],
            mf_var=[var[0], *mf["var"]],
            mf_grad=mf_grad,
            var_range=np.stack([var_all.min(0), var_all.max(0)], 1).tolist(),
            grad_range=np.stack([grad_all.min(0), grad_all.max(0)], 1).tolist(),
        )
    return out


def _measure(spec, x: torch.Tensor, config: DepthConfig, seed: int) -> dict[str, Any]:
    """One random network's per-layer moments and gradient norms (index 0 = the input)."""
    gen = torch.Generator().manual_seed(seed)
    model = build_mlp(x.shape[1], 10, config.depth, config.width, spec, generator=gen)
    model.train()  # BatchNorm normalizes with batch statistics, as in training
    acts: list[torch.Tensor] = []

    def keep(_m, _i, o):
        o.retain_grad()
        acts.append(o)

    hooks = [
        m.register_forward_hook(keep)
        for m in model.children()
        if taxonomy.activation_kind(m) is not None
    ]
    try:
        out_t = model(x)
        proj = torch.randn(out_t.shape, generator=torch.Generator().manual_seed(config.seed))
        (out_t * proj).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        mean = [float(x.mean())] + [float(a.mean()) for a in acts]
        var = [float(x.var())] + [float(a.var()) for a in acts]
        rms = [float(a.grad.norm() / math.sqrt(len(x))) for a in acts]
    fcs = [m for m in model.children() if taxonomy.is_weight_layer(m)][:-1]  # not the output
    return {
        "mean": mean,
        "var": var,
        "grad": [float("nan")] + rms,
        "omegas": [fc.weight.detach().double().sum(1).numpy() for fc in fcs],
        "taus": [(fc.weight.detach().double() ** 2).sum(1).numpy() for fc in fcs],
    }


def _derivative(spec):
    """The activation's derivative as a NumPy function (autograd through its module)."""
    module = spec.activation().double()

    def fprime(z: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.asarray(z, dtype=np.float64)).requires_grad_(True)
        (grad,) = torch.autograd.grad(module(t).sum(), t)
        return grad.numpy()

    return fprime
