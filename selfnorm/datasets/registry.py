"""The dataset registry: for each name, its files with their published checksums, where they are
published and found, and how to read them into unsplit arrays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from selfnorm.datasets.download import RemoteFile
from selfnorm.datasets.formats import (
    CIFAR10_CLASSES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DataFileError,
    parse_cifar10_archive,
    parse_idx,
    parse_svhn_mat,
)

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetSpec",
    "RawData",
    "dataset_names",
    "get_spec",
]

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where ``apt-get install dataset-fashion-mnist`` puts the four ``.gz`` files."""


class RawData(NamedTuple):
    """What a reader returns: unsplit arrays as stored (uint8 pixels, float tables), int64
    labels; ``x_test`` and ``y_test`` are None when the dataset has no test split of its own.
    ``x * scale`` are the input values (pixels in [0, 1])."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]
    scale: float = 1.0


@dataclass(frozen=True)
class DatasetSpec:
    """How to get one dataset: its files, where they are published, and how to read them.

    ``read`` maps ``{file name: verified content}`` to :class:`RawData`; a spec without files
    (scikit-learn's bundled sets) is read from an empty dict.
    """

    name: str
    description: str
    read: Callable[[dict[str, bytes]], RawData]
    files: tuple[RemoteFile, ...] = ()
    urls: tuple[str, ...] = ()
    """Base URLs, tried in order; a file's URL is base + file name."""
    search_dirs: tuple[str, ...] = ()
    """System folders searched (after ``data_dir`` and the cache) before downloading."""


def _labels(y: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    if y.size and int(y.max()) >= num_classes:
        raise DataFileError(f"{name}: label {int(y.max())} outside 0..{num_classes - 1}")
    return y.astype(np.int64)


def _idx_reader(class_names: tuple[str, ...]) -> Callable[[dict[str, bytes]], RawData]:
    def split(contents: dict[str, bytes], prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"
        x = parse_idx(contents[images], IDX_IMAGES_MAGIC, images)
        y = parse_idx(contents[labels], IDX_LABELS_MAGIC, labels)
        if x.ndim != 3 or len(x) != len(y):
            raise DataFileError(f"{images} {x.shape} does not match {labels} {y.shape}")
        return x[:, None], _labels(y, len(class_names), labels)

    def read(contents: dict[str, bytes]) -> RawData:
        train, test = split(contents, "train"), split(contents, "t10k")
        return RawData(*train, *test, class_names, 1.0 / 255.0)

    return read


def _read_cifar10(contents: dict[str, bytes]) -> RawData:
    x, y, x_test, y_test = parse_cifar10_archive(contents["cifar-10-binary.tar.gz"])
    k = len(CIFAR10_CLASSES)
    return RawData(
        x,
        _labels(y, k, "data_batch_*.bin"),
        x_test,
        _labels(y_test, k, "test_batch.bin"),
        CIFAR10_CLASSES,
        1.0 / 255.0,
    )


def _read_svhn(contents: dict[str, bytes]) -> RawData:
    x, y = parse_svhn_mat(contents["train_32x32.mat"], "train_32x32.mat")
    x_test, y_test = parse_svhn_mat(contents["test_32x32.mat"], "test_32x32.mat")
    return RawData(x, y, x_test, y_test, DIGIT_CLASSES, 1.0 / 255.0)


def _read_digits(_: dict[str, bytes]) -> RawData:
    from sklearn.datasets import load_digits

    d = load_digits()
    names = tuple(str(c) for c in d.target_names)
    pixels = d.images[:, None].astype(np.uint8)  # integers 0..16
    return RawData(pixels, d.target.astype(np.int64), None, None, names, 1.0 / 16.0)


def _sklearn_table(loader: str) -> Callable[[dict[str, bytes]], RawData]:
    def read(_: dict[str, bytes]) -> RawData:
        import sklearn.datasets

        d = getattr(sklearn.datasets, loader)()
        names = tuple(str(c) for c in d.target_names)
        return RawData(d.data.astype(np.float32), d.target.astype(np.int64), None, None, names)

    return read


def _idx_files(table: dict[str, tuple[str, int, str]]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, md5, size, raw) for name, (md5, size, raw) in table.items())


DIGIT_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# name: (MD5 of the published .gz, its size in bytes, MD5 of the decompressed IDX file)
MNIST_FILES = _idx_files({
    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422, "6bbc9ace898e44ae57da46a324031adb"),  # noqa: E501
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", 28881, "a25bea736e30d166cdddb491f175f624"),  # noqa: E501
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", 1648877, "2646ac647ad5339dbf082846283269ea"),  # noqa: E501
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", 4542, "27ae3e4e09519cfbb04c329615203637"),  # noqa: E501
})  # fmt: skip
# Debian's dataset-fashion-mnist re-compresses these .gz files (no stored file name, another
# mtime): its copies differ in the .gz MD5 and match on the decompressed MD5.
FASHION_MNIST_FILES = _idx_files({
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880, "f4a8712d7a061bf5bd6d2ca38dc4d50a"),  # noqa: E501
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", 29515, "9018921c3c673c538a1fc5bad174d6f9"),  # noqa: E501
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", 4422102, "8181f5470baa50b63fa0f6fddb340f0a"),  # noqa: E501
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", 5148, "15d484375f8d13e6eb1aabb0c3f46965"),  # noqa: E501
})  # fmt: skip
CIFAR10_FILES = (
    RemoteFile("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", 170052171),
)

# The cropped-digits files of the Stanford SVHN page (MD5s as torchvision lists them); the
# optional 531,131-image extra_32x32.mat is not part of this dataset.
SVHN_FILES = (
    RemoteFile("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    RemoteFile("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
)

_SPECS = (
    DatasetSpec("digits", "scikit-learn's bundled 8x8 digits, 1797 images", _read_digits),
    DatasetSpec("iris", "scikit-learn's bundled iris, 150 x 4", _sklearn_table("load_iris")),
    DatasetSpec("wine", "scikit-learn's bundled wine, 178 x 13", _sklearn_table("load_wine")),
    DatasetSpec(
        "breast-cancer",
        "scikit-learn's bundled breast cancer (Wisconsin), 569 x 30",
        _sklearn_table("load_breast_cancer"),
    ),
    DatasetSpec(
        "mnist",
        "MNIST handwritten digits, 60000 + 10000 images 1x28x28",
        _idx_reader(DIGIT_CLASSES),
        MNIST_FILES,
        # torchvision's order: the S3 mirror first, then the original site, which often
        # refuses scripted downloads.
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    ),
    DatasetSpec(
        "fashion-mnist",
        "Zalando's Fashion-MNIST, 60000 + 10000 images 1x28x28",
        _idx_reader(FASHION_MNIST_CLASSES),
        FASHION_MNIST_FILES,
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (DEBIAN_FASHION_MNIST_DIR,),
    ),
    DatasetSpec(
        "cifar10",
        "CIFAR-10 (binary version), 50000 + 10000 images 3x32x32",
        _read_cifar10,
        CIFAR10_FILES,
        ("https://www.cs.toronto.edu/~kriz/",),
    ),
    DatasetSpec(
        "svhn",
        "Street View House Numbers (cropped digits), 73257 + 26032 images 3x32x32",
        _read_svhn,
        SVHN_FILES,
        ("http://ufldl.stanford.edu/housenumbers/",),
    ),
)
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
"""The registry: dataset name -> :class:`DatasetSpec`."""


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names, sorted (``csv:PATH`` is accepted as well).

    Example:
        >>> dataset_names()
        ('breast-cancer', 'cifar10', 'digits', 'fashion-mnist', 'iris', 'mnist', 'svhn', 'wine')
    """
    return tuple(sorted(DATASETS))


def get_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name``; unknown names raise ``ValueError`` listing the valid ones.

    Example:
        >>> get_spec("mnist").files[0].name
        'train-images-idx3-ubyte.gz'
    """
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}, "
            "or csv:PATH for a CSV file of numeric features plus a label column"
        )
    return DATASETS[name]
