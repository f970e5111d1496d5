"""The seed's windows over an audio file: their sizes, their count, and cutting them from blockwise decoding.

Windows follow PaddleAudio's `audio_tag.py`: with win = int(sample_duration·32000) and hop = int(hop_duration·32000)
samples, a window starts at every k·hop < length and the last ones are zero-padded to win samples, so a file of L
samples gives ⌈L/hop⌉ windows. `pad=False` keeps only full windows, except that a file shorter than one window still
gets one (padded) window: every file that decodes gets a result.

The file is decoded block by block (audio.AudioReader) into a sliding buffer that holds little more than one window
and one block, so memory stays flat however long the recording is. Scoring the windows and saving the result is
corpus.py's (one executor for `tag`, folders, resume and Ray workers alike).
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import numpy as np

from streamtag.audio import TARGET_RATE
from streamtag.errors import StreamtagError


def seconds_to_samples(seconds: float, rate: int = TARGET_RATE) -> int:
    """The seed's conversion, truncating: int(seconds · rate) (1.001 s at 32 kHz is 32031 samples)."""
    return int(seconds * rate)


def window_sizes(sample_duration: float, hop_duration: float) -> tuple[int, int]:
    """Window and hop in samples (the seed's truncation); a one-line error when either is under one sample.

    `tag`, `live`, `replay` and `bench` all cut their windows with this, so they score the same windows."""
    win, hop = seconds_to_samples(sample_duration), seconds_to_samples(hop_duration)
    if win < 1 or hop < 1:
        raise StreamtagError(f"--sample-duration {sample_duration} / --hop-duration {hop_duration} is under one "
                             f"sample at {TARGET_RATE} Hz; give durations in seconds, e.g. 2.0 and 0.3")
    return win, hop


def window_count(length: int, win: int, hop: int, pad: bool = True) -> int:
    """How many windows a signal of `length` samples gives (⌈length/hop⌉ with padding)."""
    if length <= 0:
        return 0
    if pad:
        return -(-length // hop)
    return (length - win) // hop + 1 if length >= win else 1


def window_starts(length: int, win: int, hop: int, pad: bool = True) -> np.ndarray:
    """Start sample of every window, as `iter_windows` produces them."""
    return np.arange(window_count(length, win, hop, pad), dtype=np.int64) * hop


def iter_windows(blocks: Iterable[np.ndarray], win: int, hop: int, pad: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """(start sample, window) pairs over a stream of mono blocks, keeping only the samples still needed."""
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0      # absolute index of buf[0]
    total = 0          # samples received
    next_start = 0     # start of the next window to emit
    for block in blocks:
        block_start, total = total, total + len(block)
        if block_start < buf_start:  # hop > win: samples between windows are never needed
            block = block[buf_start - block_start:]
        buf = np.concatenate([buf, block]) if len(buf) else np.asarray(block, dtype=np.float32)
        while next_start + win <= total:
            offset = next_start - buf_start
            yield next_start, buf[offset:offset + win]
            next_start += hop
        if next_start - buf_start >= len(buf):  # nothing buffered is needed any more
            buf, buf_start = buf[:0], next_start
        elif next_start > buf_start:
            buf, buf_start = buf[next_start - buf_start:], next_start
    emitted = next_start > 0
    while next_start < total and (pad or not emitted):
        offset = next_start - buf_start
        segment = buf[max(offset, 0):offset + win]
        yield next_start, np.pad(segment, (0, win - len(segment)))
        next_start += hop
        emitted = True


def realtime_factor(duration: float, seconds: float) -> float:
    """Seconds of audio tagged per second of wall time."""
    return duration / seconds if seconds > 0 else math.inf
