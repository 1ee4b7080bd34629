r"""Activation functions called inside a ``forward`` (``F.selu(x)``, ``torch.relu(x)``,
``x.tanh()``), seen by the recorder during one recorded pass.

Module hooks see ``nn.SELU``; they do not see ``F.selu`` called in a ``forward``. During a
recorded pass :class:`CallCapture` is a :class:`torch.overrides.TorchFunctionMode`: every call
of a function in :data:`selfnorm.tracing.ACTIVATION_FUNCTIONS` made by a module that is not
itself an activation or dropout module (``nn.SELU.forward`` calls ``F.selu``; the module hooks
cover it) is handed to the recorder with its key ``(module, order)``: the calling module's
name in ``named_modules`` (the innermost module whose forward is running; ``""`` for the root)
and the call's position among the activation calls of that module's forward (0, 1, ...). The
key is the same at every step for a forward that runs the same code, which is what lets records
of different steps line up. Outside recorded passes nothing is intercepted.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.nn import functional as F
    >>> class Block(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         return x + F.selu(self.fc(x)).tanh()
    >>> net = nn.Sequential(Block(), nn.ReLU())
    >>> seen = []
    >>> capture = CallCapture(net, lambda key, name, func, args, kwargs: (
    ...     seen.append((key, name)), func(*args, **kwargs))[1])
    >>> with capture:
    ...     _ = net(torch.zeros(2, 4))
    >>> seen
    [(('0', 0), 'selu'), (('0', 1), 'tanh')]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode

from selfnorm import taxonomy
from selfnorm.tracing import ACTIVATION_FUNCTIONS

__all__ = ["CallCapture", "function_module", "writes_input"]


def function_module(name: str) -> nn.Module:
    """The module whose forward the activation function ``name`` is (its family, saturation
    value and dead-unit rule in :mod:`selfnorm.taxonomy` are the call's).

    Example:
        >>> taxonomy.activation_family(function_module("leaky_relu"))
        'lrelu'
    """
    return taxonomy.FUNCTION_TYPES[name]()


def writes_input(func: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether the call overwrites its input: ``torch.relu_``, ``x.relu_()``, or
    ``inplace=True`` (by keyword or as a positional ``True``)."""
    return (
        getattr(func, "__name__", "").endswith("_")
        or kwargs.get("inplace") is True
        or any(a is True for a in args[1:])
    )


Handler = Callable[[tuple[str, int], str, Callable, tuple, dict], Any]
"""``(key, function name, func, args, kwargs) -> the call's result``; it makes the call."""


class CallCapture(TorchFunctionMode):
    """Hand every activation function call of ``model``'s modules to ``handler`` while entered.

    The calling module is known from forward pre/post hooks on every module of ``model``,
    added by :meth:`attach` (and by ``__enter__`` if not attached), removed by :meth:`detach`.
    """

    def __init__(
        self, model: nn.Module, handler: Handler, module_types: tuple[type, ...] = ()
    ) -> None:
        super().__init__()
        self.handler = handler
        self.module_types = tuple(module_types)  # recorded as modules: their calls are theirs
        self._named = list(model.named_modules())
        self._names = {id(m): name for name, m in self._named}
        self._stack: list[tuple[str, nn.Module]] = []
        self._counts: dict[str, int] = {}
        self._handles: list[Any] = []
        self.entered = False

    def attach(self) -> None:
        """Add the hooks that track the running module (idempotent)."""
        if self._handles:
            return
        for _, m in self._named:
            self._handles.append(m.register_forward_pre_hook(self._enter_module))
            self._handles.append(m.register_forward_hook(self._leave_module, always_call=True))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _enter_module(self, module: nn.Module, _args: Any) -> None:
        if self.entered:
            self._stack.append((self._names.get(id(module), ""), module))

    def _leave_module(self, module: nn.Module, _args: Any, _out: Any) -> None:
        if self.entered and self._stack and self._stack[-1][1] is module:
            self._stack.pop()

    def __enter__(self) -> CallCapture:
        self.attach()
        self._stack.clear()
        self._counts.clear()
        self.entered = True
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.entered = False
        self._stack.clear()
        super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = ACTIVATION_FUNCTIONS.get(func)
        if name is None or not self._stack:  # not an activation, or not inside the model
            return func(*args, **kwargs)
        caller, module = self._stack[-1]
        if taxonomy.is_activation(module) or isinstance(
            module, taxonomy.DROPOUT_TYPES + self.module_types
        ):
            return func(*args, **kwargs)  # nn.SELU calling F.selu: the module hooks see it
        order = self._counts.get(caller, 0)
        self._counts[caller] = order + 1
        return self.handler((caller, order), name, func, args, kwargs)
