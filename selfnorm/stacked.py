r"""K MLPs of one architecture as one model with a leading run dimension (issue 12's base).

A comparison trains many small networks of one shape (the seeds of a variant). On a CPU most
of a small network's step is per-operation overhead, and on a GPU a 512-wide MLP at batch 100
is launch-bound; K runs stacked turn K small steps into one larger one. :class:`StackedMLP`
takes K built models (:func:`selfnorm.models.build_mlp`, each with its own seed's weights)
and holds their Linear layers as ``(K, in, out)`` weights: the forward of a ``(K, B, ...)``
batch is one batched product per layer (``torch.baddbmm``), the element-wise activations run
once over all runs, and alpha dropout draws each run's mask from that run's own generator.
The runs share no parameter, so the gradient of the summed loss ``sum_k loss_k`` w.r.t. run
k's slice is run k's own gradient, and an element-wise optimizer (Adam, SGD) over the stacked
tensors steps every run exactly as it would alone (within float rounding: the batched product
sums in another order).

Not wired into ``selfnorm compare`` yet: the training loop, the per-run recorder, checkpoints
and the ``auto/off/K`` choice are what issue 12 still asks for. ``bench/stacked_step.py``
measures what a stacked step buys.

Example:
    >>> import torch
    >>> from selfnorm.models import build_mlp
    >>> runs = [build_mlp(8, 3, 2, 16, "selu", generator=torch.Generator().manual_seed(s))
    ...         for s in range(3)]
    >>> stacked = StackedMLP(runs)
    >>> x = torch.randn(3, 5, 8)
    >>> y = stacked(x)
    >>> y.shape, torch.allclose(y[1], runs[1](x[1]), atol=1e-6)
    (torch.Size([3, 5, 3]), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from selfnorm import functional as F
from selfnorm import taxonomy
from selfnorm.dropout import AlphaDropout

__all__ = ["StackedMLP"]


class StackedMLP(nn.Module):
    """``models`` (Sequentials of the same layers: Flatten, Linear, activation modules,
    ``selfnorm.AlphaDropout``) as one module whose forward maps ``(K, B, *in)`` to
    ``(K, B, out)``.

    Args:
        models: the K runs' models, with their own initial weights (copied, not shared).
        generators: one ``torch.Generator`` per run for its dropout masks (run k's masks are
            those its model would draw from a global RNG seeded like ``generators[k]``);
            needed only when the models hold a dropout with ``p > 0``.

    Raises:
        ValueError: the models differ in their layers, or hold a layer that cannot be
            stacked yet (BatchNorm and LayerNorm keep per-run statistics; plain dropout
            draws from the global RNG): one line naming it.
    """

    def __init__(
        self, models: Sequence[nn.Sequential], generators: Sequence[torch.Generator] | None = None
    ) -> None:
        super().__init__()
        if not models:
            raise ValueError("StackedMLP needs at least one model")
        self.runs = len(models)
        layout = [(name, type(m)) for name, m in models[0].named_children()]
        for k, model in enumerate(models[1:], start=1):
            if [(n, type(m)) for n, m in model.named_children()] != layout:
                raise ValueError(f"model {k} has other layers than model 0: stack one variant")
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        self.layers: list[tuple[str, str, nn.Module]] = []
        dropout = False
        for name, module in models[0].named_children():
            parts = [m.get_submodule(name) for m in models]
            if isinstance(module, nn.Linear):
                key = name.replace(".", "_")
                # (K, in, out), contiguous: x @ W without a transposed operand, which MKL's
                # batched product copies (in, out costs ~20% less than out, in here)
                w = torch.stack([p.weight.detach().t() for p in parts]).contiguous()
                self.weights[key] = nn.Parameter(w)
                bias = [p.bias.detach() for p in parts]
                self.biases[key] = nn.Parameter(torch.stack(bias).unsqueeze(1))
                self.layers.append(("linear", key, module))
            elif isinstance(module, nn.Flatten):
                self.layers.append(("flatten", name, module))
            elif taxonomy.is_activation(module):
                self.layers.append(("elementwise", name, module))
            elif isinstance(module, AlphaDropout) and type(module) is AlphaDropout:
                self.layers.append(("alpha_dropout", name, module))
                dropout = dropout or module.p > 0
            else:
                raise ValueError(
                    f"layer {name} ({type(module).__name__}) cannot be stacked yet (per-run "
                    "statistics or the global RNG); train this variant one run at a time"
                )
        if dropout and (generators is None or len(generators) != self.runs):
            raise ValueError(f"dropout needs one generator per run ({self.runs})")
        self.generators = list(generators) if generators is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.runs:
            raise ValueError(f"input {tuple(x.shape)} needs a leading run dimension {self.runs}")
        for kind, key, module in self.layers:
            if kind == "linear":
                x = torch.baddbmm(self.biases[key], x, self.weights[key])
            elif kind == "flatten":
                x = x.flatten(2)
            elif kind == "elementwise":
                x = module(x)
            elif self.training and module.p > 0:  # alpha dropout, each run its own mask
                shape = tuple(x.shape[1:])
                keep = torch.stack(
                    [F.keep_mask(shape, module.p, g, x.device) for g in self.generators]
                )
                x = F.alpha_dropout(
                    x,
                    F.realized_rate(module.p),
                    True,
                    mean=module.mean,
                    var=module.var,
                    saturation=module.saturation,
                    keep=keep,
                )
        return x

    def load_run(self, k: int, model: nn.Sequential) -> nn.Sequential:
        """Copy run ``k``'s parameters into ``model`` (one of the stacked models' shape) and
        return it: for its evaluation, checkpoint or records as a run of its own."""
        with torch.no_grad():
            for kind, key, _ in self.layers:
                if kind == "linear":
                    layer = model.get_submodule(key)
                    layer.weight.copy_(self.weights[key][k].t())
                    layer.bias.copy_(self.biases[key][k, 0])
        return model
