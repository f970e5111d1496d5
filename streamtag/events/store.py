"""The event log: one SQLite row per event (stdlib sqlite3, WAL), written off the inference thread.

Why SQLite: one file a user can query with any tool, safe with a reader (`streamtag events list`) open while a
session writes (WAL), and atomic per event. The schema version is `PRAGMA user_version`; a database from a newer
streamtag, a locked file or a corrupt one is a one-line error, never a traceback.

`EventStore` is an `EventListener`: the detector's calls only put the event on a bounded hand-off (handoff.py); a
writer thread inserts it (at its start, with `end` NULL, and updates that row when it ends). A full hand-off drops the event and
counts it (`dropped`), so a stalled disk can never stall inference.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

from streamtag.errors import StreamtagError
from streamtag.events.handoff import Handoff
from streamtag.events.model import FIELDS, Event, RuleHop
from streamtag.utils import streamtag_home

SCHEMA_VERSION = 1
QUEUE_SIZE = 1024
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    start REAL NOT NULL,
    "end" REAL,
    peak REAL NOT NULL,
    peak_time REAL NOT NULL,
    classes TEXT NOT NULL,          -- JSON list of class names
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    wall_start TEXT,                -- ISO 8601 UTC, live sessions only
    wall_end TEXT,
    clip TEXT,
    logged_at TEXT NOT NULL         -- ISO 8601 UTC when the row was written: what --since looks at without wall_start
);
CREATE INDEX IF NOT EXISTS events_when ON events (coalesce(wall_start, logged_at));
CREATE INDEX IF NOT EXISTS events_label ON events (label);
"""
COLUMNS = (*FIELDS, "logged_at")


def default_db() -> Path:
    """`$STREAMTAG_HOME/events.sqlite`."""
    return streamtag_home() / "events.sqlite"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(path: Path, e: BaseException) -> StreamtagError:
    text = str(e)
    if "locked" in text or "busy" in text:
        return StreamtagError(f"{path}: the event log is locked by another program; close it or pass another "
                              "--events-db")
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StreamtagError(f"{path}: not a streamtag event log or corrupt ({text}); move it away or pass "
                              "another --events-db")
    return StreamtagError(f"{path}: cannot use the event log ({text}); pass a writable --events-db")


def connect(path: Path, create: bool) -> sqlite3.Connection:
    """An open, checked connection: WAL, the schema at SCHEMA_VERSION (created when `create`)."""
    if not create and not os.path.exists(path):
        raise StreamtagError(f"{path}: no event log here yet; run a session with --events, or pass --db")
    if os.path.isdir(path):
        raise StreamtagError(f"{path}: is a directory; pass a file path for the event log")
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(path), timeout=2.0, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as e:
        raise _error(path, e) from None
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StreamtagError(f"{path}: event log schema {version} is newer than this streamtag's "
                                 f"({SCHEMA_VERSION}); upgrade streamtag or pass another --events-db")
        if version == 0:
            tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables and create:
                raise StreamtagError(f"{path}: a SQLite file that is not a streamtag event log; pass another "
                                     "--events-db")
            if not create:
                raise StreamtagError(f"{path}: not a streamtag event log (no schema); pass the right --db")
        if create:
            con.execute("PRAGMA journal_mode=WAL")
            if version == 0:
                con.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        return con
    except StreamtagError:
        con.close()
        raise
    except sqlite3.Error as e:
        con.close()
        raise _error(path, e) from None


def _row(event: Event, logged_at: str) -> tuple[Any, ...]:
    d = event.to_dict()
    d["classes"] = json.dumps(d["classes"] or [], ensure_ascii=False)
    return (*(d[k] for k in FIELDS), logged_at)


def _event(row: Sequence[Any]) -> Event:
    d = dict(zip(COLUMNS, row))
    d["classes"] = json.loads(d["classes"] or "[]")
    d.pop("logged_at")
    return Event.from_dict(d)


class EventStore:
    """The log at `path`. Opened (and the schema checked or created) in the caller's thread, so a bad path fails
    before audio starts; `writer=True` starts the writer thread that listener calls feed."""

    def __init__(self, path: str | os.PathLike | None = None, writer: bool = True, create: bool = True):
        self.path = Path(path) if path else default_db()
        self._con = connect(self.path, create)
        self.written = 0
        self.dropped = 0
        self.failed: str | None = None
        self._handoff = Handoff(self._write, "streamtag-events-db", QUEUE_SIZE) if writer else None

    @classmethod
    def open_for_reading(cls, path: str | os.PathLike | None) -> "EventStore":
        return cls(path, writer=False, create=False)

    # ------------------------------------------------------------------ listener (inference thread: enqueue only)
    def _put(self, event: Event) -> None:
        if self._handoff is None or not self._handoff.put((event, _now_iso())):
            self.dropped += 1

    def event_started(self, event: Event) -> None:
        self._put(event)

    def event_ended(self, event: Event) -> None:
        self._put(event)

    def hop(self, time: float, level_db: float, rules: Sequence[RuleHop]) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within `timeout` s), stop the writer, close the connection."""
        if self._handoff is not None and not self._handoff.close(timeout):
            self.dropped += len(self._handoff)
            return  # the writer thread still owns the connection; it is a daemon and ends with the process
        self._con.close()

    def _write(self, batch: list[tuple[Event, str]]) -> None:
        for i in range(0, len(batch), 256):  # one transaction per 256 rows
            self._insert(batch[i:i + 256])

    def _insert(self, batch: list[tuple[Event, str]]) -> None:
        rows = [_row(e, at) for e, at in batch]
        placeholders = ", ".join("?" for _ in COLUMNS)
        names = ", ".join(f'"{c}"' for c in COLUMNS)
        # the row of an event that ends (or a replay run again) is updated in place; logged_at stays the first
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in FIELDS if c != "id")
        for attempt in range(3):
            try:
                with self._con:
                    self._con.execute("BEGIN")
                    self._con.executemany(f"INSERT INTO events ({names}) VALUES ({placeholders}) "
                                          f"ON CONFLICT(id) DO UPDATE SET {updates}", rows)
                self.written += len(rows)
                return
            except sqlite3.OperationalError as e:  # locked by a reader's long transaction: retry, then count
                self.failed = str(e)
                time.sleep(0.2 * (attempt + 1))
            except sqlite3.Error as e:
                self.failed = str(e)
                break
        self.dropped += len(rows)

    # ------------------------------------------------------------------ queries (main thread)
    def write(self, events: Sequence[Event]) -> None:
        """Insert `events` now, in this thread (tests, imports)."""
        self._insert([(e, _now_iso()) for e in events])

    def get(self, event_id: str) -> Event | None:
        try:
            row = self._con.execute(f"SELECT {', '.join(chr(34) + c + chr(34) for c in COLUMNS)} FROM events "
                                    "WHERE id = ?", (event_id,)).fetchone()
        except sqlite3.Error as e:
            raise _error(self.path, e) from None
        return None if row is None else _event(row)

    def query(self, label: str | None = None, since: datetime | None = None, source: str | None = None,
              min_peak: float | None = None, limit: int | None = None) -> list[Event]:
        """Events matching every given filter, oldest first (the newest `limit` when given)."""
        where, args = [], []
        if label:
            where.append("label = ? COLLATE NOCASE")
            args.append(label)
        if since is not None:
            where.append("coalesce(wall_start, logged_at) >= ?")
            args.append(since.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        if source:
            where.append("instr(source, ?) > 0")
            args.append(source)
        if min_peak is not None:
            where.append("peak >= ?")
            args.append(float(min_peak))
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        sql = f"SELECT {cols} FROM events {'WHERE ' + ' AND '.join(where) if where else ''} " \
              "ORDER BY coalesce(wall_start, logged_at) DESC, source DESC, start DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        try:
            rows = self._con.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise _error(self.path, e) from None
        return [_event(r) for r in reversed(rows)]


_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`90s`, `15m`, `2h`, `3d`, `1w` ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    m = _SINCE.match(text)
    now = now or datetime.now(timezone.utc)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise StreamtagError(f"--since {text!r}: not a duration or a time; use e.g. 2h, 30m, 1d or "
                             "2026-11-27T08:00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
