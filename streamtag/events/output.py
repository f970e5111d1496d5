"""Events as text: a table for people, JSON lines and CSV for programs (`events detect`, `events list`), and the
two text listeners of a session: `--json` event objects and `--record`'s PREFIX.events.jsonl.

Every format carries `Event.to_dict()`'s fields under their own names; CSV joins `classes` with "; " (class names may
hold commas, which CSV quoting keeps).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import IO, Sequence

from streamtag.errors import StreamtagError
from streamtag.events.model import FIELDS, Event, RuleHop
from streamtag.utils import atomic_write_text

FORMATS = ("table", "jsonl", "csv")


def event_json(event: Event) -> str:
    return json.dumps(event.to_dict(), ensure_ascii=False)


def format_events(events: Sequence[Event], fmt: str) -> str:
    """All `events` in `fmt` (table, jsonl, csv), newline-terminated."""
    if fmt == "jsonl":
        return "".join(event_json(e) + "\n" for e in events)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(FIELDS)
        for e in events:
            d = e.to_dict()
            d["classes"] = "; ".join(d["classes"] or [])
            w.writerow(["" if d[k] is None else d[k] for k in FIELDS])
        return buf.getvalue()
    if fmt == "table":
        return table(events)
    raise StreamtagError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _seconds(value: float | None) -> str:
    return "…" if value is None else f"{value:.2f}"


def table(events: Sequence[Event]) -> str:
    """Aligned columns: when (wall clock if known, else stream time), label, start, end, duration, peak, classes."""
    if not events:
        return "no events\n"
    rows = [("id", "label", "start", "end", "dur", "peak", "when", "classes")]
    for e in events:
        dur = "…" if e.end is None else f"{e.end - e.start:.2f}"
        when = (e.wall_start or "")[:19].replace("T", " ")
        rows.append((e.id, e.label, _seconds(e.start), _seconds(e.end), dur, f"{e.peak:.3f}", when,
                     ", ".join(e.classes or [])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {2, 3, 4, 5}
    lines = []
    for r in rows:
        cells = [r[i].rjust(w) if i in right else r[i].ljust(w) for i, w in enumerate(widths)]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    return "\n".join(lines) + "\n"


class JsonEvents:
    """`--json`: `{"type": "event_start"|"event_end", ...event}` objects on the stream the hop objects go to (hop
    objects have no `type`), written in stream order right after the hop that started or ended the event."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def _write(self, kind: str, event: Event) -> None:
        self.stream.write(json.dumps({"type": kind, **event.to_dict()}, ensure_ascii=False) + "\n")
        self.stream.flush()

    def event_started(self, event: Event) -> None:
        self._write("event_start", event)

    def event_ended(self, event: Event) -> None:
        self._write("event_end", event)

    def hop(self, time: float, level_db: float, rules: Sequence[RuleHop]) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


class RecordedEvents:
    """`--record PREFIX` with events: PREFIX.events.jsonl, one `Event.to_dict()` per finished event.

    The inference thread only appends to a list; `flush` (main thread, beside the recorder's) rewrites the file
    atomically when events were added, so a reader never sees half a line."""

    def __init__(self, prefix: str | os.PathLike):
        prefix = str(prefix)
        for suffix in (".npz", ".txt"):
            if prefix.endswith(suffix):
                prefix = prefix[: -len(suffix)]
        self.path = Path(prefix + ".events.jsonl")
        self.events: list[Event] = []
        self._written = -1

    def event_started(self, event: Event) -> None:
        pass

    def event_ended(self, event: Event) -> None:
        self.events.append(event)

    def hop(self, time: float, level_db: float, rules: Sequence[RuleHop]) -> None:
        pass

    def flush(self) -> None:
        n = len(self.events)
        if n == self._written:
            return
        try:
            atomic_write_text(self.path, format_events(self.events[:n], "jsonl"))
        except OSError as e:
            raise StreamtagError(f"--record: cannot write {self.path} ({e.strerror or e}); check the disk and the "
                                 "directory's permissions") from None
        self._written = n

    def close(self, timeout: float) -> None:
        pass  # written by flush() (the session's, on the main thread), never on a failed start
