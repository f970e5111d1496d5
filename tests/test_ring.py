"""RingBuffer: wraparound, the running counter, overrun detection, mono mixing, arrival stamps, no allocation."""

import threading
import tracemalloc

import numpy as np
import pytest

from streamtag.stream.ring import Overrun, RingBuffer


def ramp(start, n):
    return np.arange(start, start + n, dtype=np.float32)


def test_counter_and_wraparound():
    ring = RingBuffer(10, 32000)
    ring.write(ramp(0, 7))
    ring.write(ramp(7, 7))  # wraps: slots 7..9 then 0..3
    assert ring.total == 14
    assert ring.oldest() == 4
    np.testing.assert_array_equal(ring.read(4, 14), ramp(4, 10))
    np.testing.assert_array_equal(ring.read(9, 12), ramp(9, 3))
    for _ in range(5):  # many laps: the counter keeps counting, reads stay addressed by absolute sample
        ring.write(ramp(ring.total, 3))
    np.testing.assert_array_equal(ring.read(ring.total - 10, ring.total), ramp(ring.total - 10, 10))
    assert ring.overruns == 0


def test_reading_lost_samples_is_an_overrun_and_counted():
    ring = RingBuffer(10, 32000)
    ring.write(ramp(0, 25))
    with pytest.raises(Overrun):
        ring.read(14, 20)
    with pytest.raises(Overrun):
        ring.read(0, 25)  # more than the capacity
    assert ring.overruns == 2
    np.testing.assert_array_equal(ring.read(15, 25), ramp(15, 10))


def test_reading_the_future_is_a_bug():
    ring = RingBuffer(10, 32000)
    ring.write(ramp(0, 5))
    with pytest.raises(ValueError):
        ring.read(2, 6)


def test_block_larger_than_capacity_keeps_the_newest_samples():
    ring = RingBuffer(8, 32000)
    ring.write(ramp(0, 3))
    ring.write(ramp(3, 20))
    assert ring.total == 23
    np.testing.assert_array_equal(ring.read(15, 23), ramp(15, 8))


def test_multichannel_blocks_are_mixed_to_mono():
    ring = RingBuffer(16, 32000)
    stereo = np.stack([ramp(0, 12), -ramp(0, 12) + 2.0], axis=1)  # mean is 1.0 everywhere
    ring.write(stereo[:9])
    ring.write(stereo[9:])
    ring.write(stereo[:6])  # wraps
    np.testing.assert_allclose(ring.read(2, 18), np.ones(16, np.float32))
    ring.write(ramp(0, 4)[:, None])  # [frames, 1]
    np.testing.assert_array_equal(ring.read(18, 22), ramp(0, 4))


def test_write_does_not_allocate_sample_arrays():
    """The audio callback's path: mixing 4096 stereo frames must not create a temporary mono array (16 KiB)."""
    ring = RingBuffer(32000, 32000)
    block = np.random.default_rng(0).standard_normal((4096, 2)).astype(np.float32)
    ring.write(block)  # warm up numpy's ufunc machinery
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(50):
            ring.write(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < 4096, f"write allocated {peak - before} bytes at peak"


def test_arrival_stamps_follow_the_writes():
    ring = RingBuffer(100, 32000)
    ring.write(ramp(0, 10), arrival=1.0)
    ring.write(ramp(10, 10), arrival=2.0)
    ring.write(ramp(20, 5), arrival=3.0)
    assert ring.arrival_time(0) == 1.0
    assert ring.arrival_time(9) == 1.0
    assert ring.arrival_time(10) == 2.0
    assert ring.arrival_time(24) == 3.0
    assert ring.arrival_time(3) == 1.0  # going back is allowed
    assert ring.arrival_time(25) is None  # not written yet


def test_wait_for_wakes_when_the_producer_reaches_the_count():
    ring = RingBuffer(1000, 1000)
    assert not ring.wait_for(10, timeout=0.01)

    def produce():
        for i in range(20):
            ring.write(ramp(i * 5, 5))

    thread = threading.Thread(target=produce)
    thread.start()
    assert ring.wait_for(100, timeout=30)
    thread.join()
    assert ring.total == 100
