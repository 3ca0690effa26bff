"""A worker's count of the task frames it has taken, in memory its parent shares.

The portable and Windows channels (:mod:`._channel`) learn from it which
frames a dead worker never took: the worker adds 1 right after reading a
frame, before running it (:func:`methodpool._worker.run_worker`), and the
parent reads it.  One :class:`TakenCount` per worker: an int64 in a
mapping of its own that nothing outside the two processes can reach, and
that is gone once both have let go of it, however they end:

* on POSIX, a file unlinked before anyone can open it by name (on Linux a
  ``memfd``, which never had one), mapped shared; a forked worker inherits
  the mapping, a spawned or forkserver one gets the descriptor with its
  other arguments, as its pipes travel (``DupFd``, in :mod:`methodpool._backend`);
* on Windows, a named mapping, which the system frees with the last handle.

Why not ``multiprocessing.sharedctypes.RawValue``, which does the same:
making and unpickling one registers its ctypes type with ``ForkingPickler``
(a ``c_long`` sent through a ``multiprocessing`` queue then fails), and
importing ``multiprocessing.heap`` registers its arenas: global state a
library must leave alone.

A worker imports this module only when its count arrives (under spawn and
forkserver: to unpickle it), so it stays as light as :mod:`._wire`.
"""

from __future__ import annotations

import mmap
import os
import sys
import tempfile
import uuid
from typing import Any

from .._backend import DupFd

_SIZE = 8  # one int64


class TakenCount:
    """An int64 shared with one worker (see the module docstring)."""

    __slots__ = ("_file", "_map", "_name", "view")

    def __init__(self) -> None:
        self._file: Any = None  # POSIX: what holds the descriptor a spawned worker gets
        self._name = ""  # Windows: the mapping's name
        if sys.platform == "win32":
            self._name = f"methodpool-taken-{os.getpid()}-{uuid.uuid4().hex}"
            self._attach(mmap.mmap(-1, _SIZE, tagname=self._name))
            return
        if hasattr(os, "memfd_create"):  # Linux
            fd = os.memfd_create("methodpool-taken", os.MFD_CLOEXEC)
        else:
            fd, path = tempfile.mkstemp(prefix="methodpool-taken-")
            os.unlink(path)
        self._file = os.fdopen(fd, "r+b", buffering=0)  # closes the descriptor when collected
        os.ftruncate(fd, _SIZE)
        self._attach(mmap.mmap(fd, _SIZE))

    def _attach(self, mapping: mmap.mmap) -> None:
        self._map = mapping
        # The worker adds 1 to view[0] per frame: through the memoryview
        # itself, a store costs a third of a method call that makes it.
        self.view = memoryview(mapping).cast("q")

    @property
    def value(self) -> int:
        """The frames counted so far."""
        return int(self.view[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled only to start a spawn or forkserver worker: the descriptor
        # is handed over as the pipes' are.
        if self._name:
            return _open_named, (self._name,)
        return _open_descriptor, (DupFd(self._file.fileno()),)

    def close(self) -> None:
        """Let go of the memory (the parent, once the worker is gone)."""
        self.view.release()
        self._map.close()
        if self._file is not None:
            self._file.close()


def _open_named(name: str) -> TakenCount:
    count = TakenCount.__new__(TakenCount)
    count._file, count._name = None, name
    count._attach(mmap.mmap(-1, _SIZE, tagname=name))  # type: ignore[call-arg]
    return count


def _open_descriptor(dupfd: Any) -> TakenCount:
    count = TakenCount.__new__(TakenCount)
    count._file, count._name = None, ""
    fd = dupfd.detach()
    try:
        count._attach(mmap.mmap(fd, _SIZE))
    finally:
        os.close(fd)  # the mapping keeps the memory
    return count
