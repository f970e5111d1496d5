"""`Notifier`: the EventListener that turns detected events into notifications and hands them to the transports.

It runs on the inference thread, so it only decides and enqueues: which events are notified (a rule's `notify:
false` keeps its events in the log but off every transport; its `cooldown` mutes a rule's next events until that
many seconds of stream time have passed since its last notified event ended), what the message says (one JSON
shape for every transport: `message()`), and when the level goes out (about once a second of stream time). Each
transport then delivers on its own thread (base.Transport).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from streamtag.events.model import Event, RuleHop
from streamtag.notify.base import Stats, Transport

LEVEL_INTERVAL = 1.0  # seconds of stream time between level readings
CLOSE_TIMEOUT = 5.0  # what a session gives the transports to flush at exit


class RulePolicy(Protocol):
    """What the notifier reads of a rule (events.rules.Rule has these fields)."""

    name: str
    cooldown: float
    notify: bool


@dataclass(frozen=True)
class Notification:
    """One event start or end, as every transport receives it. `payload` is `message()`'s dict."""

    kind: str  # "start" | "end"
    rule: str
    payload: dict[str, Any]


def default_node() -> str:
    """The node name when --node is not given: the host name, as far as the first dot."""
    return socket.gethostname().split(".")[0] or "streamtag"


def message(kind: str, node: str, event: Event) -> dict[str, Any]:
    """The JSON every transport sends: `type` (start/end), `node`, then the event's own fields (Event.to_dict)."""
    return {"type": kind, "node": node, **event.to_dict()}


class Notifier:
    """Decides what is notified and fans it out to `transports` (EventListener; started and closed by the owner)."""

    def __init__(self, transports: Sequence[Transport], rules: Sequence[RulePolicy], node: str):
        self.transports = list(transports)
        self.node = node
        self.policies = {r.name: r for r in rules}
        self.muted = 0  # events not notified because of a cooldown
        self._notified: set[str] = set()  # ids of active events that were announced
        self._last_end: dict[str, float] = {}
        self._next_level: float | None = None
        self._closed = False

    def start(self) -> None:
        for t in self.transports:
            t.start()

    # ---------------------------------------------------------------------------------- EventListener
    def event_started(self, event: Event) -> None:
        policy = self.policies.get(event.label)
        if policy is not None and not policy.notify:
            return
        cooldown = policy.cooldown if policy is not None else 0.0
        last = self._last_end.get(event.label)
        if cooldown and last is not None and event.start - last < cooldown:
            self.muted += 1
            return
        self._notified.add(event.id)
        self._send(Notification("start", event.label, message("start", self.node, event)))

    def event_ended(self, event: Event) -> None:
        if event.id not in self._notified:
            return
        self._notified.discard(event.id)
        self._last_end[event.label] = event.end if event.end is not None else event.start
        self._send(Notification("end", event.label, message("end", self.node, event)))

    def hop(self, time: float, level_db: float, rules: Sequence[RuleHop]) -> None:
        if self._next_level is not None and time < self._next_level:
            return
        self._next_level = time + LEVEL_INTERVAL
        active = [r for r in rules if r.active and r.event_id in self._notified]
        for t in self.transports:
            t.level(level_db, active)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Flush every transport in parallel within `timeout` seconds, then stop them (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        for t in self.transports:
            t.begin_close()
        for t in self.transports:
            t.end_close(deadline)

    def _send(self, note: Notification) -> None:
        for t in self.transports:
            t.put(note)

    # ---------------------------------------------------------------------------------- what is shown
    def stats(self) -> list[tuple[str, Stats]]:
        return [(t.label, t.stats) for t in self.transports]

    def totals(self) -> Stats:
        total = Stats()
        for _, s in self.stats():
            total.sent += s.sent
            total.dropped += s.dropped
            total.failed += s.failed
            total.reconnects += s.reconnects
            total.pending += s.pending
        return total

    def dashboard_line(self) -> str:
        """One line for the dashboard (fits its 80 columns): totals over every transport."""
        t = self.totals()
        down = [tr.label for tr in self.transports if not tr.connected]
        state = f" · {', '.join(down)} down" if down else ""
        return (f"sent {t.sent} · pending {t.pending} · dropped {t.dropped} · failed {t.failed} · "
                f"reconnects {t.reconnects}{state}")

    def summary_lines(self) -> list[str]:
        """Per transport, for the summary at exit."""
        lines = []
        for label, s in self.stats():
            reconnects = f" · {s.reconnects} reconnects" if label == "mqtt" else ""
            lines.append(f"notify {label}: {s.sent} sent · {s.dropped} dropped · {s.failed} failed{reconnects}")
        if self.muted:
            lines.append(f"notify: {self.muted} events muted by a rule's cooldown (still logged)")
        return lines
