"""Newest-frame slot: drops counted, worker never sees a frame twice, close wakes waiters."""
from __future__ import annotations

import threading

import numpy as np

from vla_cache_ros.control.observation import LatestObservation


def test_newest_frame_and_drop_count() -> None:
    slot = LatestObservation()
    assert slot.take(timeout_s=0.0) is None
    assert slot.put(np.zeros(1), 1.0, 1.0) == 0
    assert slot.put(np.ones(1), 2.0, 2.0) == 1  # the first was never taken
    taken = slot.take(timeout_s=0.0)
    assert taken is not None and taken.stamp_s == 2.0 and taken.image[0] == 1.0
    assert slot.take(timeout_s=0.0) is None  # not handed out twice
    assert slot.put(np.zeros(1), 3.0, 3.0) == 0  # previous one was taken: no drop
    slot.clear()
    assert slot.take(timeout_s=0.0) is None


def test_take_waits_for_put_and_close_wakes() -> None:
    slot = LatestObservation()
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(slot.take(timeout_s=10.0)))
    worker.start()
    slot.put(np.zeros(1), 5.0, 5.0)
    worker.join(timeout=10.0)
    assert results and results[0].stamp_s == 5.0

    waiter = threading.Thread(target=lambda: results.append(slot.take(timeout_s=10.0)))
    waiter.start()
    slot.close()
    waiter.join(timeout=10.0)
    assert not waiter.is_alive() and results[-1] is None and slot.closed
