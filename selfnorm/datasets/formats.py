"""File formats: IDX (MNIST, Fashion-MNIST), the CIFAR-10 binary archive, and CSV tables.

Pure parsers from bytes or a path to numpy arrays; nothing here touches the network or unpickles.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "CIFAR10_CLASSES",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "CsvTable",
    "DataFileError",
    "parse_cifar10_archive",
    "parse_idx",
    "parse_svhn_mat",
    "read_csv",
]

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_CIFAR_RECORD = 1 + 3 * 32 * 32
_MAX_LISTED = 10


class DataFileError(ValueError):
    """A data file is corrupt, has the wrong checksum or cannot be parsed."""


def parse_idx(data: bytes, magic: int, name: str = "IDX data") -> np.ndarray:
    """Parse an uncompressed IDX file of unsigned bytes (the MNIST format).

    The header is big-endian: a 4-byte magic number (2051 for images, 2049 for labels; its last
    byte is the number of dimensions), then one 4-byte size per dimension.

    Args:
        data: the file content.
        magic: the expected magic number.
        name: how to call the file in error messages. Default: ``"IDX data"``.

    Returns:
        uint8 array of the shape in the header, e.g. ``(60000, 28, 28)`` or ``(60000,)``.

    Raises:
        DataFileError: wrong magic number or a size that does not match the header.

    Example:
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]), 2049)
        array([7, 8, 9], dtype=uint8)
    """
    got = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if got != magic:
        raise DataFileError(
            f"{name}: magic number {got}, expected {magic}; not an IDX file of this kind"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{name}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + math.prod(shape):
        raise DataFileError(
            f"{name}: the header says shape {shape}, {header + math.prod(shape)} bytes in all, "
            f"but the file has {len(data)} bytes; it is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def parse_svhn_mat(data: bytes, name: str = "svhn .mat") -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN cropped-digits file (``train_32x32.mat``, ``test_32x32.mat``) in memory.

    The files are MATLAB v5 with ``X``, uint8 images stored as ``(32, 32, 3, N)`` (height,
    width, channel, sample), and ``y``, labels ``(N, 1)`` in 1..10 where 10 stands for the
    digit 0 (read with ``scipy.io.loadmat``).

    Returns:
        ``(x, y)``: uint8 ``(N, 3, 32, 32)`` images and int64 labels 0..9 (the digit).

    Raises:
        DataFileError: not a readable .mat, ``X``/``y`` missing, wrong shapes or labels.

    Example:
        >>> import io, scipy.io
        >>> buf = io.BytesIO()
        >>> x = np.zeros((32, 32, 3, 2), np.uint8); x[0, 1, 2, 1] = 7
        >>> scipy.io.savemat(buf, {"X": x, "y": np.array([[10], [3]], np.uint8)})
        >>> images, labels = parse_svhn_mat(buf.getvalue())
        >>> images.shape, images[1, 2, 0, 1], labels.tolist()
        ((2, 3, 32, 32), np.uint8(7), [0, 3])
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - scipy raises several kinds for a damaged file
        raise DataFileError(f"{name} is not a readable MATLAB file ({e})") from e
    if "X" not in mat or "y" not in mat:
        raise DataFileError(f"{name} lacks the arrays X and y (found {sorted(mat)})")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DataFileError(
            f"{name}: X has shape {x.shape}, expected (32, 32, 3, N) with N = {len(y)} labels"
        )
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataFileError(
            f"{name}: labels must be 1..10 (10 is the digit 0), got {y.min()}..{y.max()}"
        )
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8), (y % 10).astype(np.int64)


def parse_cifar10_archive(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``cifar-10-binary.tar.gz`` in memory, without extracting or unpickling anything.

    Each ``.bin`` member is a sequence of 3073-byte records: the label, then 1024 red, 1024 green
    and 1024 blue pixels, each channel row-major.

    Args:
        data: the archive's bytes.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 ``(N, 3, 32, 32)`` images and uint8 labels
        from ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``.

    Raises:
        DataFileError: not a tar.gz, a member missing, or not a whole number of records.
    """
    train = [f"data_batch_{i}.bin" for i in range(1, 6)]
    wanted = {f"{CIFAR10_FOLDER}/{n}": n for n in [*train, "test_batch.bin"]}
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:  # one pass in archive order: no re-decompression
                if member.name in wanted and member.isfile():
                    blobs[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataFileError(f"cifar-10-binary.tar.gz is not a readable tar.gz ({e})") from e
    missing = sorted(set(wanted.values()) - set(blobs))
    if missing:
        raise DataFileError(f"cifar-10-binary.tar.gz lacks {missing} in {CIFAR10_FOLDER}/")

    def records(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for n in names:
            if not blobs[n] or len(blobs[n]) % _CIFAR_RECORD:
                raise DataFileError(f"{n}: {len(blobs[n])} bytes, not whole 3073-byte records")
            parts.append(np.frombuffer(blobs[n], np.uint8).reshape(-1, _CIFAR_RECORD))
        rec = np.concatenate(parts)
        return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0]

    return (*records(train), *records(["test_batch.bin"]))


class CsvTable(NamedTuple):
    """A CSV file as arrays: float32 features ``(N, F)``, int64 labels, and names."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]


def _number(cell: str) -> float | None:
    """The finite float in ``cell``, or None (empty, text, nan, inf)."""
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_csv(path: str | os.PathLike, target: str | int | None = None) -> CsvTable:
    """Read a CSV file of numeric features and one label column.

    The first row is a header when none of its cells is a number (a header is required when
    ``target`` is a name). Line endings ``\\n``, ``\\r\\n`` and a lone ``\\r`` all work; blank
    lines are skipped. Labels may be numbers or strings; they become class indices in sorted
    order (numeric order when every label is a number).

    Args:
        path: the CSV file (comma-separated, UTF-8).
        target: label column by header name or index (negative counts from the end).
            Default: None, the last column.

    Returns:
        :class:`CsvTable` ``(x, y, class_names, feature_names)``.

    Raises:
        DataFileError: rows with missing or non-numeric values (up to 10 listed with their
            line numbers, plus the count), a missing target column, or no data.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = p.write_text("a,b,kind\\n1,2,cat\\n3,4,dog\\n5,6,cat\\n")
        >>> t = read_csv(p, target="kind")
        >>> t.x.tolist(), t.y.tolist(), t.class_names
        ([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [0, 1, 0], ('cat', 'dog'))
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataFileError(f"{path} {what}; pass the path of a CSV file, e.g. csv:data/table.csv")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)  # with newline="" it ends rows at \n, \r\n and a lone \r
            rows = [(reader.line_num, [c.strip() for c in row]) for row in reader if any(row)]
    except UnicodeDecodeError as exc:
        raise DataFileError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as a UTF-8 CSV"
        ) from None
    except csv.Error as exc:
        raise DataFileError(f"{path} is not a readable CSV file ({exc})") from None
    if not rows:
        raise DataFileError(f"{path} is empty")
    first = rows[0][1]
    has_header = all(_number(c) is None for c in first)
    if isinstance(target, str) and not has_header:
        raise DataFileError(
            f"target={target!r} names a column, but {path} has no header row (line "
            f"{rows[0][0]} holds numbers); pass the column's index instead, e.g. target=-1"
        )
    names = tuple(first) if has_header else tuple(f"column {i}" for i in range(len(first)))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataFileError(
            f"{path}: the header names {', '.join(map(repr, dup))} more than once; give every "
            "column its own name (a target chosen by name must be unambiguous)"
        )
    body = rows[1:] if has_header else rows
    if len(names) < 2 or not body:
        raise DataFileError(
            f"{path}: found {len(names)} column(s) and {len(body)} data row(s); need at least "
            "one feature column, the label column and one data row"
        )
    t = _target_index(target, names, path)
    x, labels, bad = [], [], []
    for line, row in body:
        problem = _row_problem(row, names, t)
        if problem:
            bad.append(f"line {line}: {problem}")
        else:
            x.append([_number(c) for i, c in enumerate(row) if i != t])
            labels.append(row[t])
    if bad:
        more = f"; ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise DataFileError(
            f"{path}: {len(bad)} row(s) with missing or non-numeric values ("
            + "; ".join(bad[:_MAX_LISTED])
            + f"{more}); fix or remove these rows (features must be finite numbers; the label "
            f"column is {names[t]!r})"
        )
    y, class_names = _encode_labels(labels)
    _check_classes(path, names[t], class_names, len(y))
    features = tuple(n for i, n in enumerate(names) if i != t)
    return CsvTable(np.asarray(x, dtype=np.float32), y, class_names, features)


MAX_CLASS_SHARE = 0.5
"""A label column with more distinct values than this share of its rows (and over 20 of them)
is taken for a continuous target, which a classifier cannot learn: an error, not 200 classes."""


def _check_classes(path: Path, column: str, class_names: tuple[str, ...], rows: int) -> None:
    n = len(class_names)
    if n < 2:
        raise DataFileError(
            f"{path}: the label column {column!r} holds one class ({class_names[0]!r}) in all "
            f"{rows} rows; a classifier needs at least 2 (check target=, or the file)"
        )
    if n > 20 and n > MAX_CLASS_SHARE * rows:
        raise DataFileError(
            f"{path}: the label column {column!r} has {n} distinct values in {rows} rows, so it "
            "looks continuous (regression is not supported); pass the class column as target=, "
            "or bin the values into classes first"
        )


def _row_problem(row: list[str], names: tuple[str, ...], t: int) -> str:
    """What is wrong with one data row, or "" if nothing."""
    if len(row) != len(names):
        return f"{len(row)} values, expected {len(names)}"
    wrong = [f"{names[i]}={c!r}" for i, c in enumerate(row) if i != t and _number(c) is None]
    if not row[t]:
        wrong.append(f"{names[t]} (the label) is empty")
    return ", ".join(wrong)


def _target_index(target: str | int | None, names: tuple[str, ...], path: Path) -> int:
    if target is None:
        return len(names) - 1
    if isinstance(target, str):
        if target not in names:
            raise DataFileError(f"{path} has no column {target!r}; its columns are {list(names)}")
        return names.index(target)
    if not -len(names) <= target < len(names):
        raise DataFileError(
            f"target={target} is out of range for {path}, which has {len(names)} columns "
            f"{list(names)}; pass an index in [{-len(names)}, {len(names) - 1}]"
        )
    return target % len(names)


def _encode_labels(labels: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices in sorted order of the distinct labels (numeric order if all numeric)."""
    numbers = [_number(v) for v in labels]
    numeric = all(v is not None for v in numbers)
    keys = numbers if numeric else labels
    distinct = sorted(set(keys))
    if numeric:
        names = tuple(str(int(v)) if v.is_integer() else repr(v) for v in distinct)
    else:
        names = tuple(distinct)
    index = {k: i for i, k in enumerate(distinct)}
    return np.array([index[k] for k in keys], dtype=np.int64), names
