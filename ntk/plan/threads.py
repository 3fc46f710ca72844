"""Two bounded-queue threads: :func:`background` (iterate in a thread, some items ahead) and :class:`Writer` (run a
function on submitted items in a thread, in order). A failure in either re-raises in the consuming thread, and a
shared ``stop`` event ends both promptly. Used by the inference engine (``pipelines/engine.overlap``: reader /
model / writer) and by training (``train/corpus.Prefetcher``)."""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` on ``q``, waiting while it is full; False (not put) once ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class background:
    """Iterate ``items`` in a daemon thread, ``maxsize`` ahead; exceptions re-raise in the consumer. Setting ``stop``
    ends the thread (a consumer that leaves early must set it, or call :meth:`close`, which also waits for the
    thread: after it, ``items`` is no longer touched, e.g. a reader can be closed safely)."""

    def __init__(self, items: Iterable, maxsize: int, stop: threading.Event | None = None, name: str = "ntk-reader"):
        self._stop = stop if stop is not None else threading.Event()
        self._q: queue.Queue = queue.Queue(maxsize)
        self._done = False
        self._t = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._t.start()

    def _run(self, items: Iterable) -> None:
        try:
            for it in items:
                if not put(self._q, it, self._stop):
                    return
            put(self._q, _DONE, self._stop)
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            put(self._q, _Failure(e), self._stop)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        while not self._done:
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():  # the consumer side failed: stop reading
                    self._done = True
                continue
            if item is _DONE:
                self._done = True
            elif isinstance(item, _Failure):
                self._done = True
                raise item.exc
            else:
                return item
        raise StopIteration

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it (at most ``timeout`` seconds: a thread blocked reading a stream that
        never ends is left behind, a daemon)."""
        self._stop.set()
        self._t.join(timeout)
        self._done = True


class Writer:
    """Runs ``fn(item)`` for each submitted item in a thread, in order; a failure re-raises on submit/join."""

    def __init__(self, fn: Callable, maxsize: int, stop: threading.Event, name: str = "ntk-writer"):
        self._fn, self._stop = fn, stop
        self._q: queue.Queue = queue.Queue(maxsize)
        self._error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name=name, daemon=True)
        self._t.start()

    def _run(self):
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is None and not self._stop.is_set():
                try:
                    self._fn(item)
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    self._error = e
                    self._stop.set()

    def submit(self, item) -> None:
        self._check()
        put(self._q, item, self._stop)
        self._check()

    def join(self, check: bool = True) -> None:
        """Wait until every submitted item is written (after ``stop`` is set: until the queue is drained)."""
        self._q.put(_DONE)
        self._t.join()
        if check:
            self._check()

    def _check(self):
        if self._error is not None:
            raise self._error
