"""Recorded activation statistics as plain arrays (:class:`Records`), and their files.

Records are stored in a run's ``records/`` folder as numbered NPZ chunks, one per flush
(``chunk-000000.npz``, ``chunk-000001.npz``, ...). Every chunk is self-contained (layer names,
bins and the records of its steps) and written atomically (temporary file + rename), so a
``kill -9`` leaves complete chunks and at most a stray temporary file, which is ignored.
:func:`truncate_records` drops the records a resumed run will take again, so a resumed run ends
with exactly the records of an uninterrupted one. :func:`read_records` concatenates the chunks.

A chunk holds the arrays of :class:`Records` under the same names, with the per-layer statistics
stacked along a last axis in :data:`STAT_KEYS` order (``post``, ``pre``) and :data:`WEIGHT_KEYS`
order (``weights``), histogram counts as ``uint16``/``uint32`` when they fit (deflated, zlib level
1), and ``format`` (1) as a scalar; the other members are stored uncompressed. No pickles:
``np.load(allow_pickle=False)`` reads it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfnorm._io import atomic_write_bytes

__all__ = [
    "STAT_KEYS",
    "WEIGHT_KEYS",
    "Records",
    "chunk_paths",
    "concat_records",
    "read_chunk",
    "read_records",
    "truncate_records",
    "write_chunk",
]

STAT_KEYS = (
    "mean",
    "std",
    "min",
    "max",
    "zero_frac",
    "dead_frac",
    "saturation_frac",
    "fp_distance",
)
"""Keys of :attr:`Records.post` and :attr:`Records.pre`."""

WEIGHT_KEYS = ("omega_mean", "omega_std", "tau_mean", "tau_std")
"""Keys of :attr:`Records.weights`."""

FORMAT = 1
_HIST_KEYS = ("weight_fan_in", "hist_weight", "grad_bin_edges", "hist_grad", "hist_weight_grad")
_CHUNK = re.compile(r"^chunk-(\d{6,})\.npz$")


@dataclass(frozen=True, eq=False)
class Records:
    """Per-layer activation statistics of one run, one row per record (S records, L activation
    layers, B bins, W weight layers). Statistics that do not apply to a layer are NaN.

    Attributes:
        steps: ``int64 (S,)`` global optimizer step (0-based across epochs) of each record.
        epochs: ``float64 (S,)`` fractional epoch, ``step / steps_per_epoch`` (NaN if unknown).
        layers: ``(L,)`` activation module names in forward order, e.g. ``("act1", "act2")``.
        depth: ``int64 (L,)`` 1-based position of each layer in that order.
        family: ``(L,)`` each layer's family name in :mod:`selfnorm.taxonomy` (``other`` for
            an activation no family claims).
        bin_edges: ``float64 (B+1,)`` histogram edges; bins are half-open ``[e_i, e_i+1)``.
        hist_post, hist_pre: ``int64 (S, L, B+2)`` counts ``[underflow, B bins, overflow]``
            of the activation's output and input; underflow is ``x < e_0``, overflow
            ``x >= e_B`` and NaN, so every row sums to the number of values.
        post, pre: ``{key: float64 (S, L)}`` for the keys in :data:`STAT_KEYS`: mean, std
            (population), min, max; ``zero_frac`` (exact zeros); ``dead_frac`` (units never
            > 0 in the batch; ReLU family); ``saturation_frac`` (outputs within 5% of the SELU
            saturation value α'; SELU outputs only); ``fp_distance`` =
            ``sqrt(mean² + (var - 1)²)``, the distance of (mean, var) from the fixed point (0, 1).
        grad_std: ``float64 (S, L)`` std of the loss gradient w.r.t. each layer's output.
        weight_layers: ``(W,)`` names of the Linear/Conv layers.
        weights: ``{key: float64 (S, W)}`` for the keys in :data:`WEIGHT_KEYS`: mean and std over
            units of ω = Σ_i w_i and τ = Σ_i w_i² (sums over each unit's incoming weights).
        weight_fan_in: ``int64 (W,)`` inputs per unit of each weight layer.
        hist_weight: ``int64 (S, W, B+2)`` counts of each layer's weights in units of
            ``1/sqrt(fan_in)`` (LeCun's N(0, 1/fan_in) is N(0, 1) here) on ``bin_edges``.
        grad_bin_edges: ``float64 (G+1,)`` signed, log-spaced edges of the gradient histograms,
            two per octave (:data:`selfnorm.recording.reduce.GRAD_BINNING`; empty in records
            written before
            gradient histograms existed, which then have G + 2 = 0 columns).
        hist_grad: ``int64 (S, L, G+2)`` counts of the loss gradient w.r.t. each layer's output.
        hist_weight_grad: ``int64 (S, W, G+2)`` counts of each weight layer's weight gradient.

        A histogram row of zeros is a record that did not take it (the weights on dense
        recording's off steps, gradients of a record without a backward pass).
    """

    steps: np.ndarray
    epochs: np.ndarray
    layers: tuple[str, ...]
    depth: np.ndarray
    family: tuple[str, ...]
    bin_edges: np.ndarray
    hist_post: np.ndarray
    hist_pre: np.ndarray
    post: dict[str, np.ndarray]
    pre: dict[str, np.ndarray]
    grad_std: np.ndarray
    weight_layers: tuple[str, ...]
    weights: dict[str, np.ndarray]
    weight_fan_in: np.ndarray | None = None
    hist_weight: np.ndarray | None = None
    grad_bin_edges: np.ndarray | None = None
    hist_grad: np.ndarray | None = None
    hist_weight_grad: np.ndarray | None = None

    def __post_init__(self) -> None:  # absent (older records): empty arrays of the right shape
        s, nl, nw = len(self.steps), len(self.layers), len(self.weight_layers)
        nb = len(self.bin_edges) + 1 if len(self.bin_edges) else 0
        defaults = {
            "weight_fan_in": np.zeros(nw, np.int64),
            "hist_weight": np.zeros((s, nw, nb), np.int64),
            "grad_bin_edges": np.zeros(0),
        }
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        ng = len(self.grad_bin_edges) + 1 if len(self.grad_bin_edges) else 0
        for key, width in (("hist_grad", nl), ("hist_weight_grad", nw)):
            if getattr(self, key) is None:
                object.__setattr__(self, key, np.zeros((s, width, ng), np.int64))

    def __len__(self) -> int:
        return len(self.steps)

    def select(self, index: np.ndarray | slice) -> Records:
        """The records at ``index`` (a boolean mask, indices or a slice) along the S axis."""
        return Records(
            steps=self.steps[index],
            epochs=self.epochs[index],
            layers=self.layers,
            depth=self.depth,
            family=self.family,
            bin_edges=self.bin_edges,
            hist_post=self.hist_post[index],
            hist_pre=self.hist_pre[index],
            post={k: v[index] for k, v in self.post.items()},
            pre={k: v[index] for k, v in self.pre.items()},
            grad_std=self.grad_std[index],
            weight_layers=self.weight_layers,
            weights={k: v[index] for k, v in self.weights.items()},
            weight_fan_in=self.weight_fan_in,
            hist_weight=self.hist_weight[index],
            grad_bin_edges=self.grad_bin_edges,
            hist_grad=self.hist_grad[index],
            hist_weight_grad=self.hist_weight_grad[index],
        )

    def with_gradient_bins(self, edges: np.ndarray) -> Records:
        """The same records with empty gradient histograms (zero rows: not taken) on ``edges``;
        none at all for empty ``edges`` (to join records of other gradient bins)."""
        return dataclasses.replace(
            self, grad_bin_edges=edges, hist_grad=None, hist_weight_grad=None
        )

    @classmethod
    def empty(cls) -> Records:
        """No records and no layers (what an empty ``records/`` folder reads as)."""
        return cls(
            steps=np.zeros(0, np.int64),
            epochs=np.zeros(0),
            layers=(),
            depth=np.zeros(0, np.int64),
            family=(),
            bin_edges=np.zeros(0),
            hist_post=np.zeros((0, 0, 0), np.int64),
            hist_pre=np.zeros((0, 0, 0), np.int64),
            post={k: np.zeros((0, 0)) for k in STAT_KEYS},
            pre={k: np.zeros((0, 0)) for k in STAT_KEYS},
            grad_std=np.zeros((0, 0)),
            weight_layers=(),
            weights={k: np.zeros((0, 0)) for k in WEIGHT_KEYS},
        )


def concat_records(parts: Sequence[Records]) -> Records:
    """Records of the same layers, one after another along S.

    Raises:
        ValueError: the parts have different layers, families, bins or weight layers.
    """
    parts = [p for p in parts if len(p.layers) or len(p.steps)]
    if not parts:
        return Records.empty()
    first = parts[0]
    for p in parts[1:]:
        same = (
            p.layers == first.layers
            and p.family == first.family
            and p.weight_layers == first.weight_layers
            and np.array_equal(p.bin_edges, first.bin_edges)
        )
        if not same:
            raise ValueError(
                f"records of different layouts cannot be joined: layers {first.layers} with "
                f"bins {len(first.bin_edges) - 1} vs layers {p.layers} with bins "
                f"{len(p.bin_edges) - 1}; record one model with one RecordConfig per folder"
            )
    edges = {p.grad_bin_edges.tobytes(): p.grad_bin_edges for p in parts if len(p.grad_bin_edges)}
    if len(edges) > 1:  # two gradient binnings cannot share an axis
        parts = [p.with_gradient_bins(np.zeros(0)) for p in parts]
    elif edges:  # chunks from before gradient histograms: zero rows (not taken) on these bins
        parts = [
            p if len(p.grad_bin_edges) else p.with_gradient_bins(*edges.values()) for p in parts
        ]
    first = parts[0]
    fan_in = next((p.weight_fan_in for p in parts if p.weight_fan_in.any()), first.weight_fan_in)
    if len(parts) == 1:
        return first

    def cat(get):
        return np.concatenate([get(p) for p in parts])

    return Records(
        steps=cat(lambda p: p.steps),
        epochs=cat(lambda p: p.epochs),
        layers=first.layers,
        depth=first.depth,
        family=first.family,
        bin_edges=first.bin_edges,
        hist_post=cat(lambda p: p.hist_post),
        hist_pre=cat(lambda p: p.hist_pre),
        post={k: cat(lambda p, k=k: p.post[k]) for k in STAT_KEYS},
        pre={k: cat(lambda p, k=k: p.pre[k]) for k in STAT_KEYS},
        grad_std=cat(lambda p: p.grad_std),
        weight_layers=first.weight_layers,
        weights={k: cat(lambda p, k=k: p.weights[k]) for k in WEIGHT_KEYS},
        weight_fan_in=fan_in,
        hist_weight=cat(lambda p: p.hist_weight),
        grad_bin_edges=first.grad_bin_edges,
        hist_grad=cat(lambda p: p.hist_grad),
        hist_weight_grad=cat(lambda p: p.hist_weight_grad),
    )


# ---------------------------------------------------------------------------------------------
# Chunk files
# ---------------------------------------------------------------------------------------------


def _records_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.name == "records" or not (path / "records").is_dir() else path / "records"


def chunk_paths(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(index, path)`` of the complete chunks in ``directory``, in index order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        m = _CHUNK.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def _counts(a: np.ndarray) -> np.ndarray:
    """Counts in the smallest unsigned type that holds them (read back as int64)."""
    top = int(a.max()) if a.size else 0
    for dtype in (np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return a.astype(dtype)
    return a


def write_chunk(directory: str | os.PathLike, index: int, records: Records) -> Path:
    """Write ``records`` atomically as ``directory/chunk-<index>.npz``."""
    arrays = {
        "format": np.int64(FORMAT),
        "steps": records.steps.astype(np.int64),
        "epochs": records.epochs.astype(np.float64),
        "layers": np.array(records.layers, dtype=str),
        "depth": records.depth.astype(np.int64),
        "family": np.array(records.family, dtype=str),
        "bin_edges": records.bin_edges.astype(np.float64),
        "hist_post": _counts(records.hist_post),
        "hist_pre": _counts(records.hist_pre),
        "post": np.stack([records.post[k] for k in STAT_KEYS], axis=-1),
        "pre": np.stack([records.pre[k] for k in STAT_KEYS], axis=-1),
        "grad_std": records.grad_std,
        "weight_layers": np.array(records.weight_layers, dtype=str),
        "weights": np.stack([records.weights[k] for k in WEIGHT_KEYS], axis=-1),
        "weight_fan_in": records.weight_fan_in.astype(np.int64),
        "hist_weight": _counts(records.hist_weight),
        "grad_bin_edges": records.grad_bin_edges.astype(np.float64),
        "hist_grad": _counts(records.hist_grad),
        "hist_weight_grad": _counts(records.hist_weight_grad),
    }
    buf = io.BytesIO()
    # the histogram counts deflate ~6x (zlib level 1: level 6, np.savez_compressed's, costs ~5x
    # the time for a few percent); the float statistics only ~2x at the same cost per byte,
    # which made a flush of every-step records half again as slow: they are stored as they are
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            deflate = name.startswith("hist_")
            zf.writestr(
                f"{name}.npy",
                member.getvalue(),
                compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED,
                compresslevel=1 if deflate else None,
            )
    return atomic_write_bytes(Path(directory) / f"chunk-{index:06d}.npz", buf.getvalue())


def read_chunk(path: Path) -> Records:
    with path.open("rb") as f, np.load(f, allow_pickle=False) as z:
        if int(z["format"]) != FORMAT:
            raise ValueError(f"{path}: record format {int(z['format'])}, this reader knows 1")
        post, pre, weights = z["post"], z["pre"], z["weights"]
        return Records(
            steps=z["steps"].astype(np.int64),
            epochs=z["epochs"].astype(np.float64),
            layers=tuple(str(s) for s in z["layers"]),
            depth=z["depth"].astype(np.int64),
            family=tuple(str(s) for s in z["family"]),
            bin_edges=z["bin_edges"].astype(np.float64),
            hist_post=z["hist_post"].astype(np.int64),
            hist_pre=z["hist_pre"].astype(np.int64),
            post={k: post[..., i].astype(np.float64) for i, k in enumerate(STAT_KEYS)},
            pre={k: pre[..., i].astype(np.float64) for i, k in enumerate(STAT_KEYS)},
            grad_std=z["grad_std"].astype(np.float64),
            weight_layers=tuple(str(s) for s in z["weight_layers"]),
            weights={k: weights[..., i].astype(np.float64) for i, k in enumerate(WEIGHT_KEYS)},
            **{  # absent in chunks written before weight and gradient histograms
                k: z[k].astype(np.int64 if k != "grad_bin_edges" else np.float64)
                for k in _HIST_KEYS
                if k in z
            },
        )


def _try_read(path: Path) -> Records | None:
    try:
        return read_chunk(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        warnings.warn(
            f"skipping unreadable record chunk {path} ({type(exc).__name__}: {exc})",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def read_records(path: str | os.PathLike) -> Records:
    """All records of a run, read from its ``records/`` folder.

    Args:
        path: the run's folder (``RUN_DIR/runs/<variant>/seed<k>``) or its ``records/`` folder.

    Returns:
        The chunks concatenated in order (:meth:`Records.empty` when there are none). A chunk
        that cannot be read (never one written by selfnorm, whose writes are atomic) is skipped
        with a ``RuntimeWarning`` naming it; the other chunks are unaffected.
    """
    parts = [r for _, p in chunk_paths(_records_dir(path)) if (r := _try_read(p)) is not None]
    return concat_records(parts)


def truncate_records(directory: str | os.PathLike, before_step: int) -> int:
    """Keep only the records taken before ``before_step``; return the next chunk index.

    Chunks entirely at or after ``before_step`` are deleted, a chunk that straddles it is
    rewritten (atomically) with its earlier records, and stray temporary files of interrupted
    writes are removed. Unreadable chunks are deleted (with a warning): they hold nothing that
    can be kept.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    for p in directory.glob(".chunk-*.tmp"):
        p.unlink(missing_ok=True)
    next_index = 0
    for index, path in chunk_paths(directory):
        rec = _try_read(path)
        if rec is None or not len(rec.steps) or rec.steps.min() >= before_step:
            path.unlink()
            continue
        if rec.steps.max() >= before_step:
            write_chunk(directory, index, rec.select(rec.steps < before_step))
        next_index = index + 1
    return next_index
