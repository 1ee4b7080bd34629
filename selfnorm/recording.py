r"""``ActivationRecorder``: per-layer activation statistics and histograms during training.

Wrap any ``nn.Module``; every activation module (ReLU, SELU, GELU, ..., see
:data:`ACTIVATION_TYPES`) is recorded by name, before (pre-activation: the module's input) and
after (post-activation: its output), together with the gradient of the loss w.r.t. its output
and the weights of every Linear/Conv layer. Per layer and record:

* mean, std (population), min, max;
* histogram counts over fixed signed bins (``RecordConfig.range``, ``RecordConfig.bins``;
  default [-4, 4], 64 bins) plus underflow (``x < low``) and overflow (``x >= high`` and NaN):
  nothing is dropped, each histogram sums to the number of values;
* fraction of exact zeros; fraction of units (index along dim 1: features of ``(N, F)``,
  channels of ``(N, C, H, W)``) never > 0 in the batch ("dead", ReLU family only);
* fraction of outputs within 5% of the SELU saturation value :math:`\alpha' = -\lambda\alpha`
  (:data:`SATURATION_RTOL`; for SELU that is a pre-activation below :math:`\ln 0.05 \approx -3`;
  SELU family only);
* distance of (mean, var) from the fixed point (0, 1), :math:`\sqrt{\mu^2 + (\nu - 1)^2}`;
* std of the gradient w.r.t. the layer's output;
* for every Linear/Conv layer, the mean and std over units of
  :math:`\omega = \sum_i w_i` and :math:`\tau = \sum_i w_i^2` (the quantities of the SELU theory).

Cost: hooks are registered only for the forward pass of a recording step (every
``RecordConfig.every`` steps) and removed right after it, so other steps run without hooks. On
the CPU (float32), the fused C++ kernel of :mod:`selfnorm.record_kernel` reduces each layer's
input and output in the layer's forward hook, without copies, while the values are in the cache;
gradients come from C++ tensor hooks. After the first recorded pass the forward hooks are C++
functions registered on the modules, and the records live in the kernel's store (blocks of
preallocated buffers; the weight sums are taken when a record begins), so a recorded step
creates no Python object; the flush takes the store in one piece. The first pass also learns
which activations change their input in place: their input is read by a pre-hook, before the
call. Elsewhere (CUDA, float64, a kernel
that cannot be built, ``backend="torch"``) the hooks keep the tensors (copies where the model
edits them in place, checked by version counters) and all layers of one shape are reduced
together at the end of the pass, on the tensors' device, with a fixed number of torch
operations; nothing is read back to the host until :meth:`ActivationRecorder.flush`, which makes
one transfer for all records taken since the last flush. Either way the records go to the sinks
(:mod:`selfnorm.sinks`) as plain arrays (:class:`~selfnorm.records.Records`) at the flush.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from selfnorm import record_kernel
from selfnorm.activations import SELU
from selfnorm.config import RecordConfig
from selfnorm.constants import SATURATION_01
from selfnorm.records import (
    STAT_KEYS,
    WEIGHT_KEYS,
    Records,
    concat_records,
    read_records,
)

__all__ = [
    "ACTIVATION_TYPES",
    "SATURATION_RTOL",
    "ActivationRecorder",
    "Records",
    "activation_family",
    "read_records",
    "saturation_value",
]

SATURATION_RTOL = 0.05
r"""An output :math:`y` of a SELU-family layer counts as saturated when
:math:`|y - \alpha'| \le 0.05\,|\alpha'|`."""

# Order matters where classes inherit (ReLU6 is a Hardtanh, CELU is not an ELU).
_FAMILY_TYPES: tuple[tuple[str, tuple[type[nn.Module], ...]], ...] = (
    ("selu", (SELU, nn.SELU)),
    ("relu", (nn.ReLU, nn.ReLU6)),
    ("lrelu", (nn.LeakyReLU, nn.PReLU, nn.RReLU)),
    ("elu", (nn.ELU, nn.CELU)),
    ("gelu", (nn.GELU,)),
    ("silu", (nn.SiLU,)),
    ("tanh", (nn.Tanh,)),
    (
        "other",
        (
            nn.Sigmoid,
            nn.Softplus,
            nn.Mish,
            nn.Hardtanh,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.Softsign,
            nn.Tanhshrink,
            nn.LogSigmoid,
            nn.Softshrink,
            nn.Hardshrink,
            nn.Threshold,
        ),
    ),
)

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(t for _, ts in _FAMILY_TYPES for t in ts)
"""Module types recorded as activation layers (element-wise activations of torch.nn and
:class:`selfnorm.SELU`); pass ``activation_types=`` to record others."""

_DEAD_FAMILIES = ("relu", "lrelu")
_WEIGHT_TYPES = (nn.Linear, nn.modules.conv._ConvNd)
_N_STATS = 7  # mean, var, min, max, #zeros, #saturated, #dead units
_POOL_RECORDS = 64  # kernel output buffers are allocated for this many records at once


def activation_family(module: nn.Module) -> str:
    """``selu``, ``relu``, ``lrelu``, ``elu``, ``gelu``, ``silu``, ``tanh`` or ``other``.

    Example:
        >>> activation_family(nn.LeakyReLU(0.2)), activation_family(SELU())
        ('lrelu', 'selu')
    """
    for name, types in _FAMILY_TYPES:
        if isinstance(module, types):
            return name
    return "other"


def saturation_value(module: nn.Module) -> float | None:
    r"""The value :math:`\alpha' = -\lambda\alpha` a SELU module saturates to; ``None`` for
    other modules.

    Example:
        >>> round(saturation_value(nn.SELU()), 4), saturation_value(nn.ReLU())
        (-1.7581, None)
    """
    if isinstance(module, SELU):
        return module.saturation
    if isinstance(module, nn.SELU):
        return SATURATION_01
    return None


class _Rows:
    """Tensors of one shape (and device, dtype) captured in one pass, copied into a reused
    buffer ``(capacity, *shape)`` row by row; ``ids`` says which (layer, pre/post) each row is."""

    __slots__ = ("buf", "ids", "itmp", "n", "rows", "tmp")

    def __init__(self, like: torch.Tensor, dtype: torch.dtype, int_dtype: torch.dtype) -> None:
        self.buf = torch.empty((2, *like.shape), dtype=dtype, device=like.device)
        self.tmp = torch.empty((2, like.numel()), dtype=dtype, device=like.device)
        self.itmp = torch.empty((2, like.numel()), dtype=int_dtype, device=like.device)
        self.rows = list(self.buf.unbind(0))
        self.ids: list[int] = []
        self.n = 0

    def add(self, t: torch.Tensor, row_id: int) -> None:
        if self.n == len(self.rows):
            cap = 2 * len(self.rows)
            buf = self.buf.new_empty((cap, *self.buf.shape[1:]))
            buf[: self.n].copy_(self.buf[: self.n])
            self.buf = buf
            self.rows = list(buf.unbind(0))
            self.tmp = self.tmp.new_empty((cap, self.tmp.shape[1]))
            self.itmp = self.itmp.new_empty((cap, self.itmp.shape[1]))
        self.rows[self.n].copy_(t)  # t is detached: no autograd graph
        self.ids.append(row_id)
        self.n += 1


@dataclass
class _GroupPlan:
    """How to reduce one :class:`_Rows` (cached per layout) and decode its results."""

    ids: np.ndarray  # row ids: 2 * slot + (0 pre | 1 post)
    numel: int
    units: int
    sat_rows: slice | None  # rows with a saturation threshold (a slice over every such row)
    thresholds: torch.Tensor  # (len(sat_rows), 1) thresholds, -inf where not applicable
    offsets: torch.Tensor  # (n, 1) row offsets into the joint histogram
    shift: torch.Tensor  # 0-dim: 1 - low * bins / (high - low)


@dataclass(slots=True)
class _Kernel:
    """One record's statistics from the fused kernel: CPU buffers the hooks fill (row
    ``2 * slot + (0 pre | 1 post)`` of ``stats``/``hist``, row ``slot`` of ``grad``)."""

    stats: torch.Tensor  # (R, 7) mean, var, min, max, #zeros, #saturated, #dead units
    hist: torch.Tensor  # (R, bins + 2)
    meta: torch.Tensor  # (R, 2) numel, units (0: row not written)
    grad: torch.Tensor  # (S, 2) mean, var (NaN: not written)
    weights: torch.Tensor | None  # (W, 4) sums over units of ω, ω², τ, τ² (None: not taken)
    weight_row: torch.Tensor | None  # the buffer for them (None: the C++ store's record)
    # the block of records the buffers are views of (stats, hist, meta, grad, weights), and
    # this record's index in it; None once the buffers were replaced (grown)
    block: tuple[torch.Tensor, ...] | None = None
    index: int = 0


@dataclass
class _Pending:
    """One record: the torch-ops part on the device (float32, float64 and int64 values, each
    concatenated; empty where the kernel did the work) and the kernel's part."""

    step: int
    groups: list[_GroupPlan]
    grads: list[tuple[np.ndarray, int, int]]  # (slots, rows, values per row)
    f32: torch.Tensor  # per group sum, spread, min, max; then per grad group the spread
    f64: torch.Tensor  # per group #zeros, #saturated; then the weight sums (torch path)
    i64: torch.Tensor  # per group #dead units, histogram counts
    # the kernel's part: buffers filled by Python hooks, or _STORE: the next record of the C++
    # record store (Capture.take), in order
    kernel: _Kernel | object | None = None
    kernel_only: bool = False  # the kernel did all of it (weights included): no torch part
    torch_weights: bool = False  # f64 ends with the weight sums of the torch path


_NONE32 = torch.zeros(0, dtype=torch.float32)
_NONE64 = torch.zeros(0, dtype=torch.float64)
_NONE64I = torch.zeros(0, dtype=torch.int64)
_STORE = object()  # a record held by the C++ record store
# a record the C++ side did all of: its step and statistics come from the store
_STORE_ONLY = _Pending(-1, [], [], _NONE32, _NONE64, _NONE64I, _STORE, True)


class ActivationRecorder:
    r"""Record activation statistics of ``model`` during training; a context manager.

    Call :meth:`step` once per optimizer step, before the forward pass; on every
    ``config.every``-th step (0, every, 2·every, ...) it arms hooks for the next forward pass in
    training mode, which records every activation layer (and, through tensor hooks, the
    gradients of that pass's backward). :meth:`flush` (out of the hot loop, e.g. at epoch end)
    reads the records back to the host in one transfer and gives them to the sinks.

    Args:
        model: any ``nn.Module``. Call it as ``model(x)``: ``model.forward(x)`` skips hooks.
        config: bins, range and ``every``; default :class:`~selfnorm.config.RecordConfig`.
            With ``enabled=False`` :meth:`step` never arms.
        sinks: objects with ``write(records)`` and ``close()`` (:mod:`selfnorm.sinks`); ``None``
            (default) keeps the records in memory for :meth:`records`.
        start_step: global step of the first :meth:`step` call (a resumed run passes the step
            it resumes at, so the schedule and the step numbers continue).
        steps_per_epoch: turns steps into fractional epochs in the records (NaN when ``None``).
        record_eval: also record forward passes in eval mode (default: a forward pass with
            ``model.training == False`` records nothing and leaves the recorder armed).
        activation_types: module types treated as activation layers
            (default :data:`ACTIVATION_TYPES`).

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
        activation_types: Sequence[type[nn.Module]] = ACTIVATION_TYPES,
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
        types = tuple(activation_types)
        self._acts = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]
        if not self._acts:
            raise ValueError(
                f"{type(model).__name__} has no activation modules to record (looked for "
                f"{', '.join(t.__name__ for t in types[:8])}, ...); activations called as "
                "functions (F.relu) cannot be hooked: use modules, or pass activation_types="
            )
        self._hooks = [
            (m, partial(self._on_pre, i), partial(self._on_post, i))
            for i, (_, m) in enumerate(self._acts)
        ]
        # an in-place activation overwrites its input: that input is copied when captured
        self._inplace = [bool(getattr(m, "inplace", False)) for _, m in self._acts]
        self._weights = [
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, _WEIGHT_TYPES) and isinstance(getattr(m, "weight", None), torch.Tensor)
        ]
        lo, hi = self.config.range
        self.bin_edges = np.linspace(lo, hi, self.config.bins + 1)
        self._scale = self.config.bins / (hi - lo)
        self._shift = 1.0 - lo * self._scale  # value -> 1 + bin index
        self._kernel = None  # the fused CPU kernel (selfnorm.record_kernel), where it applies
        self._fast = None  # its C++ hooks (forward ones configured after the first pass)
        if self.config.backend != "torch" and _on_cpu(model):
            self._kernel = record_kernel.load()
        if self._kernel is not None:
            self._fast = self._kernel.Capture(self._scale, self._shift)
        self._fast_on = False
        self._fast_slots: list[int] = []
        self._fast_weighed = False  # whether the C++ side did this pass's weight sums
        if self.config.backend == "kernel" and self._kernel is None:
            reason = record_kernel.unavailable_reason() if _on_cpu(model) else "model not on CPU"
            raise RuntimeError(
                f"RecordConfig(backend='kernel') but the fused CPU kernel is unavailable "
                f"({reason}); use backend='auto' (falls back to torch ops) or 'torch'"
            )

        # layout: slots in call order, fixed by the first captured pass
        self._slot_of: dict[tuple[int, int], int] = {}
        self._slot_names: list[str] = []
        self._slot_family: list[str] = []
        self._slot_saturation: list[float | None] = []
        self._frozen = False

        self._next_step = start_step
        self._armed_step: int | None = None
        self._capturing = False
        self._calls: dict[int, int] = {}
        self._current: dict[int, int] = {}
        self._module_handles: list[Any] = []
        self._tensor_handles: list[Any] = []
        # captured this pass: (row id, tensor to reduce, tensor to watch, its version); a tensor
        # changed in place after its capture (version moved) is copied from the next pass on
        self._cap: list[tuple[int, torch.Tensor, torch.Tensor | None, int]] = []
        self._grad_cap: list[tuple[int, torch.Tensor, torch.Tensor | None, int]] = []
        self._copy_rows: set[int] = set()
        self._copy_grads: set[int] = set()
        self._first_grads = True
        # activation -> (its input, version before the call): did the call change it?
        self._held: dict[int, tuple[torch.Tensor, int | None]] = {}
        self._kpart: _Kernel | None = None
        self._row_args: list[tuple[list[int], list[float], list[bool]]] = []
        self._pool: list[tuple[torch.Tensor, ...]] = []
        self._grad_hooks: list[Any] = []
        self._pre_hooked = [True] * len(self._acts)
        self._weight_views: tuple[list, list, list] | None = None
        self._rows: dict[tuple, _Rows] = {}
        self._used: list[_Rows] = []
        self._grad_rows: dict[tuple, _Rows] = {}
        self._grad_used: list[_Rows] = []
        self._grad_seen: set[int] = set()
        self._plans: dict[tuple, list[_GroupPlan]] = {}
        self._forward: tuple[int, list[_GroupPlan], tuple[list, list, list], _Kernel | None]
        self._forward = None
        self._pending: list[_Pending] = []
        self._seg: dict[torch.device, torch.Tensor] = {}
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
        if self._fast is not None:
            self._fast.remove_hooks()
        self._armed_step = None
        self._capturing = False
        if not self._closed:
            self._closed = True
            for sink in self.sinks:
                sink.close()

    # -- the hot loop ----------------------------------------------------------------------

    def step(self) -> bool:
        """Start an optimizer step: finish the previous record, arm if this step records.

        An arming that no forward pass used (e.g. only eval passes followed) lapses here.

        Returns:
            Whether this step's forward pass will be recorded.
        """
        if self._forward is not None:
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
        if self._forward is not None:
            self._finish()
        self._arm(max(self._next_step - 1, 0))

    @property
    def armed(self) -> bool:
        """Whether the next forward pass in training mode will be recorded."""
        return self._armed_step is not None

    @property
    def layers(self) -> tuple[str, ...]:
        """Recorded activation layers in call order (empty before the first record)."""
        return tuple(self._slot_names)

    # -- hooks -----------------------------------------------------------------------------

    def _arm(self, step: int) -> None:
        if self._closed:
            raise RuntimeError("this ActivationRecorder is closed; create a new one")
        self._capturing = False  # a pass that raised half-way never finished its capture
        self._armed_step = step
        if self._module_handles:
            return
        hs = self._module_handles
        hs.append(self.model.register_forward_pre_hook(self._on_root_pre))
        # the first pass hooks every activation before and after, and learns which change
        # their input in place; later passes read the input of the others after the call
        self._pre_hooked = [not self._frozen or inplace for inplace in self._inplace]
        for i, ((m, pre, post), hooked) in enumerate(
            zip(self._hooks, self._pre_hooked, strict=True)
        ):
            if hooked:
                hs.append(m.register_forward_pre_hook(pre))
            if self._fast_on and self._fast_slots[i] >= 0:
                # C++ straight from torch's hook call; the Python hook where it declines,
                # through a weak reference (the garbage collector cannot see into the C++
                # function: a strong one would keep model and recorder alive forever)
                post = self._fast.forward_hook(i, partial(_weak_post, weakref.ref(self), i))
            hs.append(m.register_forward_hook(post))
        hs.append(self.model.register_forward_hook(self._on_root_post))

    def _remove_module_hooks(self) -> None:
        for h in self._module_handles:
            h.remove()
        self._module_handles.clear()

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
        self._current.clear()
        self._cap.clear()
        self._held.clear()
        self._kpart = None
        if self._fast_on:  # a record of the C++ store, the weights' sums in the same call
            self._fast_weighed = self._fast.begin_record(self._armed_step) or self._fast_weigh()
            return
        if self._kernel is None:
            return
        self._kpart = p = self._new_part()
        views = self._kernel_weights()
        if views is not None:
            p.weights = p.weight_row
            self._kernel.weights_into(views, p.weights)

    def _slot(self, i: int) -> int:
        call = self._calls.get(i, 0) + 1
        self._calls[i] = call
        slot = self._slot_of.get((i, call))
        if slot is None:
            name, module = self._acts[i]
            label = (name or type(module).__name__) + (f"#{call}" if call > 1 else "")
            if self._frozen:
                raise RuntimeError(
                    f"activation {label!r} was called in this recorded forward pass but not in "
                    f"the first one, which fixed the layers {self._slot_names}; record a model "
                    "whose forward pass calls the same activations every time"
                )
            slot = len(self._slot_names)
            self._slot_of[(i, call)] = slot
            self._slot_names.append(label)
            self._slot_family.append(activation_family(module))
            sat = saturation_value(module)
            self._slot_saturation.append(sat)
            self._grad_hooks.append(partial(self._on_grad, slot))
            dead = self._slot_family[-1] in _DEAD_FAMILIES
            thr = -math.inf if sat is None else sat + SATURATION_RTOL * abs(sat)
            # kernel arguments: rows (pre, post), saturation thresholds, dead-unit counting
            self._row_args.append(([2 * slot, 2 * slot + 1], [-math.inf, thr], [dead, dead]))
        return slot

    @staticmethod
    def _capture(into: list, t: torch.Tensor, key: int, copy: bool) -> None:
        """Keep ``t`` (a reference, or a copy where ``copy``) with its version, to be checked
        when it is reduced: nothing is copied unless the model edits the tensor in place."""
        d = t.detach()
        try:
            version = d._version
        except RuntimeError:  # an inference-mode tensor has no version counter: copy it
            into.append((key, d.clone(), None, 0))
            return
        into.append((key, d.clone() if copy else d, d, version))

    @staticmethod
    def _checked(captured: list, copy_next: set[int]) -> list[tuple[int, torch.Tensor]]:
        """The captured tensors still holding the values seen at capture. One changed in place
        since (a later in-place op of the model) is copied at capture from now on; a reference
        that changed is dropped (its statistics stay NaN in this one record)."""
        kept = []
        for key, data, watched, version in captured:
            if watched is not None and watched._version != version:
                copy_next.add(key)
                if data is watched:
                    continue
            kept.append((key, data))
        captured.clear()
        return kept

    def _on_pre(self, i: int, module: nn.Module, args: tuple) -> None:
        """Only on the first pass and for in-place activations: the input is read before the
        call (by the kernel now, or as a copy for torch ops)."""
        if not self._capturing:
            return
        slot = self._slot(i)
        self._current[i] = slot
        x = _float_tensor(args)
        if x is None:
            return
        row = 2 * slot
        if self._part() is not None and _kernel_fits(x):
            rows, thr, dead = self._row_args[slot]
            self._reduce_now(rows[:1], [x], thr[:1], dead[:1])
        else:
            self._capture(self._cap, x, row, True)
        self._held[i] = (x, None if x.is_inference() else x._version)

    def _on_post(self, i: int, module: nn.Module, args: tuple, out: Any) -> None:
        if not self._capturing:  # (a C++ hook in front of this one already declined the call)
            return
        x = None  # the input, still to be read
        if self._pre_hooked[i]:
            slot = self._current.pop(i, None)
            held = self._held.pop(i, None)
            if slot is None:
                return
            if held is not None and held[1] is not None and held[0]._version != held[1]:
                self._inplace[i] = True  # it changed its input: read before the call from now on
        else:
            if self._fast_on and self._fast.seen(i):  # its C++ hook took the first call
                self._calls.setdefault(i, 1)
            slot = self._slot(i)
            x = _float_tensor(args)
        y = out.detach() if isinstance(out, torch.Tensor) and out.is_floating_point() else None
        row = 2 * slot + 1
        part = self._part()
        if part is not None and _kernel_fits(y) and (x is None or _kernel_fits(x)):
            rows, thr, dead = self._row_args[slot]
            if x is None:
                self._reduce_now(rows[1:], [y], thr[1:], dead[1:])
            else:
                self._reduce_now(rows, [x, y], thr, dead)
        else:
            if x is not None:
                self._capture(self._cap, x, row - 1, row - 1 in self._copy_rows)
            if y is not None:
                self._capture(self._cap, y, row, not self._frozen or row in self._copy_rows)
        if y is None or not out.requires_grad:
            return
        if part is not None and _kernel_fits(y) and slot < len(part.grad):
            self._fast.hook(out, part.grad, slot)  # C++: no Python (no GIL) in the backward
        else:
            self._tensor_handles.append(out.register_hook(self._grad_hooks[slot]))

    def _on_grad(self, slot: int, grad: torch.Tensor) -> None:
        if slot in self._grad_seen:  # a second backward through the same graph
            return
        self._grad_seen.add(slot)
        g = grad.detach()
        self._capture(self._grad_cap, g, slot, self._first_grads or slot in self._copy_grads)

    def _fast_weigh(self) -> bool:
        """Where the C++ store's weight views are stale (a module got a new parameter, a
        parameter new storage) or missing: give it the current ones and have it sum them into
        the current record; ``False`` where the weights are not all float32 on the CPU (the
        torch path sums them at the end of the pass)."""
        views = self._kernel_weights()
        if views is None:
            self._fast.set_weights([], [], [])
            return False
        cache = self._weight_views  # None: views that cannot be cached (checked every pass)
        owners = ([m._parameters for _, m in self._weights], cache[0]) if cache else ([], [])
        self._fast.set_weights(views, *owners)
        return self._fast.weigh()

    def _part(self) -> _Kernel | None:
        """The kernel buffers of the pass being recorded (for the Python hooks): with the C++
        store, views of its current record."""
        if self._kpart is None and self._fast_on and self._capturing:
            stats, hist, meta, grad = self._fast.current()
            self._kpart = _Kernel(stats, hist, meta, grad, None, None, None, 0)
        return self._kpart

    def _new_part(self) -> _Kernel:
        """A record's buffers for the kernel: views into blocks allocated for many records at
        once."""
        rows = 2 * max(len(self._slot_names), len(self._acts))
        if not self._pool or len(self._pool[-1][2]) != rows:
            n, nb = _POOL_RECORDS, self.config.bins + 2
            stats = torch.full((n, rows, _N_STATS), math.nan, dtype=torch.float64)
            hist = torch.zeros((n, rows, nb), dtype=torch.int64)
            meta = torch.zeros((n, rows, 2), dtype=torch.int64)
            grad = torch.full((n, rows // 2, 2), math.nan, dtype=torch.float64)
            weights = torch.empty((n, len(self._weights), 4), dtype=torch.float64)
            block = (stats, hist, meta, grad, weights)
            views = zip(stats, hist, meta, grad, weights, strict=True)
            self._pool = [(block, k, *v) for k, v in enumerate(views)][::-1]
        block, index, stats, hist, meta, grad, weights = self._pool.pop()
        return _Kernel(stats, hist, meta, grad, None, weights, block, index)

    def _reduce_now(self, rows: list[int], tensors: list[torch.Tensor], thr: list, dead: list):
        """Statistics of ``tensors`` into rows ``rows`` of the record's buffers, now: no copy,
        the values are read before the model goes on (and while they are in the cache)."""
        part = self._kpart
        if rows[-1] >= len(part.stats):  # more calls than activation modules: grow
            more = max(rows[-1] + 1, 2 * len(part.stats)) - len(part.stats)
            part.stats = torch.cat([part.stats, part.stats.new_full((more, _N_STATS), math.nan)])
            part.hist = torch.cat([part.hist, part.hist.new_zeros((more, part.hist.shape[1]))])
            part.meta = torch.cat([part.meta, part.meta.new_zeros((more, 2))])
            part.block = None
        dense = [t if t.is_contiguous() else t.contiguous() for t in tensors]
        self._kernel.activations_into(
            dense, thr, dead, rows, part.stats, part.hist, part.meta, self._scale, self._shift
        )

    def _on_root_post(self, module: nn.Module, args: Any, out: Any) -> None:
        if not self._capturing:
            return
        self._capturing = False
        step = self._armed_step
        self._armed_step = None
        # hooks stay if the next step records too, unless this pass was the first one (the
        # next passes hook fewer inputs)
        if self._next_step % self.config.every or not self._frozen:
            self._remove_module_hooks()
        store = self._fast_on  # this pass is a record of the C++ store
        if store:
            self._fast.end()
        elif self._fast is not None and not self._frozen:
            self._configure_fast()
        self._frozen = True
        self._held.clear()
        self._grad_cap.clear()
        self._grad_seen.clear()
        if store:
            kern, weighed = _STORE, self._fast_weighed
        else:
            kern = self._kpart
            weighed = kern is not None and kern.weights is not None
        if not self._cap and weighed:  # the kernel did it all
            self._forward = (step, [], ([], [], []), kern, False)
            return
        rows = self._checked(self._cap, self._copy_rows)
        with torch.no_grad():
            for row, t in rows:
                self._put(self._rows, self._used, t, row)
            plans = self._forward_plans()
            f32, f64, i64 = [], [], []
            for r, p in zip(self._used, plans, strict=True):
                a, b, c = self._reduce_rows(r, p)
                f32 += a
                f64 += b
                i64 += c
            if not weighed:
                f64.append(self._weight_sums())
            for r in self._used:
                r.n = 0
                r.ids.clear()
            self._used.clear()
            self._forward = (step, plans, (f32, f64, i64), kern, not weighed)

    # -- the fused kernel (CPU, float32) ---------------------------------------------------

    def _configure_fast(self) -> None:
        """After the first pass: the C++ forward hooks for every activation called once per
        pass (one called more often stays with the Python hooks)."""
        once = [self._slot_of.get((i, 1), -1) for i in range(len(self._acts))]
        for i, _ in self._slot_of:
            if (i, 2) in self._slot_of:
                once[i] = -1
        thr, dead = [-math.inf] * len(once), [False] * len(once)
        for i, slot in enumerate(once):
            if slot >= 0:
                thr[i], dead[i] = self._row_args[slot][1][1], self._row_args[slot][2][1]
        # an in-place activation's input is read by its pre-hook, before the call
        self._fast.configure(once, [not inplace for inplace in self._inplace], thr, dead)
        rows = 2 * max(len(self._slot_names), len(self._acts))
        self._fast.layout(rows, rows // 2, self.config.bins + 2, len(self._weights))
        self._fast.set_weights([], [], [])  # begin_record then asks for the current views
        self._fast_slots = once
        self._fast_on = True

    def _kernel_weights(self) -> list[torch.Tensor] | None:
        """Every weight as a contiguous float32 CPU ``(units, fan)`` matrix; ``None`` where one
        is not float32 on the CPU. Views are cached while each module keeps its parameter and
        the parameter its storage."""
        cache = self._weight_views
        if cache is not None:
            params, ptrs, views = cache
            for (_, m), p, ptr in zip(self._weights, params, ptrs, strict=True):
                if m._parameters.get("weight") is not p or p.data_ptr() != ptr:
                    break
            else:
                return views
        params, views, cacheable = [], [], True
        for _, m in self._weights:
            w = m.weight
            if w.device.type != "cpu" or w.dtype != torch.float32:
                return None
            d = w.detach()
            if getattr(m, "transposed", False):  # ConvTranspose: (in, out/groups, *kernel)
                d = d.transpose(0, 1)
            # a reshape that copies, or a weight computed on access: measure, do not cache
            cacheable = cacheable and d.is_contiguous() and m._parameters.get("weight") is w
            params.append(w)
            views.append(d.reshape(d.shape[0], -1).contiguous())
        self._weight_views = (params, [p.data_ptr() for p in params], views) if cacheable else None
        return views

    def _put(self, table: dict, used: list, t: torch.Tensor, row_id: int) -> None:
        """Copy ``t`` into the row buffer of its shape (torch-ops path)."""
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        key = (t.shape, t.device, dtype)
        rows = table.get(key)
        if rows is None:
            # bin indices: int16 is the cheapest for the CPU's bincount (widened to int32 by
            # _plan if rows * (bins + 2) reaches 2**15); CUDA's scatter_add_ takes int64
            int_dtype = torch.int16 if t.device.type == "cpu" else torch.int64
            rows = table[key] = _Rows(t, dtype, int_dtype)
        if rows.n == 0:
            used.append(rows)
        rows.add(t, row_id)

    # -- reductions on the device ----------------------------------------------------------

    def _forward_plans(self) -> list[_GroupPlan]:
        key = tuple((r.buf.shape[1:], r.buf.device, r.buf.dtype, tuple(r.ids)) for r in self._used)
        plans = self._plans.get(key)
        if plans is None:
            plans = [self._plan(r) for r in self._used]
            self._plans[key] = plans
        return plans

    def _plan(self, r: _Rows) -> _GroupPlan:
        ids = np.array(r.ids, dtype=np.int64)
        shape = r.buf.shape[1:]
        numel = math.prod(shape)
        units = int(shape[1]) if len(shape) >= 2 else numel
        thr = []
        for row in ids:
            sat = self._slot_saturation[row // 2]
            post = row % 2 == 1
            thr.append(sat + SATURATION_RTOL * abs(sat) if post and sat is not None else -math.inf)
        # the rows that need a saturation count, as a slice (in the usual pre, post, pre, post
        # order the post rows are every second one), else all rows
        need = [i for i, t in enumerate(thr) if t > -math.inf]
        sat_rows = None
        if need:
            step = need[1] - need[0] if len(need) > 1 else 1
            if need == list(range(need[0], need[-1] + 1, step)):
                sat_rows = slice(need[0], need[-1] + 1, step)
            else:
                sat_rows = slice(0, len(thr))
            thr = thr[sat_rows]
        nb = self.config.bins + 2
        dev = r.buf.device
        if r.itmp.dtype == torch.int16 and len(ids) * nb >= 2**15:
            r.itmp = r.itmp.to(torch.int32)  # indices beyond int16: widen (for good)
        return _GroupPlan(
            ids=ids,
            numel=numel,
            units=units,
            sat_rows=sat_rows,
            thresholds=torch.tensor(thr, dtype=r.buf.dtype, device=dev).view(-1, 1),
            offsets=torch.arange(len(ids), dtype=r.itmp.dtype, device=dev).view(-1, 1) * nb,
            shift=torch.tensor(self._shift, dtype=r.buf.dtype, device=dev),
        )

    def _reduce_rows(self, r: _Rows, plan: _GroupPlan) -> tuple[list, list, list]:
        """Statistics of the ``n`` captured rows, each ``(n,)``: float32 sum, sqrt(Σ(x -
        mean)²), min, max; float64 #zeros, #saturated; int64 #dead units and the histogram
        counts ``(n * (bins + 2),)``."""
        n, nb, numel = r.n, self.config.bins + 2, plan.numel
        x = r.buf[:n]
        x2 = x.view(n, numel)
        lead = x.shape[1] if x.dim() >= 3 else 1  # batch
        tmp, itmp = r.tmp[:n], r.itmp[:n]
        total = x2.sum(1)
        torch.add(x2, total.unsqueeze(1), alpha=-1.0 / numel, out=tmp)  # x - mean
        spread = torch.linalg.vector_norm(tmp, dim=1)  # two passes: accurate for any mean
        unit_max = x.view(n, lead, plan.units, -1).amax(dim=(1, 3))
        dead = (unit_max <= 0).sum(1)
        mx = unit_max.amax(1)
        mn = x2.amin(1)
        # counts: float 0/1 then sums (comparisons into bool tensors are slow on the CPU);
        # the batch-wise partial sums stay exact integers, the last sum is float64
        torch.eq(x2, 0, out=tmp)
        zeros = tmp.view(n, lead, -1).sum(1).sum(1, dtype=torch.float64)
        sat = torch.zeros(n, dtype=torch.float64, device=x2.device)
        if plan.sat_rows is not None:
            k = len(plan.thresholds)
            torch.le(x2[plan.sat_rows], plan.thresholds, out=tmp[:k])
            sat[plan.sat_rows] = tmp[:k].view(k, lead, -1).sum(1).sum(1, dtype=torch.float64)
        # histogram: value -> 1 + floor((x - low) * bins / (high - low)), clamped to
        # [0 (underflow), bins + 1 (overflow)]; NaN -> overflow; one joint count for all rows
        torch.add(plan.shift, x2, alpha=self._scale, out=tmp)
        tmp.clamp_(0.0, nb - 1.0)
        # NaN would survive the clamp and break the integer index; on the CPU a look at the row
        # sums (NaN or inf there if anywhere) is cheaper than the pass that replaces it
        if x2.device.type != "cpu" or not bool(torch.isfinite(total).all()):
            tmp.nan_to_num_(nan=nb - 1.0)
        itmp.copy_(tmp)
        itmp.add_(plan.offsets)
        flat_idx = itmp.view(-1)
        if flat_idx.device.type == "cpu":
            hist = torch.bincount(flat_idx, minlength=n * nb)
        else:  # CUDA's bincount reads the maximum back to the host: a sync per call
            hist = torch.zeros(n * nb, dtype=torch.int64, device=flat_idx.device)
            hist.scatter_add_(0, flat_idx, torch.ones_like(flat_idx))
        return [total, spread, mn, mx], [zeros, sat], [dead, hist]

    def _weight_sums(self) -> torch.Tensor:
        """Per weight layer, sums over its units: Σω of every layer, Στ of every layer, then
        Σω², Στ² (float64, ``(2, 2W)`` flattened)."""
        if not self._weights:
            return torch.zeros(0, dtype=torch.float64, device=self._device())
        dev = self._weights[0][1].weight.device
        parts = []
        for _, m in self._weights:
            w = m.weight.detach()
            if getattr(m, "transposed", False):  # ConvTranspose: (in, out/groups, *kernel)
                w = w.transpose(0, 1)
            w2 = w.reshape(w.shape[0], -1)
            parts.append(w2.sum(1, dtype=torch.float32).to(dev))
        for _, m in self._weights:
            w = m.weight.detach()
            if getattr(m, "transposed", False):
                w = w.transpose(0, 1)
            w2 = w.reshape(w.shape[0], -1)
            parts.append(torch.linalg.vector_norm(w2, dim=1, dtype=torch.float32).to(dev))
        seg = self._seg.get(dev)
        if seg is None:  # segment of every unit: ω of layer j -> j, τ of layer j -> W + j
            sizes = torch.tensor([len(p) for p in parts])
            seg = torch.repeat_interleave(torch.arange(len(parts)), sizes).to(dev)
            self._seg[dev] = seg
        v = torch.cat(parts).double()  # ω of every unit, then sqrt(τ) of every unit
        half = len(v) // 2
        v[half:].square_()
        moments = torch.stack([v, v * v])
        sums = moments.new_zeros(2, 2 * len(self._weights)).index_add_(1, seg, moments)
        return sums.reshape(-1).to(self._device())

    def _device(self) -> torch.device:
        if self._used:
            return self._used[0].buf.device
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _finish(self) -> None:
        """Add the gradients to the pending forward record; queue it for :meth:`flush`."""
        step, plans, (f32, f64, i64), kern, torch_weights = self._forward
        self._forward = None
        if self._tensor_handles:
            self._remove_tensor_hooks()
        if self._fast is not None:  # a later backward does not count for this record
            self._fast.remove_hooks()
        if kern is not None and not (self._grad_cap or f32 or f64 or i64):  # all in the kernel
            if kern is _STORE:
                self._pending.append(_STORE_ONLY)  # its step and all are in the store
            else:
                self._pending.append(_Pending(step, [], [], _NONE32, _NONE64, _NONE64I, kern, True))
            return
        if self._grad_cap:
            self._first_grads = False
        captured = self._checked(self._grad_cap, self._copy_grads)
        grads: list[tuple[np.ndarray, int, int]] = []
        with torch.no_grad():
            for slot, t in captured:
                self._put(self._grad_rows, self._grad_used, t, slot)
            for r in self._grad_used:
                n = r.n
                x2 = r.buf[:n].view(n, -1)
                numel = x2.shape[1]
                tmp = r.tmp[:n]
                torch.add(x2, x2.sum(1, keepdim=True), alpha=-1.0 / numel, out=tmp)
                spread = torch.linalg.vector_norm(tmp, dim=1)
                f32.append(spread.to(f32[0].device) if f32 else spread)
                grads.append((np.array(r.ids, dtype=np.int64), n, numel))
                r.n = 0
                r.ids.clear()
            self._grad_used.clear()
            parts = [_cat(f32, torch.float32), _cat(f64, torch.float64), _cat(i64, torch.int64)]
        self._pending.append(_Pending(step, plans, grads, *parts, kern, False, torch_weights))

    # -- out of the hot loop ---------------------------------------------------------------

    def flush(self) -> Records:
        """Finish the pending record, read all records since the last flush back to the host
        (one transfer), give them to the sinks and return them.

        A record whose backward pass has not run yet when it is flushed has NaN ``grad_std``.
        """
        if self._forward is not None:
            self._finish()
        # a pass that raised half-way never finished: its partial record is dropped (the C++
        # store drops it too), and a retry of the armed step records afresh
        self._capturing = False
        if self._armed_step is None:
            self._remove_module_hooks()  # kept for a next recording step: re-added by step()
        pending, self._pending = self._pending, []
        if not pending:
            return Records.empty()
        torch_part = [p for p in pending if not p.kernel_only]
        sections = [_cat([getattr(p, k) for p in torch_part], None) for k in ("f32", "f64", "i64")]
        sizes = [len(t) for t in sections]
        host = _cat([t.double() for t in sections], None).cpu().numpy()  # the one transfer
        f32, f64, i64 = np.split(host, np.cumsum(sizes)[:2])
        records = self._decode(pending, f32, f64, i64)
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

    def _decode(
        self, pending: list[_Pending], f32: np.ndarray, f64: np.ndarray, i64: np.ndarray
    ) -> Records:
        s, nl, nb = len(pending), len(self._slot_names), self.config.bins + 2
        nw = len(self._weights)
        stats = np.full((2, s, nl, _N_STATS), np.nan)
        numel = np.full((2, s, nl), np.nan)
        units = np.full((2, s, nl), np.nan)
        hist = np.zeros((2, s, nl, nb), dtype=np.int64)
        grad_var = np.full((s, nl), np.nan)
        wsum = np.zeros((s, 4, nw))
        a = b = c = 0  # read positions in f32, f64, i64
        for k, p in enumerate(pending):
            if p.kernel_only:
                continue
            for plan in p.groups:
                n = len(plan.ids)
                head = np.empty((n, _N_STATS))
                head[:, :4] = f32[a : a + 4 * n].reshape(4, n).T
                head[:, 4:6] = f64[b : b + 2 * n].reshape(2, n).T
                head[:, 6] = i64[c : c + n]
                head[:, 0] /= plan.numel  # sum -> mean
                head[:, 1] = head[:, 1] ** 2 / plan.numel  # sqrt(Σ(x - mean)²) -> var
                counts = i64[c + n : c + n + n * nb].reshape(n, nb)
                a, b, c = a + 4 * n, b + 2 * n, c + n + n * nb
                slot, kind = plan.ids // 2, plan.ids % 2
                stats[kind, k, slot] = head
                hist[kind, k, slot] = np.rint(counts).astype(np.int64)
                numel[kind, k, slot] = plan.numel
                units[kind, k, slot] = plan.units
            for slots, n, size in p.grads:
                grad_var[k, slots] = f32[a : a + n] ** 2 / size
                a += n
            if p.torch_weights:
                ws = f64[b : b + 4 * nw].reshape(2, 2, nw)  # (power, ω|τ, layer)
                wsum[k] = [ws[0, 0], ws[1, 0], ws[0, 1], ws[1, 1]]
                b += 4 * nw
        assert (a, b, c) == (len(f32), len(f64), len(i64))

        # the kernel's buffers: all records of one block of buffers at once (those grown in a
        # first pass one by one), then the records of the C++ store; row r is slot r // 2, pre
        # (even) or post (odd); a row the pass did not write has numel 0
        names = ("stats", "hist", "meta", "grad", "weights")
        groups: dict[int, list[int]] = {}
        store: list[int] = []
        for k, p in enumerate(pending):
            q = p.kernel
            if q is _STORE:
                store.append(k)
            elif q is not None:
                groups.setdefault(id(q.block) if q.block is not None else -1 - k, []).append(k)
        merges = []  # (record positions, arrays (K, rows, ...), which have the weight sums)
        for ks in groups.values():
            parts = [pending[k].kernel for k in ks]
            block = parts[0].block
            if block is not None:
                index = [q.index for q in parts]
                arrays = {n: t.numpy()[index] for n, t in zip(names, block, strict=True)}
            else:
                arrays = {n: getattr(parts[0], n)[None].numpy() for n in names[:4]}
                if parts[0].weights is not None:
                    arrays["weights"] = parts[0].weights[None].numpy()
            merges.append((ks, arrays, np.array([q.weights is not None for q in parts])))
        taken = self._fast.take() if self._fast is not None else None
        if taken is not None and len(taken[0]) != len(store):
            raise RuntimeError(
                f"internal error: {len(taken[0])} records in the C++ store for {len(store)} "
                "recorded passes; please report this with the model that recorded them"
            )
        if store:
            arrays = {n: t.numpy() for n, t in zip(names, taken[1:6], strict=True)}
            merges.append((store, arrays, taken[6].numpy()))
        for ks, arrays, weighed in merges:
            rows = arrays["stats"].shape[1]
            n2 = min(rows, 2 * nl) // 2
            meta = _by_kind(arrays["meta"], n2)
            got = meta[..., 0] > 0
            # consecutive records (the usual case) as a slice: a view, not a gather and scatter
            kidx = slice(ks[0], ks[-1] + 1) if ks[-1] - ks[0] == len(ks) - 1 else ks
            sel = (slice(None), kidx, slice(0, n2))
            if got.all():  # every row written (the usual case): no merge
                stats[sel] = _by_kind(arrays["stats"], n2)
                hist[sel] = _by_kind(arrays["hist"], n2)
                numel[sel], units[sel] = meta[..., 0], meta[..., 1]
            else:
                stats[sel] = np.where(got[..., None], _by_kind(arrays["stats"], n2), stats[sel])
                hist[sel] = np.where(got[..., None], _by_kind(arrays["hist"], n2), hist[sel])
                numel[sel] = np.where(got, meta[..., 0], numel[sel])
                units[sel] = np.where(got, meta[..., 1], units[sel])
            g = arrays["grad"][:, :n2, 1]  # the first pass may have grown rows, not grad
            gn = g.shape[1]
            grad_var[ks, :gn] = np.where(np.isnan(g), grad_var[ks, :gn], g)
            if weighed.any():
                w = arrays["weights"][weighed]
                wsum[np.asarray(ks)[weighed]] = w.transpose(0, 2, 1)  # Σω, Σω², Στ, Στ²

        family = tuple(self._slot_family)
        dead_ok = np.array([f in _DEAD_FAMILIES for f in family], dtype=bool)
        sat_ok = np.array([f is not None for f in self._slot_saturation], dtype=bool)
        out = []
        for kind in (0, 1):
            st = stats[kind]
            mean, var = st[..., 0], st[..., 1]
            with np.errstate(invalid="ignore"):
                d = {
                    "mean": mean,
                    "std": np.sqrt(np.maximum(var, 0.0)),
                    "min": st[..., 2],
                    "max": st[..., 3],
                    "zero_frac": st[..., 4] / numel[kind],
                    "dead_frac": np.where(dead_ok, st[..., 6] / units[kind], np.nan),
                    "saturation_frac": np.where(
                        sat_ok & (kind == 1), st[..., 5] / numel[kind], np.nan
                    ),
                    "fp_distance": np.sqrt(mean**2 + (var - 1.0) ** 2),
                }
            out.append({key: d[key] for key in STAT_KEYS})
        steps = np.array([p.step for p in pending], dtype=np.int64)
        if store:
            steps[store] = taken[0].numpy()
        nu = np.array([_units(m) for _, m in self._weights], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            om_mean, tau_mean = wsum[:, 0] / nu, wsum[:, 2] / nu
            om_var = np.maximum(wsum[:, 1] / nu - om_mean**2, 0.0)
            tau_var = np.maximum(wsum[:, 3] / nu - tau_mean**2, 0.0)
        weights = dict(
            zip(WEIGHT_KEYS, (om_mean, np.sqrt(om_var), tau_mean, np.sqrt(tau_var)), strict=True)
        )
        return Records(
            steps=steps,
            epochs=steps / self.steps_per_epoch if self.steps_per_epoch else np.full(s, np.nan),
            layers=tuple(self._slot_names),
            depth=np.arange(1, nl + 1, dtype=np.int64),
            family=family,
            bin_edges=self.bin_edges.copy(),
            hist_post=hist[1],
            hist_pre=hist[0],
            post=out[1],
            pre=out[0],
            grad_std=np.sqrt(grad_var),
            weight_layers=tuple(n for n, _ in self._weights),
            weights=weights,
        )


def _weak_post(ref: weakref.ref, i: int, module: nn.Module, args: tuple, out: Any) -> None:
    """The Python forward hook of activation ``i`` behind a C++ one, if the recorder lives."""
    rec = ref()
    if rec is not None:
        rec._on_post(i, module, args, out)


def _by_kind(rows: np.ndarray, slots: int) -> np.ndarray:
    """Kernel buffer rows ``(K, R, ...)`` (row ``2 * slot + kind``) as ``(kind, K, slot, ...)``."""
    t = rows[:, : 2 * slots]
    return t.reshape(len(t), slots, 2, -1).transpose(2, 0, 1, 3)


def _cat(parts: list[torch.Tensor], dtype: torch.dtype | None) -> torch.Tensor:
    """``torch.cat`` of the non-empty ``parts`` on the first one's device; an empty CPU
    tensor (of ``dtype``, default float64) where there is none."""
    parts = [t for t in parts if t.numel()]
    if not parts:
        return torch.zeros(0, dtype=dtype or torch.float64)
    return torch.cat([t.to(parts[0].device) for t in parts])


def _kernel_fits(t: torch.Tensor | None) -> bool:
    """Whether the fused kernel takes ``t``: float32 on the CPU, not empty."""
    return t is not None and t.dtype == torch.float32 and t.device.type == "cpu" and t.numel() > 0


def _float_tensor(args: tuple) -> torch.Tensor | None:
    """The first argument, detached, if it is a floating-point tensor."""
    if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
        return args[0].detach()
    return None


def _on_cpu(model: nn.Module) -> bool:
    """Whether the model's first parameter (or buffer) is on the CPU (True for neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device.type == "cpu"
    return True


def _units(m: nn.Module) -> int:
    return int(m.weight.shape[1] if getattr(m, "transposed", False) else m.weight.shape[0])
