"""The shared shapes of sound events: `Event`, `RuleHop` and the `EventListener` protocol.

Every output of an event (the `--json` stream, `PREFIX.events.jsonl`, CSV, the SQLite log, MQTT, webhooks,
`--on-event` commands) carries `Event.to_dict()`, so the field names are defined once, here.

Listeners are called on the inference thread: they must only copy what they need and enqueue it (a bounded queue
drained by their own thread). Nothing a listener does may wait on the network, a disk flush or a screen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol, Sequence

FIELDS = ("id", "label", "start", "end", "peak", "peak_time", "classes", "source", "model", "wall_start",
          "wall_end", "clip")


@dataclass
class Event:
    """One detection of one rule. `start`/`end` are seconds of stream time (onset/offset); `end` is None while
    the event is still active. `wall_start`/`wall_end` are ISO 8601 UTC (live sessions only). `classes` are the
    model classes that drove it, strongest first. `id` is unique and stable (the same in every output)."""

    id: str
    label: str
    start: float
    end: float | None
    peak: float
    peak_time: float
    classes: list[str] = field(default_factory=list)
    source: str = ""
    model: str = ""
    wall_start: str | None = None
    wall_end: str | None = None
    clip: str | None = None

    @property
    def active(self) -> bool:
        return self.end is None

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON-able values, keys in FIELDS order."""
        d = asdict(self)
        return {k: d[k] for k in FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Event":
        return cls(**{k: d.get(k) for k in FIELDS if k in d})


@dataclass(frozen=True)
class RuleHop:
    """One rule at one hop: its score (max over its classes of what the dashboard shows), whether it is active,
    and the id of the active event (None when idle). Listeners that keep a per-rule state (MQTT ON/OFF, the
    dashboard) read these."""

    rule: str
    score: float
    active: bool
    event_id: str | None = None
    peak: float | None = None


class EventListener(Protocol):
    """What the detector calls, on the inference thread, in stream order. Implementations only enqueue."""

    def event_started(self, event: Event) -> None: ...

    def event_ended(self, event: Event) -> None: ...

    def hop(self, time: float, level_db: float, rules: Sequence[RuleHop]) -> None: ...

    def close(self, timeout: float) -> None:
        """End of session: deliver what is pending within `timeout` seconds, then stop (called from the main
        thread after the inference thread has ended)."""
        ...
