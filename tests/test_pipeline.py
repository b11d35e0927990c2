"""The whole-dataset pipeline: decoding ahead and encoding behind the network keep the order,
stay bounded, and hand errors over where they happened."""

import threading
import time

import pytest

from bpr.errors import BprInputError
from bpr.io.pipeline import map_behind, prefetch


def test_prefetch_yields_every_item_in_order_from_another_thread():
    threads = set()

    def items():
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(prefetch(items(), depth=3)) == list(range(50))
    assert threads == {"bpr-prefetch"}


def test_prefetch_runs_at_most_depth_items_ahead():
    produced = []

    def items():
        for i in range(100):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)  # ample time for a producer that would run ahead unbounded
    assert len(produced) <= 1 + 2 + 1  # the consumed one, the queue, one blocked in put
    stream.close()
    time.sleep(0.3)
    assert len(produced) <= 5  # a closed consumer stops the producer


def test_an_error_arrives_at_the_position_it_happened():
    def items():
        yield "a"
        yield "b"
        raise BprInputError("image 3 cannot be read")

    stream = prefetch(items())
    assert [next(stream), next(stream)] == ["a", "b"]
    with pytest.raises(BprInputError, match="image 3 cannot be read"):
        next(stream)


def test_map_behind_keeps_the_order_and_bounds_what_waits():
    started = []

    def slow_square(x):
        started.append(x)
        time.sleep(0.01 * (x % 3))  # out-of-order finishing times would show up as disorder
        return x * x

    fed = []

    def items():
        for i in range(20):
            fed.append(i)
            yield i

    out = []
    for value in map_behind(slow_square, items(), depth=2):
        out.append(value)
        assert len(fed) - len(out) <= 3  # never more than depth + 1 items in flight
    assert out == [i * i for i in range(20)]


def test_map_behind_raises_the_workers_error():
    def boom(x):
        if x == 2:
            raise ValueError("cannot encode 2")
        return x

    with pytest.raises(ValueError, match="cannot encode 2"):
        list(map_behind(boom, range(5)))
