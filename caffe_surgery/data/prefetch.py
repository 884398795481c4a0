"""Run a batch iterator ahead of its consumer on a background thread."""

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Yield ``items`` in order while a thread produces up to ``depth`` of them ahead.

    An exception in the producer is raised in the consumer; closing the returned
    generator (or dropping it after a ``break``) stops and joins the thread.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    worker = threading.Thread(target=_produce, args=(items, slots, stop),
                              name="caffe-surgery-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        worker.join()


def _produce(items: Iterable, slots: queue.Queue, stop: threading.Event) -> None:
    iterator = iter(items)
    try:
        for item in iterator:
            if not _put(slots, (_ITEM, item), stop):
                return
        _put(slots, (_END, None), stop)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        _put(slots, (_ERROR, exc), stop)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _put(slots: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    """Put ``entry`` unless the consumer has gone; return whether it was put."""
    while not stop.is_set():
        try:
            slots.put(entry, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False
