"""The event detector: per rule, a hysteresis state machine over hop scores; the same code live and offline.

Hop k scores the window [t_k, e_k), e_k = t_k + W. Per rule, s_k is the maximum over its classes of the score shown
(smoothed unless --no-smooth) and L_k the window's RMS level in dBFS:

* idle → active at the first hop with s_k ≥ on and L_k ≥ min_level; onset = max(0, e_k − hop), the newest audio
  that window added;
* while active, a run of n = max(1, ⌈hold / hop⌉) consecutive hops with s < off ends the event (a hop with s ≥ off
  cancels the run); offset = t_j of the run's first hop j: that window no longer holds the sound;
* the stream ends while active: offset = min(e_last, stream duration); offset is never before onset;
* peak / peak_time = the highest s from the onset hop to the end and where (e_k − hop, as onset) it was;
* events shorter than min_duration are dropped. An event is announced (`event_started`) only once it can no longer
  be dropped, so a listener never sees a start without an end; with min_duration 0 that is its onset hop.

Per hop the work is vectorised over rules (one gather and one `maximum.reduceat` for all rule scores); only rules
that are active or crossing `on` take the Python path, so 527 rules cost little more than one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence, overload

import numpy as np

from streamtag.events.model import Event, EventListener, RuleHop
from streamtag.events.rules import Rule, slug

TOP_CLASSES = 3  # an event's `classes`: at most this many, strongest first


def iso_utc(seconds: float) -> str:
    """POSIX seconds → ISO 8601 UTC with milliseconds and a Z (what `wall_start`/`wall_end` hold)."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(value: float) -> float:
    """Event times rounded to the microsecond: 16.1, not 16.099999999999998 (the same rounding live and offline)."""
    return round(value, 6)


def hold_hops(hold: float, hop: float) -> int:
    """n = max(1, ⌈hold / hop⌉), with float noise forgiven (0.9 s / 0.3 s is 3 hops, not 4)."""
    return max(1, math.ceil(hold / hop - 1e-9))


@dataclass
class _Active:
    """What the detector keeps about one active (possibly not yet announced) event."""

    onset: float
    peak: float
    peak_time: float
    class_peaks: np.ndarray
    run: int = 0                      # consecutive hops below `off`
    run_start: float = 0.0            # t_j of the run's first hop
    event: Event | None = None        # set once announced
    id: str = ""


class HopRules(Sequence[RuleHop]):
    """The rules at one hop, as `RuleHop`s made on demand (527 objects per hop would cost more than detecting).

    Holds its own copies of the arrays, so a listener may keep it after the call."""

    def __init__(self, names: Sequence[str], scores: np.ndarray, ids: list[str | None], peaks: np.ndarray,
                 active: list[int]):
        self._names, self._scores, self._ids, self._peaks = names, scores, ids, peaks
        self._active = active

    def __len__(self) -> int:
        return len(self._names)

    @overload
    def __getitem__(self, i: int) -> RuleHop: ...
    @overload
    def __getitem__(self, i: slice) -> list[RuleHop]: ...

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        event_id = self._ids[i]
        return RuleHop(rule=self._names[i], score=float(self._scores[i]), active=event_id is not None,
                       event_id=event_id, peak=None if event_id is None else float(self._peaks[i]))

    def __iter__(self) -> Iterator[RuleHop]:
        return (self[i] for i in range(len(self)))

    def active(self) -> list[RuleHop]:
        """Only the rules with an announced event (cheap: what a screen or an MQTT state needs)."""
        return [self[i] for i in self._active]


@dataclass
class Counts:
    started: int = 0
    ended: int = 0
    dropped: int = 0  # shorter than min_duration
    by_label: dict[str, int] = field(default_factory=dict)


class Detector:
    """Turn hop scores into events for `rules`; call `push` once per hop in stream order, `finish` at the end.

    `labels` name the score columns. `window`/`hop` are seconds (the window and hop cut in samples, / 32000).
    `listeners` get every announced start and end, and every hop. `source`/`model` go into each event;
    `wall_clock` is the POSIX time of the stream's first sample (live sessions; a callable is asked until it
    answers), which gives events their `wall_start`/`wall_end`. `duration`, when known up front (a results file),
    bounds the offsets the min_duration check can expect.
    """

    def __init__(self, rules: Sequence[Rule], labels: Sequence[str], window: float, hop: float,
                 listeners: Sequence[EventListener] = (), source: str = "", model: str = "",
                 wall_clock: float | Callable[[], float | None] | None = None, duration: float | None = None):
        if not rules:
            raise ValueError("a detector needs at least one rule")
        self.rules = list(rules)
        self.labels = list(labels)
        self.window, self.hop = float(window), float(hop)
        self.listeners = list(listeners)
        self.source, self.model = source, model
        self._wall = wall_clock
        self.duration = duration
        self.names = [r.name for r in self.rules]
        self._classes_of = [np.asarray(r.classes, dtype=np.intp) for r in self.rules]
        self._flat = np.concatenate(self._classes_of)
        sizes = np.array([len(r.classes) for r in self.rules])
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        # Thresholds at the scores' own float32 precision: a score shown as 0.35 is ≥ an `off: 0.35`.
        self._on = np.array([r.on for r in self.rules], dtype=np.float32)
        self._off = np.array([r.off for r in self.rules], dtype=np.float32)
        self._off_f = self._off.tolist()
        self._min_level = np.array([r.min_level for r in self.rules])
        self._hold = [hold_hops(r.hold, self.hop) for r in self.rules]
        self._slugs = [slug(r.name) for r in self.rules]
        self._live = np.zeros(len(self.rules), dtype=bool)   # active, announced or not
        self._ids: list[str | None] = [None] * len(self.rules)  # announced events' ids
        self._peaks = np.zeros(len(self.rules))
        self._state: dict[int, _Active] = {}
        self._last_end: float | None = None
        self._source_key = ""
        self.counts = Counts()

    # ------------------------------------------------------------------ input
    @property
    def wall_clock(self) -> float | None:
        if callable(self._wall):
            value = self._wall()
            if value is None:
                return None
            self._wall = value
        return self._wall

    def rule_scores(self, row: np.ndarray) -> np.ndarray:
        """Every rule's score for one row of shown scores (the max over its classes)."""
        return np.maximum.reduceat(np.asarray(row)[self._flat], self._offsets)

    def push(self, time: float, row: np.ndarray, level_db: float) -> None:
        """One hop: `time` = t_k (window start, seconds), `row` the shown scores, `level_db` the window's level."""
        row = np.asarray(row)
        scores = self.rule_scores(row)
        t, e = float(time), float(time) + self.window
        self._last_end = e
        wanted = self._live | ((scores >= self._on) & (level_db >= self._min_level))
        for r in np.flatnonzero(wanted).tolist():
            self._step(r, float(scores[r]), row, t, e)
        if self.listeners:
            announced = sorted(r for r, st in self._state.items() if st.event is not None)
            rules = HopRules(self.names, scores, list(self._ids), self._peaks.copy(), announced)
            for listener in self.listeners:
                listener.hop(t, float(level_db), rules)

    def _step(self, r: int, s: float, row: np.ndarray, t: float, e: float) -> None:
        rule = self.rules[r]
        newest = max(0.0, e - self.hop)
        if self.duration is not None:  # a zero-padded last window (tag pads) adds no audio past the stream's end
            newest = min(newest, self.duration)
        newest = _seconds(newest)
        st = self._state.get(r)
        if st is None:  # idle, and this hop crosses `on` at a loud enough level
            st = _Active(onset=newest, peak=s, peak_time=newest, class_peaks=row[self._classes_of[r]].astype(np.float64))
            st.id = self._event_id(r, st.onset)
            self._state[r] = st
            self._live[r] = True
        else:
            if s > st.peak:
                st.peak, st.peak_time = s, newest
            np.maximum(st.class_peaks, row[self._classes_of[r]], out=st.class_peaks)
            if s < self._off_f[r]:
                if st.run == 0:
                    st.run_start = t
                st.run += 1
                if st.run >= self._hold[r]:
                    self._end(r, max(st.onset, _seconds(st.run_start)))
                    return
            else:
                st.run = 0
        self._peaks[r] = st.peak
        if st.event is None:
            earliest = st.run_start if st.run else min(t + self.hop, e)
            if self.duration is not None:
                earliest = min(earliest, self.duration)
            if max(earliest, st.onset) - st.onset >= rule.min_duration:
                self._announce(r, st)

    # ------------------------------------------------------------------ output
    def _event_id(self, r: int, onset: float) -> str:
        if not self._source_key:
            wall = self.wall_clock
            key = f"{self.source}|{self.model}|{'' if wall is None else repr(wall)}"
            self._source_key = hashlib.sha1(key.encode()).hexdigest()[:10]
        return f"{self._source_key}-{round(onset * 1000):09d}-{self._slugs[r]}"

    def _wall_iso(self, seconds: float) -> str | None:
        wall = self.wall_clock
        return None if wall is None else iso_utc(wall + seconds)

    def _classes(self, r: int, st: _Active) -> list[str]:
        """The classes that drove the event: the strongest, then any other that reached `off`, at most 3."""
        classes = self.rules[r].classes
        order = np.argsort(-st.class_peaks, kind="stable")[:TOP_CLASSES]
        keep = [i for n, i in enumerate(order.tolist()) if n == 0 or st.class_peaks[i] >= self._off_f[r]]
        return [self.labels[classes[i]] for i in keep]

    def _announce(self, r: int, st: _Active) -> None:
        st.event = Event(id=st.id, label=self.rules[r].name, start=st.onset, end=None, peak=st.peak,
                         peak_time=st.peak_time, classes=self._classes(r, st), source=self.source, model=self.model,
                         wall_start=self._wall_iso(st.onset))
        self._ids[r] = st.id
        self._peaks[r] = st.peak
        self.counts.started += 1
        for listener in self.listeners:
            listener.event_started(st.event)  # a listener may fill `clip` here (the clip writer does)

    def _end(self, r: int, offset: float) -> None:
        st = self._state.pop(r)
        self._live[r] = False
        self._ids[r] = None
        self._peaks[r] = 0.0
        offset = max(offset, st.onset)
        if st.event is None:
            if offset - st.onset < self.rules[r].min_duration:
                self.counts.dropped += 1
                return
            self._announce(r, st)
            self._ids[r] = None
        assert st.event is not None
        # peak_time is the newest audio of the loudest window, which can lie past the offset (the window still held
        # the sound's start when the run began): it is clamped into the event.
        event = replace(st.event, end=offset, peak=st.peak, peak_time=min(st.peak_time, offset),
                        classes=self._classes(r, st),
                        wall_end=self._wall_iso(offset))
        self.counts.ended += 1
        self.counts.by_label[event.label] = self.counts.by_label.get(event.label, 0) + 1
        for listener in self.listeners:
            listener.event_ended(event)

    def finish(self, duration: float) -> None:
        """The stream ended after `duration` seconds: every active event ends at min(e_last, duration)."""
        if self._last_end is None:
            return
        offset = _seconds(min(self._last_end, float(duration)))
        for r in sorted(self._state):
            self._end(r, offset)

    @property
    def active(self) -> list[Event]:
        """The announced events still running (for a summary or a screen)."""
        return [st.event for st in self._state.values() if st.event is not None]


def detect(result: Any, rules: Sequence[Rule], smooth_size: int | None,
           listeners: Sequence[EventListener] = ()) -> list[Event]:
    """The events of a results file (`results.TagResult`), hop by hop through the live path's own Smoother and
    Detector, so a recording gives exactly the events its live session logged. Returns the finished events."""
    from streamtag.results import Smoother
    from streamtag.tagging import window_sizes

    finished = Collector()
    win, hop = window_sizes(result.sample_duration, result.hop_duration)
    rate = 32000
    detector = Detector(rules, result.labels, win / rate, hop / rate, listeners=[*listeners, finished],
                        source=result.source, model=result.model, wall_clock=result.wall_clock,
                        duration=result.duration if math.isfinite(result.duration) else None)
    smoother = Smoother(smooth_size) if smooth_size else None
    # Without a stored level (older files) min_level cannot apply: every window counts as loud (0 dBFS).
    levels = result.level.tolist() if result.level is not None else [0.0] * len(result.time)
    for t, row, level in zip(result.time.tolist(), result.scores, levels):
        detector.push(t, smoother.push(row) if smoother is not None else row, level)
    detector.finish(result.duration if math.isfinite(result.duration) else math.inf)
    return finished.events


class Collector:
    """A listener that keeps the finished events (offline detection, tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.started: list[Event] = []

    def event_started(self, event: Event) -> None:
        self.started.append(event)

    def event_ended(self, event: Event) -> None:
        self.events.append(event)

    def hop(self, time: float, level_db: float, rules: Sequence[RuleHop]) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass
