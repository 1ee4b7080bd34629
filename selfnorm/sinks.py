"""Where recorded statistics go: numbered NPZ chunks in the run directory, TensorBoard.

A sink has ``write(records)`` (called by :meth:`selfnorm.recording.ActivationRecorder.flush`,
out of the hot loop, with plain :class:`~selfnorm.records.Records`) and ``close()``; a sink
that also has ``name_layers(groups)`` is given :func:`layer_groups` of the model's module
names when the recorder is made. Sinks never touch a model or a tensor.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from selfnorm.records import STAT_KEYS, WEIGHT_KEYS, Records, chunk_paths, write_chunk

__all__ = ["NpzChunkSink", "TensorBoardSink", "layer_groups"]


class NpzChunkSink:
    """Each ``write`` becomes the next numbered chunk ``directory/chunk-<k>.npz`` (atomic).

    Numbering continues after the chunks already there (a resumed run first drops the records
    it will take again: :func:`selfnorm.records.truncate_records`).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        existing = chunk_paths(self.directory)
        self._next = existing[-1][0] + 1 if existing else 0

    def write(self, records: Records) -> None:
        if len(records):
            write_chunk(self.directory, self._next, records)
            self._next += 1

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"NpzChunkSink({str(self.directory)!r})"


class TensorBoardSink:
    """TensorBoard event files with the recorder's own bins and statistics, one tag group per
    layer: a weight layer and the activations registered after it share the group named after
    the weight layer (:func:`layer_groups`; registration order, which is the forward order of a
    Sequential and of the built-in models), so TensorBoard shows ``fc1`` with its weights and
    its activation ``act1`` side by side. A run resumed from event files written before this
    grouping (``act/`` and ``weight/`` tags) has both sets of tags.

    Per activation layer and record: histograms ``<group>/<layer>/post`` and
    ``<group>/<layer>/pre`` written with ``add_histogram_raw`` over the very same bins (bucket
    limits: the low edge for the underflow bucket, then each bin's right edge, then the maximum
    for overflow), scalars ``<group>/<layer>/<stat>`` for the output statistics
    (:data:`~selfnorm.records.STAT_KEYS`), ``<group>/<layer>/pre_<stat>`` for the input's,
    ``<group>/<layer>/grad_std`` and the histogram ``<group>/<layer>/grad`` of the gradient
    w.r.t. the output; per Linear/Conv layer ``<layer>/weight/<key>``
    (:data:`~selfnorm.records.WEIGHT_KEYS`) and the histograms ``<layer>/weight/values`` (the
    recorder's value bins over ``1/sqrt(fan_in)``, in weight units) and ``<layer>/weight/grad``;
    gradients on the signed log bins of the records (``grad_bin_edges``). The group of an
    activation that no weight layer precedes is ``act``; without a module order (a sink not
    given to a recorder) every activation's group is ``act``. Statistics that do not apply to a
    layer's family (NaN ones, a SELU's always-zero ``zero_frac``, ``fp_distance`` of a
    non-SELU layer) are left out.

    Args:
        log_dir: folder of the event files.
        purge_step: a resumed run passes the step it resumes at; TensorBoard then hides the
            events at or after it that an interrupted run had written.
    """

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None) -> None:
        try:  # fail before training, not at the first flush
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                f"TensorBoard output needs the tensorboard package ({exc}); "
                f"{sys.executable} -m pip install tensorboard, or drop --tensorboard"
            ) from None
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.purge_step = purge_step
        self._writer = None
        self._groups: dict[str, str] = {}

    def name_layers(self, groups: dict[str, str]) -> None:
        """The tag group of each module name (:func:`layer_groups`); the recorder calls this
        with its model's module order."""
        self._groups = dict(groups)

    def _group(self, label: str) -> str:
        return self._groups.get(label.split("#", 1)[0], "act")

    def _open(self):
        if self._writer is None:  # created at the first write: no writer thread before that
            self._writer = self._writer_class(str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    def write(self, records: Records) -> None:
        if not len(records):
            return
        w = self._open()
        edges, grad_edges = records.bin_edges, records.grad_bin_edges
        post_keys = [[k for k in STAT_KEYS if _applies(k, f)] for f in records.family]
        for s, step in enumerate(records.steps.tolist()):
            for i, layer in enumerate(records.layers):
                tag = f"{self._group(layer)}/{layer}"
                for kind, stats, hist in (
                    ("post", records.post, records.hist_post),
                    ("pre", records.pre, records.hist_pre),
                ):
                    _histogram(w, f"{tag}/{kind}", stats, hist[s, i], s, i, edges, step)
                    prefix = "" if kind == "post" else "pre_"
                    for key in post_keys[i] if kind == "post" else STAT_KEYS:
                        _scalar(w, f"{tag}/{prefix}{key}", stats[key][s, i], step)
                _scalar(w, f"{tag}/grad_std", records.grad_std[s, i], step)
                if records.hist_grad.shape[-1]:
                    _binned(w, f"{tag}/grad", records.hist_grad[s, i], grad_edges, step)
            for j, layer in enumerate(records.weight_layers):
                for key in WEIGHT_KEYS:
                    _scalar(w, f"{layer}/weight/{key}", records.weights[key][s, j], step)
                unit = np.sqrt(max(int(records.weight_fan_in[j]), 1))  # back to weight units
                _binned(w, f"{layer}/weight/values", records.hist_weight[s, j], edges / unit, step)
                if records.hist_weight_grad.shape[-1]:
                    g = records.hist_weight_grad[s, j]
                    _binned(w, f"{layer}/weight/grad", g, grad_edges, step)
        w.flush()

    def write_scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars that are not records, e.g. a run's per-epoch ``train/loss``, ``val/accuracy``
        and final ``test/...`` numbers (:func:`selfnorm.training.train_run` writes them at the
        last step of each epoch, on the records' step axis); non-finite values are left out."""
        w = self._open()
        for tag, value in values.items():
            _scalar(w, tag, value, step)
        w.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __repr__(self) -> str:
        return f"TensorBoardSink({str(self.log_dir)!r})"


def layer_groups(module_order: list[str], weight_layers: list[str]) -> dict[str, str]:
    """The TensorBoard group of every module: the name of the last weight layer at or before it
    in ``module_order`` (registration order, which is the forward order of a Sequential), or
    ``act`` before the first weight layer.

    Example:
        >>> layer_groups(["", "fc1", "act1", "drop1", "fc2", "act2"], ["fc1", "fc2"])
        {'': 'act', 'fc1': 'fc1', 'act1': 'fc1', 'drop1': 'fc1', 'fc2': 'fc2', 'act2': 'fc2'}
    """
    weights = set(weight_layers)
    groups, current = {}, "act"
    for name in module_order:
        if name in weights:
            current = name
        groups[name] = current
    return groups


def _applies(key: str, family: str) -> bool:
    """Whether an output statistic means something for a family: exact zeros for the ReLU
    family only (a SELU's are always 0), the distance from the fixed point (0, 1) for SELU only
    (the others do not aim at it); the rest are NaN where they do not apply, and left out."""
    from selfnorm import taxonomy

    try:
        k = taxonomy.kind(family)
    except ValueError:
        return True
    if key == "zero_frac":
        return bool(k.dead_units)
    if key == "fp_distance":
        return bool(k.selu)
    return True


def _scalar(writer, tag: str, value: float, step: int) -> None:
    if np.isfinite(value):
        writer.add_scalar(tag, float(value), step)


def _binned(writer, tag: str, counts: np.ndarray, edges: np.ndarray, step: int) -> None:
    """A histogram known only by its counts (weights, gradients: no min, max or moments are
    stored), on its own bins: min and max are the outer edges of the outermost non-empty
    buckets, sum and sum of squares from the bin midpoints (the outer buckets at their
    edge). A row of zeros (not taken in this record) writes nothing."""
    num = int(counts.sum())
    if num == 0:
        return
    top = np.nextafter(edges[-1], np.inf)
    limits = np.array([edges[0], *edges[1:], top], dtype=float)
    lower = np.concatenate([[edges[0]], edges])
    mids = np.concatenate([[edges[0]], (edges[:-1] + edges[1:]) / 2, [edges[-1]]])
    used = np.flatnonzero(counts)
    writer.add_histogram_raw(
        tag,
        min=float(lower[used[0]]),
        max=float(limits[used[-1]]),
        num=num,
        sum=float((mids * counts).sum()),
        sum_squares=float((mids * mids * counts).sum()),
        bucket_limits=limits.tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )


def _histogram(writer, tag, stats, counts, s, i, edges, step) -> None:
    num = int(counts.sum())
    mean, std = stats["mean"][s, i], stats["std"][s, i]
    lo, hi = stats["min"][s, i], stats["max"][s, i]
    if num == 0 or not np.isfinite([mean, std, lo, hi]).all():
        return
    top = max(hi, np.nextafter(edges[-1], np.inf))
    limits = [float(edges[0]), *map(float, edges[1:]), float(top)]
    writer.add_histogram_raw(
        tag,
        min=float(lo),
        max=float(hi),
        num=num,
        sum=float(mean * num),
        sum_squares=float((std * std + mean * mean) * num),
        bucket_limits=limits,
        bucket_counts=counts.tolist(),
        global_step=step,
    )
