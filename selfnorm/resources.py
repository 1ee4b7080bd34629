"""Will it fit? The memory of the machine, checked before a large allocation is attempted.

A model or an input that cannot fit is a user error with the sizes named (exit code 2), not an
allocator's traceback after minutes of swapping.

Example:
    >>> check_fits(1024, "a tiny tensor", "nothing to fix", "cpu")
    >>> try:
    ...     check_fits(2**80, "the model", "choose a smaller --width", "cpu")
    ... except ValueError as exc:
    ...     print(str(exc).split(",")[0])
    the model needs 1.13e+15 GB
"""

from __future__ import annotations

import os

import torch

__all__ = ["available_memory", "check_fits", "mlp_training_bytes"]


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes of memory on ``device``: the physical memory for the CPU, the GPU's total for
    CUDA; None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[1])
        except (RuntimeError, AssertionError):  # pragma: no cover - no usable GPU
            return None
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def check_fits(nbytes: float, what: str, fix: str, device: str | torch.device = "cpu") -> None:
    """Raise ``ValueError`` naming ``what``, both sizes and the ``fix`` when ``nbytes`` exceed
    the memory of ``device``."""
    total = available_memory(device)
    if total is not None and nbytes > total:
        raise ValueError(
            f"{what} needs {nbytes / 2**30:.3g} GB, more than the {total / 2**30:.3g} GB of "
            f"memory on {torch.device(device).type}; {fix}"
        )


def mlp_training_bytes(widths: list[int], in_features: int, out_features: int) -> int:
    """Float32 bytes to train an MLP with Adam: weights, gradients and two moment buffers.

    .. math:: 16 \\sum_l (n_{l-1} + 1)\\, n_l

    Example:
        >>> mlp_training_bytes([512], 784, 10)
        6512800
    """
    sizes = [in_features, *widths, out_features]
    params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return 16 * params
