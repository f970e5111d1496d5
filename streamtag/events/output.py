"""Events as text: a table for people, JSON lines and CSV for programs (`events detect`, `events list`).

Every format carries `Event.to_dict()`'s fields under their own names; CSV joins `classes` with "; " (class names may
hold commas, which CSV quoting keeps).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Sequence

from streamtag.errors import StreamtagError
from streamtag.events.model import FIELDS, Event

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
