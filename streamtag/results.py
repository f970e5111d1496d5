"""Tagging results: the `.npz` schema, the seed's smoothing and top-k, and one writer per output format.

Batch tagging and the live recorder both produce a `TagResult`; `streamtag parse` reads it back and renders it with
a writer. Numbers follow the seed example (PaddleAudio `parse_result.py`) bit for bit: `smooth` is its loop, `top_k`
its `(-row).argsort()[:k]`, and the txt writer its `f'{time}'` / `f'{label}: {score}'` lines, so the text we write
from an npz is byte-identical to what the seed script writes from the same npz.

An npz is data from the user's disk: it is opened with `allow_pickle=False`, so a file holding an object array is
refused rather than unpickled.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.labels import check_labels
from streamtag.paths import os_reason
from streamtag.utils import atomic_path

TIME_FORMATS = ("seconds", "ratio")
# Written by `tag` so a later run can tell the result is done (corpus.is_done): `complete` (bool), `weights_sha256`,
# `options_sha256` and `options` (the JSON they hash). A file without them is never considered done.
STAMP_KEYS = ("complete", "weights_sha256", "options_sha256", "options")


@dataclass
class TagResult:
    """Scores of successive windows of one recording.

    `time` is each window's start in seconds; `scores` the raw (never smoothed) model outputs. A result read from
    the seed's own npz (only `time` as t/T and `scores`) has `duration` NaN and empty metadata.
    """

    time: np.ndarray                 # float64 [N], window start, seconds
    scores: np.ndarray               # float32 [N, C], raw sigmoid scores
    duration: float                  # seconds of audio in the input file
    sample_rate: int                 # sample rate of the input file (before resampling)
    model: str                       # architecture that produced the scores, e.g. "cnn14"
    sample_duration: float           # window length, seconds
    hop_duration: float              # seconds between window starts
    labels: list[str] = field(default_factory=list)  # one display name per score column
    level: np.ndarray | None = None  # float32 [N], each window's RMS level in dBFS (None: a file from before it)
    source: str = ""                 # what was scored: the input file, or the live device
    wall_clock: float | None = None  # POSIX time of the first sample (live sessions only)
    embedding: np.ndarray | None = None  # float32 [N, D] (2048 CNN14, 512 CNN6/10) with `tag --embeddings`
    stamp: dict = field(default_factory=dict)  # what the resume rule needs (corpus.TagOptions.stamp): STAMP_KEYS

    def times(self, time_format: str = "seconds") -> np.ndarray:
        """The time line values: seconds, or t/T ("ratio", what the seed printed).

        A seed npz already stores t/T and no duration; its times are returned as stored whatever the format.
        """
        if time_format not in TIME_FORMATS:
            raise ValueError(f"time_format must be one of {TIME_FORMATS}, got {time_format!r}")
        if time_format == "ratio" and math.isfinite(self.duration) and self.duration > 0:
            return self.time / self.duration
        return self.time


# ---------------------------------------------------------------------------------------------- npz read/write
def metadata_arrays(duration: float, sample_rate: int, model: str, sample_duration: float, hop_duration: float,
                    labels: Sequence[str], source: str = "", wall_clock: float | None = None) -> dict[str, np.ndarray]:
    """The npz's arrays that describe the whole result (everything but the per-window columns)."""
    arrays = {
        "duration": np.float64(duration),
        "sample_rate": np.int64(sample_rate),
        "model": np.str_(model),
        "sample_duration": np.float64(sample_duration),
        "hop_duration": np.float64(hop_duration),
        "labels": np.array([str(x) for x in labels], dtype=np.str_),
    }
    if source:
        arrays["source"] = np.str_(source)
    if wall_clock is not None:
        arrays["wall_clock"] = np.float64(wall_clock)
    return arrays


def save_result(path: str | os.PathLike, result: TagResult) -> Path:
    """Write `result` to `path` (.npz) via a temp file + rename; every array is plain (loads without pickle)."""
    path = Path(path)
    scores = np.asarray(result.scores, dtype=np.float32)
    time = np.asarray(result.time, dtype=np.float64)
    if scores.ndim != 2 or time.shape != (scores.shape[0],):
        raise ValueError(f"time {time.shape} and scores {scores.shape} do not describe the same windows")
    arrays = {"time": time, "scores": scores}
    if result.level is not None:
        level = np.asarray(result.level, dtype=np.float32)
        if level.shape != time.shape:
            raise ValueError(f"level {level.shape} does not match time {time.shape}")
        arrays["level"] = level
    arrays.update(metadata_arrays(result.duration, result.sample_rate, result.model, result.sample_duration,
                                  result.hop_duration, result.labels, result.source, result.wall_clock))
    if result.embedding is not None:
        embedding = np.asarray(result.embedding, dtype=np.float32)
        if embedding.ndim != 2 or embedding.shape[0] != scores.shape[0]:
            raise ValueError(f"embedding {embedding.shape} does not have one row per window ({scores.shape[0]})")
        arrays["embedding"] = embedding
    for key in STAMP_KEYS:
        if key in result.stamp:
            value = result.stamp[key]
            arrays[key] = np.bool_(value) if isinstance(value, bool) else np.str_(value)
    try:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
    except OSError as e:
        raise StreamtagError(f"{path}: cannot write result ({os_reason(e, path)}); "
                             "check that its directory exists and is writable") from None
    return path


def load_result(path: str | os.PathLike) -> TagResult:
    """Read a result, never unpickling anything: an npz written by `save_result` or the seed's `audio_tag.py`, or a
    recording still being made or killed (`X.npz.part/`, recording.py) — `X.npz` reads `X.npz.part/` when that
    exists, since it is the newer of the two."""
    from streamtag.recording import is_part_dir, part_dir, read_part
    from streamtag.safeload import NPZ_HINT as hint, read_npz

    path = Path(path)
    if is_part_dir(path) or is_part_dir(part_dir(path)):
        try:
            data = read_part(path if is_part_dir(path) else part_dir(path))
            return _result_from_arrays(path, data, "pass a recording's PREFIX.npz (see docs/file-formats.md)")
        except StreamtagError:
            if is_part_dir(path) or is_part_dir(part_dir(path)) or not path.is_file():
                raise
            # The session finished (its part is gone) while we read it: its npz is complete now.
    data = read_npz(path, hint)
    if "scores" not in data or "time" not in data:
        missing = " and ".join(k for k in ("time", "scores") if k not in data)
        raise StreamtagError(f"{path}: npz has no `{missing}` array, so it is not a tagging result; {hint}")
    return _result_from_arrays(path, data, hint)


def _result_from_arrays(path: Path, data: dict[str, np.ndarray], hint: str) -> TagResult:
    """Check the arrays of an npz (or of a recording in progress) and make them a TagResult."""
    scores, time = data["scores"], data["time"]
    if scores.ndim != 2 or time.ndim != 1 or time.shape[0] != scores.shape[0] or scores.shape[0] == 0:
        raise StreamtagError(f"{path}: `time` {time.shape} and `scores` {scores.shape} do not match "
                             f"(expected N and N×classes, N ≥ 1); {hint}")
    if scores.dtype.kind != "f" or time.dtype.kind not in "iuf":
        raise StreamtagError(f"{path}: `scores` ({scores.dtype}) must be floats and `time` ({time.dtype}) real "
                             f"numbers; {hint}")
    if not np.isfinite(scores).all():
        row = int(np.argmin(np.isfinite(scores).all(axis=1)))
        raise StreamtagError(f"{path}: `scores` holds NaN or Inf (first in row {row}); the result is corrupt, "
                             "tag the audio again")
    if not np.isfinite(time).all():
        raise StreamtagError(f"{path}: `time` holds NaN or Inf; the result is corrupt, tag the audio again")

    def scalar(key: str, cast, default):
        if key not in data or data[key].size != 1:
            return default
        try:
            return cast(data[key].reshape(()).item())
        except (TypeError, ValueError, OverflowError):
            return default

    labels = [str(x) for x in data["labels"].ravel()] if "labels" in data and data["labels"].dtype.kind == "U" else []
    check_labels(labels, str(path))
    level = data.get("level")
    if level is not None and (level.shape != time.shape or level.dtype.kind not in "iuf"
                              or np.isnan(level).any()):
        raise StreamtagError(f"{path}: `level` {level.shape} does not match `time` {time.shape}; {hint}")
    wall_clock = scalar("wall_clock", float, None)
    embedding = data.get("embedding")
    if embedding is not None and (embedding.ndim != 2 or embedding.shape[0] != scores.shape[0]
                                  or not np.issubdtype(embedding.dtype, np.floating)):
        raise StreamtagError(f"{path}: `embedding` {embedding.shape} ({embedding.dtype}) is not one float row per "
                             f"window ({scores.shape[0]}); {hint}")
    return TagResult(
        time=time,
        scores=scores,
        duration=scalar("duration", float, math.nan),
        sample_rate=scalar("sample_rate", int, 0),
        model=scalar("model", str, ""),
        sample_duration=scalar("sample_duration", float, math.nan),
        hop_duration=scalar("hop_duration", float, math.nan),
        labels=labels,
        level=None if level is None else level.astype(np.float32, copy=False),
        source=scalar("source", str, ""),
        wall_clock=wall_clock if wall_clock is not None and math.isfinite(wall_clock) else None,
        embedding=embedding,
        stamp=_stamp(data),
    )


def _stamp(data) -> dict:
    """The STAMP_KEYS present in an opened npz (scalars only; anything malformed is left out)."""
    stamp = {}
    for key in STAMP_KEYS:
        if key in data and data[key].size == 1 and data[key].dtype.kind in "bU":
            stamp[key] = data[key].reshape(()).item()
    return stamp


def read_stamp(path: str | os.PathLike) -> dict | None:
    """The stamp and `model` of the result at `path` without reading its scores; None when there is no readable
    result there. For the resume rule, which looks at every output of a corpus before tagging anything."""
    from streamtag.safeload import read_npz

    try:
        data = read_npz(path, only=(*STAMP_KEYS, "model"))  # checked like any npz, scores left unread
    except StreamtagError:
        return None
    stamp = _stamp(data)
    if "model" in data and data["model"].dtype.kind == "U" and data["model"].size == 1:
        stamp["model"] = str(data["model"].reshape(()).item())
    return stamp


def _one_line(e: BaseException) -> str:
    return " ".join(f"{e.__class__.__name__}: {e}".split())


# ---------------------------------------------------------------------------------------------- seed math
def smooth(scores: np.ndarray, size: int) -> np.ndarray:
    """The seed's posterior smoothing: row i becomes the mean of rows max(0, i-size+1)..i of the input.

    Same loop and same float32 arithmetic as `parse_result.py`'s in-place version (which, running from the end,
    only ever reads unmodified rows), but on a copy: the caller's array is left alone.
    """
    if size < 1:
        raise ValueError(f"smoothing size must be 1 or more, got {size}")
    scores = np.asarray(scores)
    out = scores.copy()
    for i in range(len(scores) - 1, -1, -1):
        left = 0 if i < size - 1 else i + 1 - size
        out[i] = np.sum(scores[left:i + 1], axis=0) / (i - left + 1)
    return out


class Smoother:
    """Incremental `smooth` for the live path: push one row, get its smoothed row, bit for bit what `smooth` gives
    for that row of the whole array (the same float32 `np.sum` over the same (n, C) block, divided by the same n),
    so a recording's PREFIX.txt is byte-identical to `streamtag parse PREFIX.npz`. Costs O(size × classes)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"smoothing size must be 1 or more, got {size}")
        self.size = size
        self._rows: collections.deque[np.ndarray] = collections.deque(maxlen=size)

    def push(self, row: np.ndarray) -> np.ndarray:
        self._rows.append(np.asarray(row))
        return np.sum(np.stack(self._rows), axis=0) / len(self._rows)

    def reset(self) -> None:
        self._rows.clear()


def top_k(row: np.ndarray, k: int, labels: Sequence[str],
          mask: np.ndarray | None = None) -> list[tuple[str, float]]:
    """The k highest (label, score) pairs, highest first, ties ordered exactly as the seed's `(-row).argsort()`.

    The one top-k of streamtag: `parse`, the recording's txt, `--json` and the dashboard. `mask` (--only/--ignore)
    leaves out the labels it is False for (so fewer than k pairs may come back).
    """
    row = np.asarray(row)
    return [(labels[i], float(row[i])) for i in top_order(row, k, mask)]


def top_order(row: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[int]:
    """The column indices behind `top_k`: the seed's `(-row).argsort()[:k]` of the row with the labels `mask`
    leaves out set to -inf, and those dropped."""
    row = np.asarray(row)
    if mask is not None:
        row = np.where(mask, row, -np.inf)
    order = (-row).argsort()[:k]
    if mask is not None:
        order = order[np.isfinite(row[order])]
    return [int(i) for i in order]


_top_k = top_k  # for Writer.render, whose `top_k` parameter (the seed's option name) shadows this function


def format_txt_block(time_value: float, pairs: Sequence[tuple[str, float]]) -> str:
    """The seed's text block: the time line, one `Label: score` line per pair, then a blank line.

    Python floats print their shortest repr, which is what the seed's f-strings print for numpy scalars.
    """
    lines = [f"{float(time_value)}\n"]
    lines += [f"{label}: {float(score)}\n" for label, score in pairs]
    lines.append("\n")
    return "".join(lines)


def jsonl_record(time_value: float, pairs: Sequence[tuple[str, float]]) -> dict:
    """One JSON lines object: {"time": t, "labels": [...], "scores": [...]} (also the live `--json` shape)."""
    return {"time": float(time_value), "labels": [p[0] for p in pairs], "scores": [float(p[1]) for p in pairs]}


# ---------------------------------------------------------------------------------------------- writers
class Writer:
    """Renders a TagResult (optionally smoothed) as top-k per step; subclasses only format."""

    ext = ""

    def write(self, result: TagResult, path: str | os.PathLike, top_k: int = 10, smooth_size: int | None = 5,
              time_format: str = "seconds") -> Path:
        """Write `path` atomically; `smooth_size=None` leaves the scores raw."""
        path = Path(path)
        text = self.render(result, top_k=top_k, smooth_size=smooth_size, time_format=time_format)
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "w", encoding="utf-8", newline="") as f:
                    f.write(text)
        except OSError as e:
            raise StreamtagError(f"{path}: cannot write ({os_reason(e, path)}); check that its directory exists and is "
                                 "writable") from None
        return path

    def render(self, result: TagResult, top_k: int = 10, smooth_size: int | None = 5,
               time_format: str = "seconds") -> str:
        labels = result.labels
        if len(labels) != result.scores.shape[1]:
            raise StreamtagError(f"{len(labels)} labels for {result.scores.shape[1]} score columns; "
                                 "pass a --label-file with one label per model output")
        scores = smooth(result.scores, smooth_size) if smooth_size else result.scores
        steps = [(t, _top_k(row, top_k, labels)) for t, row in zip(result.times(time_format), scores)]
        return self.format(steps)

    def format(self, steps: list[tuple[float, list[tuple[str, float]]]]) -> str:
        raise NotImplementedError


class TxtWriter(Writer):
    """The seed's layout: time line, k `Label: score` lines, blank line."""

    ext = "txt"

    def format(self, steps):
        return "".join(format_txt_block(t, pairs) for t, pairs in steps)


class JsonlWriter(Writer):
    """One JSON object per step: time, top-k labels, their scores."""

    ext = "jsonl"

    def format(self, steps):
        return "".join(json.dumps(jsonl_record(t, pairs), ensure_ascii=False) + "\n" for t, pairs in steps)


class CsvWriter(Writer):
    """A long table, one row per (step, rank): time,rank,label,score; rank 1 is the highest score."""

    ext = "csv"

    def format(self, steps):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["time", "rank", "label", "score"])
        for t, pairs in steps:
            for rank, (label, score) in enumerate(pairs, 1):
                w.writerow([repr(float(t)), rank, label, repr(float(score))])
        return buf.getvalue()


WRITERS: dict[str, type[Writer]] = {"txt": TxtWriter, "jsonl": JsonlWriter, "csv": CsvWriter}


def get_writer(fmt: str) -> Writer:
    """The writer for `fmt` ("txt", "jsonl" or "csv")."""
    try:
        return WRITERS[fmt]()
    except KeyError:
        raise StreamtagError(f"unknown output format {fmt!r}; choose one of {', '.join(WRITERS)}") from None
