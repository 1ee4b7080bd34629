"""Data for the experiments: :class:`DataConfig` -> :func:`load_dataset` -> :class:`Dataset`.

The dataset registry, verified downloads and the cache, and the file formats live in
:mod:`selfnorm.datasets`; this module splits and standardizes:

* the dataset's own test split is used as given (MNIST, Fashion-MNIST, CIFAR-10); otherwise a
  seeded stratified ``test_fraction`` is held out;
* a seeded stratified ``val_fraction`` of the training split becomes the validation split;
* standardization statistics come from the remaining training split only and are applied to
  all three splits.

>>> ds = load_dataset(DataConfig("digits"), progress=False)
>>> ds.input_shape, len(ds.y_train), len(ds.y_val), len(ds.y_test), ds.num_classes
((1, 8, 8), 1293, 144, 360, 10)

Files are looked for, in order, in ``data_dir`` itself, in ``<root>/<name>/`` (the cache; the
root is ``data_dir``, else ``$SELFNORM_DATA``, else ``~/.cache/selfnorm``) and in the dataset's
system folders (Fashion-MNIST: where Debian's ``dataset-fashion-mnist`` package installs it),
and only then downloaded into the cache. A file is used only if it has the published MD5
checksum; MNIST and Fashion-MNIST may also be stored uncompressed, checked against the published
MD5 of the uncompressed files.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfnorm.datasets.download import DownloadError, data_root, download_file, fetch_files
from selfnorm.datasets.formats import DataFileError, read_csv
from selfnorm.datasets.registry import DATASETS, DatasetSpec, RawData, dataset_names, get_spec

__all__ = [
    "DATASETS",
    "DataConfig",
    "DataFileError",
    "Dataset",
    "DatasetSpec",
    "DownloadError",
    "apply_standardization",
    "data_root",
    "dataset_names",
    "download_file",
    "fit_standardization",
    "load_dataset",
    "read_csv",
    "restandardize",
    "stratified_split",
]

STANDARDIZE_MODES = ("feature", "global", "none")
CSV_PREFIX = "csv:"


@dataclass(frozen=True)
class DataConfig:
    """Which data, where it lives, and how it is split and standardized.

    Example:
        >>> DataConfig("mnist", val_fraction=0.2).val_fraction
        0.2
        >>> DataConfig("digits", standardize="pixel")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: standardize='pixel' is not one of 'feature', 'global', 'none'; ...
    """

    dataset: str = "digits"
    """A registry name (:func:`dataset_names`) or ``csv:PATH``."""
    data_dir: str | None = None
    """A folder holding the files, and the cache root; None: ``$SELFNORM_DATA``, else
    ``~/.cache/selfnorm``."""
    val_fraction: float = 0.1
    """Fraction of the training split held out (seeded, stratified) for validation, in (0, 1)."""
    test_fraction: float = 0.2
    """Fraction held out for testing, in (0, 1); only for data without a test split of its own
    (digits, iris, wine, breast-cancer, CSV)."""
    standardize: str = "feature"
    """``feature`` (mean 0, std 1 per feature; per pixel for images), ``global`` (one mean and
    std over all values) or ``none``; fitted on the training split only."""
    target: str | int | None = None
    """CSV only: the label column, by header name or index (negative counts from the end);
    None: the last column."""
    seed: int = 0
    """Seed of the validation and test splits."""
    download: bool = True
    """False: never touch the network; missing files are an error."""

    def __post_init__(self) -> None:
        if not (isinstance(self.dataset, str) and self.dataset.startswith(CSV_PREFIX)):
            get_spec(self.dataset)  # raises with the valid names
        elif not self.dataset[len(CSV_PREFIX) :].strip():
            raise ValueError("dataset='csv:' names no file; pass csv:PATH, e.g. csv:data/train.csv")
        else:  # stored absolute, so --resume from another folder reads the same file
            csv = Path(self.dataset[len(CSV_PREFIX) :].strip()).expanduser().resolve()
            object.__setattr__(self, "dataset", f"{CSV_PREFIX}{csv}")
        if self.data_dir is not None:
            if not isinstance(self.data_dir, (str, os.PathLike)) or not os.fspath(self.data_dir):
                raise ValueError(f"data_dir={self.data_dir!r}; pass a folder path or None")
            data_dir = Path(os.fspath(self.data_dir)).expanduser().resolve()
            object.__setattr__(self, "data_dir", str(data_dir))
        for name in ("val_fraction", "test_fraction"):
            object.__setattr__(self, name, _fraction(name, getattr(self, name)))
        if self.standardize not in STANDARDIZE_MODES:
            raise ValueError(
                f"standardize={self.standardize!r} is not one of 'feature', 'global', 'none'; "
                "'feature' is the usual choice (per-feature mean 0, std 1 on the training split)"
            )
        if self.target is not None:
            if not self.dataset.startswith(CSV_PREFIX):
                raise ValueError(
                    f"target={self.target!r} is only for csv:PATH datasets, not "
                    f"{self.dataset!r}; leave target unset"
                )
            if isinstance(self.target, bool) or not isinstance(self.target, (str, int)):
                raise ValueError(
                    f"target={self.target!r} must be a column name (str) or index (int)"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer in [0, 2**32)")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed={self.seed!r} is outside [0, 2**32); pass e.g. 0")
        if not isinstance(self.download, bool):
            raise ValueError(f"download={self.download!r} must be True or False")


def _fraction(name: str, value: float) -> float:
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    v = float(value) if number else math.nan
    if not 0.0 < v < 1.0:
        raise ValueError(
            f"{name}={value!r} must be a fraction in (0, 1) of the samples to hold out; "
            "pass e.g. 0.1"
        )
    return v


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded, split and standardized dataset as numpy arrays.

    Inputs are float32, ``(N, C, H, W)`` for images (pixels scaled to [0, 1] before
    standardization) and ``(N, F)`` for tables; labels are int64 class indices
    ``0 .. num_classes - 1``. ``standardization`` holds the training-split statistics that were
    applied to all three splits (JSON-ready; :func:`apply_standardization` applies them to new
    data).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    standardization: dict = field(default_factory=lambda: {"mode": "none", "mean": 0.0, "std": 1.0})

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class_names for num_classes={self.num_classes}"
            )
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.float32 or y.dtype != np.int64:
                raise ValueError(
                    f"x_{split} is {x.dtype} and y_{split} {y.dtype}; pass float32 inputs and "
                    "int64 labels (.astype(np.float32), .astype(np.int64))"
                )
            if x.ndim < 2 or x.shape[1:] != self.x_train.shape[1:] or y.shape != x.shape[:1]:
                raise ValueError(
                    f"x_{split} {x.shape} / y_{split} {y.shape} do not fit x_train "
                    f"{self.x_train.shape}: need (N, *input_shape) inputs and (N,) labels"
                )
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"y_{split} has labels outside 0..{self.num_classes - 1}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(C, H, W)`` or ``(F,)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_features(self) -> int:
        """Number of input values per sample."""
        return math.prod(self.input_shape)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, input_shape={self.input_shape}, "
            f"train={len(self.y_train)}, val={len(self.y_val)}, test={len(self.y_test)}, "
            f"num_classes={self.num_classes}, standardize={self.standardization.get('mode')!r})"
        )


# ---------------------------------------------------------------------------------------------
# Splits and standardization: pure functions
# ---------------------------------------------------------------------------------------------


def stratified_split(
    y: np.ndarray, fraction: float, seed: int, what: str = "held-out"
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of sample indices.

    Args:
        y: class labels of the samples.
        fraction: fraction of the samples to hold out, in (0, 1).
        seed: random seed; the same seed gives the same split.
        what: name of the held-out part in error messages. Default: ``"held-out"``.

    Returns:
        ``(kept, held_out)``: sorted int64 index arrays that partition ``range(len(y))``.

    Raises:
        ValueError: a class with fewer than 2 samples, or a held-out part smaller than the
            number of classes.

    Example:
        >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
        >>> kept, held = stratified_split(y, 0.5, seed=0)
        >>> len(held), sorted(y[held].tolist())
        (4, [0, 0, 1, 1])
    """
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(
            np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y
        )
    except ValueError as e:
        counts = np.bincount(y)
        raise ValueError(
            f"cannot hold out a stratified {what} split of {fraction} from {len(y)} samples in "
            f"{np.count_nonzero(counts)} classes (smallest: {counts[counts > 0].min()} "
            "samples): every class needs >= 2 samples and the split >= 1 per class; use more "
            f"data, drop rare classes or change the fraction (scikit-learn: {e})"
        ) from None
    return np.sort(kept).astype(np.int64), np.sort(held).astype(np.int64)


def fit_standardization(x: np.ndarray, mode: str) -> dict:
    """Standardization statistics of training inputs.

    Args:
        x: training inputs ``(N, *input_shape)``.
        mode: ``feature`` (mean and std per feature; for images per pixel and channel),
            ``global`` (one mean and std over all values) or ``none`` (mean 0, std 1).
            Features constant on ``x`` get std 1 (they become 0, never NaN).

    Returns:
        JSON-ready ``{"mode", "mean", "std"}``; mean and std (population std) are floats, or
        nested lists of shape ``input_shape`` for ``feature``.

    Example:
        >>> fit_standardization(np.array([[1.0, 5.0], [3.0, 5.0]]), "feature")
        {'mode': 'feature', 'mean': [2.0, 5.0], 'std': [1.0, 1.0]}
    """
    if mode not in STANDARDIZE_MODES:
        raise ValueError(f"standardize mode {mode!r}; choose one of {STANDARDIZE_MODES}")
    if mode == "none":
        return {"mode": "none", "mean": 0.0, "std": 1.0}
    axis = 0 if mode == "feature" else None
    lo, hi = np.min(x, axis=axis), np.max(x, axis=axis)
    constant = lo == hi  # exact test: a float std of equal values need not be exactly 0
    mean = np.mean(x, axis=axis, dtype=np.float64)
    var = _sum_of_squares(x, mean, axis) / (x.size if axis is None else len(x))
    mean = np.where(constant, lo, mean).astype(np.float64)
    std = np.where(constant, 1.0, np.sqrt(var))
    return {"mode": mode, "mean": mean.tolist(), "std": std.tolist()}


def _sum_of_squares(x: np.ndarray, mean: np.ndarray, axis: int | None) -> np.ndarray:
    """Sum of squared deviations from ``mean`` in float64, over row chunks of ~2M values."""
    rows = max(1, (1 << 21) // max(1, math.prod(x.shape[1:])))
    total = np.zeros_like(mean)
    for start in range(0, len(x), rows):
        d = x[start : start + rows].astype(np.float64) - mean
        total += np.einsum("i...,i...->...", d, d) if axis == 0 else np.vdot(d, d)
    return total


def apply_standardization(x: np.ndarray, stats: dict) -> np.ndarray:
    """``(x - mean) / std`` with statistics from :func:`fit_standardization`, as float32.

    Example:
        >>> apply_standardization(np.array([[1.0, 5.0]]), {"mean": [2.0, 5.0], "std": [1.0, 1.0]})
        array([[-1.,  0.]], dtype=float32)
    """
    out = np.asarray(x, dtype=np.float32) - np.asarray(stats["mean"], dtype=np.float32)
    out /= np.asarray(stats["std"], dtype=np.float32)
    return out


def restandardize(ds: Dataset, mode: str) -> Dataset:
    """``ds`` with its inputs scaled by ``mode`` instead: the standardization applied is undone
    (in float64, :math:`x \\sigma + \\mu`), then ``mode``'s statistics are fitted on the training
    split and applied to all three splits. ``ds`` itself is unchanged; the same mode returns it.

    Example:
        >>> ds = load_dataset(DataConfig("iris", seed=1, standardize="global"))
        >>> raw = restandardize(ds, "none")
        >>> raw.standardization["mode"], round(float(raw.x_train.max()), 4)
        ('none', 7.9)
    """
    if mode not in STANDARDIZE_MODES:
        raise ValueError(f"standardize mode {mode!r}; choose one of {STANDARDIZE_MODES}")
    if ds.standardization.get("mode", "none") == mode:
        return ds
    mean = np.asarray(ds.standardization["mean"], dtype=np.float64)
    std = np.asarray(ds.standardization["std"], dtype=np.float64)

    def raw(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float64) * std + mean).astype(np.float32)

    x_train = raw(ds.x_train)
    stats = fit_standardization(x_train, mode)
    return dataclasses.replace(
        ds,
        x_train=_standardize_(x_train, stats),
        x_val=_standardize_(raw(ds.x_val), stats),
        x_test=_standardize_(raw(ds.x_test), stats),
        standardization=stats,
    )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_dataset(
    config: DataConfig, progress: bool = True, mirrors: dict[str, list[str]] | None = None
) -> Dataset:
    """Load, split and standardize a dataset.

    Args:
        config: which data, and how to split and standardize it.
        progress: show download progress bars on stderr. Default: True.
        mirrors: per dataset name, base URLs that replace the published ones, e.g.
            ``{"mnist": ["http://127.0.0.1:8000/"]}``. Default: None.

    Returns:
        :class:`Dataset` with float32 inputs and int64 labels.

    Raises:
        ValueError: unknown names in ``mirrors``, or splits too small to stratify.
        FileNotFoundError: files missing with ``download=False``, or no such CSV file.
        DownloadError: a needed file could not be downloaded from any URL.
        DataFileError: a corrupt file or a malformed CSV.

    Example:
        >>> ds = load_dataset(DataConfig("iris", seed=1, standardize="global"))
        >>> ds.num_features, ds.class_names, ds.standardization["mode"]
        (4, ('setosa', 'versicolor', 'virginica'), 'global')
        >>> abs(float(ds.x_train.mean())) < 1e-6, abs(float(ds.x_train.std()) - 1) < 1e-6
        (True, True)
    """
    if not isinstance(config, DataConfig):
        raise TypeError(f"config must be a DataConfig, got {type(config).__name__}")
    urls = _check_mirrors(mirrors)
    if config.dataset.startswith(CSV_PREFIX):
        raw = _read_csv_dataset(config)
    else:
        raw = _read_registered(DATASETS[config.dataset], config, progress, urls)
    x, y, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if x_test is None:
        keep, held = stratified_split(y, config.test_fraction, config.seed, "test")
        x, y, x_test, y_test = x[keep], y[keep], x[held], y[held]
    keep, held = stratified_split(y, config.val_fraction, config.seed, "validation")
    x_train = _to_float(x[keep], raw.scale)
    stats = fit_standardization(x_train, config.standardize)
    return Dataset(
        name=config.dataset,
        x_train=_standardize_(x_train, stats),
        y_train=y[keep],
        x_val=_standardize_(_to_float(x[held], raw.scale), stats),
        y_val=y[held],
        x_test=_standardize_(_to_float(x_test, raw.scale), stats),
        y_test=y_test,
        num_classes=len(raw.class_names),
        class_names=raw.class_names,
        standardization=stats,
    )


def _to_float(x: np.ndarray, scale: float) -> np.ndarray:
    """A float32 copy of ``x * scale`` (``x`` is never modified)."""
    out = np.array(x, dtype=np.float32, order="C")
    if scale != 1.0:
        out *= np.float32(scale)
    return out


def _standardize_(x: np.ndarray, stats: dict) -> np.ndarray:
    """In-place :func:`apply_standardization` of a float32 array."""
    if stats["mode"] != "none":
        x -= np.asarray(stats["mean"], dtype=np.float32)
        x /= np.asarray(stats["std"], dtype=np.float32)
    return x


def _read_registered(
    spec: DatasetSpec, config: DataConfig, progress: bool, urls: dict[str, tuple[str, ...]]
) -> RawData:
    if not spec.files:
        return spec.read({})
    cache = data_root(config.data_dir) / spec.name
    given = [Path(config.data_dir).expanduser()] if config.data_dir is not None else []
    folders = [*given, cache, *map(Path, spec.search_dirs)]
    contents = fetch_files(
        spec.name,
        spec.files,
        folders,
        cache,
        urls.get(spec.name, spec.urls),
        config.download,
        progress,
    )
    return spec.read(contents)


def _read_csv_dataset(config: DataConfig) -> RawData:
    path = Path(config.dataset[len(CSV_PREFIX) :]).expanduser()
    if not path.is_file():
        raise DataFileError(
            f"dataset {config.dataset!r}: there is no file {path}; check the path after csv:"
        )
    table = read_csv(path, config.target)
    return RawData(table.x, table.y, None, None, table.class_names)


def _check_mirrors(mirrors: dict[str, list[str]] | None) -> dict[str, tuple[str, ...]]:
    if mirrors is None:
        return {}
    downloadable = sorted(name for name, spec in DATASETS.items() if spec.files)
    out = {}
    for name, urls in mirrors.items():
        if name not in downloadable:
            raise ValueError(f"mirrors names {name!r}; downloadable datasets: {downloadable}")
        if isinstance(urls, str) or not urls or not all(isinstance(u, str) for u in urls):
            raise ValueError(f"mirrors[{name!r}]={urls!r}; pass a non-empty list of base URLs")
        out[name] = tuple(urls)
    return out
