"""`ahead(iterable, depth)`: an iterable's items produced by a background thread, up to `depth` of them ahead.

    for images, labels in ahead(loader, depth=2):   # batch k+1 is being loaded while the loop works on batch k
        ...

Why: a loop of load -> compute -> write, one batch at a time, runs at the sum of the stages' times. The
loader's own host work (DALI's outputs copied out, the CPU path's torch resize, normalising) waits for the
model and the model for it. With the loading in a thread the loop runs at the slower of the two, as long as
both release the GIL while they work (torch's kernels, DALI's pipeline and a GPU's kernels do).

The producing thread iterates `iterable` alone (a generator is not thread-safe) and closes it when it ends
or the consumer stops early, so a loader's clean-up (DALI's pipeline reset) runs as it would in the loop.
An exception of the producer (a bad-sample stop, a decoding error) is raised in the consumer, as it is.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()
_POLL_S = 0.05  # how often a producer blocked on a full queue checks that the consumer still wants items


def ahead(iterable: Iterable[T], depth: int = 2) -> Iterator[T]:
    """`iterable`'s items in order; depth 0 iterates it in the caller's thread (no background thread)."""
    if depth < 1:
        yield from iterable
        return
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(iterable)
        try:
            for item in source:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer's thread
            put((_END, err))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="vaedist-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, err = items.get()
            if err is not None:
                raise err
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
