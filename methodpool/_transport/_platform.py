"""The platform seam: which channel a worker gets, and how the result thread waits.

One :class:`Transport` is chosen once, at import, for the whole process:

========== ========================= ================================ ==================
name       channel                   the result thread waits with     default on
========== ========================= ================================ ==================
linux      :class:`LinuxChannel`     ``selectors.DefaultSelector``    Linux
portable   :class:`PortableChannel`  ``selectors.DefaultSelector``    other POSIX: macOS
windows    :class:`WindowsChannel`   :class:`ConnectionSelector`      Windows
========== ========================= ================================ ==================

(the channels are :mod:`._channel`'s).  ``METHODPOOL_TRANSPORT`` names
another: ``portable`` runs macOS's transport on Linux, ``windows`` runs
Windows's on any system (its ``Connection`` methods and ``wait`` work
everywhere); ``linux`` only where the kernel gives its two answers.  The
test suite runs whole under each on Linux (``nox -s tests_portable
tests_windows``).  ``selectors`` is the faster way to wait where it can:
``connection.wait`` builds its wait set anew on every call, and on Windows
before Python 3.13 takes at most 63 objects at once (a pool of more than 61
workers is then waited on in groups, the ones past the first group looked at
every few milliseconds).
"""

from __future__ import annotations

import os
import selectors
import sys
import time
import types
from collections.abc import Callable, Mapping
from multiprocessing.connection import wait as _wait
from typing import Any, NamedTuple

from ._channel import (
    Channel,
    WorkerEnds,
    open_linux_channel,
    open_portable_channel,
    open_windows_channel,
)

ENVIRONMENT_VARIABLE = "METHODPOOL_TRANSPORT"


# multiprocessing.connection.wait on Windows before Python 3.13 waits on at
# most 63 objects (one WaitForMultipleObjects call); 3.13 batches them.
_WAIT_MAX = 63 if sys.platform == "win32" and sys.version_info < (3, 13) else None
# How often objects beyond the first _WAIT_MAX are looked at while waiting.
_GROUP_POLL = 0.005


class ConnectionSelector(selectors.BaseSelector):
    """A selector (for reading) on ``multiprocessing.connection.wait``, which
    takes Windows pipe handles, and anything ``selectors`` takes elsewhere.

    The dispatcher uses a selector's API whichever it has, so that the fast
    path (``selectors.DefaultSelector``) costs nothing more for this one.
    """

    def __init__(self, group_size: int | None = _WAIT_MAX) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}
        self._group_size = group_size

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if events != selectors.EVENT_READ:
            raise ValueError(f"{type(self).__name__} waits for reading only, not events={events}")
        if fileobj in self._keys:
            raise KeyError(f"{fileobj!r} is already registered")
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = self._keys[fileobj] = selectors.SelectorKey(fileobj, fd, events, data)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        waitables = list(self._keys)
        size = self._group_size
        if size is None or len(waitables) <= size:
            ready = _wait(waitables, timeout)
        else:
            ready = _wait_in_groups(waitables, size, timeout)
        return [(self._keys[waitable], selectors.EVENT_READ) for waitable in ready]

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return types.MappingProxyType(self._keys)


def _wait_in_groups(waitables: list[Any], size: int, timeout: float | None) -> list[Any]:
    # More objects than one wait takes: look at every group, then wait on the
    # first for a moment, until one is ready or the time is up.
    groups = [waitables[start : start + size] for start in range(0, len(waitables), size)]
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ready = [found for group in groups for found in _wait(group, 0)]
        left = None if deadline is None else deadline - time.monotonic()
        if ready or (left is not None and left <= 0):
            return ready
        _wait(groups[0], _GROUP_POLL if left is None else min(_GROUP_POLL, left))


class Transport(NamedTuple):
    """One way to reach the workers (see the module docstring)."""

    name: str
    open_channel: Callable[[], tuple[Channel, WorkerEnds]]
    """A new channel (the parent's end) and the worker's ends of it."""
    new_selector: Callable[[], selectors.BaseSelector]
    """What the result thread waits on its channels with."""


TRANSPORTS = {
    "linux": Transport("linux", open_linux_channel, selectors.DefaultSelector),
    "portable": Transport("portable", open_portable_channel, selectors.DefaultSelector),
    "windows": Transport("windows", open_windows_channel, ConnectionSelector),
}


def available() -> list[str]:
    """The transports this system can run, its default first."""
    if sys.platform == "win32":
        return ["windows"]
    try:
        import fcntl
    except ImportError:
        return ["portable", "windows"]
    # F_GETPIPE_SZ: Linux 2.6.35; Python has named it since 3.10.  FIONREAD
    # answers for a pipe's writing end on Linux alone.
    if sys.platform.startswith("linux") and hasattr(fcntl, "F_GETPIPE_SZ"):
        return ["linux", "portable", "windows"]
    return ["portable", "windows"]


def choose(requested: str | None) -> Transport:
    """The transport named ``requested`` (empty or ``None``: this system's default).

    Raises :class:`ValueError` for a name this system cannot run.
    """
    names = available()
    if not requested:
        return TRANSPORTS[names[0]]
    if requested not in names:
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE}={requested!r} is not a transport this system can run: "
            f"choose one of {', '.join(map(repr, names))}, or leave it unset for "
            f"{names[0]!r}"
        )
    return TRANSPORTS[requested]


TRANSPORT = choose(os.environ.get(ENVIRONMENT_VARIABLE))
