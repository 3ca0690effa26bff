"""Progress bars for calls made with ``progress=``.

tqdm is optional (``pip install 'methodpool[progress]'``) and imported only when
a call asks for a bar.  ``tqdm.auto`` picks the terminal or the Jupyter widget.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("methodpool")

#: What ``progress=`` accepts: ``True``, a tqdm-like object with ``update(n)``,
#: or a dict of ``tqdm`` options.
ProgressSpec = bool | Mapping[str, Any] | Any | None


class Progress:
    """Advances a bar by completed items; closes it once, if it made it."""

    __slots__ = ("_bar", "_closed", "_lock", "_owned")

    def __init__(self, bar: Any, owned: bool) -> None:
        self._bar = bar
        self._owned = owned
        self._closed = False
        self._lock = threading.Lock()

    def advance(self, items: int) -> None:
        with self._lock:
            if not self._closed and items:
                self._call("update", items)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._owned:
                    self._call("close")
                elif callable(getattr(self._bar, "refresh", None)):
                    self._call("refresh")

    def _call(self, method: str, *args: Any) -> None:
        # Runs in the pool's result-handler thread: an exception there would
        # kill it, and every later call would hang.  Log it, as for callbacks,
        # and leave the bar alone from then on.
        try:
            getattr(self._bar, method)(*args)
        except Exception:
            self._closed = True
            logger.exception(
                "progress bar %r raised in %s(); it is no longer updated for this call, "
                "and the results are still delivered",
                self._bar,
                method,
            )


def progress_bar(spec: ProgressSpec, total: int | None, description: str) -> Progress | None:
    """The bar a call asked for with ``progress=spec``, or ``None``.

    Raises :class:`ImportError` (with the install command) if a bar must be
    made and tqdm is missing, :class:`TypeError` for anything else than the
    accepted forms.
    """
    if spec is None or spec is False:
        return None
    if spec is True or isinstance(spec, Mapping):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError(
                "progress=True needs tqdm, which is not installed: "
                "pip install 'methodpool[progress]' (or pip install tqdm)"
            ) from None
        options = {"total": total, "desc": description, **(spec if spec is not True else {})}
        return Progress(tqdm(**options), owned=True)
    if callable(getattr(spec, "update", None)):
        if total is not None and getattr(spec, "total", None) is None:
            spec.total = total
        return Progress(spec, owned=False)
    raise TypeError(
        f"progress= takes True, a dict of tqdm options or a tqdm-like object with "
        f"update(n); got {spec!r}"
    )
