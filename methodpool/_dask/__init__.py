"""DaskPool: the ``multiprocessing.Pool`` API on a Dask ``distributed`` cluster.

:mod:`._pool` is the client side (the pool, its collector thread, ``imap``
feeders); :mod:`._tasks` is what runs in Dask's workers.  Importing this
package imports ``distributed``; :mod:`methodpool` does so only when
``methodpool.DaskPool`` is first used.
"""

from ._pool import DaskPool

__all__ = ["DaskPool"]
