r"""What a forward does, seen by the audit: its leaf modules in order, and its function calls.

:func:`run_trace` runs the model once in eval mode without gradients and records the execution
order of the leaf modules and the :class:`Moments` of every SELU output (:func:`evaluating`
restores every module's own training flag); :func:`registration_trace` is the fallback when no
input can be made.

Module hooks see ``nn.SELU`` and ``nn.AlphaDropout``; they do not see ``F.selu(x)`` or
``F.alpha_dropout(x, p)`` called inside a ``forward``. :func:`trace_calls` runs the model once
in training mode (gradients off, BatchNorm running statistics and every module's training flag
restored afterwards) under a :class:`torch.overrides.TorchFunctionMode` that logs every call of
an activation or dropout function, keyed by the calling module (the innermost module whose
forward is running) and the call's order in that forward, the same across steps.

The trap it exists for: ``F.alpha_dropout``, ``F.feature_alpha_dropout`` and
``torch.nn.functional.dropout(x, p, training=False)`` do nothing unless ``training=True`` is
passed, and the first two default to ``training=False``. A network calling
``F.alpha_dropout(x, 0.1)`` in its forward trains without dropout (the PyTorch form of the seed
TensorFlow example's ``dropout_selu(x, keep_prob)``, whose ``training`` also defaulted to
False). A dropout module switched to eval inside a network in training mode is the same.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.nn import functional as F
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         return F.alpha_dropout(F.selu(self.fc(x)), 0.1)
    >>> [(c.module, c.order, c.function, c.training) for c in trace_calls(Net(), torch.zeros(2, 4))]
    [('<model>', 0, 'selu', None), ('<model>', 1, 'alpha_dropout', False)]
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from selfnorm import taxonomy
from selfnorm.findings import MODEL, Finding

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "DROPOUT_FUNCTIONS",
    "FunctionalCall",
    "Moments",
    "Trace",
    "call_findings",
    "check_dropout_modes",
    "evaluating",
    "leaves",
    "registration_trace",
    "run_trace",
    "trace_calls",
]


@dataclass(frozen=True)
class Moments:
    """Mean and variance of a layer's output, with their standard errors.

    The layer's statistics are averages over its units (features, or channels of a feature map),
    so the standard errors are taken over units: ``se_mean = sd_j(m_j) / sqrt(units)`` and
    ``se_var = sd_j(q_j) / sqrt(units)`` with :math:`m_j` the mean and :math:`q_j` the second
    moment about the layer mean of unit j (over the batch and any spatial positions). This covers
    both the finite batch and the finite width: a layer of 16 units wanders further from (0, 1)
    than a layer of 512, even with a correct init.
    """

    mean: float
    var: float
    se_mean: float
    se_var: float

    @classmethod
    def of(cls, x: torch.Tensor) -> Moments:
        x = x.detach().to(torch.float64)
        mean = x.mean()
        sq = (x - mean) ** 2
        if x.dim() >= 2 and x.shape[1] > 1:  # (N, units, *rest): unit j's are x[:, j, ...]
            dims = [d for d in range(x.dim()) if d != 1]
            m_j, q_j = x.mean(dims), sq.mean(dims)
        else:  # one unit (or no batch dimension): the values themselves are the sample
            m_j, q_j = x.reshape(-1), sq.reshape(-1)
        units = m_j.numel()
        se_mean = float(m_j.std(unbiased=False)) / math.sqrt(units)
        se_var = float(q_j.std(unbiased=False)) / math.sqrt(units)
        return cls(float(mean), float(sq.mean()), se_mean, se_var)


@dataclass
class Trace:
    """Leaf modules in execution order (``names``, ``modules``), the :class:`Moments` of each
    SELU output by position, and whether the model ran (False: registration order)."""

    names: list[str]
    modules: list[nn.Module]
    selu: dict[int, Moments]
    executed: bool


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_modules():
        if next(m.children(), None) is None and not isinstance(m, (nn.Sequential, nn.ModuleList)):
            out.append((name or MODEL, m))
    return out


def registration_trace(model: nn.Module) -> Trace:
    found = leaves(model)
    return Trace([n for n, _ in found], [m for _, m in found], {}, executed=False)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; every module's own training flag restored after (a
    model may mix modes, so ``model.train(flag)`` would not restore it)."""
    with _flags_restored(model):
        model.eval()
        with torch.no_grad():
            yield


@contextmanager
def _flags_restored(model: nn.Module) -> Iterator[None]:
    """Every module's own training flag as it was, after the ``with`` body (raising or not)."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def run_trace(model: nn.Module, args: tuple) -> Trace:
    """Run ``model(*args)`` once in eval mode without gradients, recording the order of leaf
    calls and the moments of each SELU output; every hook is removed and every module's
    training flag restored, also when the forward raises."""
    trace = Trace([], [], {}, executed=True)

    def pre(name: str, module: nn.Module, _args) -> None:
        trace.names.append(name)
        trace.modules.append(module)

    def post(module: nn.Module, _args, output) -> None:
        index = max(i for i, m in enumerate(trace.modules) if m is module)
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            trace.selu[index] = Moments.of(output)

    handles = []
    try:
        for name, m in leaves(model):
            handles.append(m.register_forward_pre_hook(lambda mod, a, n=name: pre(n, mod, a)))
            if taxonomy.is_selu(m):
                handles.append(m.register_forward_hook(post))
        with evaluating(model):
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return trace


ACTIVATION_FUNCTIONS: dict[object, str] = {
    F.selu: "selu", torch.selu: "selu", torch.selu_: "selu",
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6",
    F.leaky_relu: "leaky_relu", F.elu: "elu", F.celu: "celu", F.gelu: "gelu", F.silu: "silu",
    F.mish: "mish", F.tanh: "tanh", torch.tanh: "tanh", F.sigmoid: "sigmoid",
    torch.sigmoid: "sigmoid", F.softplus: "softplus", F.prelu: "prelu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu", torch.Tensor.tanh: "tanh",
    torch.Tensor.sigmoid: "sigmoid", torch.Tensor.tanh_: "tanh", torch.Tensor.sigmoid_: "sigmoid",
    F.elu_: "elu", F.leaky_relu_: "leaky_relu",
}  # fmt: skip
"""Functions logged as activations, with the name their calls are reported by."""

DROPOUT_FUNCTIONS: dict[object, str] = {
    F.dropout: "dropout", F.dropout1d: "dropout1d", F.dropout2d: "dropout2d",
    F.dropout3d: "dropout3d", F.alpha_dropout: "alpha_dropout",
    F.feature_alpha_dropout: "feature_alpha_dropout", torch.dropout: "dropout",
    torch.alpha_dropout: "alpha_dropout", torch.feature_alpha_dropout: "feature_alpha_dropout",
}  # fmt: skip
"""Functions logged as dropouts, with whether they were told to drop (``training``)."""


@dataclass(frozen=True)
class FunctionalCall:
    """One call of an activation or dropout function during the traced forward."""

    module: str
    """The calling module's name (``named_modules``), ``<model>`` for the root."""
    order: int
    """Its position among the logged calls of that module's forward (0, 1, ...)."""
    function: str
    """The function's name, e.g. ``selu`` or ``alpha_dropout``."""
    training: bool | None
    """For dropouts: the ``training`` flag it received (False: it drops nothing); else None."""
    p: float | None
    """For dropouts: the drop rate; else None."""
    in_module: bool
    """True when the calling module is itself a dropout or activation module (``nn.Dropout``
    calls ``F.dropout``): then the module checks already cover it."""
    after: str | None = None
    """For activations: the weight layer that ran last before the call, with nothing between
    them but dropouts and shape-only modules (what the call most likely activates), or None."""


def _dropout_args(func, args: tuple, kwargs: dict) -> tuple[bool, float]:
    """``(training, p)`` of a dropout call, with the function's own defaults."""
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        return bool(a.get("training", a.get("train", True))), float(a.get("p", 0.5))
    except (TypeError, ValueError):  # a builtin (torch.dropout(input, p, train)): positional
        p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
        train = kwargs.get("train", args[2] if len(args) > 2 else True)
        return bool(train), float(p)


class _Log(TorchFunctionMode):
    def __init__(self, stack: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.stack = stack
        self.calls: list[FunctionalCall] = []
        self.counts: dict[str, int] = {}
        self.last_weight: str | None = None
        """The weight layer that finished last with only pass-through modules since."""

    def left(self, name: str, module: nn.Module) -> None:
        """A leaf module's forward finished: remember a weight layer, forget it after any other
        module that changes values."""
        if taxonomy.is_weight_layer(module):
            self.last_weight = name
        elif not isinstance(module, taxonomy.SHAPE_ONLY_TYPES + taxonomy.DROPOUT_TYPES):
            self.last_weight = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = DROPOUT_FUNCTIONS.get(func) or ACTIVATION_FUNCTIONS.get(func)
        if kind is not None:
            name, module = self.stack[-1] if self.stack else (MODEL, None)
            order = self.counts.get(name, 0)
            self.counts[name] = order + 1
            training = p = None
            if func in DROPOUT_FUNCTIONS:
                training, p = _dropout_args(func, args, kwargs)
            # a module whose own forward is the logged function (nn.SELU calls F.selu): its
            # module checks cover it
            wrapped = module is not None and (
                taxonomy.is_activation(module) or isinstance(module, taxonomy.DROPOUT_TYPES)
            )
            after = None
            if func not in DROPOUT_FUNCTIONS and not wrapped:
                after, self.last_weight = self.last_weight, None  # it changes the values
            self.calls.append(FunctionalCall(name, order, kind, training, p, wrapped, after))
        return func(*args, **kwargs)


def trace_calls(model: nn.Module, *args: object) -> list[FunctionalCall]:
    """Run ``model(*args)`` once in training mode (see the module docstring) and return the
    activation and dropout function calls of that forward, in call order.

    A model already in training mode keeps each module's own flag (so a dropout module switched
    to eval shows up as a call with ``training=False``); a model in eval mode is put in training
    mode for the trace. Gradients are off; buffers (BatchNorm's running statistics) and every
    module's training flag are restored afterwards, also when the forward raises.
    """
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    stack: list[tuple[str, nn.Module]] = []
    log = _Log(stack)
    handles = []
    for name, m in model.named_modules():

        def enter(mod, _args, name=name or MODEL):
            stack.append((name, mod))

        def leave(mod, _args, _out, name=name or MODEL):
            if stack and stack[-1][1] is mod:
                stack.pop()
            if not any(True for _ in mod.children()):
                log.left(name, mod)

        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    try:
        with _flags_restored(model), torch.no_grad(), log:
            if not model.training:
                model.train()
            model(*args)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return log.calls


def check_dropout_modes(model: nn.Module) -> list[Finding]:
    """``inert_dropout`` findings for dropout modules left in eval mode inside a model in
    training mode (they drop nothing)."""
    if not model.training:
        return []
    return [
        Finding(
            "error",
            name,
            "inert_dropout",
            {"module_training": False, "p": float(m.p)},
            {"module_training": True},
            f"{name} was switched to eval inside a model in training mode, so it never drops: "
            "remove the .eval() (or the train() override) that does it",
        )
        for name, m in model.named_modules()
        if isinstance(m, taxonomy.DROPOUT_TYPES) and not m.training and m.p > 0
    ]


def call_findings(calls: list[FunctionalCall], found: list[Finding]) -> list[Finding]:
    """``found`` plus what :func:`trace_calls`' ``calls`` show: an ``inert_dropout`` error per
    dropout call that drops nothing, a ``functional_activation`` info per calling module, and
    no ``no_selu`` when ``F.selu`` is called."""
    out = list(found)
    seen: dict[str, list[str]] = {}
    for c in calls:
        if c.in_module:
            continue
        if c.training is False and c.p:
            out.append(
                Finding(
                    "error",
                    c.module,
                    "inert_dropout",
                    {"function": f"F.{c.function}", "call": c.order, "p": c.p, "training": False},
                    {"training": True},
                    f"call {c.order} in {c.module}'s forward drops nothing in training mode: "
                    f"pass training=self.training (F.alpha_dropout and F.feature_alpha_dropout "
                    "default to False) or use a module, e.g. selfnorm.AlphaDropout",
                )
            )
        elif c.training is None:
            seen.setdefault(c.module, []).append(c.function)
    for module, functions in seen.items():
        counts = ", ".join(f"{f} x{functions.count(f)}" for f in dict.fromkeys(functions))
        out.append(
            Finding(
                "info",
                module,
                "functional_activation",
                {"functions": counts},
                {"functions": "activation modules"},
                f"{module}'s forward calls activation functions: seen, but their outputs are not "
                "measured (only SELU modules' are); use modules (selfnorm.SELU) to have them "
                "checked",
            )
        )
    if any(c.function == "selu" and not c.in_module for c in calls):
        out = [f for f in out if f.kind != "no_selu"]  # SELU is there, as a function
    return out
