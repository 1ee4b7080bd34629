import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from sklearn.preprocessing import StandardScaler

from selfnorm.data import (
    DataConfig,
    DataFileError,
    Dataset,
    DownloadError,
    apply_standardization,
    data_root,
    dataset_names,
    download_file,
    fit_standardization,
    load_dataset,
    read_csv,
    stratified_split,
)
from selfnorm.datasets.formats import parse_cifar10_archive, parse_idx
from selfnorm.datasets.registry import DEBIAN_FASHION_MNIST_DIR, MNIST_FILES

MNIST_DIR = SHARED / "data" / "mnist"
MNIST_NAMES = [f.name for f in MNIST_FILES]


def _require(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{what} missing at {folder}")
        pytest.skip(f"{what} not at {folder}")
    return folder


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    return _require(MNIST_DIR, "the real MNIST files")


@pytest.fixture(scope="module")
def mnist(mnist_dir) -> Dataset:
    """Real MNIST, from a folder that already holds the original .gz files (read-only)."""
    return load_dataset(DataConfig("mnist", data_dir=str(mnist_dir), download=False), False)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Real MNIST and Fashion-MNIST
# ---------------------------------------------------------------------------------------------


def test_real_mnist_shapes_and_label_counts(mnist):
    assert mnist.x_train.shape[1:] == (1, 28, 28) and mnist.x_train.dtype == np.float32
    assert len(mnist.y_train) + len(mnist.y_val) == 60000 and len(mnist.y_val) == 6000
    assert mnist.x_test.shape == (10000, 1, 28, 28) and mnist.y_test.dtype == np.int64
    test_counts = np.bincount(mnist.y_test)
    assert (test_counts[0], test_counts[1], test_counts[5]) == (980, 1135, 892)
    assert np.bincount(np.concatenate([mnist.y_train, mnist.y_val]))[0] == 5923
    assert mnist.num_classes == 10 and mnist.class_names[3] == "3"
    assert mnist.input_shape == (1, 28, 28) and mnist.num_features == 784


def test_mnist_test_split_is_used_as_given(mnist_dir, mnist):
    labels = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:]
    assert np.array_equal(mnist.y_test, np.frombuffer(labels, np.uint8))


def test_uncompressed_idx_files_are_used_as_is(mnist_dir, mnist, tmp_path):
    for name in MNIST_NAMES:
        if name.startswith("t10k"):  # mix: test files uncompressed, train files as .gz
            (tmp_path / name[:-3]).write_bytes(gzip.decompress((mnist_dir / name).read_bytes()))
        else:
            shutil.copy(mnist_dir / name, tmp_path / name)
    ds = load_dataset(DataConfig("mnist", data_dir=str(tmp_path), download=False), False)
    assert np.array_equal(ds.x_test, mnist.x_test) and np.array_equal(ds.y_test, mnist.y_test)


def test_missing_files_without_download_name_files_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(DataConfig("mnist", data_dir=str(tmp_path), download=False), False)
    msg = str(e.value)
    assert all(n in msg for n in MNIST_NAMES) and str(tmp_path / "mnist") in msg
    assert list(tmp_path.iterdir()) == []


def test_corrupt_local_file_is_an_error_not_data(mnist_dir, tmp_path):
    for name in MNIST_NAMES:
        shutil.copy(mnist_dir / name, tmp_path / name)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataFileError, match="t10k-labels-idx1-ubyte.gz.*checksum"):
        load_dataset(DataConfig("mnist", data_dir=str(tmp_path), download=False), False)


def test_fashion_mnist_from_the_debian_package(tmp_path):
    _require(Path(DEBIAN_FASHION_MNIST_DIR), "apt-get install dataset-fashion-mnist")
    # empty data_dir and no network: the files can only come from the Debian location
    ds = load_dataset(DataConfig("fashion-mnist", data_dir=str(tmp_path), download=False), False)
    assert ds.x_test.shape == (10000, 1, 28, 28) and len(ds.y_train) + len(ds.y_val) == 60000
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert np.bincount(np.concatenate([ds.y_train, ds.y_val])).tolist() == [6000] * 10
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The real downloader against a local HTTP server
# ---------------------------------------------------------------------------------------------


class _Server:
    """Serves files under /ok/, wrong bytes under /corrupt/, half of each file under /truncate/
    (announcing the full length), and 404 under /missing/. Counts requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                mode, _, name = self.path.lstrip("/").partition("/")
                body = owner.files.get(name)
                if body is None or mode not in ("ok", "corrupt", "truncate"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "ok":
                    self.wfile.write(body)
                elif mode == "corrupt":
                    self.wfile.write(body[::-1])
                else:
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def server(mnist_dir):
    s = _Server({n: (mnist_dir / n).read_bytes() for n in MNIST_NAMES})
    yield s
    s.close()


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_download_lands_verified_files_and_is_reused_offline(server, mnist, tmp_path, capsys):
    cfg = DataConfig("mnist", data_dir=str(tmp_path))
    before = len(server.requests)
    ds = load_dataset(cfg, progress=True, mirrors={"mnist": [server.url + "ok"]})
    assert len(server.requests) - before == 4
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err  # the progress bar
    published = dict(
        line.split()[::-1] for line in (MNIST_DIR / "MD5SUMS").read_text().split("\n") if line
    )
    assert {p.name: _md5(p) for p in _files(tmp_path)} == published
    assert all(p.parent == tmp_path / "mnist" for p in _files(tmp_path))
    assert np.array_equal(ds.x_test, mnist.x_test) and np.array_equal(ds.y_train, mnist.y_train)
    again = load_dataset(cfg, progress=False, mirrors={"mnist": [server.url + "ok"]})
    assert len(server.requests) - before == 4  # second load: from the cache, no request
    assert np.array_equal(again.x_val, ds.x_val)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("corrupt", "checksum mismatch"), ("truncate", "cut short"), ("missing", "HTTP 404")],
)
def test_failed_download_leaves_nothing_and_explains(server, tmp_path, mode, reason):
    with pytest.raises(DownloadError) as e:
        load_dataset(
            DataConfig("mnist", data_dir=str(tmp_path)), False, {"mnist": [server.url + mode]}
        )
    msg = str(e.value)
    assert f"{server.url}{mode}/train-images-idx3-ubyte.gz: " in msg and reason in msg
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg  # what to check by hand
    assert str(tmp_path / "mnist") in msg and all(n in msg for n in MNIST_NAMES)
    assert list(tmp_path.iterdir()) == []  # no file, no temp file, no empty folder


def test_every_mirror_is_named_and_the_first_good_one_wins(server, tmp_path):
    name = "t10k-labels-idx1-ubyte.gz"
    md5 = _md5(MNIST_DIR / name)
    urls = [server.url + m + "/" + name for m in ("missing", "truncate", "ok", "corrupt")]
    before = len(server.requests)
    path = download_file(urls, tmp_path / "cache" / name, md5, progress=False, size=4542)
    assert _md5(path) == md5 and _files(tmp_path) == [path]
    assert server.requests[before:] == [u.removeprefix(server.url[:-1]) for u in urls[:3]]
    assert download_file(urls[:1], path, md5, progress=False) == path  # present: no request
    assert len(server.requests) - before == 3
    with pytest.raises(DownloadError) as e:
        download_file([urls[0], urls[1], urls[3]], tmp_path / "x" / name, md5, progress=False)
    lines = str(e.value).splitlines()
    assert [ln.split(": ")[0].strip() for ln in lines[1:4]] == [urls[0], urls[1], urls[3]]
    assert not (tmp_path / "x").exists()


def test_unreachable_server_is_reported(tmp_path):
    with pytest.raises(DownloadError, match="127.0.0.1:9/f.gz: cannot connect"):
        download_file(["http://127.0.0.1:9/f.gz"], tmp_path / "f.gz", "0" * 32, progress=False)


# ---------------------------------------------------------------------------------------------
# File formats
# ---------------------------------------------------------------------------------------------


def _idx(magic: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    dims = b"".join(d.to_bytes(4, "big") for d in shape)
    return magic.to_bytes(4, "big") + dims + payload


def test_idx_parsing_validates_magic_and_size():
    images = _idx(2051, (2, 2, 3), bytes(range(12)))
    assert parse_idx(images, 2051).tolist() == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    with pytest.raises(DataFileError, match="magic number 2051, expected 2049"):
        parse_idx(images, 2049, "labels")
    with pytest.raises(DataFileError, match=r"shape \(2, 2, 3\).*28 bytes.*27 bytes"):
        parse_idx(images[:-1], 2051)
    with pytest.raises(DataFileError, match="truncated IDX header"):
        parse_idx(images[:9], 2051)


def _cifar_archive(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_cifar10_binary_layout():
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate([*(f"data_batch_{k}.bin" for k in range(1, 6)), "test_batch.bin"]):
        labels = np.array([i, 9 - i, 3], np.uint8)
        pixels = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        batches[name] = np.concatenate([labels[:, None], pixels], axis=1).tobytes()
    x, y, xt, yt = parse_cifar10_archive(_cifar_archive({"batches.meta.txt": b"", **batches}))
    assert x.shape == (15, 3, 32, 32) and xt.shape == (3, 3, 32, 32)
    assert y.tolist()[:6] == [0, 9, 3, 1, 8, 3] and yt.tolist() == [5, 4, 3]
    first = np.frombuffer(batches["data_batch_1.bin"], np.uint8)
    assert x[0, 0, 0, 0] == first[1] and x[0, 0, 0, 1] == first[2]  # red, row-major
    assert x[0, 1, 0, 0] == first[1 + 1024] and x[0, 2, 31, 31] == first[3072]  # green, blue
    with pytest.raises(DataFileError, match="test_batch.bin"):
        parse_cifar10_archive(_cifar_archive({k: v for k, v in batches.items() if "test" not in k}))
    with pytest.raises(DataFileError, match="3073-byte records"):
        parse_cifar10_archive(_cifar_archive({**batches, "data_batch_2.bin": b"\0" * 100}))
    with pytest.raises(DataFileError, match="not a readable tar.gz"):
        parse_cifar10_archive(b"not an archive")


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


def _csv(tmp_path: Path, text: str, newline: str = "\n", name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode())
    return path


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("header", [True, False])
def test_csv_line_endings_and_header_detection(tmp_path, newline, header):
    rows = "1.5,2,b\n-3,4e1,a\n\n5,6,b\n"
    path = _csv(tmp_path, ("x,y,label\n" if header else "") + rows, newline)
    t = read_csv(path)
    assert t.x.tolist() == [[1.5, 2.0], [-3.0, 40.0], [5.0, 6.0]] and t.x.dtype == np.float32
    assert t.y.tolist() == [1, 0, 1] and t.class_names == ("a", "b")
    assert t.feature_names == (("x", "y") if header else ("column 0", "column 1"))


def test_csv_target_by_name_index_and_default(tmp_path):
    path = _csv(tmp_path, "id,cls,f\n1,10,0.5\n2,2,0.25\n3,10,1\n4,9,2\n")
    by_name, by_index, by_negative = (read_csv(path, t) for t in ("cls", 1, -2))
    for t in (by_name, by_index, by_negative):
        assert t.class_names == ("2", "9", "10")  # numeric labels in numeric order
        assert t.y.tolist() == [2, 0, 2, 1] and t.x[:, 1].tolist() == [0.5, 0.25, 1.0, 2.0]
    default = read_csv(path)
    assert default.feature_names == ("id", "cls") and default.class_names == (
        "0.25",
        "0.5",
        "1",
        "2",
    )


def test_csv_bad_rows_are_listed_with_line_numbers(tmp_path):
    lines = ["a,b,y"] + [f"{i},{i},c{i % 2}" for i in range(30)]
    bad_lines = [3, 5, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26]  # 1-based physical lines
    for n in bad_lines:
        lines[n - 1] = {3: "1,,c0", 5: "x,2,c1", 6: "1,2,3,4", 8: "nan,1,c0"}.get(n, "oops,1,c0")
    path = _csv(tmp_path, "\n".join(lines) + "\n", "\r")
    with pytest.raises(DataFileError) as e:
        read_csv(path)
    msg = str(e.value)
    assert "13 row(s)" in msg and "... and 3 more" in msg
    assert "\n" not in msg  # one line, the rows separated by "; "
    assert [int(m) for m in re.findall(r"line (\d+):", msg)] == bad_lines[:10]
    assert (
        "line 3: b=''" in msg and "line 5: a='x'" in msg and "line 6: 4 values, expected 3" in msg
    )


def test_csv_missing_target_column_and_empty_label(tmp_path):
    path = _csv(tmp_path, "a,b,y\n1,2,u\n3,4,\n")
    with pytest.raises(
        DataFileError, match=r"no column 'label'; its columns are \['a', 'b', 'y'\]"
    ):
        read_csv(path, "label")
    with pytest.raises(DataFileError, match=r"out of range.*\[-3, 2\]"):
        read_csv(path, 3)
    with pytest.raises(DataFileError, match="line 3: y \\(the label\\) is empty"):
        read_csv(path)
    with pytest.raises(DataFileError, match="no header row"):
        read_csv(_csv(tmp_path, "1,2,0\n", name="n.csv"), "y")


def _id_table(tmp_path: Path, n: int = 200, classes: int = 4) -> Path:
    rng = np.random.default_rng(3)
    rows = [f"{i},{rng.normal():.6f},k{i % classes}" for i in range(n)]
    return _csv(tmp_path, "id,noise,kind\n" + "\n".join(rows) + "\n", name="ids.csv")


def test_csv_dataset_splits_partition_the_rows(tmp_path):
    path = _id_table(tmp_path)
    ds = load_dataset(DataConfig(f"csv:{path}", target="kind", standardize="none"), False)
    ids = [set(x[:, 0].astype(int).tolist()) for x in (ds.x_train, ds.x_val, ds.x_test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(range(200))
    assert (len(ids[2]), len(ids[1])) == (40, 16)  # 20% of 200; 10% of the remaining 160
    assert ds.class_names == ("k0", "k1", "k2", "k3") and ds.input_shape == (2,)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert np.array_equal(x[:, 0].astype(int) % 4, y)  # labels stay with their rows
    with pytest.raises(DataFileError, match="no file"):
        load_dataset(DataConfig(f"csv:{tmp_path / 'absent.csv'}"))


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def test_splits_are_seeded_and_stratified():
    a, b = (load_dataset(DataConfig("digits", seed=s, standardize="none")) for s in (4, 4))
    c = load_dataset(DataConfig("digits", seed=5, standardize="none"))
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("x_train", "x_val", "x_test"))
    assert not np.array_equal(a.y_test, c.y_test)
    total = np.bincount(np.concatenate([a.y_train, a.y_val, a.y_test]))
    rest = np.bincount(np.concatenate([a.y_train, a.y_val]))
    assert np.all(np.abs(np.bincount(a.y_test) - 0.2 * total) <= 1)
    assert np.all(np.abs(np.bincount(a.y_val) - 0.1 * rest) <= 1)


def test_stratified_split_partitions_and_explains_failures():
    y = np.repeat(np.arange(3), [10, 20, 30])
    kept, held = stratified_split(y, 0.5, seed=0)
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(60))
    assert np.bincount(y[held]).tolist() == [5, 10, 15]
    with pytest.raises(
        ValueError, match=r"validation split of 0.1 from 4 samples .*smallest: 1 samples"
    ):
        stratified_split(np.array([0, 0, 0, 1]), 0.1, seed=0, what="validation")


# ---------------------------------------------------------------------------------------------
# Standardization
# ---------------------------------------------------------------------------------------------


def test_feature_standardization_uses_train_statistics_only():
    raw = load_dataset(DataConfig("digits", seed=2, standardize="none"))
    ds = load_dataset(DataConfig("digits", seed=2))
    train = raw.x_train.astype(np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    constant = std == 0
    assert constant.any()  # digits has always-blank pixels: they must not divide by zero
    std[constant] = 1.0
    assert np.allclose(ds.standardization["mean"], mean, rtol=0, atol=1e-12)
    assert np.allclose(ds.standardization["std"], std, rtol=0, atol=1e-12)
    for split in ("x_train", "x_val", "x_test"):
        manual = (getattr(raw, split).astype(np.float64) - mean) / std
        assert np.allclose(getattr(ds, split), manual, rtol=0, atol=1e-5)
        assert np.isfinite(getattr(ds, split)).all()
    out = ds.x_train.astype(np.float64)
    assert np.abs(out.mean(axis=0)).max() < 1e-6
    assert np.abs(out.std(axis=0)[~constant] - 1).max() < 1e-5
    assert np.all(out[:, constant] == 0)
    assert abs(ds.x_val.mean()) > 1e-4  # val is not re-fitted: not exactly centered
    json.dumps(ds.standardization)


def test_feature_standardization_agrees_with_sklearn():
    ds = load_dataset(DataConfig("wine", standardize="none"))
    scaler = StandardScaler().fit(ds.x_train.astype(np.float64))
    stats = fit_standardization(ds.x_train, "feature")
    assert np.allclose(stats["mean"], scaler.mean_, rtol=1e-6) and np.allclose(
        stats["std"], scaler.scale_, rtol=1e-6
    )
    expected = scaler.transform(ds.x_test.astype(np.float64))
    assert np.allclose(apply_standardization(ds.x_test, stats), expected, atol=1e-4)


def test_global_and_none_standardization():
    raw = load_dataset(DataConfig("digits", standardize="none"))
    assert raw.standardization == {"mode": "none", "mean": 0.0, "std": 1.0}
    assert raw.x_train.min() == 0.0 and raw.x_train.max() == 1.0  # pixels 0..16 scaled by 1/16
    g = load_dataset(DataConfig("digits", standardize="global"))
    mean, std = raw.x_train.astype(np.float64).mean(), raw.x_train.astype(np.float64).std()
    assert g.standardization["mode"] == "global"
    assert g.standardization["mean"] == pytest.approx(mean, abs=1e-12)
    assert g.standardization["std"] == pytest.approx(std, abs=1e-12)
    assert np.allclose(g.x_test, (raw.x_test - mean) / std, atol=1e-5)
    assert abs(g.x_train.astype(np.float64).mean()) < 1e-6
    assert abs(g.x_train.astype(np.float64).std() - 1) < 1e-6
    assert fit_standardization(np.full((3, 2), 7.0), "global") == {
        "mode": "global",
        "mean": 7.0,
        "std": 1.0,
    }


def test_restandardize_gives_what_loading_in_that_mode_gives():
    from selfnorm.data import restandardize

    g = load_dataset(DataConfig("digits", standardize="global"))
    for mode in ("none", "feature"):
        direct = load_dataset(DataConfig("digits", standardize=mode))
        again = restandardize(g, mode)
        assert again.standardization["mode"] == mode
        for split in ("train", "val", "test"):
            assert np.allclose(getattr(again, f"x_{split}"), getattr(direct, f"x_{split}"),
                               atol=2e-6)  # fmt: skip
            assert np.array_equal(getattr(again, f"y_{split}"), getattr(direct, f"y_{split}"))
    assert restandardize(g, "global") is g
    assert g.standardization["mode"] == "global" and abs(float(g.x_train.mean())) < 1e-6
    with pytest.raises(ValueError, match="standardize mode 'pixel'"):
        restandardize(g, "pixel")


# ---------------------------------------------------------------------------------------------
# Configuration and registry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "imagenet"}, r"unknown dataset 'imagenet'; choose one of .*mnist.*csv:PATH"),
        ({"dataset": "csv:"}, "names no file"),
        ({"val_fraction": 0.0}, r"val_fraction=0.0 must be a fraction in \(0, 1\)"),
        ({"val_fraction": 1}, "val_fraction=1 must be"),
        ({"val_fraction": float("nan")}, "val_fraction=nan"),
        ({"val_fraction": True}, "val_fraction=True"),
        ({"test_fraction": -0.2}, "test_fraction=-0.2"),
        ({"standardize": "pixel"}, "standardize='pixel' is not one of"),
        ({"target": "y"}, "only for csv:PATH datasets"),
        ({"dataset": "csv:a.csv", "target": 1.5}, "column name"),
        ({"seed": -1}, r"outside \[0, 2\*\*32\)"),
        ({"seed": 1.0}, "seed=1.0 must be an integer"),
        ({"download": "no"}, "download='no' must be True or False"),
        ({"data_dir": ""}, "data_dir=''"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


def test_registry_names_and_mirrors_validation(tmp_path):
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "iris", "wine"} <= set(dataset_names())
    assert DataConfig("csv:data.csv", target=-1).target == -1
    with pytest.raises(ValueError, match="mirrors names 'digits'"):
        load_dataset(DataConfig("digits"), mirrors={"digits": ["http://127.0.0.1/"]})
    with pytest.raises(ValueError, match="non-empty list"):
        load_dataset(DataConfig("digits"), mirrors={"mnist": "http://127.0.0.1/"})


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFNORM_DATA", str(tmp_path))
    assert data_root() == tmp_path and data_root("/x") == Path("/x")
    monkeypatch.delenv("SELFNORM_DATA")
    assert data_root() == Path.home() / ".cache" / "selfnorm"


def test_dataset_checks_its_arrays():
    x, y = np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1])
    ok = Dataset("t", x, y, x, y, x, y, 2, ("a", "b"))
    assert ok.num_features == 3 and "train=4" in repr(ok)
    with pytest.raises(ValueError, match="float32 inputs"):
        Dataset("t", x.astype(np.float64), y, x, y, x, y, 2, ("a", "b"))
    with pytest.raises(ValueError, match="labels outside 0..1"):
        Dataset("t", x, y + 1, x, y, x, y, 2, ("a", "b"))
    with pytest.raises(ValueError, match="do not fit x_train"):
        Dataset("t", x, y, x[:, :2], y, x, y, 2, ("a", "b"))


# ---------------------------------------------------------------------------------------------
# SVHN: test-written .mat files through the real downloader
# ---------------------------------------------------------------------------------------------


def _svhn_mat(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A small file in SVHN's layout: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
    import scipy.io

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = np.resize(np.arange(1, 11, dtype=np.uint8), n)[:, None]  # every label, 10 included
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"X": x, "y": y})
    return buf.getvalue(), x, y


@pytest.fixture
def svhn_server(monkeypatch):
    import dataclasses

    from selfnorm.datasets import registry
    from selfnorm.datasets.download import RemoteFile

    train, x_tr, y_tr = _svhn_mat(200, 0)
    test, x_te, y_te = _svhn_mat(20, 1)
    files = {"train_32x32.mat": train, "test_32x32.mat": test}
    spec = dataclasses.replace(
        registry.DATASETS["svhn"],
        files=tuple(RemoteFile(n, hashlib.md5(b).hexdigest(), len(b)) for n, b in files.items()),
    )
    monkeypatch.setitem(registry.DATASETS, "svhn", spec)
    s = _Server(files)
    yield s, (x_tr, y_tr, x_te, y_te)
    s.close()


def test_svhn_downloads_checks_and_maps_labels_and_layout(svhn_server, tmp_path):
    server, (x_tr, y_tr, x_te, y_te) = svhn_server
    cfg = DataConfig("svhn", data_dir=str(tmp_path), standardize="none")
    ds = load_dataset(cfg, progress=False, mirrors={"svhn": [server.url + "ok"]})
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.class_names == tuple(str(i) for i in range(10))
    # the test split as stored: image k is X[:, :, :, k] as channels-first, label 10 -> digit 0
    pixels = np.rint(ds.x_test * 255.0).astype(np.uint8)  # the stored bytes, scaled by 1/255
    np.testing.assert_array_equal(pixels, x_te.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(ds.y_test, y_te[:, 0] % 10)
    assert 0 in ds.y_test and 10 not in ds.y_test
    assert sorted(p.name for p in (tmp_path / "svhn").iterdir()) == [
        "test_32x32.mat", "train_32x32.mat",
    ]  # fmt: skip
    before = len(server.requests)
    load_dataset(cfg, progress=False, mirrors={"svhn": [server.url + "ok"]})
    assert len(server.requests) == before  # cached


@pytest.mark.parametrize(("mode", "reason"), [("corrupt", "checksum mismatch"),
                                              ("truncate", "cut short")])  # fmt: skip
def test_svhn_bad_download_leaves_nothing(svhn_server, tmp_path, mode, reason):
    server, _ = svhn_server
    with pytest.raises(DownloadError) as e:
        load_dataset(DataConfig("svhn", data_dir=str(tmp_path)), False,
                     {"svhn": [server.url + mode]})  # fmt: skip
    assert reason in str(e.value) and "train_32x32.mat" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_svhn_file_format_errors_are_named():
    import scipy.io

    from selfnorm.datasets.formats import parse_svhn_mat

    with pytest.raises(DataFileError, match="not a readable MATLAB file"):
        parse_svhn_mat(b"garbage" * 10, "train_32x32.mat")
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [3]])})
    with pytest.raises(DataFileError, match=r"labels must be 1\.\.10"):
        parse_svhn_mat(buf.getvalue(), "t.mat")
