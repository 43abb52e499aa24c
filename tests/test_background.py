"""vaedist.background.ahead: the items in order, produced in a thread while the consumer works on the previous one
(a slow producer and a slow consumer take the slower one's time, not the sum), errors raised in the consumer,
and the source closed when the consumer stops early."""
from __future__ import annotations

import threading
import time

import pytest

from vaedist.background import ahead

STEP_S = 0.05


def slow_items(count: int, log: list | None = None):
    try:
        for i in range(count):
            time.sleep(STEP_S)  # a loader's batch: no CPU needed (sleeping), like DALI's threads or a GPU
            yield i
    finally:
        if log is not None:
            log.append(("closed", threading.current_thread().name))


def consume(items, work_s: float) -> list:
    got = []
    for item in items:
        time.sleep(work_s)  # the model's batch
        got.append(item)
    return got


def test_items_come_in_order_from_another_thread():
    threads = []

    def source():
        for i in range(50):
            threads.append(threading.current_thread())
            yield i

    assert list(ahead(source(), depth=3)) == list(range(50))
    assert threading.current_thread() not in threads
    assert list(ahead(source(), depth=0)) == list(range(50))  # depth 0: in the caller's thread
    assert threads[-1] is threading.current_thread()


def test_loading_overlaps_the_consumers_work():
    count = 12
    began = time.perf_counter()
    assert consume(ahead(slow_items(count), depth=2), work_s=STEP_S) == list(range(count))
    overlapped = time.perf_counter() - began
    began = time.perf_counter()
    consume(ahead(slow_items(count), depth=0), work_s=STEP_S)
    serial = time.perf_counter() - began
    # one after the other: 2 * 12 * 50 ms = 1.2 s; overlapped: 13 * 50 ms = 0.65 s (sleeps: a loaded CI machine too)
    assert serial >= 2 * count * STEP_S
    assert overlapped < 1.5 * count * STEP_S, (overlapped, serial)


def test_an_error_of_the_source_is_raised_in_the_consumer():
    def broken():
        yield 1
        raise KeyError("shard val-000003.tar")

    with pytest.raises(KeyError, match="val-000003"):
        list(ahead(broken()))


def test_a_consumer_that_stops_early_closes_the_source_in_its_thread():
    log: list = []
    items = ahead(slow_items(100, log), depth=2)
    for item in items:
        if item == 3:
            break
    items.close()  # what `with closing(ahead(...))` does on leaving the block, by an exception or not
    assert log and log[0][0] == "closed" and log[0][1] == "vaedist-ahead"
    assert not any(t.name == "vaedist-ahead" for t in threading.enumerate())
