"""Downloads with checksums, and the local cache: find a verified copy of each file, else download
it atomically (temporary file, size and MD5 checked, then ``os.replace``)."""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from selfnorm.datasets.formats import DataFileError

__all__ = [
    "DATA_ENV",
    "DEFAULT_ROOT",
    "DOWNLOAD_TIMEOUT_S",
    "DownloadError",
    "RemoteFile",
    "data_root",
    "download_file",
    "fetch_files",
    "read_verified",
]

DEFAULT_ROOT = "~/.cache/selfnorm"
"""Cache root when neither ``data_dir`` nor ``$SELFNORM_DATA`` is set."""
DATA_ENV = "SELFNORM_DATA"
"""Environment variable naming the cache root."""
DOWNLOAD_TIMEOUT_S = 60.0
"""Seconds a connection may stay silent before a download attempt fails."""
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """Every URL for a file failed; the message names each URL, why, and how to place the file."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name, MD5 checksum and size.

    ``raw_md5`` is the MD5 of the decompressed content of a ``.gz`` file: when set, the file is
    also accepted uncompressed (``name`` without ``.gz``) or re-compressed, and readers get the
    decompressed bytes.
    """

    name: str
    md5: str
    size: int | None = None
    raw_md5: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """File names accepted on disk, in order of preference."""
        return (self.name, self.name.removesuffix(".gz")) if self.raw_md5 else (self.name,)


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``data_dir``, else ``$SELFNORM_DATA``, else ``~/.cache/selfnorm``.

    Example:
        >>> data_root("/tmp/data")
        PosixPath('/tmp/data')
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get(DATA_ENV) or DEFAULT_ROOT).expanduser()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike,
    md5: str,
    progress: bool = True,
    *,
    size: int | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download a file from the first URL that delivers it intact, atomically.

    Each attempt streams into a temporary file next to ``dest``, checks the byte count against
    the announced ``Content-Length`` (and ``size``) and the MD5 checksum, and only then renames it
    to ``dest``. On any failure the temporary file is removed and the next URL is tried, so a
    partial or corrupt download never appears at ``dest``. A ``dest`` that already has the right
    checksum is returned without touching the network.

    Args:
        urls: full URLs of the file, tried in order.
        dest: where the file goes.
        md5: its published MD5 checksum (hex).
        progress: show a tqdm progress bar on stderr. Default: True.
        size: its size in bytes, if known. Default: None.
        timeout: seconds a connection may stay silent. Default: 60.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: every URL failed; the message names each URL with its failure and how
            to place the file by hand.
    """
    dest = Path(dest)
    if dest.is_file() and _md5(dest.read_bytes()) == md5:
        return dest
    created = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _download_once(url, dest, md5, size, progress, timeout)
            return dest
        except (OSError, ValueError, HTTPException) as e:
            failures.append(f"  {url}: {_reason(e)}")
    if created:  # leave no empty folder behind
        try:
            dest.parent.rmdir()
        except OSError:
            pass
    tried = "\n".join(failures) or "  (no URL given)"
    raise DownloadError(
        f"could not download {dest.name}; tried:\n{tried}\n"
        f"Nothing was saved. To install it by hand, get {dest.name} (md5 {md5}) and put it in "
        f"{dest.parent}/"
    )


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"cannot connect ({e.reason})"
    return f"{type(e).__name__}: {e}" if not isinstance(e, DataFileError) else str(e)


def _download_once(
    url: str, dest: Path, md5: str, size: int | None, progress: bool, timeout: float
) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # a shared cache: readable like any downloaded file
        with os.fdopen(fd, "wb") as out:
            digest, got, announced = _stream(url, out, size, progress, timeout, dest.name)
            out.flush()
            os.fsync(out.fileno())
        if announced is not None and got != announced:
            raise DataFileError(f"transfer cut short: got {got} of {announced} bytes")
        if size is not None and got != size:
            raise DataFileError(f"got {got} bytes, expected {size}")
        if digest != md5:
            raise DataFileError(f"checksum mismatch: md5 {digest}, expected {md5}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stream(url, out, size, progress, timeout, label) -> tuple[str, int, int | None]:
    """Copy the body of ``url`` into ``out``; returns (md5, bytes received, Content-Length)."""
    request = urllib.request.Request(url, headers={"User-Agent": "selfnorm (python urllib)"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()  # it holds the connection
        raise
    with response:
        header = response.headers.get("Content-Length")
        announced = int(header) if header and header.isdigit() else None
        if size is not None and announced is not None and announced != size:
            raise DataFileError(f"the server announces {announced} bytes, expected {size}")
        digest, got = hashlib.md5(usedforsecurity=False), 0
        bar = tqdm(
            total=announced,
            desc=label,
            unit="B",
            unit_scale=True,
            file=sys.stderr,
            disable=not progress,
            leave=False,
        )
        with bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    return digest.hexdigest(), got, announced


def read_verified(path: str | os.PathLike, remote: RemoteFile) -> bytes:
    """The content of a local copy of ``remote``, checked against its published MD5.

    A file with ``raw_md5`` is returned decompressed; it may be the original ``.gz``, an
    uncompressed copy, or a re-compressed ``.gz`` whose content has the published ``raw_md5``.

    Raises:
        DataFileError: the checksum does not match (the message says to delete the file).
    """
    path = Path(path)
    data = path.read_bytes()
    if _md5(data) == remote.md5:
        return gzip.decompress(data) if remote.raw_md5 else data
    if remote.raw_md5:
        try:
            raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        except (OSError, EOFError):  # a damaged .gz: reported below like any other mismatch
            raw = b""
        if _md5(raw) == remote.raw_md5:
            return raw
    expected = f"md5 {remote.md5}" + (f" (or {remote.raw_md5} uncompressed)" * bool(remote.raw_md5))
    raise DataFileError(
        f"{path} does not have the published checksum {expected}: it is corrupt or a different "
        "file; delete or replace it"
    )


def fetch_files(
    dataset: str,
    files: Sequence[RemoteFile],
    folders: Sequence[Path],
    cache: Path,
    urls: Sequence[str],
    download: bool,
    progress: bool = True,
) -> dict[str, bytes]:
    """Find each file in ``folders`` (in order), else download it into ``cache``.

    Args:
        dataset: the dataset's name, for messages.
        files: the files it needs.
        folders: where to look first, in order (``cache`` among them).
        cache: where downloads go.
        urls: base URLs; a file's URL is base + name.
        download: False: missing files are an error instead of a download.
        progress: progress bars on stderr.

    Returns:
        ``{file name: verified content}`` (see :func:`read_verified`).

    Raises:
        FileNotFoundError: a file is missing and ``download`` is False.
        DownloadError: a file is missing and no URL delivered it.
        DataFileError: a local copy has the wrong checksum.
    """
    contents = {}
    for remote in files:
        found = next((f / n for f in folders for n in remote.names if (f / n).is_file()), None)
        if found is None and not download:
            raise FileNotFoundError(
                f"{dataset}: {remote.name} is not in {', '.join(map(str, folders))} and "
                f"download=False. {_placement_hint(dataset, files, cache)}"
            )
        if found is None:
            try:
                found = download_file(
                    [u.rstrip("/") + "/" + remote.name for u in urls],
                    cache / remote.name,
                    remote.md5,
                    progress,
                    size=remote.size,
                )
            except DownloadError as e:
                raise DownloadError(f"{e}\n{_placement_hint(dataset, files, cache)}") from None
        contents[remote.name] = read_verified(found, remote)
    return contents


def _placement_hint(dataset: str, files: Sequence[RemoteFile], cache: Path) -> str:
    names = ", ".join(r.name for r in files)
    raw = " (or their uncompressed versions)" if any(r.raw_md5 for r in files) else ""
    return f"Dataset {dataset!r} needs {names}{raw} in {cache}/ or in a folder passed as data_dir."
