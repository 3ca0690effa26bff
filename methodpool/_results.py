"""The result objects MethodPool's methods return.

Each is the stdlib's own class (``ApplyResult``, ``MapResult``,
``IMapIterator``, ``IMapUnorderedIterator``), so ``get``, ``wait``, ``ready``,
``successful`` and ``next(timeout)`` behave exactly as in
``multiprocessing.pool``, with additions:

* ``await result`` and ``async for item in iterator`` wait without blocking the
  event loop: the pool's result-handler thread, which delivers every outcome
  (``_set``), wakes the waiting coroutines with ``loop.call_soon_threadsafe``;
* a progress bar (``progress=``) advances by the items each outcome completes;
* :meth:`TaskResult.cancel`, also called when a coroutine awaiting the
  result is cancelled;
* chunked ``imap`` returns the iterator itself (flattening chunks), not a
  generator, so it keeps ``next(timeout)`` and async iteration.

What a result needs of the pool that made it is a :class:`ResultHost`: the
pool's job table, a way to cancel a job, a way to queue more tasks.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import threading
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._backend import ApplyResult, IMapIterator, IMapUnorderedIterator, MapResult, init_iterator
from ._calls import InputFeed
from ._progress import Progress

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")


class ResultHost:
    """What result objects need of their pool (and all they may touch).

    ``_cache`` is the pool's job table, where the stdlib's result classes
    register; ``cancel(job, error)`` fails a job now; ``queue(tasks,
    set_length)`` hands more tasks to the pool's task handler.
    """

    __slots__ = ("_cache", "cancel", "queue")

    def __init__(
        self,
        cache: Any,
        cancel: Callable[[int, BaseException], None],
        queue: Callable[[Iterable[Any], Callable[[int], None] | None], None],
    ) -> None:
        self._cache = cache
        self.cancel = cancel
        self.queue = queue


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Observed:
    """Wakes coroutines waiting on this result; drives its progress bar."""

    def _observe(self, progress: Progress | None) -> None:
        self._progress = progress
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()

    def _waiter(self) -> asyncio.Future[None]:
        import asyncio  # only coroutines call this; workers need not import asyncio

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._waiters_lock:
            self._waiters.append((loop, future))
        return future

    def _advance(self, items: int) -> None:
        # Before the stdlib's _set makes the outcome visible: once get()
        # returns, the bar shows it.
        if self._progress is not None:
            self._progress.advance(items)

    def _end_progress(self) -> None:
        # Before the outcome that completes the call is visible too: get(),
        # map() or the end of an iteration return only once the bar is closed
        # (else, in a loop, one call's bar would end after the next one's began).
        if self._progress is not None:
            self._progress.close()

    def _delivered(self, complete: bool) -> None:
        if self._progress is not None and complete:
            self._progress.close()
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_settle, future)


class _Awaitable(_Observed, Generic[T]):
    if TYPE_CHECKING:  # provided by the stdlib result class mixed in

        def ready(self) -> bool: ...

        def get(self, timeout: float | None = None) -> T: ...

    def __await__(self) -> Generator[Any, None, T]:
        """Wait for the result without blocking the event loop; raise as ``get()``."""
        while not self.ready():
            future = self._waiter()
            if not self.ready():
                yield from self._await_cancellable(future)
        return self.get(0)

    def _await_cancellable(self, future: asyncio.Future[None]) -> Generator[Any, None, None]:
        # The awaiting coroutine cancelled (asyncio.wait_for timing out, say):
        # cancel the task too, as asyncio.wrap_future does for a future.
        import asyncio

        try:
            yield from future.__await__()
        except asyncio.CancelledError:
            self._awaiter_cancelled()
            raise

    def _awaiter_cancelled(self) -> None:
        """A coroutine awaiting this result was cancelled (a map's tasks go on)."""


class TaskResult(_Awaitable[T], ApplyResult):  # type: ignore[misc]
    """What :meth:`MethodPool.apply_async` returns: an awaitable, cancellable ``ApplyResult``.

    Cancelling a coroutine that awaits it (``asyncio.wait_for`` timing out, say)
    cancels the task, as :func:`asyncio.wrap_future` does for a future.
    """

    def __init__(
        self,
        host: ResultHost,
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        progress: Progress | None,
    ) -> None:
        self._observe(progress)
        self._host = host
        ApplyResult.__init__(self, host, callback, error_callback)

    def cancel(self) -> bool:
        """Stop the task; ``get()`` then raises :class:`concurrent.futures.CancelledError`.

        A task still waiting in the pool never runs; a running one has its
        worker killed and replaced.  (A task already queued in a worker behind
        another may still run; its result is dropped.)  Returns ``False``,
        changing nothing, if the result was already there.
        """
        if self.ready():
            return False
        self._host.cancel(self._job, CancelledError(f"task of job {self._job} cancelled"))
        return True

    def _awaiter_cancelled(self) -> None:
        self.cancel()

    def _set(self, i: int, obj: tuple[bool, Any]) -> None:
        # After a cancel, the task's own outcome may still arrive: dropped.
        if not self.ready():
            self._advance(1)
            self._end_progress()
            ApplyResult._set(self, i, obj)
            self._delivered(complete=True)


class ListResult(_Awaitable[list[T]], MapResult):  # type: ignore[misc]
    """What ``map_async`` and ``starmap_async`` return: an awaitable ``MapResult``."""

    def __init__(
        self,
        host: ResultHost,
        chunksize: int,
        length: int,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        progress: Progress | None,
    ) -> None:
        self._observe(progress)
        self._items = length
        MapResult.__init__(self, host, chunksize, length, callback, error_callback=error_callback)
        if length == 0 and progress is not None:
            progress.close()

    def _set(self, i: int, obj: tuple[bool, Any]) -> None:
        ok, value = obj
        self._advance(len(value) if ok else min(self._chunksize, self._items - i * self._chunksize))
        if self._number_left == 1:  # this outcome completes the call
            self._end_progress()
        MapResult._set(self, i, obj)
        self._delivered(complete=self.ready())


class ResultIterator(_Observed, Generic[T]):
    """What :meth:`MethodPool.imap` and ``imap_unordered`` return.

    An iterator like the stdlib's (``next(timeout)`` included), also for
    chunked calls, and an async iterator.
    """

    _base: type[Any]
    if TYPE_CHECKING:  # provided by the stdlib iterator class mixed in
        _job: int
        _index: int
        _length: int | None

    def _start(self, host: ResultHost, chunksize: int, progress: Progress | None) -> None:
        self._observe(progress)
        self._host = host
        self._chunksize = chunksize
        self._chunk: collections.deque[T] = collections.deque()
        self._feed: InputFeed | None = None
        self._ended_by_error = False
        init_iterator(self._base, self, host)

    def feed(self, tasks: Iterable[Any], buffersize: int) -> None:
        """Queue ``buffersize`` of ``tasks`` now, then one more per task result taken.

        This is ``buffersize``: the consumer's own thread reads the input, at
        its own pace.  Once the tasks run out, the iterator learns its length.
        """
        self._feed = InputFeed(tasks, buffersize)
        self._top_up(buffersize)

    def _top_up(self, count: int) -> None:
        feed = self._feed
        if feed is None or feed.exhausted or self._length is not None:
            return
        batch = feed.take(count)
        if batch:
            self._host.queue(batch, None)
        if feed.exhausted:
            self._set_length(feed.read)

    def release_input(self) -> None:
        """Hand the input not yet read to the task handler (``close()``: the job must end).

        An iterator its consumer stopped reading would otherwise keep the pool
        from ever finishing; this makes it behave as the stdlib's ``imap``,
        which reads its whole input.
        """
        feed = self._feed
        if feed is None or feed.exhausted:
            return
        fed = feed.read

        def set_length(length: int) -> None:
            self._set_length(max(length, fed))

        self._host.queue(feed.rest(), set_length)

    def stop_feeding(self) -> None:
        """Read no more input (the pool was terminated)."""
        if self._feed is not None:
            self._feed.rest()

    def _complete(self) -> bool:
        return self._index == self._length

    def _set(self, i: int, obj: tuple[bool, Any]) -> None:
        ok, value = obj
        self._advance(1 if self._chunksize == 1 else (len(value) if ok else self._chunksize))
        self._base._set(self, i, obj)
        self._delivered(complete=self._complete())

    def _set_length(self, length: int) -> None:
        self._base._set_length(self, length)
        self._delivered(complete=self._complete())

    def __iter__(self) -> ResultIterator[T]:
        return self

    def next(self, timeout: float | None = None) -> T:
        """The next result; ``multiprocessing.TimeoutError`` if none arrives in ``timeout``."""
        if self._chunksize == 1:
            consumed = False
            try:
                item = self._base.next(self, timeout)
                consumed = True
            except StopIteration:
                self._end_progress()  # the result thread may not have closed it yet
                raise
            except multiprocessing.TimeoutError:
                raise
            except Exception:
                consumed = True  # a failed item is taken too: read one more
                raise
            finally:
                if consumed:
                    self._top_up(1)
            return item  # type: ignore[no-any-return]
        # The stdlib's chunked imap is a generator, which ends once it has
        # raised: after a failed chunk, so does this.
        if self._ended_by_error:
            raise StopIteration
        while not self._chunk:
            try:
                chunk = self._base.next(self, timeout)
            except StopIteration:
                self._end_progress()
                raise
            except multiprocessing.TimeoutError:
                raise
            except Exception:
                self._ended_by_error = True
                raise
            self._top_up(1)
            self._chunk.extend(chunk)
        return self._chunk.popleft()

    __next__ = next

    def __aiter__(self) -> ResultIterator[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            future = self._waiter()
            try:
                return self.next(0)
            except StopIteration:
                raise StopAsyncIteration from None
            except multiprocessing.TimeoutError:
                await future


class OrderedResults(ResultIterator[T], IMapIterator):  # type: ignore[misc]
    _base = IMapIterator

    def __init__(self, host: ResultHost, chunksize: int, progress: Progress | None) -> None:
        self._start(host, chunksize, progress)


class UnorderedResults(ResultIterator[T], IMapUnorderedIterator):  # type: ignore[misc]
    _base = IMapUnorderedIterator

    def __init__(self, host: ResultHost, chunksize: int, progress: Progress | None) -> None:
        self._start(host, chunksize, progress)
