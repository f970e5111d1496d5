"""The inference thread: audio-clock windows out of a source's ring buffer → Scorer → Smoother → sinks.

Scheduling runs on the audio clock, the ring's sample counter, never on the wall clock: window k covers samples
`[k·hop, k·hop + window)` and is scored as soon as its last sample is in. If scoring falls behind a real-time source
the thread jumps to the newest complete window and counts the hops it skipped, so the screen stays current and the
callback is never blocked. After each window it swaps in a new immutable `PipelineState` (what the dashboard draws,
at its own pace) and hands a `HopResult` to the sinks (recorder, JSON lines).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from streamtag.audio import SILENCE_DB, dbfs, window_level_db
from streamtag.stream.ring import Overrun, RingBuffer

SAMPLE_RATE = 32000
PEAK_HOLD_SECONDS = 1.5
HISTORY_SECONDS = 20.0  # how far back the snapshot's history reaches (the dashboard's sparklines)


class Source(Protocol):
    name: str
    ring: RingBuffer
    rate: float
    catch_up: bool
    overflows: int
    finished: bool
    error: str | None

    def pump(self) -> None: ...
    def wait(self, count: int, timeout: float) -> bool: ...


@dataclass(frozen=True)
class HopResult:
    """One scored window: `time` is its start in seconds; `scores` raw, `smoothed` what is shown; `level_db` the
    window's RMS level (dBFS, float32-rounded as the npz stores it)."""

    index: int
    time: float
    scores: np.ndarray
    smoothed: np.ndarray
    inference_ms: float
    delay_ms: float | None
    level_db: float = SILENCE_DB


@dataclass(frozen=True)
class PipelineState:
    """A snapshot for the dashboard; replaced whole (one reference swap), never mutated."""

    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    hops: int = 0
    skipped: int = 0
    overflows: int = 0
    overruns: int = 0
    last_ms: float | None = None
    mean_ms: float | None = None
    delay_ms: float | None = None
    level_db: float = SILENCE_DB
    peak_db: float = SILENCE_DB
    result: HopResult | None = None
    running: bool = True
    history: tuple[HopResult, ...] = ()   # the windows of the last HISTORY_SECONDS, oldest first


class Pipeline:
    """Run `scorer` over `source` on a thread; `state` is the latest snapshot, `sinks` get every HopResult.

    `audio_sinks` get every sample of the stream in order (for --save-audio) and `limit_seconds` stops after that
    much audio; `keep_seconds` of audio before the current window stay readable in the ring (event clips'
    pre-roll: a fast replay's backpressure keeps them). `stop()` asks the thread to end; `join()` waits. A crash in the thread is kept in `exception`.
    """

    def __init__(self, source: Source, scorer: Any, sample_duration: float, hop_duration: float,
                 smooth_size: int | None = None, sinks: Sequence[Any] = (), audio_sinks: Sequence[Any] = (),
                 limit_seconds: float | None = None, clock: Callable[[], float] = time.monotonic,
                 keep_seconds: float = 0.0):
        self.source = source
        self.scorer = scorer
        from streamtag.tagging import window_sizes  # replay and tag cut the same windows

        self.window, self.hop = window_sizes(sample_duration, hop_duration)
        if self.window + self.hop > source.ring.capacity // 2:
            raise ValueError("the ring buffer must hold two windows and hops (see sources.ring_seconds)")
        self.smoother = None
        if smooth_size:
            from streamtag.results import Smoother

            self.smoother = Smoother(smooth_size)
        self.sinks = list(sinks)
        self.audio_sinks = list(audio_sinks)
        self.limit = None if limit_seconds is None else int(round(limit_seconds * SAMPLE_RATE))
        self.keep = int(round(keep_seconds * SAMPLE_RATE))
        self._clock = clock
        self._state = PipelineState()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamtag-pipeline", daemon=True)
        self._buffer = np.zeros(self.window, dtype=np.float32)
        self.exception: BaseException | None = None
        self.hops = 0
        self.skipped = 0
        self.samples = 0  # stream samples seen (the audio clock as far as we went)
        self._sum_ms = 0.0
        self._peak = (SILENCE_DB, -math.inf)  # held peak dBFS, the sample where it was held
        self._level = SILENCE_DB
        self._started = 0.0
        # The history is a deque of the (immutable) HopResults themselves: a snapshot copies ~70 references per hop,
        # never the scores, and the dashboard reads it without a lock.
        keep = math.ceil(HISTORY_SECONDS / (self.hop / SAMPLE_RATE)) + 1
        self._history: collections.deque[HopResult] = collections.deque(maxlen=keep)

    # ------------------------------------------------------------------ control
    @property
    def state(self) -> PipelineState:
        """The latest snapshot (safe from any thread)."""
        return self._state

    def start(self) -> None:
        self._started = self._clock()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True once it has ended (or never started: the source failed to open)."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def run(self) -> None:
        """Run in the calling thread (tests, fast replay without a screen)."""
        self._started = self._clock()
        self._run()
        if self.exception is not None:
            raise self.exception

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # kept for the main thread, which owns error reporting
            self.exception = e
        finally:
            self._publish(None, running=False)

    def _loop(self) -> None:
        source, ring, win, hop = self.source, self.source.ring, self.window, self.hop
        k = 0  # next window to score
        while not self._stop.is_set():
            done = source.finished  # read before the counter: whatever was written before it is seen below
            source.pump()
            total = ring.total if self.limit is None else min(ring.total, self.limit)
            tapped = total > self.samples
            if tapped:
                self._tap(self.samples, total)
            newest = (total - win) // hop if total >= win else -1
            if newest >= k:
                if source.catch_up and newest > k:
                    self.skipped += newest - k
                    k = newest
                self._score(k)
                k += 1
                ring.consumer_position = max(0, min(k * hop, self.samples) - self.keep)
                continue
            ring.consumer_position = max(0, min(k * hop, self.samples) - self.keep)
            if tapped:
                self._publish(None)  # the level meter moves even between windows
            if done or (self.limit is not None and total >= self.limit):
                return
            source.wait(k * hop + win, timeout=0.1)

    def _tap(self, start: int, stop: int) -> None:
        """Every new sample passes here once: the audio sinks (kept gap-free with zeros) and the level meter."""
        ring = self.source.ring
        oldest = ring.oldest()
        if start < oldest:  # fell a whole ring behind: what was lost is counted and saved as silence
            ring.overruns += 1
            resume = min(stop, oldest + self.hop)
            for sink in self.audio_sinks:
                sink.write(np.zeros(resume - start, np.float32))
            start = resume
        if self.audio_sinks and stop > start:
            try:
                block = ring.read(start, stop)
            except Overrun:  # lapped by the callback while copying (counted by the ring): saved as silence
                block = np.zeros(stop - start, np.float32)
            for sink in self.audio_sinks:
                sink.write(block)
        self.samples = stop
        recent = ring.read(max(ring.oldest(), stop - level_span(self.hop)), stop)
        self._level = dbfs(float(np.sqrt(np.mean(np.square(recent, dtype=np.float64)))))
        peak = dbfs(float(np.max(np.abs(recent))))
        held, at = self._peak
        if peak >= held or (stop - at) > PEAK_HOLD_SECONDS * SAMPLE_RATE:
            self._peak = (peak, stop)

    def _score(self, k: int) -> None:
        ring = self.source.ring
        start, end = k * self.hop, k * self.hop + self.window
        try:
            window = ring.read(start, end, out=self._buffer)
        except Overrun:  # fell a whole ring behind (only possible without catch-up): count it as skipped
            self.skipped += 1
            return
        level = window_level_db(window)
        t0 = time.perf_counter()
        scores = np.array(self.scorer.score(window[None, :])[0], dtype=np.float32)
        ms = (time.perf_counter() - t0) * 1000.0
        # Smoother.push returns a fresh float32 row nobody else holds: freeze both rows as they are, no copy.
        smoothed = self.smoother.push(scores) if self.smoother is not None else scores
        scores.flags.writeable = False
        smoothed.flags.writeable = False
        self.hops += 1
        self._sum_ms += ms
        arrival = ring.arrival_time(end - 1)
        delay = None if arrival is None else (self._clock() - arrival) * 1000.0
        result = HopResult(index=k, time=start / SAMPLE_RATE, scores=scores, smoothed=smoothed, inference_ms=ms,
                           delay_ms=delay, level_db=level)
        self._history.append(result)
        self._publish(result)
        for sink in self.sinks:
            sink.add(result)

    def _publish(self, result: HopResult | None, running: bool = True) -> None:
        old = self._state
        self._state = PipelineState(
            audio_seconds=self.samples / SAMPLE_RATE, wall_seconds=self._clock() - self._started,
            hops=self.hops, skipped=self.skipped, overflows=self.source.overflows,
            overruns=self.source.ring.overruns,
            last_ms=result.inference_ms if result else old.last_ms,
            mean_ms=self._sum_ms / self.hops if self.hops else None,
            delay_ms=result.delay_ms if result else old.delay_ms,
            level_db=self._level, peak_db=self._peak[0], result=result or old.result, running=running,
            history=tuple(self._history) if result else old.history)


def level_span(hop: int) -> int:
    """How many of the newest samples the level meter looks at: one hop (at least 10 ms)."""
    return max(hop, SAMPLE_RATE // 100)
