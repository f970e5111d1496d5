"""A fixed-size, single-producer / single-consumer ring of mono float32 samples, addressed by a running counter.

Why this shape: the producer is a PortAudio callback (a real-time thread that must never wait), the consumer is the
inference thread. So there is no lock at all: the producer copies a block in and only *then* publishes the new
running total (`total`); the consumer reads any range `[start, stop)` of the stream by absolute sample number and
checks afterwards that the producer has not lapped it. Samples older than `capacity` are gone: asking for them is an
*overrun*, counted, never silent.

Each write also stamps when its last sample arrived (a small preallocated table), so the consumer can tell how long
ago a window's last sample came in: the live delay the dashboard shows.
"""

from __future__ import annotations

import time

import numpy as np


class Overrun(Exception):
    """The consumer asked for samples the producer has already overwritten."""


class RingBuffer:
    """`capacity` samples of mono float32; `total` counts every sample ever written.

    `write` mixes a `[frames]` or `[frames, channels]` block to mono straight into the buffer (no allocation, so it
    is safe in an audio callback). `read(start, stop)` returns samples by absolute index; `wait_for(count)` lets the
    consumer sleep until the stream has reached `count` samples. `consumer_position` is where the consumer still
    needs data from: producers that may wait (file replay at full speed) use it for backpressure, the microphone
    callback ignores it.
    """

    STAMPS = 4096  # arrival stamps kept: at ~10 ms callbacks that is ~40 s, longer than any sane backlog

    def __init__(self, capacity: int, sample_rate: int):
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self.sample_rate = int(sample_rate)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._total = 0  # published after each copy: the consumer never sees a count whose samples are not there
        self._stamp_end = np.zeros(self.STAMPS, dtype=np.int64)
        self._stamp_time = np.zeros(self.STAMPS, dtype=np.float64)
        self._stamps = 0
        self._stamp_cursor = 0  # consumer-side search position in the stamp table
        self.overruns = 0
        self.consumer_position = 0

    # ------------------------------------------------------------------ producer side
    @property
    def total(self) -> int:
        """Samples written since the start (the audio clock)."""
        return self._total

    def write(self, block: np.ndarray, arrival: float | None = None) -> None:
        """Append `block` (mono, or `[frames, channels]` averaged to mono); stamp its arrival (monotonic seconds)."""
        frames = block.shape[0]
        if frames == 0:
            return
        end = self._total + frames
        if frames > self.capacity:  # only the newest `capacity` samples can survive anyway
            block = block[frames - self.capacity:]
            frames = self.capacity
        start = (end - frames) % self.capacity
        first = min(frames, self.capacity - start)
        self._copy_in(block, 0, first, start)
        if first < frames:
            self._copy_in(block, first, frames, 0)
        n = self._stamps
        self._stamp_end[n % self.STAMPS] = end
        self._stamp_time[n % self.STAMPS] = time.monotonic() if arrival is None else arrival
        self._stamps = n + 1
        self._total = end  # publish last

    def _copy_in(self, block: np.ndarray, a: int, b: int, at: int) -> None:
        out = self._buf[at:at + (b - a)]
        if block.ndim == 1:
            out[:] = block[a:b]
        elif block.shape[1] == 1:
            out[:] = block[a:b, 0]
        else:
            np.add.reduce(block[a:b], axis=1, out=out)
            out *= np.float32(1.0 / block.shape[1])

    # ------------------------------------------------------------------ consumer side
    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Samples `[start, stop)` of the stream. Raises Overrun (and counts it) if any of them is gone."""
        n = stop - start
        if n < 0 or stop > self._total:
            raise ValueError(f"cannot read [{start}, {stop}) of a stream at {self._total}")
        if n > self.capacity or start < self._total - self.capacity:
            self.overruns += 1
            raise Overrun(f"samples from {start} are gone (stream at {self._total}, capacity {self.capacity})")
        if out is None:
            out = np.empty(n, dtype=np.float32)
        i = start % self.capacity
        first = min(n, self.capacity - i)
        out[:first] = self._buf[i:i + first]
        out[first:n] = self._buf[:n - first]
        if start < self._total - self.capacity:  # lapped while copying
            self.overruns += 1
            raise Overrun(f"samples from {start} were overwritten while being read")
        return out[:n]

    def oldest(self) -> int:
        """The first sample still held."""
        return max(0, self._total - self.capacity)

    def wait_for(self, count: int, timeout: float, rate: float | None = None) -> bool:
        """Sleep until `total >= count` or `timeout` seconds pass; True if reached.

        Polls instead of using a condition variable because the microphone callback must not take locks; the sleep
        is sized from the expected `rate` (samples per wall second) and shrinks to 1 ms as the target nears.
        """
        deadline = time.monotonic() + timeout
        rate = rate or self.sample_rate
        while self._total < count:
            now = time.monotonic()
            if now >= deadline:
                return False
            ahead = (count - self._total) / rate
            time.sleep(max(0.001, min(ahead - 0.002, 0.02, deadline - now)))
        return True

    def arrival_time(self, sample: int) -> float | None:
        """When the write holding stream sample `sample` arrived (None if unknown: not written or stamp forgotten)."""
        n = self._stamps
        lo = max(0, n - self.STAMPS + 1)  # the slot of stamp n-STAMPS may be mid-overwrite
        i = max(self._stamp_cursor, lo)
        if i > lo and self._stamp_end[(i - 1) % self.STAMPS] > sample:
            i = lo  # asked about an earlier sample than last time: search again from the oldest stamp
        while i < n and self._stamp_end[i % self.STAMPS] <= sample:
            i += 1
        if i >= n:
            return None
        self._stamp_cursor = i
        return float(self._stamp_time[i % self.STAMPS])
