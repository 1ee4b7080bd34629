r"""The opt-in C++ implementation of :func:`~selfnorm.recording.reduce.activation_stats` and
:func:`~selfnorm.recording.reduce.weight_moments` for float32 CPU tensors.

``RecordConfig(backend="kernel")`` (``--record-backend kernel``) selects it; the default,
``torch``, never compiles anything. ``csrc/record_stats.cpp`` makes two vectorized passes per
activation tensor (the torch ops make about eight) and reads each weight once. It is compiled on
first use for the machine it runs on (``torch.utils.cpp_extension``: needs a C++ compiler and
ninja, ``pip install 'selfnorm[kernel]'``; ~20-50 s once) and cached by torch under
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``). Tensors it does not take
(float64, CUDA) go to the torch ops, which compute the same statistics (tests compare both).

Example:
    >>> available() in (True, False)  # whether this machine can build it
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import torch

from selfnorm.recording import reduce
from selfnorm.recording.reduce import N_STATS, Binning, ReduceBuffers

__all__ = [
    "SOURCE",
    "activation_stats",
    "available",
    "load",
    "require",
    "unavailable_reason",
    "weight_moments",
]

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
    """torch runs ``ninja`` from ``PATH``; the ``ninja`` package (the ``kernel`` extra) may sit in a
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


def available() -> bool:
    """Whether the kernel is built or can be built here (builds it on the first call)."""
    return load() is not None


def require() -> ModuleType:
    """The kernel, or ``RuntimeError`` saying why it cannot be built and what to do."""
    module = load()
    if module is None:
        raise RuntimeError(
            f"RecordConfig(backend='kernel') but the C++ kernel cannot be built here "
            f"({unavailable_reason()}); install a C++ compiler and `pip install "
            "'selfnorm[kernel]'`, or use backend='torch' (the default, same statistics)"
        )
    return module


def _fits(t: torch.Tensor) -> bool:
    return t.dtype == torch.float32 and t.device.type == "cpu" and t.numel() > 0


def activation_stats(
    tensors: Sequence[torch.Tensor],
    thresholds: Sequence[float],
    dead: Sequence[bool],
    binning: Binning,
    buffers: ReduceBuffers | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`selfnorm.recording.reduce.activation_stats`, in C++ for float32 CPU tensors."""
    module = require()
    n = len(tensors)
    stats = torch.empty((n, N_STATS), dtype=torch.float64)
    hist = torch.empty((n, binning.columns), dtype=torch.int64)
    meta = torch.empty((n, 2), dtype=torch.int64)
    mine = [i for i, t in enumerate(tensors) if _fits(t)]
    if mine:
        dense = [tensors[i].contiguous() for i in mine]
        module.activations_into(
            dense,
            [float(thresholds[i]) for i in mine],
            [bool(dead[i]) for i in mine],
            mine,
            stats,
            hist,
            meta,
            binning.scale,
            binning.shift,
        )
        # the kernel gives mean and variance; the contract is the sums (see reduce)
        rows = torch.tensor(mine)
        count = meta[rows, 0].double()
        stats[rows, 0] *= count
        stats[rows, 1] = (stats[rows, 1] * count).sqrt()
        uncounted = [i for i in mine if not dead[i]]
        stats[uncounted, 6] = 0.0  # the torch ops' convention: 0 where not counted
    taken = set(mine)
    rest = [i for i in range(n) if i not in taken]
    if rest:
        s, h = reduce.activation_stats(
            [tensors[i] for i in rest],
            [thresholds[i] for i in rest],
            [dead[i] for i in rest],
            binning,
            buffers,
        )
        stats[rest], hist[rest] = s.to("cpu", stats.dtype), h.cpu()
    return stats, hist


def weight_moments(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`selfnorm.recording.reduce.weight_moments`, in C++ where every matrix is float32 on
    the CPU (else the torch ops)."""
    if not weights or not all(_fits(w) for w in weights):
        return reduce.weight_moments(weights)
    out = torch.empty((len(weights), 4), dtype=torch.float64)
    require().weights_into([w.contiguous() for w in weights], out)
    return out
