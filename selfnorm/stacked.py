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

:class:`StackedRuns` is what the one training loop (:mod:`selfnorm.training`) steps when a
variant's seeds train stacked (``train.stack``): the stacked model and one optimizer over its
tensors, converted to and from each run's own model and optimizer state, so every run keeps
its checkpoint in the format of a run trained alone. :func:`stack_size` is the ``auto`` rule.
``bench/stacked_step.py`` and ``bench/stacked_runs.py`` measure what stacking buys.

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

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as TF

from selfnorm import functional as F
from selfnorm import taxonomy
from selfnorm.dropout import AlphaDropout

__all__ = ["StackedMLP", "StackedRuns", "seeded_rng_state", "stack_size", "unstackable"]

AUTO_CPU_MIN_RUNS = 8
"""``auto`` stacks on a CPU only groups of at least this many runs. Measured on 2 cores
(docs/benchmarks.md): whole runs of three seeds train 0.84-1.07x as fast stacked as one
after another, of eight 0.88-1.08x on digits and 1.18-1.20x on seed-tf
(``bench/stacked_runs.py``); a bare step gains
1.1-1.2x at four runs and 1.45-1.5x at eight (``bench/stacked_step.py``), the rest goes to
evaluation and the recorded steps, which each run takes through its own model."""


class StackedMLP(nn.Module):
    """``models`` (Sequentials of the same layers: Flatten, Linear with a bias, element-wise
    activations without parameters, ``nn.Dropout``, ``selfnorm.AlphaDropout``) as one module
    whose forward maps ``(K, B, *in)`` to ``(K, B, out)``.

    Args:
        models: the K runs' models, with their own initial weights (copied, not shared).
        generators: one ``torch.Generator`` per run for its dropout masks (run k's masks are
            those its model would draw from a global RNG seeded like ``generators[k]``);
            needed only when the models hold a dropout with ``p > 0``.

    Raises:
        ValueError: the models differ in their layers, or hold a layer that would not train
            stacked as it does alone (BatchNorm and LayerNorm keep per-batch statistics,
            PReLU has parameters, LogSoftmax works across units, ...): one line naming it
            and why.
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
            why = _refusal(module)
            if why is not None:
                raise ValueError(
                    f"layer {name} ({type(module).__name__}) cannot be stacked: {why}; train "
                    "this variant one run at a time"
                )
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
                self.layers.append(("elementwise", name, _unhooked(module)))
            elif isinstance(module, AlphaDropout) and type(module) is AlphaDropout:
                self.layers.append(("alpha_dropout", name, _unhooked(module)))
                dropout = dropout or module.p > 0
            elif type(module) is nn.Dropout:
                self.layers.append(("dropout", name, _unhooked(module)))
                dropout = dropout or module.p > 0
            else:  # pragma: no cover - _refusal names every other layer
                raise AssertionError(f"layer {name} passed _refusal")
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
            elif kind == "dropout":
                if self.training and module.p > 0:  # nn.Dropout's mask, drawn from each run's
                    q = 1.0 - module.p  # stream: bernoulli(q) / q, as torch draws it on a CPU
                    noise = [
                        torch.empty(x.shape[1:], device=x.device).bernoulli_(q, generator=g)
                        for g in self.generators
                    ]
                    x = x * (torch.stack(noise).div_(q) if q > 0 else 0.0)
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


def unstackable(model: nn.Module) -> str | None:
    """Why ``model`` cannot train stacked (one line), or None when :class:`StackedMLP` takes it.

    Example:
        >>> from selfnorm.models import build_mlp
        >>> unstackable(build_mlp(4, 2, 1, 8, "selu")) is None
        True
        >>> unstackable(build_mlp(4, 2, 1, 8, "relu+bn")).split(":")[0]
        'layer bn1 (BatchNorm1d) cannot be stacked'
    """
    if not isinstance(model, nn.Sequential):
        return f"{type(model).__name__} is not an MLP of selfnorm.models.build_mlp"
    for name, module in model.named_children():  # the check StackedMLP makes, layer by layer
        why = _refusal(module)
        if why is not None:
            return f"layer {name} ({type(module).__name__}) cannot be stacked: {why}"
    return None


def stack_size(stack: str | int, device: torch.device, runs: int) -> int:
    """How many runs of a variant train as one stacked model under ``train.stack``.

    ``off``: 1 (one run after another). An integer: at most that many. ``auto``: all of them
    on a GPU (small MLPs are launch-bound there: the published expectation, not yet measured
    here); on a CPU all of them from :data:`AUTO_CPU_MIN_RUNS` runs up, else 1.

    Example:
        >>> stack_size("auto", torch.device("cpu"), 3), stack_size("auto", torch.device("cpu"), 8)
        (1, 8)
        >>> stack_size(4, torch.device("cpu"), 10), stack_size("off", torch.device("cuda"), 8)
        (4, 1)
    """
    if stack == "off":
        return 1
    if stack == "auto":
        if device.type == "cuda" or runs >= AUTO_CPU_MIN_RUNS:
            return max(runs, 1)
        return 1
    return max(1, min(int(stack), runs))


def seeded_rng_state(seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The dropout-mask RNG state of a fresh run with ``seed``, in the checkpoints' format:
    what ``torch.manual_seed(seed)`` leaves in the CPU generator (and the device's)."""
    state = {"cpu": torch.Generator().manual_seed(seed).get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.Generator(device).manual_seed(seed).get_state()
    return state


def _generator(state: dict[str, torch.Tensor], device: torch.device) -> torch.Generator:
    g = torch.Generator(device)
    g.set_state(state["cuda" if device.type == "cuda" else "cpu"].cpu())
    return g


class StackedRuns:
    r"""K runs of one variant as one :class:`StackedMLP` and one optimizer over its tensors.

    Built from each run's own model, optimizer (with its state, e.g. from a checkpoint) and
    mask-RNG state; :meth:`sync` writes the stacked values back into them, so a run's
    checkpoint is the one it would write alone. A training step minimizes
    :math:`\sum_k L_k`: the runs share no parameter, so run k's gradient is its own, and an
    element-wise optimizer steps each slice as it would step the run alone (gradient clipping
    is done per run, with ``clip_grad_norm_``'s formula).

    On a step that records (:meth:`train_step` with ``record=True``) each run takes its own
    forward and backward on its own model, where its recorder's hooks are, drawing its masks
    from its own stream, and the gradients are stacked for the one optimizer step: the records
    are those of the run alone.

    Example:
        >>> from selfnorm.config import TrainConfig
        >>> from selfnorm.models import build_mlp
        >>> from selfnorm.training import make_optimizer
        >>> models = [build_mlp(8, 3, 1, 16, "selu", generator=torch.Generator().manual_seed(s))
        ...           for s in range(2)]
        >>> opts = [make_optimizer(m.parameters(), TrainConfig()) for m in models]
        >>> cpu = torch.device("cpu")
        >>> runs = StackedRuns(models, opts, [seeded_rng_state(s, cpu) for s in range(2)],
        ...                    lambda p: make_optimizer(p, TrainConfig()))
        >>> losses, out = runs.train_step(torch.randn(2, 5, 8), torch.zeros(2, 5, dtype=torch.long))
        >>> tuple(losses.shape), tuple(out.shape)
        ((2,), (2, 5, 3))
    """

    def __init__(
        self,
        models: Sequence[nn.Sequential],
        optimizers: Sequence[torch.optim.Optimizer],
        rng_states: Sequence[dict[str, torch.Tensor]],
        make_optimizer: Callable[[Any], torch.optim.Optimizer],
    ) -> None:
        self.models, self.optimizers = list(models), list(optimizers)
        self.rng_states = [dict(s) for s in rng_states]
        self._make_optimizer = make_optimizer
        device = next(self.models[0].parameters()).device
        self.device = device
        self.generators = [_generator(s, device) for s in self.rng_states]
        self.net = StackedMLP(self.models, self.generators).to(device)
        self.optimizer = make_optimizer(self.net.parameters())
        # each stacked tensor with the K runs' parameters it holds; weights are transposed
        self._pairs: list[tuple[nn.Parameter, list[nn.Parameter], bool]] = []
        for kind, key, _ in self.net.layers:
            if kind == "linear":
                layers = [m.get_submodule(key) for m in self.models]
                self._pairs.append((self.net.weights[key], [p.weight for p in layers], True))
                self._pairs.append((self.net.biases[key], [p.bias for p in layers], False))
        for stacked, parts, weight in self._pairs:
            states = [opt.state.get(p) for opt, p in zip(self.optimizers, parts, strict=True)]
            if not any(states):
                continue
            if not all(states):
                raise ValueError("stacked runs must be at the same step: some have no state")
            self.optimizer.state[stacked] = {
                name: torch.stack([_to_stacked(s[name], weight) for s in states])
                if _is_slot(value, parts[0])
                else value.clone()
                if torch.is_tensor(value)
                else value
                for name, value in states[0].items()
            }

    @property
    def runs(self) -> int:
        return len(self.models)

    def train(self) -> None:
        """Training mode for an epoch: the stacked model and each run's own (recorded steps)."""
        self.net.train()
        for model in self.models:
            model.train()

    def train_step(
        self, xb: torch.Tensor, yb: torch.Tensor, record: bool = False, clip: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of every run on its ``(K, B, ...)`` batch (in the mode :meth:`train`
        set); returns the runs' mean cross-entropy losses ``(K,)`` and logits ``(K, B, C)``,
        detached."""
        self.optimizer.zero_grad(set_to_none=True)
        if record:
            outs, losses = [], []
            for k, model in enumerate(self.models):
                model = self.model(k)
                with self._global_rng(k):
                    out = model(xb[k])
                loss = TF.cross_entropy(out, yb[k])
                model.zero_grad(set_to_none=True)
                loss.backward()
                outs.append(out.detach())
                losses.append(loss.detach())
            for stacked, parts, weight in self._pairs:
                stacked.grad = torch.stack([_to_stacked(p.grad, weight) for p in parts])
                for p in parts:
                    p.grad = None
            out, loss = torch.stack(outs), torch.stack(losses)
        else:
            out = self.net(xb)
            loss = TF.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none")
            loss = loss.view(yb.shape).mean(1)
            loss.sum().backward()
            out, loss = out.detach(), loss.detach()
        if clip:
            self._clip(clip)
        self.optimizer.step()
        return loss, out

    def _clip(self, max_norm: float) -> None:
        """``clip_grad_norm_`` run by run: each slice's gradients scaled by
        ``min(1, max_norm / (||g_k|| + 1e-6))``, ``||g_k||`` the L2 norm over all of them."""
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))

    @contextmanager
    def _global_rng(self, k: int) -> Iterator[None]:
        """Run ``k``'s mask stream as the global RNG, which its own model's dropout draws from."""
        cuda = self.device.type == "cuda"
        saved = torch.cuda.get_rng_state(self.device) if cuda else torch.get_rng_state()
        state = self.generators[k].get_state()
        if cuda:
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)
        try:
            yield
        finally:
            now = torch.cuda.get_rng_state(self.device) if cuda else torch.get_rng_state()
            self.generators[k].set_state(now)
            if cuda:
                torch.cuda.set_rng_state(saved, self.device)
            else:
                torch.set_rng_state(saved)

    def model(self, k: int) -> nn.Sequential:
        """Run ``k``'s own model holding its current weights (for evaluation and records)."""
        return self.net.load_run(k, self.models[k])

    def sync(self) -> None:
        """Write the stacked weights, optimizer state and mask streams back into each run's
        own model, optimizer and ``rng_states`` (what its checkpoint holds)."""
        for k in range(self.runs):
            self.model(k)
            key = "cuda" if self.device.type == "cuda" else "cpu"
            self.rng_states[k][key] = self.generators[k].get_state()
        for stacked, parts, weight in self._pairs:
            state = self.optimizer.state.get(stacked)
            if not state:
                continue
            for k, (opt, p) in enumerate(zip(self.optimizers, parts, strict=True)):
                opt.state[p] = {
                    name: _from_stacked(value[k], weight)
                    if _is_slot(value, stacked)
                    else value.clone()
                    if torch.is_tensor(value)
                    else value
                    for name, value in state.items()
                }

    def without(self, drop: set[int]) -> StackedRuns | None:
        """The same runs less those numbered in ``drop`` (a diverged run stops alone), or
        None when none is left."""
        self.sync()
        keep = [k for k in range(self.runs) if k not in drop]
        if not keep:
            return None
        return StackedRuns(
            [self.models[k] for k in keep],
            [self.optimizers[k] for k in keep],
            [self.rng_states[k] for k in keep],
            self._make_optimizer,
        )


def _refusal(module: nn.Module) -> str | None:
    """Why one layer of an MLP cannot join a stack, or None."""
    if isinstance(module, nn.Linear):
        return None if module.bias is not None else "a Linear layer without a bias"
    if isinstance(module, nn.Flatten):
        ok = module.start_dim == 1 and module.end_dim == -1
        return None if ok else "a Flatten of other dimensions than 1..-1"
    if type(module) in (AlphaDropout, nn.Dropout):
        ok = getattr(module, "generator", None) is None
        return None if ok else "a dropout with its own generator"
    if not taxonomy.is_activation(module) or isinstance(module, taxonomy.NONELEMENTWISE_TYPES):
        return "only Linear, Flatten, element-wise activations and dropout stack"
    if isinstance(module, nn.RReLU):
        return "RReLU draws its slopes from the global RNG"
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        return "an activation with parameters or buffers (one per run)"
    return None


def _unhooked(module: nn.Module) -> nn.Module:
    """A copy of ``module`` without its hooks: the stacked forward must not fire the hooks a
    recorder put on run 0's own modules (the runs record through their own models)."""
    fresh = copy.deepcopy(module)
    for m in fresh.modules():
        for attr, value in vars(m).items():
            if attr.endswith("hooks") and isinstance(value, dict):
                value.clear()
    return fresh


def _is_slot(value: Any, param: torch.Tensor) -> bool:
    """Whether an optimizer state entry is per element of ``param`` (exp_avg, a momentum
    buffer), not a scalar such as Adam's step count."""
    return torch.is_tensor(value) and value.shape == param.shape


def _to_stacked(t: torch.Tensor, weight: bool) -> torch.Tensor:
    return t.t() if weight else t.unsqueeze(0)


def _from_stacked(t: torch.Tensor, weight: bool) -> torch.Tensor:
    return (t.t() if weight else t[0]).clone(memory_format=torch.contiguous_format)
