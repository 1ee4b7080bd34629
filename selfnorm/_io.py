"""Durable, atomic file writes: a reader never sees a half-written file; a crash, a kill -9 or
a power loss leaves either the old or the new version.

Every write goes to a temporary file in the same folder, is flushed and ``fsync``-ed, renamed
over the target (``os.replace``), and then the folder itself is ``fsync``-ed so the rename is on
disk too (without that, a power loss can undo the rename on ext4 or XFS).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | os.PathLike) -> None:
    """``fsync`` a folder, so that the files created or renamed in it survive a power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def make_dirs(directory: str | os.PathLike) -> list[Path]:
    """``mkdir -p`` whose new folders are durable (each parent ``fsync``-ed); returns the
    folders it created, outermost first."""
    directory = Path(directory)
    missing = []
    p = directory
    while not p.exists():
        missing.append(p)
        p = p.parent
    directory.mkdir(parents=True, exist_ok=True)
    for d in reversed(missing):
        fsync_dir(d.parent)
    return missing[::-1]


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, fsync: bool = True, keep: str | os.PathLike | None = None
) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    Args:
        fsync: ``False`` skips both fsyncs (survives a killed process, not a power loss); only
            for files that can be rebuilt.
        keep: a path the previous version of ``path`` is renamed to once the new one is
            complete on disk (a checkpoint keeps its predecessor): at every moment at least one
            complete version exists under ``path`` or ``keep``.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if keep is not None and path.exists():
            _keep_previous(path, Path(keep))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def _keep_previous(path: Path, keep: Path) -> None:
    """Make ``keep`` a copy of ``path`` without a moment when ``path`` is missing: a hard
    link renamed over ``keep`` (a rename of ``path`` itself where links are not supported)."""
    link = keep.with_name(f".{keep.name}.link.tmp")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
    except OSError:
        os.replace(path, keep)
        return
    os.replace(link, keep)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object) -> Path:
    """Atomically write ``obj`` as indented JSON with a trailing newline."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
