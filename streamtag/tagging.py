"""Batch tagging: an audio file → the seed's windows → batches → a TagResult.

Windows follow PaddleAudio's `audio_tag.py`: with win = int(sample_duration·32000) and hop = int(hop_duration·32000)
samples, a window starts at every k·hop < length and the last ones are zero-padded to win samples, so a file of L
samples gives ⌈L/hop⌉ windows. `pad=False` keeps only full windows, except that a file shorter than one window still
gets one (padded) window: every file that decodes gets a result.

The file is decoded block by block (audio.AudioReader) into a sliding buffer that holds little more than one window
and one block, so memory stays flat however long the recording is.
"""

from __future__ import annotations

import math
import os
import time as clock
from typing import Iterable, Iterator

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamtag.audio import TARGET_RATE, AudioReader, window_level_db
from streamtag.errors import StreamtagError
from streamtag.labels import audioset_labels
from streamtag.results import TagResult


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


def _progress(enabled: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("windows"),
        TextColumn("{task.fields[rtf]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )


def tag_file(source: str | os.PathLike | AudioReader, scorer, sample_duration: float, hop_duration: float,
             batch_size: int = 8, pad: bool = True, progress: bool = True) -> TagResult:
    """Score every seed window of one file with `scorer` (engine.Scorer), `batch_size` windows per call."""
    reader = source if isinstance(source, AudioReader) else AudioReader(source)
    win, hop = window_sizes(sample_duration, hop_duration)
    if batch_size < 1:
        raise StreamtagError(f"--batch-size must be 1 or more, got {batch_size}")
    hop_seconds = hop / TARGET_RATE
    expected = window_count(reader.expected_samples(), win, hop, pad)
    starts: list[int] = []
    levels: list[float] = []
    chunks: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    began = clock.perf_counter()

    with _progress(progress) as bar:
        task = bar.add_task(reader.path.name, total=expected, rtf="")

        def flush() -> None:
            chunks.append(scorer.score(np.stack(batch)))
            batch.clear()
            elapsed = max(clock.perf_counter() - began, 1e-9)
            audio = min(len(starts) * hop_seconds, reader.duration)
            bar.update(task, completed=len(starts), total=max(expected, len(starts)),
                       rtf=f"{audio / elapsed:.1f}× real time")

        for start, window in iter_windows(reader.blocks(), win, hop, pad):
            starts.append(start)
            levels.append(window_level_db(window))
            batch.append(window)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()

    if not starts:
        raise StreamtagError(f"{reader.path}: no audio decoded; the file may be truncated")
    scores = np.concatenate(chunks).astype(np.float32, copy=False)
    labels = list(audioset_labels())
    if scores.shape[1] != len(labels):
        labels = [f"class {i}" for i in range(scores.shape[1])]
    return TagResult(
        time=np.asarray(starts, dtype=np.int64) / TARGET_RATE,  # exact k·hop/32000, shortest float repr
        scores=scores,
        duration=reader.duration,
        sample_rate=reader.sample_rate,
        model=str(getattr(scorer, "arch", "")),
        sample_duration=float(sample_duration),
        hop_duration=float(hop_duration),
        labels=labels,
        level=np.asarray(levels, dtype=np.float32),
        source=str(reader.path),
    )


def realtime_factor(duration: float, seconds: float) -> float:
    """Seconds of audio tagged per second of wall time."""
    return duration / seconds if seconds > 0 else math.inf
