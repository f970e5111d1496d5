"""Sinks that keep a live session: `Recorder` (PREFIX.npz + PREFIX.txt), `WavRecorder` (the audio), `JsonLines`.

The recorder writes the same files batch tagging and parsing write (results.save_result, results.format_txt_block), so
`streamtag parse PREFIX.npz` works on a recording. Files are rewritten atomically every few seconds from the main
thread (`flush`), never from the inference thread, so a crash loses seconds, not the session, and the inference
thread only appends to lists.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Callable, Sequence

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.stream.pipeline import SAMPLE_RATE, HopResult
from streamtag.utils import atomic_write_text, new_file_mode

FLUSH_SECONDS = 3.0  # the shortest interval between periodic rewrites of a recording


class Recorder:
    """Collect HopResults; `flush(duration)` rewrites PREFIX.npz (raw scores) and PREFIX.txt (top-k of what is shown:
    smoothed unless smoothing is off)."""

    def __init__(self, prefix: str | os.PathLike, labels: Sequence[str], model: str, sample_rate: int,
                 sample_duration: float, hop_duration: float, top_k: int, smoothed: bool = True, source: str = "",
                 wall_clock: Callable[[], float | None] | None = None):
        prefix = str(prefix)
        for suffix in (".npz", ".txt"):  # `--record run.npz` means the prefix `run`
            if prefix.endswith(suffix):
                prefix = prefix[: -len(suffix)]
        self.npz_path = Path(prefix + ".npz")
        self.txt_path = Path(prefix + ".txt")
        try:
            self.npz_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StreamtagError(f"--record {prefix}: cannot create {self.npz_path.parent} ({e.strerror}); "
                                 "pick a writable place") from None
        self.labels = list(labels)
        self.model = model
        self.sample_rate = int(sample_rate)
        self.sample_duration = float(sample_duration)
        self.hop_duration = float(hop_duration)
        self.top_k = top_k
        self.smoothed = smoothed
        self.source = source
        self._wall_clock = wall_clock or (lambda: None)  # asked at each flush: a live stream's start is known late
        self._times: list[float] = []
        self._levels: list[float] = []
        self._scores: list[np.ndarray] = []
        self._blocks: list[str] = []
        self._lock = threading.Lock()  # held only for list appends / a length read
        self._flushed_rows, self._flushed_at = -1, 0.0

    @property
    def paths(self) -> list[Path]:
        return [self.npz_path, self.txt_path]

    def add(self, result: HopResult) -> None:
        """Called by the inference thread for every scored window."""
        from streamtag.results import format_txt_block, top_k

        row = result.smoothed if self.smoothed else result.scores
        block = format_txt_block(result.time, top_k(row, self.top_k, self.labels))
        with self._lock:
            self._times.append(result.time)
            self._levels.append(result.level_db)
            self._scores.append(result.scores)
            self._blocks.append(block)

    def __len__(self) -> int:
        return len(self._times)

    def rewrite_interval(self) -> float:
        """Seconds between periodic rewrites: FLUSH_SECONDS, or one second per MB of the npz once it is larger."""
        return max(FLUSH_SECONDS, len(self) * len(self.labels) * 4 / 1e6)

    def flush(self, duration: float, force: bool = True) -> None:
        """Rewrite both files with every window so far (atomic: readers see the old or the new file).

        Without `force` (the periodic flushes) a rewrite happens only when new windows came and the last one is at
        least `rewrite_interval()` old: each rewrite costs the whole file, so its interval grows with the file and
        the disk traffic stays near 1 MB/s however long the session runs (3 s apart for the first ~8 minutes).
        """
        from streamtag.results import TagResult, save_result

        now = time.monotonic()
        if not force and (len(self) == self._flushed_rows or now - self._flushed_at < self.rewrite_interval()):
            return
        with self._lock:
            n = len(self._times)
            times, scores, blocks = self._times[:n], self._scores[:n], self._blocks[:n]
            levels = self._levels[:n]
        result = TagResult(time=np.asarray(times, dtype=np.float64),
                           scores=np.stack(scores).astype(np.float32) if n else np.zeros((0, len(self.labels)),
                                                                                          np.float32),
                           duration=float(duration), sample_rate=self.sample_rate, model=self.model,
                           sample_duration=self.sample_duration, hop_duration=self.hop_duration,
                           labels=list(self.labels), level=np.asarray(levels, dtype=np.float32),
                           source=self.source, wall_clock=self._wall_clock())
        try:
            save_result(self.npz_path, result)
            atomic_write_text(self.txt_path, "".join(blocks))
            self._flushed_rows, self._flushed_at = n, now
        except OSError as e:
            raise StreamtagError(f"--record: cannot write {self.npz_path} ({e.strerror or e}); "
                                 "check the disk and the directory's permissions") from None


class WavRecorder:
    """The 32 kHz mono stream, written as it comes to a hidden temp file beside FILE, renamed onto FILE at close."""

    def __init__(self, path: str | os.PathLike):
        import soundfile as sf

        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp.wav", dir=self.path.parent)
            os.close(fd)
            os.chmod(tmp, new_file_mode())  # mkstemp makes it 0600; the final file gets the usual permissions
            self._tmp = Path(tmp)
            self._file = sf.SoundFile(tmp, mode="w", samplerate=SAMPLE_RATE, channels=1, subtype="FLOAT",
                                      format="WAV")
        except (OSError, sf.LibsndfileError) as e:
            raise StreamtagError(f"--save-audio {path}: cannot write there ({e}); pick a writable .wav path") \
                from None
        self.frames = 0

    def write(self, block: np.ndarray) -> None:
        self._file.write(block)
        self.frames += len(block)

    def close(self) -> None:
        """Finish the file and move it into place (kept even when the session ended on an error)."""
        self._file.close()
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class JsonLines:
    """`--json`: one object per hop on stdout, `parse --format jsonl`'s shape (time, labels, scores: the top-k shown,
    after --only/--ignore) plus the window index and timings."""

    def __init__(self, labels: Sequence[str], top_k: int, mask: np.ndarray | None = None, smoothed: bool = True,
                 stream: IO[str] | None = None):
        self.labels = list(labels)
        self.top_k = top_k
        self.mask = mask
        self.smoothed = smoothed
        self.stream = stream or sys.stdout

    def add(self, result: HopResult) -> None:
        from streamtag.results import jsonl_record, shown_top_k

        row = result.smoothed if self.smoothed else result.scores
        record = jsonl_record(result.time, shown_top_k(row, self.top_k, self.labels, self.mask))
        record.update(index=result.index, inference_ms=round(result.inference_ms, 3),
                      delay_ms=None if result.delay_ms is None else round(result.delay_ms, 3))
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()
