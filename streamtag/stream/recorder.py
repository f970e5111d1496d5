"""Sinks that keep a live session: `Recorder` (PREFIX.npz + PREFIX.txt), `WavRecorder` (the audio), `JsonLines`.

The recorder writes the files batch tagging and parsing write, so `streamtag parse PREFIX.npz` works on a recording
and gives PREFIX.txt byte for byte. While the session runs they are append-only parts (recording.py): the inference
thread only queues each hop's columns and text block; the main thread's `flush` appends what is new every few seconds,
so memory stays constant and each flush writes only the new rows, however long the session. `finish` turns the parts
into PREFIX.npz / PREFIX.txt; a session that scored no window leaves neither (there is nothing to parse).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.recording import PART, PartWriter, WavAppender, part_dir
from streamtag.stream.pipeline import SAMPLE_RATE, HopResult

FLUSH_SECONDS = 3.0  # the interval between appends of a recording: what SIGKILL can lose at most


def hop_columns(result: HopResult) -> dict[str, Any]:
    """One window's per-window columns, named as in the npz; a new per-window array is one more entry here."""
    return {"time": result.time, "scores": result.scores, "level": result.level_db}


def unfinished_error(paths: Sequence[Path], option: str) -> StreamtagError:
    names = ", ".join(map(str, paths))
    return StreamtagError(f"{option}: {names} is there: an unfinished recording (a session still running, or one "
                          f"that was killed); run `streamtag recover {paths[0]}` or pick another name")


def record_paths(prefix: str | os.PathLike) -> list[Path]:
    """The files `--record PREFIX` writes (the CLI checks them all before the session starts)."""
    prefix = str(prefix)
    for suffix in (".npz", ".txt"):  # `--record run.npz` means the prefix `run`
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    return [Path(prefix + ".npz"), Path(prefix + ".txt")]


class Recorder:
    """Collect HopResults; `flush()` appends the new ones to the parts, `finish(duration)` completes PREFIX.npz (raw
    scores) and PREFIX.txt (top-k of what is shown: smoothed unless smoothing is off)."""

    def __init__(self, prefix: str | os.PathLike, labels: Sequence[str], model: str, sample_rate: int,
                 sample_duration: float, hop_duration: float, top_k: int, smooth_size: int | None = 5,
                 source: str = "", wall_clock: Callable[[], float | None] | None = None, audio: str | None = None):
        self.npz_path, self.txt_path = record_paths(prefix)
        self.txt_part = Path(str(self.txt_path) + PART)
        stale = [p for p in (part_dir(self.npz_path), self.txt_part) if p.exists()]
        if stale:
            raise unfinished_error(stale, "--record")
        self.labels = list(labels)
        self.top_k = top_k
        self.smooth_size = smooth_size
        self._wall_clock = wall_clock or (lambda: None)  # asked at each flush: a live stream's start is known late
        self._pending: list[tuple[dict[str, Any], str]] = []
        self._lock = threading.Lock()  # held only to swap the pending list
        self.rows = 0
        meta = dict(labels=self.labels, model=model, sample_rate=int(sample_rate),
                    sample_duration=float(sample_duration), hop_duration=float(hop_duration), source=source,
                    top_k=top_k, smooth_size=smooth_size, audio=None if audio is None else str(Path(audio).absolute()))
        try:
            self.npz_path.parent.mkdir(parents=True, exist_ok=True)
            self.part = PartWriter(self.npz_path, meta)
        except OSError as e:
            raise StreamtagError(f"--record {prefix}: cannot write there ({e.strerror or e}); "
                                 "pick a writable place") from None
        try:
            self._txt = os.open(self.txt_part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        except OSError as e:
            self.part.close()
            shutil.rmtree(self.part.dir, ignore_errors=True)
            raise StreamtagError(f"--record {prefix}: cannot write there ({e.strerror or e}); "
                                 "pick a writable place") from None

    @property
    def paths(self) -> list[Path]:
        return [self.npz_path, self.txt_path]

    def add(self, result: HopResult) -> None:
        """Called by the inference thread for every scored window: queue its columns and its txt block."""
        from streamtag.results import format_txt_block, top_k

        row = result.smoothed if self.smooth_size else result.scores
        block = format_txt_block(result.time, top_k(row, self.top_k, self.labels))
        with self._lock:
            self._pending.append((hop_columns(result), block))

    def __len__(self) -> int:
        return self.rows + len(self._pending)

    def flush(self, duration: float) -> None:
        """Append the windows queued since the last flush (the txt after the npz columns), and the duration."""
        with self._lock:
            pending, self._pending = self._pending, []
        try:
            if pending:
                names = pending[0][0].keys()
                self.part.append({name: np.stack([np.asarray(c[name]) for c, _ in pending]) for name in names})
                text = "".join(block for _, block in pending).encode("utf-8")
                view = memoryview(text)
                while view:
                    view = view[os.write(self._txt, view):]
                self.rows += len(pending)
            self.part.set_state(duration=float(duration), wall_clock=self._wall_clock())
        except OSError as e:
            raise StreamtagError(f"--record: cannot write {part_dir(self.npz_path)} ({e.strerror or e}); "
                                 "check the disk and the directory's permissions") from None

    def discard(self) -> None:
        """Remove the parts (a session that never started: the device or the model failed)."""
        with contextlib.suppress(OSError):
            os.close(self._txt)
        self.part.close()
        shutil.rmtree(self.part.dir, ignore_errors=True)
        self.txt_part.unlink(missing_ok=True)

    def finish(self, duration: float) -> list[Path]:
        """The last flush, then PREFIX.npz (streamed from the part) and PREFIX.txt (renamed); returns what was
        written: nothing when no window was scored (both parts are removed)."""
        try:
            self.flush(duration)
        finally:
            os.close(self._txt)
        try:
            if self.part.finish() is None:
                self.txt_part.unlink(missing_ok=True)
                return []
            os.replace(self.txt_part, self.txt_path)
        except OSError as e:
            raise StreamtagError(f"--record: cannot complete {self.npz_path} ({e.strerror or e}); the rows are kept "
                                 f"in {part_dir(self.npz_path)}: free some space, then `streamtag recover "
                                 f"{self.npz_path}`") from None
        return self.paths


class WavRecorder(WavAppender):
    """--save-audio: the 32 kHz mono stream the model heard, as FILE.wav.part while recording (valid at every
    moment: the header follows each block), renamed onto FILE at the end; a stream of no sample leaves nothing."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if Path(str(path) + PART).exists():
            raise unfinished_error([Path(str(path) + PART)], "--save-audio")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            super().__init__(path, SAMPLE_RATE)
        except OSError as e:
            raise StreamtagError(f"--save-audio {path}: cannot write there ({e.strerror or e}); pick a writable "
                                 ".wav path") from None


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
        from streamtag.results import jsonl_record, top_k

        row = result.smoothed if self.smoothed else result.scores
        record = jsonl_record(result.time, top_k(row, self.top_k, self.labels, self.mask))
        record.update(index=result.index, inference_ms=round(result.inference_ms, 3),
                      delay_ms=None if result.delay_ms is None else round(result.delay_ms, 3))
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()
