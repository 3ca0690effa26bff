"""The transport: tasks to the workers and results back, one channel per worker.

* :mod:`._wire` -- what a frame is and how it is encoded, decoded and read
  (the only part a worker process imports);
* :mod:`._channel` -- one worker's pair of pipes behind a small interface
  (write frames, read frames, tell what a dead worker never took), on Linux
  by asking the kernel, elsewhere from a count the worker keeps;
* :mod:`._taken` -- a worker's count of the frames it took, in memory shared
  with its parent (the portable and Windows channels);
* :mod:`._platform` -- which channel this system gets and how the result
  thread waits on them, chosen once (``METHODPOOL_TRANSPORT`` overrides it);
* :mod:`._ledger` -- what is in flight where: each worker's tasks, deadlines,
  cancellations, dying workers;
* :mod:`._dispatcher` -- the policy (which worker gets a task, batching) and
  the two pool threads' entry points, ``put`` and ``get``.

The data flow through all of it is pictured once, in :mod:`methodpool._pool`
and ``docs/architecture.md``.
"""
