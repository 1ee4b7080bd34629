r"""The fused CPU kernel behind :class:`~selfnorm.recording.ActivationRecorder`.

A record of a network reduces every activation tensor (sum, squared deviations from the mean,
min, max, zeros, saturated values, dead units, a signed histogram), every gradient w.r.t. an
activation's output (mean, variance) and every weight matrix (per-unit
:math:`\omega = \sum_i w_i` and :math:`\tau = \sum_i w_i^2`, summed over units with their
squares). With torch ops that is ~15 passes over each tensor and ~60 dispatched operations per
record, plus a Python call per gradient in the backward pass. ``csrc/record_stats.cpp`` makes
two vectorized passes per tensor, reduces each layer in its forward hook while the values are
in the cache (``Capture``: one call from Python per layer), and takes the gradients in C++
tensor hooks. It is compiled on first use for the machine it runs on
(``torch.utils.cpp_extension``: needs a C++ compiler and ninja) and cached by torch under
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); where it cannot be built, the
recorder uses torch ops, which compute the same statistics (tests compare both).

Example:
    >>> kernel = load()  # None where no compiler is available
    >>> kernel is None or callable(kernel.activations_into)
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

__all__ = ["SOURCE", "load", "unavailable_reason"]

SOURCE = Path(__file__).parent / "csrc" / "record_stats.cpp"
"""The kernel's C++ source, shipped with the package."""

_lock = threading.Lock()
_state: dict[str, ModuleType | str | None] = {}


def _machine_tag() -> str:
    """A short digest of the CPU's architecture and instruction-set flags: the kernel is built
    with ``-march=native``, so a home directory shared by different machines (a cluster) keeps
    one build per kind of CPU instead of loading one that another CPU cannot run."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        pass
    return hashlib.sha1(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]


def load() -> ModuleType | None:
    """The compiled kernel module, built on the first call of the process (~20 s once per
    machine, then loaded from torch's extension cache); ``None`` where it cannot be built
    (:func:`unavailable_reason` says why). Thread-safe; later calls return the same object.

    Example:
        >>> load() is load()
        True
    """
    with _lock:
        if "module" not in _state:
            _state["module"], _state["reason"] = _build()
        return _state["module"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """Why :func:`load` returned ``None`` (the compiler's or loader's message); ``None`` when
    the kernel is available.

    Example:
        >>> (load() is None) == (unavailable_reason() is not None)
        True
    """
    load()
    return _state["reason"]  # type: ignore[return-value]


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch runs ``ninja`` from ``PATH``; the ``ninja`` package (a dependency) may sit in a
    virtual environment that is not activated: put its folder first while building."""
    try:
        import ninja

        folder = ninja.BIN_DIR
    except (ImportError, AttributeError):
        yield
        return
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = folder + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _build() -> tuple[ModuleType | None, str | None]:
    if sys.platform == "win32":
        return None, "the fused kernel is built with GCC/Clang flags; not on Windows"
    try:
        from torch.utils import cpp_extension

        name = f"selfnorm_record_stats_{_machine_tag()}"
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
        # torch builds in ROOT/NAME or (newer versions) ROOT/pyXY_cpu/NAME
        if not any(Path(root).glob(f"{name}/*.so")) and not any(Path(root).glob(f"*/{name}/*.so")):
            print(
                "selfnorm: compiling the fused record-statistics kernel for this machine "
                "(once, ~20 s; cached under torch's extension directory)",
                file=sys.stderr,
                flush=True,
            )
        with warnings.catch_warnings(), _ninja_on_path():
            # e.g. a compiler-version notice from torch: not the user's concern here
            warnings.simplefilter("ignore")
            module = cpp_extension.load(
                name=name,
                sources=[str(SOURCE)],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
    except Exception as exc:  # no compiler, no ninja, a failed build: fall back to torch ops
        msg = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {msg[-1] if msg else ''}"
    return module, None
