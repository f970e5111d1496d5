"""One WAV per event, cut from the stream's own samples: onset − pre-roll … offset + post-roll, capped.

`ClipWriter` is an `EventListener`. On the inference thread it only copies samples out of the ring buffer and
enqueues them: the pre-roll when the event is announced (the ring is sized and kept for it: `sources.ring_seconds`,
`Pipeline(keep_seconds=...)`), then at each hop the audio the detector has seen (up to e_k), until the clip's end
(offset + post-roll, or the cap) has gone by. A writer thread appends the samples to a hidden temp file beside
the clip and renames it into place when the clip is complete, so a long event is never held in memory and nobody
sees half a clip. A session stopped mid-event finishes its open clips at the last sample it saw.

The queue is bounded; if the writer falls that far behind, a piece is dropped and counted, and the writer fills the
gap with silence so the clip stays aligned with the stream. Clip names sort by time and carry the
label: `20261127T081502.250Z_dog_3fa2c81b09.wav` (the event's wall-clock start when live, else when it was seen).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.events.detector import iso_utc
from streamtag.events.handoff import Handoff
from streamtag.events.model import Event, RuleHop
from streamtag.events.rules import slug
from streamtag.stream.ring import Overrun
from streamtag.utils import new_file_mode

SAMPLE_RATE = 32000
QUEUE_SIZE = 512


def check_clip_dir(path: str | os.PathLike) -> Path:
    """Create `path` and prove a clip can be written there (a real temp file), before any audio starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".streamtag-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StreamtagError(f"--clips {path}: cannot write clips there ({e.strerror or e}); pick a writable "
                             "directory") from None
    return path


@dataclass
class _Clip:
    key: int
    next: int          # the next stream sample this clip needs
    limit: int         # stream sample where it stops (cap until the event ends, then offset + post-roll)
    ended: bool = False


class ClipWriter:
    """Clips of every event into `directory`; `ring` is the stream's ring buffer.

    How far an active event's clip can be written at hop t_k: its offset will be no earlier than t_k − `lag` (the
    first hop of a run below `off` that is still shorter than the hold: `lag` = the longest (n − 1)·hop of the
    rules), so samples up to t_k − lag + post-roll belong in the clip whatever happens next. `window` (seconds) is
    how far the detector has seen at hop t_k (e_k), which bounds an ended event's remaining post-roll."""

    def __init__(self, directory: str | os.PathLike, ring: Any, window: float, lag: float = 0.0,
                 pre_roll: float = 2.0, post_roll: float = 1.0, clip_max: float = 60.0):
        self.directory = check_clip_dir(directory)
        self.ring = ring
        self.window = int(round(window * SAMPLE_RATE))
        self.lag = int(round(lag * SAMPLE_RATE))
        self.pre = int(round(pre_roll * SAMPLE_RATE))
        self.post = int(round(post_roll * SAMPLE_RATE))
        self.cap = max(1, int(round(clip_max * SAMPLE_RATE)))
        self.seen = 0            # stream samples the detector has seen (e_k of the last hop)
        self.safe = 0            # stream samples that belong in every active event's clip (t_k − lag + post-roll)
        self.written = 0         # clips moved into place
        self.failed = 0          # clips that could not be written (disk full, directory gone)
        self.dropped = 0         # pieces dropped because the writer thread was too far behind
        self.short_pre_roll = 0  # clips whose pre-roll was no longer in the ring
        self.paths: list[Path] = []
        self._open: dict[str, _Clip] = {}  # by event id
        self._keys = 0
        self._pending: list[tuple] = []  # control commands that found the hand-off full
        self._files: dict[int, list[Any]] = {}  # writer thread: key → [SoundFile, tmp path, final path, next, ok]
        self._handoff = Handoff(self._handle, "streamtag-clips", QUEUE_SIZE)

    # ------------------------------------------------------------------ inference thread: read and enqueue
    def event_started(self, event: Event) -> None:
        onset = int(round(event.start * SAMPLE_RATE))
        start = max(0, onset - self.pre)
        if start < self.ring.oldest():
            start = self.ring.oldest()
            self.short_pre_roll += 1
        stamp = (event.wall_start or iso_utc(time.time())).replace("-", "").replace(":", "")
        path = self.directory / f"{stamp}_{slug(event.label)}_{event.id.split('-')[0]}.wav"
        event.clip = str(path)  # every later listener (log, jsonl, notifications) carries it
        self._keys += 1
        clip = _Clip(self._keys, next=start, limit=start + self.cap)
        self._open[event.id] = clip
        self._control(("open", clip.key, path))
        self._feed(event.id, clip, max(onset, self.safe))

    def event_ended(self, event: Event) -> None:
        clip = self._open.get(event.id)
        if clip is None or event.end is None:
            return  # capped and closed already
        clip.limit = min(clip.limit, int(round(event.end * SAMPLE_RATE)) + self.post)
        clip.ended = True
        self._feed(event.id, clip, self.seen)

    def hop(self, time: float, level_db: float, rules: Sequence[RuleHop]) -> None:
        t = int(round(time * SAMPLE_RATE))
        self.seen = t + self.window
        self.safe = max(0, min(self.seen, t - self.lag + self.post))
        for event_id, clip in list(self._open.items()):
            self._feed(event_id, clip, self.seen if clip.ended else self.safe)

    def finish(self, duration: float) -> None:
        """The stream ended after `duration` s: open clips take what is left up to their end, clipped to it."""
        end = min(int(round(duration * SAMPLE_RATE)), self.ring.total)
        for event_id, clip in list(self._open.items()):
            clip.limit = min(clip.limit, end)
            clip.ended = True
            self._feed(event_id, clip, end)

    def _feed(self, event_id: str, clip: _Clip, upto: int) -> None:
        """Enqueue the clip's samples up to `upto` (and its limit); close it once it has them all."""
        stop = min(upto, clip.limit, self.ring.total)
        if stop > clip.next:
            try:
                samples = self.ring.read(clip.next, stop)
            except Overrun:  # lapped (a stalled session): the writer fills the gap with silence
                self.dropped += 1
            else:
                if not self._handoff.put(("audio", clip.key, clip.next, samples)):
                    self.dropped += 1
            clip.next = stop
        if clip.next >= clip.limit or (clip.ended and upto >= clip.limit):
            del self._open[event_id]
            self._control(("close", clip.key, clip.limit))

    def _control(self, command: tuple) -> None:
        self._flush_pending()
        if self._pending or not self._handoff.put(command):
            self._pending.append(command)

    def _flush_pending(self) -> None:
        while self._pending and self._handoff.put(self._pending[0]):
            self._pending.pop(0)

    # ------------------------------------------------------------------ main thread
    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (within `timeout` s), stop the writer; a clip still open (no `finish`, or the time
        ran out) is removed, never left half-written."""
        self._handoff.maxsize += len(self._pending)
        self._flush_pending()
        if self._handoff.close(timeout):
            for key in list(self._files):
                self._fail(key, None)

    # ------------------------------------------------------------------ writer thread
    def _handle(self, batch: list[tuple]) -> None:
        import soundfile as sf

        files = self._files
        for command in batch:
            kind, key = command[0], command[1]
            if kind == "open":
                path, tmp = command[2], None
                try:
                    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.wav", dir=path.parent)
                    os.close(fd)
                    os.chmod(tmp, new_file_mode())
                    f = sf.SoundFile(tmp, mode="w", samplerate=SAMPLE_RATE, channels=1, subtype="FLOAT",
                                     format="WAV")
                    files[key] = [f, Path(tmp), path, None, True]
                except (OSError, RuntimeError) as e:  # soundfile's errors are RuntimeError subclasses
                    files[key] = [None, None if tmp is None else Path(tmp), path, None, True]
                    self._fail(key, e)
            elif kind == "audio":
                entry = files.get(key)
                if entry is None or not entry[4]:
                    continue
                start, samples = command[2], command[3]
                try:
                    if entry[3] is not None and start > entry[3]:  # a dropped piece: keep the clip aligned
                        entry[0].write(np.zeros(start - entry[3], np.float32))
                    entry[0].write(samples)
                    entry[3] = start + len(samples)
                except (OSError, RuntimeError) as e:
                    self._fail(key, e)
            elif kind == "close":
                entry = files.get(key)
                if entry is None or not entry[4]:
                    files.pop(key, None)
                    continue
                f, tmp, path, nxt, _ = entry
                try:
                    if nxt is not None and command[2] > nxt:
                        f.write(np.zeros(command[2] - nxt, np.float32))
                    f.close()
                    os.replace(tmp, path)
                    self.written += 1
                    self.paths.append(path)
                    del files[key]
                except (OSError, RuntimeError) as e:
                    self._fail(key, e)

    def _fail(self, key: int, error: BaseException | None) -> None:
        """Give up on a clip: close and remove its temp file; count it when something went wrong."""
        entry = self._files.pop(key, None)
        if entry is not None:
            if entry[0] is not None:
                with contextlib.suppress(Exception):
                    entry[0].close()
            if entry[1] is not None:
                with contextlib.suppress(OSError):
                    entry[1].unlink()
        if error is not None:
            self.failed += 1
