r"""The reductions behind a record: pure functions from tensors to statistics, in torch ops.

A record of a network reduces three kinds of tensors, each with one function here:

* :func:`activation_stats`: every activation's input or output ``x`` (``n`` values) into
  mean :math:`\bar x = \frac1n \sum x`, population variance :math:`\frac1n \sum (x - \bar x)^2`,
  min, max, the number of exact zeros, of values :math:`\le` a saturation threshold, of "dead"
  units (index along dim 1 never :math:`> 0` in the batch), and a histogram over fixed signed
  bins with underflow (:math:`x < e_0`) and overflow (:math:`x \ge e_B`, and NaN) so that the
  counts always sum to ``n``;
* :func:`gradient_moments`: every gradient w.r.t. an activation's output into mean and
  population variance;
* :func:`weight_moments`: every weight matrix (rows = units, the incoming weights of a unit
  along the row) into :math:`\sum_j \omega_j, \sum_j \omega_j^2, \sum_j \tau_j,
  \sum_j \tau_j^2` over its units, with :math:`\omega_j = \sum_i w_{ji}` and
  :math:`\tau_j = \sum_i w_{ji}^2` (the quantities of the SELU theory).

Tensors of one shape are stacked into one reused buffer and reduced together, with a fixed
number of torch operations whatever the number of layers; results stay on the tensors' device
(nothing is read back to the host: the recorder does one transfer per flush). The same
functions run on CPU and CUDA. :mod:`selfnorm.recording.kernel` is an opt-in implementation of
:func:`activation_stats` and :func:`weight_moments` in C++ for float32 CPU tensors; it computes
the same statistics (tests compare both).

Example:
    >>> import torch
    >>> b = Binning(bins=4, low=-2.0, high=2.0)
    >>> stats, hist = activation_stats([torch.tensor([[-3.0, 0.0, 0.5, 1.0]])], [-1.0], [True], b)
    >>> n = 4  # mean, population variance, min, max (float32 sums)
    >>> [round(float(v), 6) for v in (stats[0, 0] / n, stats[0, 1] ** 2 / n, *stats[0, 2:4])]
    [-0.375, 2.421875, -3.0, 1.0]
    >>> stats[0, 4:].tolist()  # zeros, saturated (<= -1), dead units (dim 1 never > 0)
    [1.0, 1.0, 2.0]
    >>> hist[0].tolist()  # [x < -2, [-2, -1), [-1, 0), [0, 1), [1, 2), x >= 2 or NaN]
    [1, 0, 0, 2, 1, 0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "GRAD_BINNING",
    "N_STATS",
    "Binning",
    "SignedLogBinning",
    "histograms",
    "ReduceBuffers",
    "activation_stats",
    "gradient_moments",
    "weight_moments",
]

N_STATS = 7
"""Columns of :func:`activation_stats`' first result: mean, var, min, max, #zeros,
#saturated, #dead units."""


@dataclass(frozen=True)
class Binning:
    """``bins`` equal, half-open bins over ``[low, high)``; a value goes to column
    ``1 + floor((x - low) * bins / (high - low))`` of a histogram row, clamped to
    ``[0 (underflow), bins + 1 (overflow)]``.

    Example:
        >>> Binning(64, -4.0, 4.0).columns
        66
    """

    bins: int
    low: float
    high: float

    @property
    def columns(self) -> int:
        """Histogram columns: underflow, the bins, overflow."""
        return self.bins + 2

    @property
    def scale(self) -> float:
        return self.bins / (self.high - self.low)

    @property
    def shift(self) -> float:
        return 1.0 - self.low * self.scale


@dataclass(frozen=True)
class SignedLogBinning:
    r"""Signed, log-spaced bins for gradients, whose scale spans decades, read off the float's
    exponent bits (integer operations, no logarithm; every edge exact).

    Two bins per octave of :math:`|g|`, split at :math:`2^e` and :math:`1.5 \cdot 2^e`, from
    :math:`2^{low}` to :math:`2^{high}` on each side of 0: ``2 * bins_per_side + 2`` columns,
    ``[g <= -2^high, the negative bins (largest magnitude first), the positive bins, g >=
    2^high]``. The two bins next to 0 also hold every :math:`|g| < 2^{low}` (by the sign bit:
    0.0 in the positive one, -0.0 in the negative one); infinities go to the outer columns,
    NaN by its sign bit. Positive bins are half-open ``[a, b)``, negative ones ``(-b, -a]``.

    Example:
        >>> b = SignedLogBinning(low=-1, high=1)
        >>> b.edges().tolist()
        [-2.0, -1.5, -1.0, -0.75, 0.0, 0.75, 1.0, 1.5, 2.0]
        >>> histograms([torch.tensor([-3.0, -1.2, 0.0, 0.1, 0.8, 1.99, 5.0])], b).tolist()
        [[1, 0, 1, 0, 0, 2, 1, 0, 1, 1]]
    """

    low: int = -30
    high: int = 4

    @property
    def bins_per_side(self) -> int:
        return 2 * (self.high - self.low)

    @property
    def columns(self) -> int:
        return 2 * self.bins_per_side + 2

    def edges(self) -> np.ndarray:
        """The ``2 * bins_per_side + 1`` edges (0 in the middle)."""
        k = np.arange(1, self.bins_per_side + 1)
        mag = np.ldexp(np.where(k % 2 == 0, 1.0, 1.5), self.low + k // 2)
        return np.concatenate([-mag[::-1], [0.0], mag])

    def columns_of(self, x: torch.Tensor) -> torch.Tensor:
        """The column of every value of a float32 tensor (int32, a new tensor)."""
        bits = x.contiguous().view(torch.int32)
        n = self.bins_per_side
        # (exponent field, top mantissa bit): the half-octave of |x|, counted from 2^low
        q = (bits & 0x7FFFFFFF).bitwise_right_shift_(22).sub_(2 * (127 + self.low))
        q.clamp_(0, n)
        # positive: n + 1 + q; negative (sign bit: bits >> 31 is -1): n - q
        return (bits >> 31).mul_(2 * q + 1).add_(q).add_(n + 1)


GRAD_BINNING = SignedLogBinning()
"""The bins of every gradient histogram: two per octave from 2^-30 (9.3e-10) to 2^4 (16) on each
side of 0."""


class ReduceBuffers:
    """Scratch buffers and small constant tensors reused from one record to the next (keyed by
    shape or values, dtype, device), so a record allocates and uploads nothing once the layout
    is known. One per recorder; not thread-safe."""

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def const(self, values: tuple, like: torch.Tensor, dtype=None) -> torch.Tensor:
        """``torch.tensor(values)`` on ``like``'s device, made once."""
        dtype = like.dtype if dtype is None else dtype
        key = ("const", values, dtype, like.device)
        t = self._bufs.get(key)
        if t is None:
            t = self._bufs[key] = torch.tensor(values, dtype=dtype, device=like.device)
        return t

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype=None):
        dtype = like.dtype if dtype is None else dtype
        key = (name, shape, dtype, like.device)
        buf = self._bufs.get(key)
        if buf is None:
            buf = self._bufs[key] = torch.empty(shape, dtype=dtype, device=like.device)
        return buf


def _groups(tensors: Sequence[torch.Tensor]) -> dict[tuple, list[int]]:
    """Indices of ``tensors`` by (shape, dtype, device), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append(i)
    return groups


def _stacked(ts: list[torch.Tensor], bufs: ReduceBuffers | None, name: str) -> torch.Tensor:
    """The tensors (one shape) as ``(n, *shape)``; float16/bfloat16 as float32, whose sums and
    counts are exact where the half formats' are not."""
    if ts[0].dtype in (torch.float16, torch.bfloat16):
        return torch.stack([t.float() for t in ts])
    if len(ts) == 1:
        return ts[0].unsqueeze(0)
    shape = (len(ts), *ts[0].shape)
    if bufs is None:
        return torch.stack(ts)
    return torch.stack(ts, out=bufs.get(name, shape, ts[0]))


def activation_stats(
    tensors: Sequence[torch.Tensor],
    thresholds: Sequence[float],
    dead: Sequence[bool],
    binning: Binning,
    buffers: ReduceBuffers | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Statistics and histogram of each tensor (any floating dtype, reduced in float32 or
    float64; any shape, not empty).

    The moments come as sums, so that no division runs on the device: the mean is
    ``stats[:, 0] / n`` and the population variance ``stats[:, 1] ** 2 / n`` (column 1 is
    :math:`\sqrt{\sum (x - \bar x)^2}`, two passes: accurate for any mean).

    Args:
        tensors: the tensors to reduce (detached; they are not modified).
        thresholds: per tensor, count the values :math:`\le` it as saturated (``-inf``: none).
        dead: per tensor, whether to count dead units (else that column is 0).
        binning: the histogram's bins.
        buffers: scratch buffers to reuse between calls (default: fresh ones).

    Returns:
        ``stats`` ``(n, 7)`` (:math:`\sum x`, :math:`\sqrt{\sum (x - \bar x)^2}`, min, max,
        #zeros, #saturated, #dead units), in the tensors' dtype (float64 where they are, or
        where a count reaches :math:`2^{24}`), and ``hist`` int64 ``(n, bins + 2)``, on the
        tensors' device (the first tensor's).

    Example:
        >>> import torch
        >>> s, h = activation_stats([torch.zeros(2, 3)], [-math.inf], [True], Binning(2, -1., 1.))
        >>> s[0].tolist(), h[0].tolist()
        ([0.0, 0.0, 0.0, 0.0, 6.0, 0.0, 3.0], [0, 0, 6, 0])
    """
    n = len(tensors)
    if not (len(thresholds) == len(dead) == n):
        raise ValueError(f"{n} tensors need {n} thresholds and dead flags")
    bufs = buffers if buffers is not None else ReduceBuffers()
    groups = list(_groups(tensors).values())
    if len(groups) == 1:  # one shape (the usual MLP): no gather or scatter
        return _reduce_group(_stacked(list(tensors), bufs, "act"), thresholds, dead, binning, bufs)
    device = tensors[0].device
    stats = torch.empty((n, N_STATS), dtype=torch.float64, device=device)
    hist = torch.empty((n, binning.columns), dtype=torch.int64, device=device)
    for idx in groups:
        x = _stacked([tensors[i] for i in idx], bufs, "act")
        s, h = _reduce_group(x, [thresholds[i] for i in idx], [dead[i] for i in idx], binning, bufs)
        where = bufs.const(tuple(idx), x, torch.int64)
        stats[where] = s.to(device, stats.dtype)
        hist[where] = h.to(device)
    return stats, hist


def _reduce_group(
    x: torch.Tensor, thr: Sequence[float], dead: Sequence[bool], b: Binning, bufs: ReduceBuffers
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`activation_stats` of the rows of ``x`` ``(n, *shape)`` (one stacked shape), in
    a fixed number of operations (about 20) whatever ``n``."""
    n = x.shape[0]
    x2 = x.reshape(n, -1)
    numel = x2.shape[1]
    lead = x.shape[1] if x.dim() >= 3 else 1  # the batch, when there is one
    units = x.shape[2] if x.dim() >= 3 else numel
    total = x2.sum(1)  # torch's cascade summation, in the tensor's dtype
    tmp = bufs.get("tmp", (n, numel), x2)
    torch.sub(x2, total.unsqueeze(1), alpha=1.0 / numel, out=tmp)  # x - mean
    spread = torch.linalg.vector_norm(tmp, dim=1)  # sqrt(sum of squared deviations)
    # per-unit maxima over the batch and the unit's positions: max, and dead units
    unit_max = x.reshape(n, lead, units, -1).amax(dim=(1, 3))
    mx = unit_max.amax(1)
    mn = x2.amin(1)
    # counts as sums of 0/1 floats (faster than bool tensors on the CPU): the per-sample partial
    # sums are exact integers; so is their float32 total below 2^24 values (else float64)
    wide = torch.float64 if numel >= 2**24 else None
    torch.eq(x2, 0, out=tmp)
    zeros = tmp.view(n, lead, -1).sum(2).sum(1, dtype=wide)
    none = bufs.const((0.0,) * n, x2)
    n_dead = none
    if any(dead):
        n_dead = (unit_max <= 0).sum(1)
        if not all(dead):
            n_dead = torch.where(bufs.const(tuple(dead), x, torch.bool), n_dead, 0)
    sat = none
    rows = [i for i, t in enumerate(thr) if t > -math.inf]
    if rows:
        sel, k = _index(rows), len(rows)
        t = bufs.const(tuple((thr[i],) for i in rows), x2)
        torch.le(x2[sel], t, out=tmp[:k])
        counted = tmp[:k].view(k, lead, -1).sum(2).sum(1, dtype=wide)
        if k == n:
            sat = counted
        else:
            sat = counted.new_zeros(n)
            sat[sel] = counted
    # one (n, 7) tensor in the tensors' dtype (float64 where a count needs it)
    stats = torch.stack([total, spread, mn, mx, zeros, sat, n_dead], 1)
    return stats, _histogram(x2, tmp, b, bufs)


def _index(rows: list[int]) -> slice | list[int]:
    """``rows`` (increasing) as a slice where they are evenly spaced (a view, not a gather)."""
    step = rows[1] - rows[0] if len(rows) > 1 else 1
    if rows == list(range(rows[0], rows[-1] + 1, step)):
        return slice(rows[0], rows[-1] + 1, step)
    return rows


def _histogram(x2: torch.Tensor, tmp: torch.Tensor, b: Binning, bufs: ReduceBuffers):
    """Counts ``(n, bins + 2)`` of each row of ``x2``: value -> column ``1 + floor((x - low) *
    scale)`` clamped to ``[0, bins + 1]``, NaN -> overflow; one joint count for all rows."""
    n, numel = x2.shape
    nb = b.columns
    torch.add(bufs.const(b.shift, x2), x2, alpha=b.scale, out=tmp)
    tmp.clamp_(0.0, nb - 1.0)
    tmp.nan_to_num_(nan=nb - 1.0)  # NaN survives the clamp and would break the integer index
    idx_dtype = _index_dtype(n * nb, x2.device)
    idx = bufs.get("idx", (n, numel), x2, idx_dtype)
    idx.copy_(tmp)
    if n > 1:
        idx.add_(bufs.const(tuple((k * nb,) for k in range(n)), x2, idx_dtype))
    return _count(idx.view(-1), n, nb)


def _index_dtype(columns: int, device: torch.device) -> torch.dtype:
    """The dtype of joint bin indices: the CPU's bincount is ~6x faster on int16 than on int64;
    CUDA's scatter_add_ takes int64."""
    if device.type != "cpu":
        return torch.int64
    return torch.int16 if columns < 2**15 else torch.int32


def _count(flat: torch.Tensor, n: int, nb: int) -> torch.Tensor:
    """Counts ``(n, nb)`` of joint indices ``row * nb + column``."""
    if flat.device.type == "cpu":
        counts = torch.bincount(flat, minlength=n * nb)
    else:  # CUDA's bincount reads the maximum back to the host: a sync per call
        counts = torch.zeros(n * nb, dtype=torch.int64, device=flat.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
    return counts.view(n, nb)


def histograms(
    tensors: Sequence[torch.Tensor],
    binning: Binning | SignedLogBinning,
    scales: Sequence[float] | None = None,
) -> torch.Tensor:
    r"""Counts ``(n, columns)`` of the values of each tensor (any shapes, one device) on
    ``binning``'s bins, each tensor multiplied by its ``scales`` entry first (e.g. weights in
    units of :math:`1/\sqrt{fan_{in}}`); one joint count for all tensors.

    Example:
        >>> histograms([torch.tensor([0.5, 2.0]), torch.tensor([-1.0])], Binning(2, -1., 1.),
        ...            scales=[1.0, 0.5]).tolist()
        [[0, 0, 1, 1], [0, 1, 0, 0]]
    """
    log = isinstance(binning, SignedLogBinning)
    nb, n = binning.columns, len(tensors)
    if not tensors:
        return torch.zeros((0, nb), dtype=torch.int64)
    device = tensors[0].device
    sizes = [t.numel() for t in tensors]
    idx = torch.empty(sum(sizes), dtype=_index_dtype(n * nb, device), device=device)
    start = 0
    for k, t in enumerate(tensors):
        x = t.detach().reshape(-1).to(device, torch.float32)
        part = idx[start : start + sizes[k]]
        if log:
            cols = binning.columns_of(x * scales[k] if scales is not None else x)
            part.copy_(cols.add_(k * nb) if k else cols)
        else:
            x = x * scales[k] if scales is not None else x.clone()
            x.mul_(binning.scale).add_(binning.shift + k * nb).clamp_(k * nb, k * nb + nb - 1.0)
            x.nan_to_num_(nan=k * nb + nb - 1.0)  # NaN survives the clamp: overflow
            part.copy_(x)  # non-negative: the cast is the floor
        start += sizes[k]
    return _count(idx, n, nb)


def gradient_moments(
    tensors: Sequence[torch.Tensor], buffers: ReduceBuffers | None = None
) -> torch.Tensor:
    r"""Per tensor :math:`\sum g` and :math:`\sqrt{\sum (g - \bar g)^2}` (sums in the tensors'
    dtype, two passes): ``(n, 2)`` on the first tensor's device; the mean is column 0 over the
    number of values, the population variance column 1 squared over it.

    Example:
        >>> m = gradient_moments([torch.tensor([1.0, 3.0]), torch.tensor([[2.0], [2.0]])])
        >>> (m[:, 0] / 2).tolist(), (m[:, 1] ** 2 / 2).round(decimals=6).tolist()
        ([2.0, 2.0], [1.0, 0.0])
    """
    n = len(tensors)
    bufs = buffers if buffers is not None else ReduceBuffers()
    groups = list(_groups(tensors).values())
    out = None
    if len(groups) != 1:
        device = tensors[0].device if n else torch.device("cpu")
        out = torch.empty((n, 2), dtype=torch.float64, device=device)
    for idx in groups:
        x2 = _stacked([tensors[i] for i in idx], bufs, "grad").reshape(len(idx), -1)
        total = x2.sum(1)
        tmp = bufs.get("gtmp", tuple(x2.shape), x2)
        torch.sub(x2, total.unsqueeze(1), alpha=1.0 / x2.shape[1], out=tmp)
        both = torch.stack([total, torch.linalg.vector_norm(tmp, dim=1)], 1)
        if out is None:
            return both
        out[bufs.const(tuple(idx), x2, torch.int64)] = both.to(out.device, out.dtype)
    return out


def weight_moments(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Per ``(units, fan_in)`` matrix (:func:`selfnorm.taxonomy.unit_weights`) the sums over
    its units of :math:`\omega_j, \omega_j^2, \tau_j, \tau_j^2`: float64 ``(W, 4)`` on the
    first matrix's device (per-unit float32 sums of float32 matrices, added up in float64).

    Example:
        >>> import torch
        >>> weight_moments([torch.tensor([[1.0, 2.0], [0.0, -1.0]])]).round(decimals=5).tolist()
        [[2.0, 10.0, 6.0, 26.0]]
    """
    if not weights:
        return torch.zeros((0, 4), dtype=torch.float64)
    device = weights[0].device
    omega = [w.sum(1).to(device) for w in weights]
    root_tau = [torch.linalg.vector_norm(w, dim=1).to(device) for w in weights]
    v = torch.cat(omega + root_tau).double()  # ω of every unit, then sqrt(τ) of every unit
    half = len(v) // 2
    v[half:].square_()
    sizes = tuple(len(o) for o in omega)
    seg = _segments.get((sizes, device))
    if seg is None:  # unit -> its sum: ω of layer j -> j, τ of layer j -> W + j
        counts = torch.tensor(sizes * 2, device=device)
        seg = torch.repeat_interleave(torch.arange(2 * len(sizes), device=device), counts)
        _segments[(sizes, device)] = seg
    moments = torch.stack([v, v * v])  # (power, unit)
    sums = moments.new_zeros((2, 2 * len(sizes))).index_add_(1, seg, moments)
    # (power, ω|τ, layer) -> (layer, [Σω, Σω², Στ, Στ²])
    return sums.view(2, 2, len(sizes)).permute(2, 1, 0).reshape(len(sizes), 4)


_segments: dict[tuple, torch.Tensor] = {}
