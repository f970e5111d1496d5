"""The SQLite event log: writer thread, queries behind `events list/show`, and the databases it must refuse."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest
from conftest import streamtag_cmd

from streamtag.errors import StreamtagError
from streamtag.events.model import Event
from streamtag.events.store import SCHEMA_VERSION, EventStore, parse_since


def ev(i, label="dog", start=1.0, end=2.0, peak=0.8, source="a.wav", wall=None):
    return Event(id=f"id{i}", label=label, start=start, end=end, peak=peak, peak_time=start, classes=["Dog", "Bark"],
                 source=source, model="cnn6", wall_start=wall, wall_end=None, clip=None)


def test_listener_writes_one_row_per_event_off_thread(tmp_path):
    db = tmp_path / "e.sqlite"
    store = EventStore(db)
    started = ev(1, end=None)
    store.event_started(started)
    store.event_ended(ev(1, end=3.5))
    store.event_ended(ev(2, label="siren", start=5.0, end=6.0, peak=0.6))
    store.close(5.0)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = con.execute('SELECT id, "end", classes FROM events ORDER BY id').fetchall()
    assert rows == [("id1", 3.5, '["Dog", "Bark"]'), ("id2", 6.0, '["Dog", "Bark"]')]
    reader = EventStore.open_for_reading(db)
    assert reader.get("id1") == ev(1, end=3.5) and reader.get("nope") is None
    assert [e.id for e in reader.query()] == ["id1", "id2"]
    assert [e.id for e in reader.query(label="SIREN")] == ["id2"]
    assert [e.id for e in reader.query(min_peak=0.7)] == ["id1"]
    assert [e.id for e in reader.query(source="a.w")] == ["id1", "id2"] and reader.query(source="b.wav") == []
    reader.close()


def test_since_uses_wall_start_else_when_logged(tmp_path):
    store = EventStore(tmp_path / "e.sqlite", writer=False)
    old = (datetime.now(timezone.utc) - timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    store.write([ev(1, wall=old), ev(2)])
    assert [e.id for e in store.query(since=parse_since("2h"))] == ["id2"]
    assert [e.id for e in store.query(since=parse_since("4h"))] == ["id1", "id2"]
    assert [e.id for e in store.query(limit=1)] == ["id2"]
    store.close()


def test_parse_since():
    now = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("2026-11-27T07:00:00Z") == datetime(2026, 11, 27, 7, tzinfo=timezone.utc)
    assert parse_since("2026-11-27 07:00") == datetime(2026, 11, 27, 7, tzinfo=timezone.utc)
    with pytest.raises(StreamtagError, match="not a duration or a time"):
        parse_since("yesterday")


def test_refuses_newer_corrupt_foreign_and_locked_databases(tmp_path):
    newer = tmp_path / "newer.sqlite"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StreamtagError, match="schema 2 is newer"):
        EventStore(newer)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StreamtagError, match="not a streamtag event log or corrupt"):
        EventStore(corrupt)
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.close()
    with pytest.raises(StreamtagError, match="not a streamtag event log"):
        EventStore(foreign)
    locked = tmp_path / "locked.sqlite"
    con = sqlite3.connect(locked, isolation_level=None)
    con.execute("CREATE TABLE t (x)")
    con.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StreamtagError, match="locked by another program"):
            EventStore(locked)
    finally:
        con.close()
    with pytest.raises(StreamtagError, match="is a directory"):
        EventStore(tmp_path)


def test_events_list_and_show_commands(tmp_path, cli_env):
    db = tmp_path / "e.sqlite"
    store = EventStore(db, writer=False)
    store.write([ev(1), ev(2, label="siren", peak=0.55, source="b.wav")])
    store.close()

    def run(*args):
        return subprocess.run(streamtag_cmd("events", *args), env=cli_env, capture_output=True, text=True,
                              timeout=60)

    done = run("list", "--db", db, "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    assert [json.loads(x)["id"] for x in done.stdout.splitlines()] == ["id1", "id2"]
    assert [json.loads(x)["id"] for x in run("list", "--db", db, "--format", "jsonl", "--label", "siren",
                                             "--since", "1h", "--min-peak", "0.5", "--source", "b.").stdout
            .splitlines()] == ["id2"]
    table = run("list", "--db", db).stdout
    assert "id1" in table and "siren" in table and "Dog, Bark" in table
    assert run("list", "--db", db, "--format", "csv").stdout.splitlines()[0].startswith("id,label,start,end,peak")
    shown = run("show", "id2", "--db", db)
    assert json.loads(shown.stdout)["label"] == "siren"
    for args, message in [(("show", "nope", "--db", db), "no event 'nope'"),
                          (("list", "--db", tmp_path / "missing.sqlite"), "no event log here yet"),
                          (("list", "--db", db, "--since", "soon"), "not a duration or a time")]:
        done = run(*args)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_a_full_hand_off_drops_and_counts_instead_of_blocking(tmp_path):
    import threading

    from streamtag.events.handoff import Handoff

    release = threading.Event()
    handled = []

    def slow(batch):
        release.wait(10)
        handled.extend(batch)

    h = Handoff(slow, "test", maxsize=3, poll=0.01)
    time.sleep(0.05)
    accepted = [h.put(i) for i in range(10)]  # the writer is stuck: only `maxsize` wait, the rest are refused
    assert accepted.count(True) >= 3 and not all(accepted)
    release.set()
    assert h.close(10.0)
    assert handled == [i for i, ok in enumerate(accepted) if ok]
