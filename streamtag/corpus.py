"""Tagging a corpus: which files to tag, where each result goes, what is already done, and the local executor.

`streamtag tag` on one box and the Ray executor share everything here, so both tag the same files into the same
places and skip the same ones:

* `collect_sources(paths, recursive, from_list)` — the file list. A file named on the command line (or in a
  `--from-list` file) is tagged whatever its extension; a directory contributes the files directly inside it (every
  level below with `recursive`) whose extension libsndfile reads (`AUDIO_EXTENSIONS`), in sorted order; names
  starting with a dot are skipped (our own temp files, macOS `._*` resource forks, `.git`).
* `Source.name` — where its result goes under `--output-dir`: a file given by name → `<stem>.npz`; a file found in a
  directory → its path relative to that directory with the extension replaced: `tag rec/ -o out` writes
  `rec/2024/a.wav` to `out/2024/a.npz`. Two inputs that would write the same result are an error for the second
  (`a.wav` and `a.flac` side by side; two directories holding the same relative path).
* `TagOptions` — what defines a result: model, weights sha256, window/hop, padding, precision, embeddings. Batch
  size, threads, engine and device do not (they change scores by float rounding at most), so changing them never
  redoes work.
* The resume rule (`is_done`): a result is skipped when it exists, is marked complete and was made with the same
  model, weights sha256 and options digest (`TagOptions.digest`). `overwrite=True` redoes everything. Results are
  written atomically (temp file + rename), so a file interrupted mid-way simply has no result and is redone.
* `Job` — one file to tag: input path, output path, options, header duration; plain strings and numbers, so it
  pickles (Ray tasks) and `output` may be any path a worker can reach.
* `run_jobs(jobs, scorer, batch_size)` — the local executor: a decode thread reads, mixes and resamples the next
  windows (also across file boundaries) into a bounded queue while the model scores; yields one `Outcome` per job.
  A file that fails to decode fails alone. `tag_job(job, scorer, batch_size)` is the same for one job (what a Ray
  worker calls).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import sys
import threading
import time as clock
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.paths import OutputPlan

# What libsndfile decodes (soundfile.available_formats(), by the extensions people use); mp3 needs libsndfile ≥ 1.1.
AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                              ".au", ".snd", ".w64", ".caf", ".rf64"})
RESULT_EXT = ".npz"
QUEUE_BATCHES = 4  # batches the decode thread may run ahead of the model (bounded: memory stays flat)


# ---------------------------------------------------------------------------------------------- the file list
@dataclass(frozen=True)
class Source:
    """An input file and the relative name of its result (no extension), e.g. Path('2024/a')."""

    path: Path
    name: Path


def _audio_files(folder: Path, recursive: bool) -> Iterator[Path]:
    """Audio files in `folder` (sorted; recursing into non-hidden subfolders when asked), hidden names skipped."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise StreamtagError(f"{folder}: cannot list ({e.strerror or e}); check its permissions") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir():
            if recursive:
                yield from _audio_files(path, recursive)
        elif path.suffix.lower() in AUDIO_EXTENSIONS:
            yield path


def read_list(path: str | os.PathLike) -> list[str]:
    """The entries of a `--from-list` file: one path per line; blank lines and lines starting with # are skipped.

    `-` reads standard input. Relative paths are relative to the current directory (as `find . > list` writes them).
    """
    if str(path) == "-":
        text = sys.stdin.read()
    else:
        from streamtag.paths import read_input_text

        try:
            text = read_input_text(path, "list", "pass a text file with one audio path per line", 256 << 20)
        except StreamtagError as e:
            raise StreamtagError(f"--from-list {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def collect_sources(paths: Sequence[str | os.PathLike], recursive: bool = False,
                    from_list: str | os.PathLike | None = None) -> tuple[list[Source], list[str]]:
    """The files to tag, in order, and one error message per input that gave none.

    A directory that holds no audio file is an error (a typo in a folder name should not look like success); so is
    a path that does not exist. Files are not opened here (see `plan_jobs`).
    """
    entries = [str(p) for p in paths] + (read_list(from_list) if from_list is not None else [])
    sources: list[Source] = []
    errors: list[str] = []
    for entry in entries:
        path = Path(entry)
        if os.path.isdir(path):  # (Path.is_dir raises on ENAMETOOLONG, EACCES)
            found = [Source(f, f.relative_to(path).with_suffix("")) for f in _audio_files(path, recursive)]
            if not found:
                where = "in it or below" if recursive else "in it (--recursive also looks in subfolders)"
                errors.append(f"{path}: directory without audio files (.wav, .flac, .ogg, .mp3, ...) {where}")
            sources.extend(found)
        else:
            sources.append(Source(path, Path(path.stem)))  # a missing file fails later, with the others
    return sources, errors


# ---------------------------------------------------------------------------------------------- options, jobs
@dataclass(frozen=True)
class TagOptions:
    """The options that define a result; two results made with equal TagOptions are interchangeable."""

    model: str
    weights_sha256: str
    sample_duration: float
    hop_duration: float
    pad: bool = True
    precision: str = "fp32"
    embeddings: bool = False

    def settings(self) -> dict:
        """The options besides model and weights, as stored in the npz (`options`, JSON)."""
        return {"sample_duration": float(self.sample_duration), "hop_duration": float(self.hop_duration),
                "pad": bool(self.pad), "precision": self.precision, "embeddings": bool(self.embeddings)}

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON of `settings()` (what the resume rule compares besides model and weights)."""
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()

    def stamp(self) -> dict:
        """What a result made with these options stores so a later run can tell it is done (see `is_done`)."""
        return {"complete": True, "weights_sha256": self.weights_sha256, "options_sha256": self.digest,
                "options": json.dumps(self.settings(), sort_keys=True)}


@dataclass(frozen=True)
class Job:
    """One file to tag: where it is, where its result goes, how to tag it, and its duration (header, seconds)."""

    input: str
    output: str
    options: TagOptions
    duration: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


def result_path(output_dir: str | os.PathLike, source: Source) -> Path:
    """`<output_dir>/<source.name>.npz` (the name keeps dots: `a.b.wav` → `a.b.npz`)."""
    return Path(output_dir) / source.name.parent / (source.name.name + RESULT_EXT)


def is_done(output: str | os.PathLike, options: TagOptions) -> bool:
    """The resume rule: `output` holds a complete result made with the same model, weights and options."""
    from streamtag.results import read_stamp

    stamp = read_stamp(output)
    return bool(stamp and stamp.get("complete") and stamp.get("model") == options.model
                and stamp.get("weights_sha256") == options.weights_sha256
                and stamp.get("options_sha256") == options.digest)


@dataclass
class Plan:
    """What `plan_jobs` found: jobs to run, jobs already done (skipped), one error line per bad input."""

    todo: list[Job] = field(default_factory=list)
    done: list[Job] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Audio seconds still to tag (from the headers)."""
        return float(sum(j.duration for j in self.todo if math.isfinite(j.duration)))


def plan_jobs(sources: Iterable[Source], output_dir: str | os.PathLike, options: TagOptions,
              overwrite: bool = False, guard: OutputPlan | None = None) -> Plan:
    """Check every input's header (a bad file is an error line, not an exception), give each its output path,
    refuse two inputs writing the same output, and set aside the ones the resume rule finds done. `guard` checks
    each output before any work (not a directory, writable, not one of the run's inputs)."""
    from streamtag.audio import AudioReader

    plan = Plan()
    claimed: dict[Path, tuple[Path, Path]] = {}  # output → (resolved input, input as given)
    for source in sources:
        output = result_path(output_dir, source)
        try:
            real = Path(os.path.realpath(source.path))  # (Path.resolve raises on a symlink loop)
            if output in claimed:
                if claimed[output][0] == real:
                    continue  # the same file reached twice (named and inside a named folder): tag it once
                raise StreamtagError(f"{source.path}: another input already writes {output} ({claimed[output][1]}); "
                                     "tag files with the same name into different --output-dir")
            claimed[output] = (real, source.path)
            reader = AudioReader(source.path)
            if guard is not None:
                guard.add(output, "--output-dir")
            job = Job(str(source.path), str(output), options, reader.duration)
        except StreamtagError as e:
            plan.errors.append(str(e))
            continue
        (plan.todo if overwrite or not is_done(output, options) else plan.done).append(job)
    return plan


# ---------------------------------------------------------------------------------------------- executor
@dataclass
class Outcome:
    """How one job went: `error` is None on success; `seconds` is the wall time from its first window to saved."""

    job: Job
    duration: float = 0.0
    windows: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Batch:
    """What the decode thread hands the model: up to batch_size windows (rows may belong to several jobs, in job
    order), then the jobs that ended or failed after those rows, in the order it happened."""

    __slots__ = ("rows", "owners", "starts", "levels", "events")

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.owners: list[int] = []   # job index of each row
        self.starts: list[int] = []   # start sample of each row
        self.levels: list[float] = []  # RMS dBFS of each row (audio.window_level_db)
        self.events: list[tuple] = []  # ("end", index, duration, sample_rate) | ("error", index, message)


_END = object()


def _decode(jobs: Sequence[Job], batch_size: int, out: queue.Queue, stop: threading.Event) -> None:
    """The decode thread: windows of every job, batched across file boundaries (a batch keeps filling with the next
    file's windows, so every model call but the last is full-sized and sees one input shape), job ends and
    failures attached after their rows."""
    from streamtag.audio import AudioReader, window_level_db
    from streamtag.tagging import iter_windows, window_sizes

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    batch = _Batch()
    try:
        for index, job in enumerate(jobs):
            opts = job.options
            try:
                win, hop = window_sizes(opts.sample_duration, opts.hop_duration)
                if batch.rows and len(batch.rows[0]) != win:  # another window length: its own batches
                    if not put(batch):
                        return
                    batch = _Batch()
                reader = AudioReader(job.input)
                for start, window in iter_windows(reader.blocks(), win, hop, opts.pad):
                    batch.rows.append(window.copy() if window.base is not None else window)
                    batch.owners.append(index)
                    batch.starts.append(start)
                    batch.levels.append(window_level_db(window))
                    if len(batch.rows) == batch_size:
                        if not put(batch):
                            return
                        batch = _Batch()
                batch.events.append(("end", index, reader.duration, reader.sample_rate))
            except StreamtagError as e:
                batch.events.append(("error", index, str(e) if job.input in str(e) else f"{job.input}: {e}"))
            except Exception as e:  # noqa: BLE001 - a decoder bug on one file must not stop the others
                batch.events.append(("error", index, f"{job.input}: decoding failed ({e.__class__.__name__}: {e})"))
        if (batch.rows or batch.events) and not put(batch):
            return
    finally:
        put(_END)


def run_jobs(jobs: Sequence[Job], scorer, batch_size: int = 1,
             on_windows: Callable[[Job, float], None] | None = None) -> Iterator[Outcome]:
    """Tag `jobs` in order with `scorer` (engine.Scorer); yield each job's Outcome as its result is saved.

    Decoding and resampling run in a thread of their own, at most QUEUE_BATCHES batches ahead of the model;
    batches run across file boundaries. `on_windows(job, audio_seconds)` is called after each model call with the
    audio seconds it covered of that job (for a progress bar). Stopping the iteration (or Ctrl-C) stops the decode
    thread; the jobs being tagged then have no result file (results are only ever renamed into place complete).
    """
    from streamtag.results import save_result
    from streamtag.tagging import TARGET_RATE

    if batch_size < 1:
        raise StreamtagError(f"--batch-size must be 1 or more, got {batch_size}")
    jobs = list(jobs)
    items: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    stop = threading.Event()
    thread = threading.Thread(target=_decode, args=(jobs, batch_size, items, stop), name="streamtag-decode",
                              daemon=True)
    thread.start()
    parts: dict[int, list[tuple]] = {}  # job → [(starts, scores, embeddings, levels)] per batch
    began: dict[int, float] = {}
    failed: set[int] = set()
    try:
        while True:
            batch = items.get()
            if batch is _END:
                break
            now = clock.perf_counter()
            outcomes: list[Outcome] = []
            if batch.rows:
                owners = np.asarray(batch.owners)
                try:
                    scores, embeddings = scorer.embed(np.stack(batch.rows))
                except StreamtagError as error:  # e.g. windows too short for the model: every job of the batch
                    for index in dict.fromkeys(batch.owners):
                        if index not in failed:
                            failed.add(index)
                            parts.pop(index, None)
                            job = jobs[index]
                            outcomes.append(Outcome(job, error=str(error) if job.input in str(error)
                                                    else f"{job.input}: {error}"))
                else:
                    starts = np.asarray(batch.starts, dtype=np.int64)
                    levels = np.asarray(batch.levels, dtype=np.float32)
                    for index in dict.fromkeys(batch.owners):
                        if index in failed:
                            continue
                        mine = owners == index
                        job = jobs[index]
                        began.setdefault(index, now)
                        parts.setdefault(index, []).append(
                            (starts[mine], scores[mine], embeddings[mine] if job.options.embeddings else None,
                             levels[mine]))
                        if on_windows is not None:
                            hop = int(job.options.hop_duration * TARGET_RATE)
                            seconds = int(mine.sum()) * hop / TARGET_RATE
                            on_windows(job, min(seconds, job.duration) if math.isfinite(job.duration) else seconds)
            for event in batch.events:
                index, job = event[1], jobs[event[1]]
                if index in failed:
                    continue
                if event[0] == "error":
                    failed.add(index)
                    parts.pop(index, None)
                    outcomes.append(Outcome(job, error=event[2]))
                    continue
                done = parts.pop(index, [])
                try:
                    if not done:
                        raise StreamtagError(f"{job.input}: no audio decoded; the file may be truncated")
                    result = make_result(job, np.concatenate([d[0] for d in done]),
                                         np.concatenate([d[1] for d in done]), np.concatenate([d[3] for d in done]),
                                         event[2], event[3],
                                         np.concatenate([d[2] for d in done]) if job.options.embeddings else None)
                    save_result(job.output, result)
                    outcomes.append(Outcome(job, event[2], len(result.time),
                                            clock.perf_counter() - began.pop(index, now)))
                except StreamtagError as error:
                    outcomes.append(Outcome(job, error=str(error)))
            yield from outcomes
    finally:
        stop.set()
        thread.join(timeout=5)


def make_result(job: Job, starts: np.ndarray, scores: np.ndarray, levels: np.ndarray, duration: float,
                sample_rate: int, embedding: np.ndarray | None = None):
    """The TagResult of one job's windows (start samples at 32 kHz, levels in dBFS), stamped for the resume rule."""
    options = job.options
    from streamtag.labels import audioset_labels
    from streamtag.results import TagResult
    from streamtag.tagging import TARGET_RATE

    labels = list(audioset_labels())
    if scores.shape[1] != len(labels):
        labels = [f"class {i}" for i in range(scores.shape[1])]
    return TagResult(
        time=np.asarray(starts, dtype=np.int64) / TARGET_RATE,  # exact k·hop/32000, shortest float repr
        scores=np.asarray(scores, dtype=np.float32),
        duration=float(duration),
        sample_rate=int(sample_rate),
        model=options.model,
        sample_duration=float(options.sample_duration),
        hop_duration=float(options.hop_duration),
        labels=labels,
        level=np.asarray(levels, dtype=np.float32),
        source=job.input,
        embedding=None if embedding is None else np.asarray(embedding, dtype=np.float32),
        stamp=options.stamp(),
    )


def tag_job(job: Job, scorer, batch_size: int = 1) -> Outcome:
    """Tag one job (decode thread included) and save its result: what a worker of a distributed executor calls."""
    return next(iter(run_jobs([job], scorer, batch_size)))
