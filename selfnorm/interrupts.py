"""A defined outcome for Ctrl-C and SIGTERM: finish the current step, save, say how to resume.

:func:`graceful_stop` installs handlers for SIGINT and SIGTERM while training: the first signal
only sets a flag that the training loop checks before each optimizer step (it then writes a
checkpoint of exactly where it stopped, mid-epoch included, and raises :class:`Interrupted`);
a second signal aborts at once with ``KeyboardInterrupt``, which every durable write survives
(the last checkpoint stays resumable). Outside the main thread it installs nothing, and a
signal the process inherited as ignored (a script's background job) stays ignored.

Example:
    >>> with graceful_stop() as stop:
    ...     stop.requested
    False
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "StopFlag", "graceful_stop"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal after saving its state; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopFlag:
    """Set by the first signal; ``bool(flag)`` and ``flag()`` tell whether a stop was asked."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __call__(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum


_ACTIVE: list[StopFlag] = []


def current_stop() -> StopFlag | None:
    """The flag of the innermost :func:`graceful_stop` of the main thread, if any (None in
    other threads)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def graceful_stop(
    announce: bool = True, message: str = "stopping after this step and saving"
) -> Iterator[StopFlag]:
    """Handle SIGINT/SIGTERM as described in the module docstring, for the ``with`` body.

    Only the main thread can install signal handlers: elsewhere the flag is never set (and
    the thread is not registered for :func:`current_stop`). Nested in the main thread, the
    inner call shares the outer one's flag.

    Args:
        announce: print one line to stderr at the first signal.
        message: what that line says will happen.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    if _ACTIVE:
        _ACTIVE.append(_ACTIVE[-1])
        try:
            yield _ACTIVE[-1]
        finally:
            _ACTIVE.pop()
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}

    def handler(signum, frame):  # noqa: ARG001 - the signal module's signature
        if flag.requested:  # the second signal: stop now
            for s, h in previous.items():
                signal.signal(s, h)
            raise KeyboardInterrupt
        flag.request(signum)
        if announce:
            print(
                f"\n{signal.Signals(signum).name}: {message} (press Ctrl-C again to abort at once)",
                file=sys.stderr,
                flush=True,
            )

    for s in _SIGNALS:
        if previous[s] is not signal.SIG_IGN:  # ignored from the start (a background job of a
            signal.signal(s, handler)  # script, nohup-style): it stays ignored, as by convention
    _ACTIVE.append(flag)
    try:
        yield flag
    finally:
        _ACTIVE.pop()
        for s, h in previous.items():
            signal.signal(s, h)
