"""Everything `--events` adds to a live or replay session: the detector as a pipeline sink and its listeners.

Built before any audio starts, so a bad database or clips directory fails first. Listener order matters and is fixed
here: the clip writer first (it fills `Event.clip`, which every later listener then carries), then the SQLite log,
PREFIX.events.jsonl, the `--json` objects, then whatever the caller adds (the dashboard's board, notifications).
"""

from __future__ import annotations

from typing import Any, Sequence

from streamtag.events.detector import Detector, hold_hops
from streamtag.events.model import EventListener
from streamtag.events.rules import Rule
from streamtag.stream.pipeline import SAMPLE_RATE, HopResult


class SessionEvents:
    """The detector of one session plus its outputs. `add` is the pipeline sink; `flush` runs beside the
    recorder's; `finish` at the end (`abort` when start-up fails)."""

    def __init__(self, rules: Sequence[Rule], labels: Sequence[str], window: int, hop: int, source: Any,
                 model: str, smoothed: bool, db: str | None = None, clips: str | None = None,
                 pre_roll: float = 2.0, post_roll: float = 1.0, clip_max: float = 60.0, record: str | None = None,
                 json: bool = False, listeners: Sequence[EventListener] = ()):
        from streamtag.events.clips import ClipWriter
        from streamtag.events.output import JsonEvents, RecordedEvents
        from streamtag.events.store import EventStore

        self.smoothed = smoothed
        self.clips = self.store = self.recorded = None
        built: list[Any] = []
        try:
            if clips:  # checked first: a bad directory must not leave a fresh event log behind
                lag = max((hold_hops(r.hold, hop / SAMPLE_RATE) - 1) * hop for r in rules) / SAMPLE_RATE
                self.clips = ClipWriter(clips, source.ring, window / SAMPLE_RATE, lag, pre_roll, post_roll, clip_max)
                built.append(self.clips)
            self.store = EventStore(db)
            built.append(self.store)
            if record:
                self.recorded = RecordedEvents(record)
                built.append(self.recorded)
        except BaseException:
            for listener in built:
                listener.close(1.0)
            raise
        if json:
            built.append(JsonEvents())
        self.listeners: list[EventListener] = [*built, *listeners]
        self.detector = Detector(rules, labels, window / SAMPLE_RATE, hop / SAMPLE_RATE, listeners=self.listeners,
                                 source=source.name, model=model,
                                 wall_clock=lambda: getattr(source, "wall_clock", None))

    def add(self, result: HopResult) -> None:
        """Pipeline sink (inference thread): the shown row (smoothed unless --no-smooth) into the detector."""
        self.detector.push(result.time, result.smoothed if self.smoothed else result.scores, result.level_db)

    def flush(self) -> None:
        if self.recorded is not None:
            self.recorded.flush()

    def finish(self, duration: float, timeout: float = 10.0) -> None:
        """End of stream (after the inference thread stopped): end active events, write PREFIX.events.jsonl, then
        close every listener (each delivers what it holds within `timeout`)."""
        try:
            self.detector.finish(duration)
            if self.clips is not None:
                self.clips.finish(duration)
            self.flush()
        finally:
            self.abort(timeout)

    def abort(self, timeout: float = 1.0) -> None:
        """Stop every listener's thread without writing the session's files (start-up failed)."""
        for listener in self.listeners:
            listener.close(timeout)

    def summary(self) -> list[str]:
        """Lines for the session summary: counts per rule, where the log and clips went, anything dropped."""
        c = self.detector.counts
        per = ", ".join(f"{label} {n}" for label, n in sorted(c.by_label.items()))
        lines = [f"events: {c.ended}" + (f" ({per})" if per else "") +
                 (f" · {c.dropped} shorter than min_duration" if c.dropped else "")]
        if self.store is not None:
            dropped = f" · {self.store.dropped} not logged ({self.store.failed or 'queue full'})" \
                if self.store.dropped else ""
            lines.append(f"event log {self.store.path}{dropped}")
        if self.clips is not None:
            extra = "".join(f" · {n} {what}" for n, what in (
                (self.clips.failed, "failed"), (self.clips.dropped, "blocks dropped (silence)"),
                (self.clips.short_pre_roll, "with a short pre-roll")) if n)
            lines.append(f"{self.clips.written} clips in {self.clips.directory}{extra}")
        if self.recorded is not None:
            lines.append(f"wrote {self.recorded.path}")
        return lines
