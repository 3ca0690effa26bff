"""DaskPool's client side: the ``multiprocessing.Pool`` API on a Dask cluster.

Data flow::

    caller thread                       cluster (scheduler, workers)       collector thread
    -------------                       ----------------------------       ----------------
    pool.map(f, xs)
      ship f: serialize it once per
       call (Shipper); the
       first call with these bytes
       submits a task holding them  --> "callable" task: its value is
                                         f's bytes, fetched once by each
                                         worker that needs them, and
                                         recomputed if its worker dies
      chunk xs (the stdlib's rule);
       encode each chunk (plain
       pickle, else the serializer);
       one task per chunk, pure=False -> run_chunk: load f (once per
                                         worker process, then cached),
                                         run the chunk, catch anything,
                                         encode (ok, value)  -- done -->  gather finished tasks
                                                                           in batches, decode,
    result.get()  <-------------------------------------------------------  result._set(...);
                                                                           callbacks run here
    pool.imap(f, it): a feeder thread per call reads ``it`` and keeps a
    bounded number of chunks in flight.

Results are the standard library's own classes (``ApplyResult``,
``MapResult``, ``IMapIterator``), fed by the collector thread as the stdlib's
result-handler thread feeds them, so ``get``, ``wait``, ``ready``,
``successful`` and timeouts behave exactly as with :class:`~methodpool.MethodPool`.
Checks, serializing the callable, chunking and callbacks are MethodPool's
own (:mod:`methodpool._calls`); arguments are encoded as MethodPool encodes
them, and outcomes by MethodPool's wire format (``encode_result`` in the
workers, :mod:`._tasks`; ``decode_result`` here) and ``portable_exception``,
so values and errors (original type, remote traceback in ``__cause__``) are
the same too.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import itertools
import multiprocessing.pool
import os
import pickle
import queue
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from multiprocessing.pool import CLOSE, INIT, RUN, TERMINATE
from multiprocessing.reduction import ForkingPickler
from typing import Any, Generic, TypeVar

try:
    import distributed
    from distributed.deploy.cluster import Cluster
    from distributed.scheduler import KilledWorker
except ImportError as exc:
    raise ImportError(
        "methodpool.DaskPool needs Dask's 'distributed' package, which is not installed: "
        "pip install 'methodpool[dask]'"
    ) from exc

from .._backend import ApplyResult, IMapIterator, IMapUnorderedIterator, MapResult, fail_pending
from .._calls import (
    InputFeed,
    Shipper,
    check_buffersize,
    check_chunksize,
    chunks,
    guarded,
    label,
    map_chunksize,
)
from .._errors import InitializerError, PoolTerminatedError, WorkerLostError, WorkerStartError
from .._serializers import AUTO, PoolPlaceholder, SupportsDumpsLoads, main_reference_guard
from .._shipping import encode
from .._startup import (
    check_main_importable,
    creation_site,
    explain_cluster_failure,
    refuse_pool_while_bootstrapping,
)
from .._stats import PoolCounters
from .._transport._wire import decode_result
from ._tasks import APPLY, MAP, STARMAP, InitializerPlugin, hold_callable, run_chunk

T = TypeVar("T")
R = TypeVar("R")

# Distinct callables whose "callable" task a pool keeps on the cluster, so
# that calls repeating a callable (apply_async in a loop) ship it once.
CALLABLES_KEPT = 8
# imap keeps at most this many chunks per worker thread in flight: one
# running, one waiting, so no worker idles between chunks.
IN_FLIGHT_PER_THREAD = 2
# imap over an input of unknown length sizes its chunks to about this much
# work each (dask's per-task overhead is ~1.5 ms), doubling at most per chunk.
CHUNK_SECONDS = 0.05
MAX_CHUNKSIZE = 4096


# -- the parent side ---------------------------------------------------------------


class _Task:
    """A submitted chunk: where its outcome goes."""

    __slots__ = ("feed", "future", "index", "items", "result", "what")

    def __init__(
        self, future: Any, result: Any, index: int, items: int, feed: _Feed | None, what: str
    ) -> None:
        self.future = future
        self.result = result
        self.index = index
        self.items = items
        self.feed = feed
        self.what = what


class _Feed:
    """Reads one ``imap`` call's input in a thread of its own, chunk by chunk.

    At most ``window`` chunks are in flight (submitted, not yet done) and,
    with ``buffersize``, at most that many ahead of the chunks the consumer
    has taken.  ``chunksize=None`` sizes chunks from the time items take.
    """

    def __init__(
        self,
        pool: DaskPool,
        submit: Callable[[list[Any], int, _Feed], int],
        result: Any,
        iterable: Iterable[Any],
        chunksize: int | None,
        window: int,
        buffersize: int | None,
    ) -> None:
        self._pool = pool
        self._submit = submit
        self._result = result
        self._chunksize = chunksize
        self._window = window
        self._input = InputFeed(self._chunks(iterable), buffersize)
        self._cond = threading.Condition()
        self._in_flight = 0
        self._stopped = False
        self._last_size = 1
        self._seconds = 0.0
        self._timed_items = 0

    def start(self) -> None:
        threading.Thread(target=self._run, name="methodpool-dask-feed", daemon=True).start()

    def _room(self) -> bool:
        room = self._input.room()
        return self._in_flight < self._window and (room is None or room > 0)

    def _next_size(self) -> int:
        if self._chunksize is not None:
            return self._chunksize
        if self._timed_items == 0:
            return 1
        per_item = self._seconds / self._timed_items
        wanted = int(CHUNK_SECONDS / per_item) if per_item > 0 else MAX_CHUNKSIZE
        self._last_size = max(1, min(wanted, 2 * self._last_size, MAX_CHUNKSIZE))
        return self._last_size

    def _chunks(self, iterable: Iterable[Any]) -> Iterator[list[Any]]:
        items = iter(iterable)
        while chunk := list(itertools.islice(items, self._next_size())):
            yield chunk

    def _run(self) -> None:
        index = 0
        try:
            while True:
                with self._cond:
                    while not self._stopped and not self._room():
                        self._cond.wait()
                    if self._stopped:
                        return
                taken = self._input.take(1)  # the input is read outside the lock
                if not taken:
                    break
                with self._cond:
                    self._in_flight += 1
                if not self._submit(taken[0], index, self):
                    self.chunk_done(0, 0.0)  # it failed at once, without going out
                index += 1
        except Exception as exc:
            # The input itself raised: that is the outcome at this index, and
            # the end of the input, as with the stdlib's imap.
            self._pool._post(functools.partial(self._result._set, index, (False, exc)))
            index += 1
        finally:
            self._pool._feed_ended(self)
        self._pool._post(functools.partial(self._result._set_length, index))

    def chunk_done(self, items: int, seconds: float) -> None:
        """A submitted chunk of ``items`` items ran for ``seconds`` (collector thread)."""
        with self._cond:
            self._in_flight -= 1
            if seconds > 0:
                self._seconds += seconds
                self._timed_items += items
            self._cond.notify()

    def chunk_consumed(self) -> None:
        """The consumer took a chunk's outcome (consumer's thread)."""
        if self._input.buffersize is not None:
            with self._cond:
                self._input.consumed += 1
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()


class DaskResultIterator(Generic[T]):
    """What :meth:`DaskPool.imap` and ``imap_unordered`` return.

    An iterator with the stdlib's ``next(timeout)`` (raising
    ``multiprocessing.TimeoutError``).  Tasks are chunks: a failed chunk
    raises its error, and the iteration then ends, as with the stdlib's
    chunked ``imap`` — unless every chunk holds one item (``chunksize=1``),
    when it goes on with the next item, as the stdlib's unchunked ``imap``.
    """

    def __init__(self, chunks: Any, feed: _Feed, per_item: bool) -> None:
        self._chunks = chunks
        self._feed = feed
        self._per_item = per_item
        self._buffer: collections.deque[T] = collections.deque()
        self._ended = False

    def __iter__(self) -> DaskResultIterator[T]:
        return self

    def next(self, timeout: float | None = None) -> T:
        """The next result; ``multiprocessing.TimeoutError`` if none arrives within ``timeout``."""
        while not self._buffer:
            if self._ended:
                raise StopIteration
            try:
                chunk = self._chunks.next(timeout)
            except (StopIteration, multiprocessing.TimeoutError):
                raise
            except Exception:
                self._feed.chunk_consumed()
                self._ended = not self._per_item
                raise
            self._feed.chunk_consumed()
            self._buffer.extend(chunk)
        return self._buffer.popleft()

    __next__ = next


class DaskPool:
    """The ``multiprocessing.Pool`` API, run on a Dask ``distributed`` cluster.

    ``DaskPool(processes, initializer, initargs)`` takes MethodPool's
    positional arguments, so swapping the class is enough; ``cluster=`` is the
    only new one:

    ``cluster=None`` (default)
        start a ``LocalCluster`` of ``processes`` (default: the CPU count)
        single-threaded worker processes on 127.0.0.1, without a dashboard;
        ``close()``/``join()`` and ``terminate()`` stop it.
    ``cluster="tcp://host:8786"``, a ``distributed.Client`` or a cluster object
        run on that cluster; closing the pool leaves it running (a ``Client``
        passed in stays open too).  ``processes`` must then be ``None``: the
        cluster has the workers it has.

    Methods: ``apply``, ``apply_async``, ``map``, ``map_async``, ``starmap``,
    ``starmap_async``, ``imap``, ``imap_unordered``, ``close``, ``join``,
    ``terminate``, and use as a context manager (leaving it terminates, as
    with the stdlib).  Any callable :class:`~methodpool.MethodPool` accepts
    works, with the same ``serializer`` choices; it is serialized once per call.
    Results and errors are MethodPool's: the task's own exception type, with
    the remote traceback text as its ``__cause__``; ``get(timeout)`` raises
    ``multiprocessing.TimeoutError``; callbacks run in this process, on the
    pool's collector thread, and one that raises is logged to the
    ``methodpool`` logger.

    ``map`` and ``starmap`` chunk by the stdlib's rule (about four chunks per
    worker thread) and ``imap`` too, unless given a ``chunksize``; over an
    input of unknown length, ``imap`` sizes chunks to ~50 ms of work each.
    ``imap`` keeps at most two chunks per worker thread in flight.

    A worker that dies while running a task: dask reruns the task on another
    worker, up to its ``distributed.scheduler.allowed-failures`` setting
    (default 3); after that the task fails with
    :class:`~methodpool.WorkerLostError` (its ``__cause__`` is dask's
    ``KilledWorker``).  Dask counts a death against every task running or
    queued on that worker, so on a small cluster the tasks sharing workers
    with one that kills them may fail the same way.

    Raises :class:`NotImplementedError` for ``maxtasksperchild``,
    :class:`~methodpool.InitializerError` if the initializer raises in a
    worker when the pool starts, :class:`ValueError` for an unknown
    serializer, a ``processes`` below 1 or given with ``cluster``.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        *,
        cluster: str | distributed.Client | Cluster | None = None,
        serializer: str | SupportsDumpsLoads = AUTO,
    ) -> None:
        self._state = INIT
        refuse_pool_while_bootstrapping()
        if maxtasksperchild is not None:
            raise NotImplementedError(
                "DaskPool does not support maxtasksperchild: dask workers are long-lived. "
                "To renew them, start workers with `dask worker --lifetime 1h "
                "--lifetime-restart`, or call pool.client.restart()"
            )
        if processes is not None:
            if not isinstance(processes, int):
                raise TypeError(
                    f"processes must be a number of worker processes, got {processes!r}; "
                    "pass a cluster's address as cluster=..."
                )
            if cluster is not None:
                raise ValueError(
                    "processes= sizes the local cluster DaskPool starts; with cluster= the "
                    "tasks run on that cluster's workers, however many it has"
                )
            if processes < 1:
                raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._counters = PoolCounters()
        self._shipper = Shipper(serializer, self._counters, by_reference=False)
        self._fallback = self._shipper.fallback
        # Dask workers never have the caller's __main__: with a fallback,
        # arguments that refer to it go by value.
        self._pickler: type[pickle.Pickler] = (
            main_reference_guard("spawn") if self._fallback else ForkingPickler
        )
        plugin = None
        if initializer is not None:
            shipped = self._shipper.ship_always(initializer)
            arguments = self._dump_arguments(tuple(initargs), "the initializer's arguments")
            plugin = InitializerPlugin((shipped.key, shipped.label, shipped.payload), arguments)

        self._lock = threading.Lock()
        self._cache: dict[int, Any] = {}  # job -> stdlib result object, as Pool._cache
        self._tasks: dict[Any, _Task] = {}  # dask key -> chunk task in flight
        self._feeds: set[_Feed] = set()
        self._callables: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._shutdown_lock = threading.Lock()
        self._shut_down_done = False

        self._local_cluster: Any = None
        self._owns_client = True
        self._plugin_name: str | None = None
        if cluster is None:
            self._processes = processes or os.cpu_count() or 1
            self._local_cluster = self._start_local_cluster(self._processes)
            cluster = self._local_cluster
        if isinstance(cluster, distributed.Client):
            self._client = cluster
            self._owns_client = False
        else:
            try:
                self._client = distributed.Client(cluster, set_as_default=False)
            except BaseException:
                if self._local_cluster is not None:
                    self._local_cluster.close()
                raise
        self._address = str(self._client.scheduler.address)
        if plugin is not None:
            self._plugin_name = f"methodpool-initializer-{uuid.uuid4().hex}"
            try:
                self._client.register_plugin(plugin, name=self._plugin_name)
            except Exception as exc:
                self._shut_down()
                raise InitializerError(
                    f"the initializer {plugin.parts[1]} raised in a worker: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        self._state = RUN
        self._collector = threading.Thread(
            target=self._collect, name="methodpool-dask-collector", daemon=True
        )
        self._collector.start()

    def _start_local_cluster(self, workers: int) -> Any:
        # Dask spawns its worker processes, which import the main module
        # first: a script without a main guard fails them all.
        site = creation_site()
        check_main_importable("spawn")
        try:
            return distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                # Without a dashboard the scheduler still serves HTTP (health,
                # metrics), on port 8787 unless told: take a free port instead,
                # so that a second cluster neither collides nor warns.
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            )
        except Exception as exc:
            raise WorkerStartError(explain_cluster_failure(site, exc)) from exc

    @property
    def client(self) -> distributed.Client:
        """The ``distributed.Client`` the pool submits through.

        One the pool made (``cluster=None`` or an address) closes with the pool.
        """
        return self._client

    @property
    def serializer(self) -> str:
        """The name of the serializer (or chain) this pool was built with."""
        return self._shipper.name

    def __repr__(self) -> str:
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} "
            f"cluster={self._address!r} serializer={self.serializer!r}>"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A pool cannot travel; a callable that refers to one (self.pool on a
        # bound method's instance) gets a placeholder, as with MethodPool.
        return (PoolPlaceholder, (repr(self),))

    def __enter__(self) -> DaskPool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    # -- submitting --------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _threads(self) -> int:
        if self._local_cluster is not None:
            return self._processes
        threads: int = sum(self._client.nthreads().values())
        return max(1, threads)

    def _dump_arguments(self, obj: Any, what: str) -> bytes:
        try:
            buf = io.BytesIO()
            self._pickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
            return buf.getvalue()
        except Exception:
            if not self._fallback:
                raise  # serializer="pickle": plain pickle's own error, as the stdlib
            return pickle.dumps(encode(obj, self._fallback, what, "args"), pickle.HIGHEST_PROTOCOL)

    def _ship(self, func: Any) -> Any:
        """The future of ``func``'s "callable" task (serialized now; submitted if new)."""
        shipped = self._shipper.ship_always(func)
        with self._lock:
            future = self._callables.get(shipped.key)
            if future is not None and future.status in ("pending", "finished"):
                self._callables.move_to_end(shipped.key)
                return future
            parts = (shipped.key, shipped.label, shipped.payload, self._fallback)
            future = self._client.submit(
                hold_callable, parts, key=f"methodpool-callable-{uuid.uuid4().hex}", pure=False
            )
            self._callables[shipped.key] = future
            while len(self._callables) > CALLABLES_KEPT:
                self._callables.popitem(last=False)
        return future

    def _submit(
        self,
        call: str,
        callable_future: Any,
        mode: str,
        result: Any,
        work: list[tuple[int, Any, int]],
        feed: _Feed | None = None,
    ) -> int:
        """Submit ``(index, data, items)`` tasks; returns how many went to the cluster.

        A task whose arguments cannot be serialized fails at once, without
        being submitted, as in the stdlib.
        """
        if self._state == TERMINATE:
            return 0  # an imap feeder that has not seen terminate() yet
        indexes: list[int] = []
        encoded: list[bytes] = []
        items: list[int] = []
        for index, data, count in work:
            try:
                encoded.append(self._dump_arguments(data, f"the arguments of task {index}"))
            except Exception as exc:
                self._post(functools.partial(result._set, index, (False, exc)))
                continue
            indexes.append(index)
            items.append(count)
        if not encoded:
            return 0
        futures = self._client.map(
            run_chunk,
            encoded,
            indexes,
            parts=callable_future,
            mode=mode,
            key=f"methodpool-{mode}",
            pure=False,
        )
        with self._lock:
            for future, index, count in zip(futures, indexes, items, strict=True):
                what = f"task {index} of {call}"
                self._tasks[future.key] = _Task(future, result, index, count, feed, what)
            self._counters.frames_written += len(futures)  # tasks, for DaskPool
        for future in futures:
            future.add_done_callback(self._inbox.put)
        return len(futures)

    def _post(self, action: Callable[[], object]) -> None:
        """Run ``action`` on the collector thread, where every result is set."""
        self._inbox.put(action)

    def _feed_ended(self, feed: _Feed) -> None:
        with self._lock:
            self._feeds.discard(feed)

    # -- calls ---------------------------------------------------------------------------

    def apply(
        self, func: Callable[..., R], args: Iterable[Any] = (), kwds: Mapping[str, Any] = {}
    ) -> R:
        """``func(*args, **kwds)`` on a worker; its result, or its exception raised here."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callable[[R], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> multiprocessing.pool.ApplyResult[R]:
        """Like :meth:`multiprocessing.pool.Pool.apply_async`: a stdlib ``ApplyResult``."""
        self._check_running()
        callable_future = self._ship(func)
        result: multiprocessing.pool.ApplyResult[R] = ApplyResult(
            self, guarded(callback, "callback"), guarded(error_callback, "error_callback")
        )
        call = f"apply_async({label(func)})"
        self._submit(call, callable_future, APPLY, result, [(0, (args, kwds), 1)])
        return result

    def _map_async(
        self,
        method: str,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        mode: str,
        chunksize: int | None,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> Any:
        self._check_running()
        check_chunksize(chunksize)
        callable_future = self._ship(func)
        items = iterable if isinstance(iterable, Sized) else list(iterable)
        length = len(items)
        if chunksize is None:
            chunksize = map_chunksize(length, self._threads())
        if length == 0:
            chunksize = 0
        result = MapResult(
            self,
            chunksize,
            length,
            guarded(callback, "callback"),
            guarded(error_callback, "error_callback"),
        )
        if length:
            work = [
                (index, chunk, len(chunk)) for index, chunk in enumerate(chunks(items, chunksize))
            ]
            self._submit(f"{method}({label(func)})", callable_future, mode, result, work)
        return result

    def map(
        self, func: Callable[[T], R], iterable: Iterable[T], chunksize: int | None = None
    ) -> list[R]:
        """``[func(x) for x in iterable]``, run in chunks on the workers."""
        result: multiprocessing.pool.MapResult[R] = self._map_async(
            "map", func, iterable, MAP, chunksize, None, None
        )
        return result.get()

    def map_async(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> multiprocessing.pool.MapResult[R]:
        """Like :meth:`multiprocessing.pool.Pool.map_async`: a stdlib ``MapResult``."""
        result: multiprocessing.pool.MapResult[R] = self._map_async(
            "map_async", func, iterable, MAP, chunksize, callback, error_callback
        )
        return result

    def starmap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[R]:
        """``[func(*args) for args in iterable]``, run in chunks on the workers."""
        result: multiprocessing.pool.MapResult[R] = self._map_async(
            "starmap", func, iterable, STARMAP, chunksize, None, None
        )
        return result.get()

    def starmap_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> multiprocessing.pool.MapResult[R]:
        """Like :meth:`multiprocessing.pool.Pool.starmap_async`: a stdlib ``MapResult``."""
        result: multiprocessing.pool.MapResult[R] = self._map_async(
            "starmap_async", func, iterable, STARMAP, chunksize, callback, error_callback
        )
        return result

    def imap(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        *,
        buffersize: int | None = None,
    ) -> DaskResultIterator[R]:
        """Results of ``func`` over ``iterable``, in order, as they arrive.

        ``chunksize=None``: the stdlib's map rule for an input with a length,
        else chunks of ~50 ms of work.  The input is read in a thread of the
        pool, at most two chunks per worker thread ahead of the chunks done;
        ``buffersize=N`` also keeps it at most N chunks ahead of the results
        consumed (bounded memory for an endless input), as in MethodPool.
        """
        return self._imap("imap", IMapIterator, func, iterable, chunksize, buffersize)

    def imap_unordered(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        *,
        buffersize: int | None = None,
    ) -> DaskResultIterator[R]:
        """Like :meth:`imap`, in the order chunks finish."""
        return self._imap(
            "imap_unordered", IMapUnorderedIterator, func, iterable, chunksize, buffersize
        )

    def _imap(
        self,
        method: str,
        iterator_class: Any,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        buffersize: int | None,
    ) -> DaskResultIterator[Any]:
        self._check_running()
        check_chunksize(chunksize)
        check_buffersize(buffersize)
        callable_future = self._ship(func)
        threads = self._threads()
        if chunksize is None and isinstance(iterable, Sized):
            chunksize = max(1, map_chunksize(len(iterable), threads))
        results = iterator_class(self)
        call = f"{method}({label(func)})"

        def submit(chunk: list[Any], index: int, feed: _Feed) -> int:
            return self._submit(
                call, callable_future, MAP, results, [(index, chunk, len(chunk))], feed
            )

        feed = _Feed(
            self, submit, results, iterable, chunksize, IN_FLIGHT_PER_THREAD * threads, buffersize
        )
        with self._lock:
            self._feeds.add(feed)
        feed.start()
        return DaskResultIterator(results, feed, per_item=chunksize == 1)

    # -- the collector thread -------------------------------------------------------------

    def _collect(self) -> None:
        while True:
            batch = [self._inbox.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._inbox.get_nowait())
            if self._state == TERMINATE:
                return
            finished = []
            for item in batch:
                if isinstance(item, distributed.Future):
                    finished.append(item)
                elif item is not None:
                    item()  # a local outcome: _set or _set_length
            if finished:
                self._deliver(finished)
            if self._state == TERMINATE:
                return
            if self._state == CLOSE and not self._cache:
                self._shut_down()
                return

    def _deliver(self, futures: list[Any]) -> None:
        with self._lock:
            tasks = [self._tasks.pop(future.key, None) for future in futures]
        done = [t.future for t in tasks if t is not None and t.future.status == "finished"]
        values: dict[Any, tuple[float, bytes]] = {}
        if done:
            # One round trip for the batch; if that fails, each task alone below.
            try:
                values = dict(
                    zip([future.key for future in done], self._client.gather(done), strict=True)
                )
            except BaseException:
                values = {}
        for task in tasks:
            if task is None or self._state == TERMINATE:
                continue
            try:
                key = task.future.key
                seconds, data = values[key] if key in values else task.future.result()
                outcome = decode_result(data)[2]
            except BaseException as exc:  # dask's own failure: lost worker, cancelled, ...
                seconds, outcome = 0.0, (False, self._task_failure(task, exc))
            task.result._set(task.index, outcome)
            if task.feed is not None:
                task.feed.chunk_done(task.items, seconds)

    @staticmethod
    def _task_failure(task: _Task, exc: BaseException) -> BaseException:
        if isinstance(exc, KilledWorker):
            lost = WorkerLostError(
                f"the worker process running {task.what} died, and so did every worker "
                f"dask retried it on: {exc}"
            )
            lost.__cause__ = exc
            return lost
        return exc

    # -- ending --------------------------------------------------------------------------

    def close(self) -> None:
        """Accept no more calls; once the pending ones are done, stop a local cluster."""
        if self._state == RUN:
            self._state = CLOSE
            self._inbox.put(None)

    def terminate(self) -> None:
        """Stop now: cancel pending tasks, fail their results, stop a local cluster.

        Pending ``get()`` calls and iterators raise
        :class:`~methodpool.PoolTerminatedError`.  A cluster the pool was given
        keeps running, and so do tasks already running on it: dask cannot stop
        a running task (their results are dropped).
        """
        if self._state == INIT:
            return
        self._state = TERMINATE
        with self._lock:
            feeds = list(self._feeds)
            futures = [task.future for task in self._tasks.values()]
            self._tasks.clear()
        for feed in feeds:
            feed.stop()
        if futures:
            with contextlib.suppress(Exception):
                self._client.cancel(futures)
        self._inbox.put(None)
        if threading.current_thread() is not self._collector:
            self._collector.join()
        fail_pending(self._cache, PoolTerminatedError("the pool was terminated"))
        self._shut_down()

    def join(self) -> None:
        """Wait until a closed pool has finished its work (and stopped its local cluster)."""
        if self._state in (INIT, RUN):
            raise ValueError("Pool is still running")
        if threading.current_thread() is not self._collector:
            self._collector.join()

    def _shut_down(self) -> None:
        with self._shutdown_lock:
            if self._shut_down_done:
                return
            self._shut_down_done = True
        with self._lock:
            self._callables.clear()
        if self._local_cluster is None and self._plugin_name is not None:
            # The cluster outlives the pool: new workers must not run the
            # initializer.  (What it did in running workers stays done.)
            with contextlib.suppress(Exception):
                self._client.unregister_worker_plugin(self._plugin_name)
        if self._owns_client:
            self._client.close()
        if self._local_cluster is not None:
            self._local_cluster.close()
