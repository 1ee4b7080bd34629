r"""``ActivationRecorder``: per-layer activation statistics and histograms during training.

Wrap any ``nn.Module``; every activation module (ReLU, SELU, GELU, ..., see
:func:`selfnorm.taxonomy.activation_types`) is recorded by name, before (pre-activation: the
module's input) and after (post-activation: its output), together with the gradient of the
loss w.r.t. its output and the weights of every weight layer. Per layer and record:

* mean, std (population), min, max;
* histogram counts over fixed signed bins (``RecordConfig.range``, ``RecordConfig.bins``;
  default [-4, 4], 64 bins) plus underflow (``x < low``) and overflow (``x >= high`` and NaN):
  nothing is dropped, each histogram sums to the number of values;
* fraction of exact zeros; fraction of units (index along dim 1: features of ``(N, F)``,
  channels of ``(N, C, H, W)``) never > 0 in the batch ("dead", ReLU family only);
* fraction of outputs within 5% of the SELU saturation value :math:`\alpha' = -\lambda\alpha`
  (:data:`SATURATION_RTOL`; SELU family only);
* distance of (mean, var) from (0, 1), :math:`\sqrt{\mu^2 + (\nu - 1)^2}`;
* std of the gradient w.r.t. the layer's output;
* for every weight layer, the mean and std over units of :math:`\omega = \sum_i w_i` and
  :math:`\tau = \sum_i w_i^2` (the quantities of the SELU theory).

How: on a recording step (every ``RecordConfig.every`` steps) hooks are added for one forward
pass and removed after it; other steps run without hooks. The hooks keep references to the
tensors they see (copies only where the model changes them in place, which version counters
reveal); at the end of the pass :func:`~selfnorm.recording.reduce.activation_stats` reduces
them all at once, and the gradients at the next :meth:`ActivationRecorder.step`. The reductions
run on the tensors' device; nothing is read back to the host until
:meth:`ActivationRecorder.flush`, which makes one transfer for every record since the last
flush and gives the sinks (:mod:`selfnorm.sinks`) plain arrays
(:class:`~selfnorm.records.Records`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from selfnorm import taxonomy
from selfnorm.recording import reduce
from selfnorm.recording.config import RecordConfig
from selfnorm.recording.functional import CallCapture, function_module, writes_input
from selfnorm.recording.reduce import GRAD_BINNING, N_STATS, Binning, ReduceBuffers
from selfnorm.records import STAT_KEYS, WEIGHT_KEYS, Records, concat_records
from selfnorm.sinks import layer_groups

__all__ = ["DENSE_WEIGHT_STEPS", "SATURATION_RTOL", "ActivationRecorder"]

DENSE_WEIGHT_STEPS = 10
"""Dense recording (``every=1``) takes the weight sums (ω, τ) on every 10th record (steps 0, 10,
20, ...; NaN on the others); any other cadence takes them on every record. Weights change
slowly, and reading every weight matrix after each optimizer step costs about a third of what
the activations of a record cost."""

SATURATION_RTOL = 0.05
r"""An output :math:`y` of a SELU-family layer counts as saturated when
:math:`|y - \alpha'| \le 0.05\,|\alpha'|`."""


@dataclass
class _Pending:
    """One record on the device: rows ``2 * slot + (0 pre | 1 post)``."""

    step: int
    rows: np.ndarray  # (R,) row ids of stats/hist
    stats: torch.Tensor  # (R, 7): see selfnorm.recording.reduce.activation_stats
    hist: torch.Tensor  # (R, bins + 2) int64
    weights: torch.Tensor | None  # (W, 4) float64: Σω, Σω², Στ, Στ² (None: not taken)
    numel: np.ndarray  # (R,) values of each row's tensor
    units: np.ndarray  # (R,) units (dim 1) of each row's tensor
    grad_slots: np.ndarray | None = None  # (G,) slots of grad
    grad: torch.Tensor | None = None  # (G, 2) float64 sum, sqrt(sum of squared deviations)
    grad_numel: np.ndarray | None = None  # (G,) values of each gradient
    weight_hist: torch.Tensor | None = None  # (W, bins + 2): taken with ``weights``
    grad_hist: torch.Tensor | None = None  # (G, gradient bins + 2), rows of grad_slots
    weight_grad_slots: np.ndarray | None = None  # (V,) weight layers of weight_grad_hist
    weight_grad_hist: torch.Tensor | None = None  # (V, gradient bins + 2)


class ActivationRecorder:
    r"""Record activation statistics of ``model`` during training; a context manager.

    Call :meth:`step` once per optimizer step, before the forward pass; on every
    ``config.every``-th step (0, every, 2·every, ...) it arms hooks for the next forward pass in
    training mode, which records every activation layer (and, through tensor hooks, the
    gradients of that pass's backward). :meth:`flush` (out of the hot loop, e.g. at epoch end)
    reads the records back to the host in one transfer and gives them to the sinks.

    Args:
        model: any ``nn.Module``. Call it as ``model(x)``: ``model.forward(x)`` skips hooks.
        config: bins, range, ``every`` and the backend; default
            :class:`~selfnorm.recording.config.RecordConfig`. With ``enabled=False``
            :meth:`step` never arms.
        sinks: objects with ``write(records)`` and ``close()`` (:mod:`selfnorm.sinks`); ``None``
            (default) keeps the records in memory for :meth:`records`.
        start_step: global step of the first :meth:`step` call (a resumed run passes the step
            it resumes at, so the schedule and the step numbers continue).
        steps_per_epoch: turns steps into fractional epochs in the records (NaN when ``None``).
        record_eval: also record forward passes in eval mode (default: a forward pass with
            ``model.training == False`` records nothing and leaves the recorder armed).
        activation_types: module types treated as activation layers (default: every type
            registered in :mod:`selfnorm.taxonomy`).
        functional: also record activation functions called inside a ``forward``
            (``F.selu(x)``, ``torch.relu(x)``, ``x.tanh()``; :mod:`selfnorm.recording.functional`)
            as layers named ``<module>.<function>.<k>``: the calling module's name (omitted for
            the root), the function, and the call's position among that forward's activation
            calls. Default True; a recorded pass then runs under a ``TorchFunctionMode``.

    Warning:
        Layers are fixed by the first recorded forward pass, in call order; a module called
        twice per pass is recorded twice (``name``, ``name#2``). A later pass that calls an
        activation the first one did not raises ``RuntimeError``; one that skips a layer leaves
        its statistics NaN in that record.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> with ActivationRecorder(net, RecordConfig(every=2)) as rec:
        ...     for _ in range(5):
        ...         _ = rec.step()
        ...         loss = net(torch.randn(32, 8)).square().mean()
        ...         opt.zero_grad()
        ...         loss.backward()
        ...         opt.step()
        ...     r = rec.records()
        >>> r.steps.tolist(), r.layers, r.family, r.hist_post.shape
        ([0, 2, 4], ('1',), ('relu',), (3, 1, 66))
        >>> int(r.hist_post[0, 0].sum()) == 32 * 16
        True
    """

    def __init__(
        self,
        model: nn.Module,
        config: RecordConfig | None = None,
        *,
        sinks: Iterable[Any] | None = None,
        start_step: int = 0,
        steps_per_epoch: int | None = None,
        record_eval: bool = False,
        activation_types: Sequence[type[nn.Module]] | None = None,
        functional: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = config if config is not None else RecordConfig()
        if not isinstance(self.config, RecordConfig):
            raise TypeError(f"config must be a RecordConfig, got {type(self.config).__name__}")
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step={start_step!r} must be an integer >= 0")
        if steps_per_epoch is not None and (
            isinstance(steps_per_epoch, bool)
            or not isinstance(steps_per_epoch, int)
            or steps_per_epoch < 1
        ):
            raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be None or an int >= 1")
        self.record_eval = bool(record_eval)
        self.steps_per_epoch = steps_per_epoch
        if self.config.every is None:  # auto: a quarter epoch, at most 50 steps; 50 if unknown
            every = self.config.resolve_every(steps_per_epoch) if steps_per_epoch else 50
            self.config = dataclasses.replace(self.config, every=every)
        self._memory: list[Records] | None = [] if sinks is None else None
        self.sinks = [] if sinks is None else list(sinks)
        types = taxonomy.activation_types() if activation_types is None else tuple(activation_types)
        self._acts = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]
        if not self._acts and not functional:
            raise ValueError(
                f"{type(model).__name__} has no activation modules to record (looked for "
                f"{', '.join(t.__name__ for t in types[:8])}, ...); pass functional=True to "
                "record activation functions (F.relu) called in a forward, or activation_types="
            )
        self._calls_capture = CallCapture(model, self._on_call, types) if functional else None
        self._hooks = [
            (m, partial(self._on_pre, i), partial(self._on_post, i))
            for i, (_, m) in enumerate(self._acts)
        ]
        # an activation that changes its input: its input is copied when captured (learned from
        # version counters on the first pass for those that do not say so)
        self._inplace = [bool(getattr(m, "inplace", False)) for _, m in self._acts]
        self._weights = [(n, m) for n, m in model.named_modules() if taxonomy.is_weight_layer(m)]
        # the weight histograms count w * sqrt(fan_in): LeCun's N(0, 1/fan_in) is N(0, 1)
        self._weight_scales = [math.sqrt(taxonomy.fan_in(m)) for _, m in self._weights]
        groups = layer_groups([n for n, _ in model.named_modules()], [n for n, _ in self._weights])
        for sink in self.sinks:  # a sink that groups layers by name learns the module order
            if hasattr(sink, "name_layers"):
                sink.name_layers(groups)
        lo, hi = self.config.range
        self.binning = Binning(self.config.bins, lo, hi)
        self.bin_edges = np.linspace(lo, hi, self.config.bins + 1)
        self._impl = _implementation(self.config.backend, model)
        self._dense = self.config.every == 1
        self._bufs = ReduceBuffers()

        # layout: slots in call order, fixed by the first captured pass
        self._slot_of: dict[tuple, int] = {}  # (module index, call) or (caller, order)
        self._slot_names: list[str] = []
        self._slot_family: list[str] = []
        self._thresholds: list[float] = []  # per row (2 * slot + kind)
        self._dead: list[bool] = []
        self._grad_hooks: list[Any] = []
        self._frozen = False

        self._next_step = start_step
        self._armed_step: int | None = None
        self._capturing = False
        self._calls: dict[int, int] = {}
        self._held: dict[int, tuple[int, torch.Tensor, int | None]] = {}
        self._module_handles: list[Any] = []
        self._tensor_handles: list[Any] = []
        # captured this pass: (row or slot, tensor to reduce, tensor to watch, its version); a
        # tensor changed in place after its capture (version moved) is copied from then on
        self._cap: list[tuple[int, torch.Tensor, torch.Tensor | None, int]] = []
        self._grad_cap: list[tuple[int, torch.Tensor, torch.Tensor | None, int]] = []
        self._weight_grad_cap: list[tuple[int, torch.Tensor, torch.Tensor | None, int]] = []
        self._copy_weight_grads: set[int] = set()
        self._copy_rows: set[int] = set()
        self._copy_grads: set[int] = set()
        self._first_grads = True
        self._grad_seen: set[int] = set()
        self._open: _Pending | None = None  # the last record, waiting for its gradients
        self._pending: list[_Pending] = []
        self._closed = False

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> ActivationRecorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.close()

    def close(self) -> None:
        """Remove every hook and close the sinks (without flushing). Idempotent."""
        self._remove_module_hooks()
        self._remove_tensor_hooks()
        self._armed_step = None
        self._capturing = False
        if not self._closed:
            self._closed = True
            for sink in self.sinks:
                sink.close()

    # -- the schedule ----------------------------------------------------------------------

    def step(self) -> bool:
        """Start an optimizer step: finish the previous record, arm if this step records.

        An arming that no forward pass used (e.g. only eval passes followed) lapses here.

        Returns:
            Whether this step's forward pass will be recorded.
        """
        self._finish()
        s = self._next_step
        self._next_step = s + 1
        if self.config.enabled and s % self.config.every == 0:
            self._arm(s)
            return True
        if self._armed_step is not None or self._capturing:
            self._armed_step = None
            self._capturing = False
            self._remove_module_hooks()
        return False

    def arm(self) -> None:
        """Record the next forward pass (in training mode, or any mode with ``record_eval``)
        whatever the schedule, under the step number of the last :meth:`step`; the next
        :meth:`step` cancels it if no forward pass came."""
        self._finish()
        self._arm(max(self._next_step - 1, 0))

    @property
    def armed(self) -> bool:
        """Whether the next forward pass in training mode will be recorded."""
        return self._armed_step is not None

    @property
    def device(self) -> torch.device:
        """Where the model is: its first parameter's or buffer's device (the CPU for none)."""
        return _device(self.model)

    @property
    def layers(self) -> tuple[str, ...]:
        """Recorded activation layers in call order (empty before the first record)."""
        return tuple(self._slot_names)

    # -- hooks -----------------------------------------------------------------------------

    def _arm(self, step: int) -> None:
        self._abandon_pass()
        if self._closed:
            raise RuntimeError("this ActivationRecorder is closed; create a new one")
        self._armed_step = step
        if self._module_handles:
            return
        hs = self._module_handles
        hs.append(self.model.register_forward_pre_hook(self._on_root_pre))
        if self._calls_capture is not None:  # after the root's pre-hook: it sees the root
            self._calls_capture.attach()
        for m, pre, post in self._hooks:
            hs.append(m.register_forward_pre_hook(pre))
            hs.append(m.register_forward_hook(post))
        hs.append(self.model.register_forward_hook(self._on_root_post))
        hs.append(self.model.register_forward_hook(self._end_calls, always_call=True))

    def _remove_module_hooks(self) -> None:
        for h in self._module_handles:
            h.remove()
        self._module_handles.clear()
        if self._calls_capture is not None:
            self._end_calls()
            self._calls_capture.detach()

    def _abandon_pass(self) -> None:
        """Forget a pass that raised half-way (an ``Exception``, or a ``KeyboardInterrupt``,
        for which torch runs no ``always_call`` hook): leave its function mode, and if it was
        the first pass, the layers it had begun to lay out."""
        self._end_calls()
        if self._capturing and not self._frozen:
            self._slot_of.clear()
            self._slot_names.clear()
            self._slot_family.clear()
            self._thresholds.clear()
            self._dead.clear()
            self._grad_hooks.clear()
        self._capturing = False

    def _end_calls(self, *_: Any) -> None:
        """Leave the function mode of a recorded pass (also when its forward raised)."""
        if self._calls_capture is not None and self._calls_capture.entered:
            self._calls_capture.__exit__(None, None, None)

    def _remove_tensor_hooks(self) -> None:
        for h in self._tensor_handles:
            h.remove()
        self._tensor_handles.clear()

    def _on_root_pre(self, module: nn.Module, args: Any) -> None:
        if self._capturing or self._armed_step is None:
            return
        if not (module.training or self.record_eval):
            return
        self._capturing = True
        self._calls.clear()
        self._held.clear()
        self._cap.clear()
        if self._calls_capture is not None and not self._calls_capture.entered:
            self._calls_capture.__enter__()

    def _slot(self, i: int) -> int:
        call = self._calls.get(i, 0) + 1
        self._calls[i] = call
        slot = self._slot_of.get((i, call))
        if slot is None:
            name, module = self._acts[i]
            label = (name or type(module).__name__) + (f"#{call}" if call > 1 else "")
            slot = self._new_slot((i, call), label, module)
        return slot

    def _new_slot(self, key: tuple, label: str, module: nn.Module) -> int:
        """The next slot, for the layer ``label`` that ``module`` (or a function of its kind)
        computes; only while the first recorded pass fixes the layout."""
        if self._frozen:
            raise RuntimeError(
                f"activation {label!r} was called in this recorded forward pass but not in "
                f"the first one, which fixed the layers {self._slot_names}; record a model "
                "whose forward pass calls the same activations every time"
            )
        slot = len(self._slot_names)
        self._slot_of[key] = slot
        self._slot_names.append(label)
        kind = taxonomy.activation_kind(module)
        self._slot_family.append(kind.name if kind is not None else "other")
        sat = taxonomy.saturation_value(module)
        thr = -math.inf if sat is None else sat + SATURATION_RTOL * abs(sat)
        dead = kind is not None and kind.dead_units
        self._thresholds += [-math.inf, thr]  # rows pre, post
        self._dead += [dead, dead]
        self._grad_hooks.append(partial(self._on_grad, slot))
        return slot

    @staticmethod
    def _capture(into: list, t: torch.Tensor, key: int, copy: bool) -> None:
        """Keep ``t`` (a reference, or a copy where ``copy``) with its version, to be checked
        when it is reduced: nothing is copied unless the model edits the tensor in place."""
        try:
            version = t._version
        except RuntimeError:  # an inference-mode tensor has no version counter: copy it
            into.append((key, t.clone(), None, 0))
            return
        into.append((key, t.clone() if copy else t, t, version))

    @staticmethod
    def _checked(captured: list, copy_next: set[int]) -> tuple[list[int], list[torch.Tensor]]:
        """The captured tensors still holding the values seen at capture. One changed in place
        since (a later in-place op of the model) is copied at capture from now on; a reference
        that changed is dropped (its statistics stay NaN in this one record)."""
        keys, kept = [], []
        for key, data, watched, version in captured:
            if watched is not None and watched._version != version:
                copy_next.add(key)
                if data is watched:
                    continue
            keys.append(key)
            kept.append(data)
        captured.clear()
        return keys, kept

    def _on_pre(self, i: int, module: nn.Module, args: tuple) -> None:
        """The input, before the call: a reference with its version (a copy on the first pass
        and for activations that change their input)."""
        if not self._capturing:
            return
        slot = self._slot(i)
        x = _float_tensor(args)
        if x is None:
            self._held[i] = (slot, None, None)
            return
        copy = not self._frozen or self._inplace[i] or 2 * slot in self._copy_rows
        self._capture(self._cap, x, 2 * slot, copy)
        self._held[i] = (slot, x, None if x.is_inference() else x._version)

    def _on_post(self, i: int, module: nn.Module, args: tuple, out: Any) -> None:
        if not self._capturing:
            return
        held = self._held.pop(i, None)
        if held is None:  # the call began before the capture did
            return
        slot, x, version = held
        if x is not None and version is not None and x._version != version:
            self._inplace[i] = True  # it changed its input: copy it before the call from now on
        if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
            return
        y = out.detach()
        row = 2 * slot + 1
        self._capture(self._cap, y, row, not self._frozen or row in self._copy_rows)
        if out.requires_grad:
            self._tensor_handles.append(out.register_hook(self._grad_hooks[slot]))

    def _on_call(self, key: tuple[str, int], name: str, func, args: tuple, kwargs: dict):
        """An activation function called in a recorded forward (:class:`CallCapture`): its
        input and output are captured like an activation module's."""
        if not self._capturing:  # a function mode left behind: pass the call through
            return func(*args, **kwargs)
        caller, order = key
        key = (caller, order, name)  # another function at the same position is another layer
        slot = self._slot_of.get(key)
        if slot is None:
            label = f"{caller + '.' if caller else ''}{name}.{order}"
            slot = self._new_slot(key, label, function_module(name))
        x = args[0] if args else kwargs.get("input")
        floating = isinstance(x, torch.Tensor) and x.is_floating_point()
        if floating:  # the input, before the call (a copy where the call overwrites it)
            copy = (
                not self._frozen or writes_input(func, args, kwargs) or 2 * slot in self._copy_rows
            )
            self._capture(self._cap, x.detach(), 2 * slot, copy)
        out = func(*args, **kwargs)
        if floating and isinstance(out, torch.Tensor) and out.is_floating_point():
            row = 2 * slot + 1
            self._capture(self._cap, out.detach(), row, not self._frozen or row in self._copy_rows)
            if out.requires_grad:
                self._tensor_handles.append(out.register_hook(self._grad_hooks[slot]))
        return out

    def _on_grad(self, slot: int, grad: torch.Tensor) -> None:
        if slot in self._grad_seen:  # a second backward through the same graph
            return
        self._grad_seen.add(slot)
        copy = self._first_grads or slot in self._copy_grads
        self._capture(self._grad_cap, grad.detach(), slot, copy)

    def _on_weight_grad(self, j: int, grad: torch.Tensor) -> None:
        """The gradient of weight layer ``j``'s weight in the first backward after the recorded
        pass (a copy on the first record: autograd hands the hook the tensor it stores as
        ``.grad``, which clipping or accumulation may change in place; the version check
        learns which layers need one)."""
        if any(key == j for key, *_ in self._weight_grad_cap):  # a second backward
            return
        copy = self._first_grads or j in self._copy_weight_grads
        self._capture(self._weight_grad_cap, grad.detach(), j, copy)

    def _watch_weight_grads(self) -> None:
        for j, (_, m) in enumerate(self._weights):
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.requires_grad:
                self._tensor_handles.append(w.register_hook(partial(self._on_weight_grad, j)))

    def _on_root_post(self, module: nn.Module, args: Any, out: Any) -> None:
        if not self._capturing:
            return
        self._end_calls()
        if not self._slot_names:
            raise RuntimeError(
                f"the recorded forward pass of {type(self.model).__name__} called no "
                "activation (no module of the types looked for and no activation function such "
                "as F.relu); register the activation's module type in selfnorm.taxonomy or "
                "pass activation_types="
            )
        self._capturing = False
        step = self._armed_step
        self._armed_step = None
        if self._next_step % self.config.every:  # hooks stay if the next step records too
            self._remove_module_hooks()
        if not self._frozen and self._calls_capture is not None:
            if not any(isinstance(key[0], str) for key in self._slot_of):
                # the first pass fixes the layout and it called no activation function: later
                # passes run without the function mode (a call they made could not be a layer)
                self._calls_capture.detach()
                self._calls_capture = None
        self._frozen = True
        self._held.clear()
        self._grad_cap.clear()
        self._weight_grad_cap.clear()
        self._grad_seen.clear()
        rows, tensors = self._checked(self._cap, self._copy_rows)
        backward_follows = torch.is_grad_enabled()
        with torch.no_grad():
            thr = [self._thresholds[r] for r in rows]
            dead = [self._dead[r] for r in rows]
            if tensors:
                stats, hist = self._impl.activation_stats(
                    tensors, thr, dead, self.binning, self._bufs
                )
            else:
                dev = _device(self.model)
                stats = torch.zeros((0, N_STATS), dtype=torch.float64, device=dev)
                hist = torch.zeros((0, self.binning.columns), dtype=torch.int64, device=dev)
            weights = weight_hist = None
            if not self._dense or step % DENSE_WEIGHT_STEPS == 0:
                matrices = [taxonomy.unit_weights(m) for _, m in self._weights]
                weights = self._impl.weight_moments(matrices)
                weight_hist = reduce.histograms(matrices, self.binning, self._weight_scales)
                if backward_follows:
                    self._watch_weight_grads()
        numel = np.array([t.numel() for t in tensors], dtype=np.float64)
        units = np.array([t.shape[1] if t.dim() >= 2 else t.numel() for t in tensors], dtype=float)
        self._open = _Pending(
            step, np.asarray(rows, dtype=np.int64), stats, hist, weights, numel, units
        )
        self._open.weight_hist = weight_hist

    def _finish(self) -> None:
        """Add the gradients to the last record; queue it for :meth:`flush`."""
        rec, self._open = self._open, None
        if self._tensor_handles:
            self._remove_tensor_hooks()
        if rec is None:
            return
        backward_seen = bool(self._grad_cap)  # the recorded pass's own backward ran
        if self._grad_cap:
            self._first_grads = False
            slots, grads = self._checked(self._grad_cap, self._copy_grads)
            if grads:
                with torch.no_grad():
                    rec.grad = reduce.gradient_moments(grads, self._bufs)
                    rec.grad_hist = reduce.histograms(grads, GRAD_BINNING)
                rec.grad_slots = np.asarray(slots, dtype=np.int64)
                rec.grad_numel = np.array([g.numel() for g in grads], dtype=np.float64)
        if not backward_seen:  # weight gradients of another pass's backward: not this record's
            self._weight_grad_cap.clear()
        if self._weight_grad_cap:
            layers, grads = self._checked(self._weight_grad_cap, self._copy_weight_grads)
            if grads:
                with torch.no_grad():
                    rec.weight_grad_hist = reduce.histograms(grads, GRAD_BINNING)
                rec.weight_grad_slots = np.asarray(layers, dtype=np.int64)
        self._pending.append(rec)

    # -- out of the hot loop ---------------------------------------------------------------

    def flush(self) -> Records:
        """Finish the pending record, read all records since the last flush back to the host
        (one transfer), give them to the sinks and return them.

        A record whose backward pass has not run yet when it is flushed has NaN ``grad_std``.
        """
        self._finish()
        # a pass that raised half-way never finished: its partial record is dropped, and a
        # retry of the armed step records afresh
        self._abandon_pass()
        if self._armed_step is None:
            self._remove_module_hooks()  # kept for a next recording step: re-added by step()
        pending, self._pending = self._pending, []
        if not pending:
            return Records.empty()
        parts = []
        for p in pending:
            parts += [p.stats.view(-1).double(), p.hist.view(-1).double()]
            if p.weights is not None:
                parts.append(p.weights.view(-1))
            if p.grad is not None:
                parts.append(p.grad.view(-1).double())
            for h in (p.weight_hist, p.grad_hist, p.weight_grad_hist):
                if h is not None:
                    parts.append(h.view(-1).double())
        dev = parts[0].device
        host = torch.cat([t.to(dev) for t in parts]).cpu().numpy()  # the one transfer
        records = self._decode(pending, host)
        for sink in self.sinks:
            sink.write(records)
        if self._memory is not None:
            self._memory.append(records)
        return records

    def records(self) -> Records:
        """Every record so far (flushes first); only for a recorder without ``sinks``."""
        if self._memory is None:
            raise RuntimeError(
                "records() needs a recorder without sinks (it keeps records in memory); with "
                "sinks, read what they wrote (e.g. selfnorm.records.read_records(folder))"
            )
        self.flush()
        return concat_records(self._memory)

    def _decode(self, pending: list[_Pending], host: np.ndarray) -> Records:
        s, nl, nb = len(pending), len(self._slot_names), self.binning.columns
        nw = len(self._weights)
        stats = np.full((s, 2 * nl, N_STATS), np.nan)
        hist = np.zeros((s, 2 * nl, nb), dtype=np.int64)
        grad = np.full((s, nl, 2), np.nan)  # sum, sqrt of the sum of squared deviations
        grad_n = np.full((s, nl), np.nan)
        wsum = np.full((s, nw, 4), np.nan)
        pos = 0

        def take(count: int) -> np.ndarray:
            nonlocal pos
            pos += count
            return host[pos - count : pos]

        def counts(count: int) -> np.ndarray:
            return np.rint(take(count)).astype(np.int64)

        ng = GRAD_BINNING.columns
        hist_w = np.zeros((s, nw, nb), dtype=np.int64)
        hist_g = np.zeros((s, nl, ng), dtype=np.int64)
        hist_wg = np.zeros((s, nw, ng), dtype=np.int64)

        for k, p in enumerate(pending):
            r = len(p.rows)
            stats[k, p.rows] = take(r * N_STATS).reshape(r, N_STATS)
            hist[k, p.rows] = np.rint(take(r * nb)).astype(np.int64).reshape(r, nb)
            if p.weights is not None:
                wsum[k] = take(nw * 4).reshape(nw, 4)
            if p.grad is not None:
                g = len(p.grad_slots)
                grad[k, p.grad_slots] = take(g * 2).reshape(g, 2)
                grad_n[k, p.grad_slots] = p.grad_numel
            if p.weight_hist is not None:
                hist_w[k] = counts(nw * nb).reshape(nw, nb)
            if p.grad_hist is not None:
                g = len(p.grad_slots)
                hist_g[k, p.grad_slots] = counts(g * ng).reshape(g, ng)
            if p.weight_grad_hist is not None:
                v = len(p.weight_grad_slots)
                hist_wg[k, p.weight_grad_slots] = counts(v * ng).reshape(v, ng)
        assert pos == len(host)
        numel, units = self._shapes(pending)
        family = tuple(self._slot_family)
        dead_ok = np.array(self._dead[1::2], dtype=bool)
        sat_ok = np.array([t > -math.inf for t in self._thresholds[1::2]], dtype=bool)
        out = []
        for kind in (0, 1):
            st, n_ = stats[:, kind::2], numel[:, kind::2]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean, var = st[..., 0] / n_, st[..., 1] ** 2 / n_  # from the sums
                d = {
                    "mean": mean,
                    "std": np.sqrt(var),
                    "min": st[..., 2],
                    "max": st[..., 3],
                    "zero_frac": st[..., 4] / n_,
                    "dead_frac": np.where(dead_ok, st[..., 6] / units[:, kind::2], np.nan),
                    "saturation_frac": np.where(sat_ok & (kind == 1), st[..., 5] / n_, np.nan),
                    "fp_distance": np.sqrt(mean**2 + (var - 1.0) ** 2),
                }
            out.append({key: d[key] for key in STAT_KEYS})
        nu = np.array([taxonomy.weight_units(m) for _, m in self._weights], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            om_mean, tau_mean = wsum[..., 0] / nu, wsum[..., 2] / nu
            om_var = np.maximum(wsum[..., 1] / nu - om_mean**2, 0.0)
            tau_var = np.maximum(wsum[..., 3] / nu - tau_mean**2, 0.0)
        weights = dict(
            zip(WEIGHT_KEYS, (om_mean, np.sqrt(om_var), tau_mean, np.sqrt(tau_var)), strict=True)
        )
        steps = np.array([p.step for p in pending], dtype=np.int64)
        return Records(
            steps=steps,
            epochs=steps / self.steps_per_epoch if self.steps_per_epoch else np.full(s, np.nan),
            layers=tuple(self._slot_names),
            depth=np.arange(1, nl + 1, dtype=np.int64),
            family=family,
            bin_edges=self.bin_edges.copy(),
            hist_post=hist[:, 1::2],
            hist_pre=hist[:, 0::2],
            post=out[1],
            pre=out[0],
            grad_std=grad[..., 1] / np.sqrt(grad_n),
            weight_layers=tuple(n for n, _ in self._weights),
            weights=weights,
            weight_fan_in=np.array([taxonomy.fan_in(m) for _, m in self._weights], np.int64),
            hist_weight=hist_w,
            grad_bin_edges=GRAD_BINNING.edges(),
            hist_grad=hist_g,
            hist_weight_grad=hist_wg,
        )

    def _shapes(self, pending: list[_Pending]) -> tuple[np.ndarray, np.ndarray]:
        """Numbers of values and of units of each record's rows ``(S, 2L)`` (NaN: not taken),
        from the shapes recorded with each record."""
        numel = np.full((len(pending), 2 * len(self._slot_names)), np.nan)
        units = numel.copy()
        for k, p in enumerate(pending):
            numel[k, p.rows] = p.numel
            units[k, p.rows] = p.units
        return numel, units


def _implementation(backend: str, model: nn.Module):
    """The module whose ``activation_stats`` and ``weight_moments`` reduce a record."""
    if backend == "torch":
        return reduce
    from selfnorm.recording import kernel  # opt-in: compiles on first use

    if _device(model).type != "cpu":
        raise RuntimeError(
            "RecordConfig(backend='kernel') reduces CPU tensors only; this model is on "
            f"{_device(model)}: use backend='torch' (the default)"
        )
    kernel.require()
    return kernel


def _float_tensor(args: tuple) -> torch.Tensor | None:
    """The first argument, detached, if it is a floating-point tensor."""
    if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
        return args[0].detach()
    return None


def _device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
