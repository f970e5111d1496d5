"""The one small interface every transport sits behind: a bounded queue in, its own thread(s), deliver, count.

The detector calls listeners on the inference thread, so nothing here may wait on a network or a child process
there: `put` appends to a deque under a lock and returns. When the queue is full the OLDEST notification is dropped
(the newest says more about now) and counted. Values where only the latest matters (the input level, a rule's
score) go through `put_latest`, a slot per key that a new value overwrites: an hour without a broker leaves one
level reading pending, not 3600, and never pushes an event out of the queue.

A transport's `deliver` does its own retries; it sleeps only through `pause`, which ends early once the close
deadline has passed, so `close(timeout)` always returns by its deadline.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

from streamtag.events.model import RuleHop

DEFAULT_CAPACITY = 1000


@dataclass
class Stats:
    """What the dashboard and the summary show for one transport (plain ints: read from other threads)."""

    sent: int = 0
    dropped: int = 0  # pushed out of a full queue, or still pending at the close deadline
    failed: int = 0  # given up on after its retries (a webhook's 4xx, a command's non-zero exit)
    reconnects: int = 0
    pending: int = 0


def backoff(attempt: int, first: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...): doubling from `first`, at most `cap`."""
    return min(cap, first * 2 ** (attempt - 1))


class Transport:
    """Base class: subclasses implement `deliver(item) -> bool` (True = sent) and may override `finish()`, which
    the (last) worker runs after the queue is drained at close (MQTT publishes OFF states and `offline` there)."""

    name = "transport"

    def __init__(self, label: str, capacity: int = DEFAULT_CAPACITY, threads: int = 1):
        self.label = label  # what the summary calls it: "mqtt", "webhook 1", "on-event"
        self.capacity = capacity
        self.stats = Stats()
        self.last_error: str | None = None  # why the latest failure failed, for the summary
        self._items: collections.deque[Any] = collections.deque()
        self._latest: dict[Hashable, Any] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()  # set when the close deadline passes: retries and waits give up
        self._busy = 0
        self._threads = [threading.Thread(target=self._run, name=f"notify-{label}-{i}", daemon=True)
                         for i in range(threads)]
        self._alive = len(self._threads)

    # ------------------------------------------------------------------------------------------ producer side
    def start(self) -> None:
        for t in self._threads:
            t.start()

    def put(self, item: Any) -> None:
        """Queue `item` (never blocks). A full queue drops its oldest item and counts it."""
        with self._cond:
            if self._closing:
                self.stats.dropped += 1
                return
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.stats.dropped += 1
            self._items.append(item)
            self.stats.pending = len(self._items) + len(self._latest)
            self._cond.notify()

    def put_latest(self, key: Hashable, item: Any) -> None:
        """Set the pending value of `key`, replacing one not yet delivered (never blocks, never drops events)."""
        with self._cond:
            if self._closing:
                return
            self._latest[key] = item
            self.stats.pending = len(self._items) + len(self._latest)
            self._cond.notify()

    def level(self, level_db: float, active: Sequence[RuleHop]) -> None:
        """About once a second: the input level and the rules with an announced active event (MQTT uses it)."""

    @property
    def connected(self) -> bool:
        """False while a connection-based transport is away from its server (shown on the dashboard)."""
        return True

    # ------------------------------------------------------------------------------------------ worker side
    @property
    def aborted(self) -> bool:
        return self._abort.is_set()

    def pause(self, seconds: float) -> bool:
        """Sleep `seconds` unless the close deadline passes first; False = give up now."""
        return not self._abort.wait(seconds)

    def ready(self) -> bool:
        """Whether delivering can start now (MQTT: connected). Items wait in the queue until then."""
        return True

    def deliver(self, item: Any) -> bool:
        raise NotImplementedError

    def interrupt(self) -> None:
        """The close deadline passed: cut short whatever a worker is blocked in (a command kills its children)."""

    def finish(self) -> None:
        """Runs once on a worker thread after the queue is drained at close (or the deadline passed)."""

    def _next(self) -> tuple[str, Any]:
        """("item", x) or ("latest", x) to deliver; ("stop", None) when closing and nothing is left, or the close
        deadline passed. Queued items go first: an event outranks a level reading."""
        with self._cond:
            while True:
                if self._abort.is_set():
                    return "stop", None
                if (self._items or self._latest) and self.ready():
                    self._busy += 1
                    if self._items:
                        return "item", self._items.popleft()
                    return "latest", self._latest.pop(next(iter(self._latest)))
                if self._closing and not self._items and not self._latest:
                    return "stop", None
                self._cond.wait(0.25)

    def _run(self) -> None:
        try:
            while True:
                kind, item = self._next()
                if kind == "stop":
                    break
                try:
                    delivered = self.deliver(item)
                except Exception:  # a transport bug must not kill the thread and silently stop notifications
                    delivered = False
                with self._cond:
                    self._busy -= 1
                    if kind == "latest":  # level readings are not notifications: not counted
                        pass
                    elif delivered:
                        self.stats.sent += 1
                    elif self._abort.is_set():
                        self.stats.dropped += 1
                    else:
                        self.stats.failed += 1
                    self.stats.pending = len(self._items) + len(self._latest) + self._busy
        finally:
            with self._cond:
                self._alive -= 1
                last = self._alive == 0
            if last:
                self.finish()

    # ------------------------------------------------------------------------------------------ shutdown
    def begin_close(self) -> None:
        """Stop taking new items; the workers drain what is queued (not the latest-value slots), then run
        `finish()` and exit."""
        with self._cond:
            self._closing = True
            self._latest.clear()  # a level reading is not worth waiting for at exit (finish() says what is final)
            self._cond.notify_all()

    def end_close(self, deadline: float) -> None:
        """Wait for the workers until `deadline` (time.monotonic()); then give up on what is left, counted."""
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            self._abort.set()
            self.interrupt()
            for t in self._threads:
                t.join(2.0)
        with self._cond:
            self.stats.dropped += len(self._items)
            self._items.clear()
            self._latest.clear()
            self.stats.pending = 0

    def close(self, timeout: float) -> None:
        self.begin_close()
        self.end_close(time.monotonic() + timeout)
