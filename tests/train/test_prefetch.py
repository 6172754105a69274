"""train/prefetch.py: order kept, work ahead bounded, errors raised where they happened, the thread stopped."""

from __future__ import annotations

import threading
import time

import pytest

from train.prefetch import prefetch


def test_items_come_in_order_and_prepared():
    assert list(prefetch(iter(range(20)), depth=3, prepare=lambda x: x * 10)) == [x * 10 for x in range(20)]


def test_the_producer_runs_ahead_by_at_most_depth_items():
    produced = []

    def items():
        for number in range(100):
            produced.append(number)
            yield number

    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 2 + 1  # the one taken, two queued, one waiting to be queued
    stream.close()


def test_an_error_of_the_producer_is_raised_at_its_item():
    def items():
        yield 1
        yield 2
        raise ValueError("image 3 cannot be read")

    stream = prefetch(items())
    assert [next(stream), next(stream)] == [1, 2]
    with pytest.raises(ValueError, match="image 3"):
        next(stream)


def test_closing_the_stream_stops_the_thread():
    def endless():
        number = 0
        while True:
            yield number
            number += 1

    before = threading.active_count()
    stream = prefetch(endless(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert threading.active_count() == before
