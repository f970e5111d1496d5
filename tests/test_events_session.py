"""Events in live and replay sessions, end to end with seeded CNN6: the event log, PREFIX.events.jsonl, `--json`
event objects, clips, the dashboard pane, and `events detect` on the recording agreeing exactly with the session.

Test audio: 440 Hz tone bursts over silence (test_events_cli.make_bursts), on which the seeded model's
"Female singing" score rises from ~0.04 to ~0.76.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import Child, streamtag_cmd, tmux_screen
from rich.console import Console
from test_events_cli import RULE, make_bursts

from streamtag.dashboard import BoardState, DashboardView, EventBoard, render
from streamtag.events.model import Event
from streamtag.events.store import EventStore
from streamtag.labels import audioset_labels
from streamtag.results import load_result
from streamtag.stream.pipeline import PipelineState

SR = 32000
RULES_YAML = f"""defaults: {{on: 0.5, off: 0.3, hold: 0.6}}
rules:
  - labels: [{RULE}]
  - name: short bursts too
    labels: [{RULE}]
    on: 0.2
    off: 0.1
    min_duration: 0.5
    min_level: -40
"""


@pytest.fixture(scope="module")
def bursts(tmp_path_factory) -> Path:
    return make_bursts(tmp_path_factory.mktemp("audio") / "bursts.wav")


def run(args, env, timeout=240):
    return subprocess.run(streamtag_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def detect(npz: Path, spec, env, *extra) -> list[dict]:
    done = run(["events", "detect", npz, "--events", spec, "--format", "jsonl", *extra], env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def without_clip(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "clip"} for e in events]


def test_replay_logs_events_everywhere_and_detect_agrees(bursts, tmp_path, cli_env, cnn6_weights):
    spec = tmp_path / "rules.yaml"
    spec.write_text(RULES_YAML)
    db, clips, prefix = tmp_path / "events.sqlite", tmp_path / "clips", tmp_path / "rec" / "p"
    done = run(["replay", bursts, "--fast", "--no-dashboard", "--json", "--model", "cnn6", "--weights", cnn6_weights,
                "--events", spec, "--events-db", db, "--clips", clips, "--record", prefix], cli_env)
    assert done.returncode == 0, done.stderr
    # the 1 s burst only passes the low rule's `on`, and too briefly for its min_duration: dropped
    assert "events: 4 (Female singing 2, short bursts too 2) · 1 shorter than min_duration" in done.stderr, \
        done.stderr

    logged = jsonl(f"{prefix}.events.jsonl")
    assert sorted(e["label"] for e in logged) == [RULE] * 2 + ["short bursts too"] * 2
    assert all(e["end"] > e["start"] and e["wall_start"] is None and e["source"] == str(bursts) for e in logged)

    # the recording's npz gives exactly the same events offline
    npz = load_result(f"{prefix}.npz")
    assert npz.level is not None and len(npz.level) == len(npz.time) and npz.source == str(bursts)
    assert without_clip(detect(Path(f"{prefix}.npz"), spec, cli_env)) == without_clip(logged)

    # --json: hop objects (no "type") and event objects, every start before its end, ids matching the log
    objects = [json.loads(line) for line in done.stdout.splitlines()]
    hops = [o for o in objects if "type" not in o]
    starts = [o for o in objects if o.get("type") == "event_start"]
    ends = [o for o in objects if o.get("type") == "event_end"]
    assert len(hops) == len(npz.time) and len(starts) == len(ends) == 4
    assert [o["id"] for o in ends] == [e["id"] for e in logged]
    assert all(objects.index(s) < objects.index(next(e for e in ends if e["id"] == s["id"])) for s in starts)
    assert all(s["end"] is None for s in starts)

    # the SQLite log: one row per event, the same fields
    store = EventStore.open_for_reading(db)
    rows = {e.id: e.to_dict() for e in store.query()}
    store.close()
    assert rows == {e["id"]: e for e in logged}

    # clips: one per event, names sort by time and carry the label, samples are the file's own
    audio, rate = sf.read(bursts, dtype="float32")
    assert rate == SR
    names = sorted(p.name for p in clips.iterdir())
    assert len(names) == 4 and not any(n.startswith(".") for n in names)
    assert [Path(e["clip"]).name for e in sorted(logged, key=lambda e: e["clip"])] == names
    for e in logged:
        assert ("female-singing" if e["label"] == RULE else "short-bursts-too") in Path(e["clip"]).name
        clip, rate = sf.read(e["clip"], dtype="float32")
        a = max(0, round(e["start"] * SR) - 2 * SR)
        b = min(len(audio), round(e["end"] * SR) + SR)
        assert rate == SR and len(clip) == b - a
        np.testing.assert_array_equal(clip, audio[a:b])


def test_stream_end_mid_event_finishes_the_event_and_its_clip(bursts, tmp_path, cli_env, cnn6_weights):
    """--duration stops inside the last burst: the event ends with the stream, the clip is complete up to it."""
    clips = tmp_path / "clips"
    done = run(["replay", bursts, "--fast", "--no-dashboard", "--model", "cnn6", "--weights", cnn6_weights,
                "--no-smooth", "--events", RULE, "--events-db", tmp_path / "e.sqlite", "--clips", clips,
                "--pre-roll", "0.5", "--post-roll", "3", "--clip-max", "2.5", "--duration", "16.5",
                "--record", tmp_path / "p"], cli_env)
    assert done.returncode == 0, done.stderr
    logged = jsonl(tmp_path / "p.events.jsonl")
    last = logged[-1]
    assert last["end"] == 16.4  # min(e_last, duration): the last full window is 14.4–16.4 s
    assert without_clip(detect(tmp_path / "p.npz", RULE, cli_env, "--no-smooth")) == without_clip(logged)
    audio, _ = sf.read(bursts, dtype="float32")
    for e in logged:
        clip, _ = sf.read(e["clip"], dtype="float32")
        a = round(e["start"] * SR) - SR // 2
        b = min(round(e["end"] * SR) + 3 * SR, round(16.5 * SR), a + round(2.5 * SR))  # post-roll, stream, cap
        np.testing.assert_array_equal(clip, audio[a:b])
    assert not any(p.name.startswith(".") for p in clips.iterdir())


@pytest.mark.parametrize("extra, message", [
    (["--clips", "{file}/clips"], "--clips {file}/clips: cannot write clips there"),
    (["--events-db", "{tmp}"], "is a directory; pass a file path for the event log"),
    (["--events-db", "{file}/e.sqlite"], "cannot use the event log"),
    (["--events-db", "{corrupt}"], "not a streamtag event log or corrupt"),
    (["--events", "Femal singing"], "unknown label 'Femal singing'; did you mean 'Female singing'?"),
    (["--events", "{bad_yaml}"], "need 0 ≤ off ≤ on ≤ 1"),
    (["--events", "{bad_yaml}.missing.yaml"], "no such file"),
    (["--no-events-given", "--clips", "{tmp}/c"], "--clips saves the audio of events: give --events too"),
    (["--pre-roll", "-1"], "--pre-roll: must be 0 or more seconds"),
])
def test_bad_event_options_are_one_line_and_write_nothing(bursts, tmp_path, cli_env, cnn6_weights, extra, message):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database" * 200)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("rules:\n  - {labels: [Dog], on: 0.2, off: 0.5}\n")
    fill = dict(file=a_file, tmp=tmp_path, corrupt=corrupt, bad_yaml=bad_yaml)
    extra = [x.format(**fill) for x in extra]
    out, db = tmp_path / "out", tmp_path / "db"
    args = ["replay", bursts, "--fast", "--no-dashboard", "--model", "cnn6", "--weights", cnn6_weights,
            "--record", out / "p", "--save-audio", out / "p.wav"]
    if "--events" not in extra and "--no-events-given" not in extra:
        args += ["--events", RULE]
    if "--events-db" not in extra:
        args += ["--events-db", db / "e.sqlite"]
    done = run([*args, *(x for x in extra if x != "--no-events-given")], cli_env)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("streamtag") and ": error: " in done.stderr, \
        done.stderr
    assert message.format(**fill) in done.stderr
    assert not out.exists() or not any(out.iterdir())  # no recording, no audio, no temp file
    assert not db.exists()  # no event log either
    assert corrupt.read_bytes() == b"not a database" * 200


# ---------------------------------------------------------------------------------------------- live capture
@pytest.mark.live
def test_live_capture_logs_events_that_detect_reproduces(pulse, tmp_path, cli_env, cnn6_weights):
    """PulseAudio null sink as the microphone: a tone burst played into it becomes an event with wall-clock times,
    a DB row, a clip equal to the captured audio, and `events detect` on the recording agrees exactly."""
    wav = make_bursts(tmp_path / "play.wav", seconds=5.0, bursts=((0.5, 4.0),))
    db, clips, prefix = tmp_path / "e.sqlite", tmp_path / "clips", tmp_path / "live"
    cmd = streamtag_cmd("live", "--input-device", "pulse", "--no-dashboard", "--json", "--model", "cnn6", "--weights",
                        cnn6_weights, "--duration", "12", "--events", RULE, "--events-db", db, "--clips", clips,
                        "--record", prefix, "--save-audio", tmp_path / "live.wav")
    with Child(cmd, {**cli_env, **pulse.env}) as child:
        (first,) = child.lines(1)
        player = pulse.play(wav)
        assert player.wait(timeout=30) == 0, player.stderr.read()
        rc, rest, err = child.finish(timeout=90)
    out = first + "".join(rest)
    assert rc == 0, err
    logged = jsonl(f"{prefix}.events.jsonl")
    assert logged and all(e["label"] == RULE for e in logged), err
    assert all(e["wall_start"].endswith("Z") and e["wall_end"] >= e["wall_start"] for e in logged)
    assert sum('"type": "event_end"' in line for line in out.splitlines()) == len(logged)
    assert without_clip(detect(Path(f"{prefix}.npz"), RULE, cli_env)) == without_clip(logged)
    store = EventStore.open_for_reading(db)
    assert {e.id: e.to_dict() for e in store.query()} == {e["id"]: e for e in logged}
    store.close()
    captured, _ = sf.read(tmp_path / "live.wav", dtype="float32")
    for e in logged:
        clip, rate = sf.read(e["clip"], dtype="float32")
        a = max(0, round(e["start"] * SR) - 2 * SR)
        b = min(len(captured), round(e["end"] * SR) + SR)
        assert rate == SR
        np.testing.assert_array_equal(clip, captured[a:b])


# ---------------------------------------------------------------------------------------------- dashboard pane
LABELS = tuple(audioset_labels())


def draw(board, width=80):
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    console.print(render(PipelineState(), DashboardView("t", "e", 0.3, 5, LABELS), board))
    return console.export_text()


def test_events_pane_shows_active_and_recent_events_in_80_columns():
    board = EventBoard()
    dog = Event("d1", "a very long rule name that goes on and on and on", 12.3, None, 0.7, 12.3)
    board.event_started(dog)

    class Hops:
        def active(self):
            from streamtag.events.model import RuleHop

            return [RuleHop(dog.label, 0.62, True, "d1", 0.81)]

    board.hop(13.0, -20.0, Hops())
    board.event_ended(Event("s1", "Siren", 1.0, 4.25, 0.66, 2.0, wall_start="2026-11-27T08:14:02.500Z"))
    text = draw(board.state)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "events  1 active · 1 finished" in text
    active = next(line for line in text.splitlines() if "▶" in line)
    assert "since   00:12.3" in active and "now 0.62" in active and "peak 0.81" in active
    finished = next(line for line in text.splitlines() if "✓" in line)
    assert "08:14:02" in finished and "Siren" in finished and "3.2 s" in finished and "peak 0.66" in finished
    assert "no events yet" in draw(BoardState())
    assert "events" not in draw(None).split("elapsed")[1]


def test_events_pane_in_a_real_terminal(bursts, tmp_path, cnn6_weights, cli_env):
    cmd = streamtag_cmd("replay", bursts, "--model", "cnn6", "--weights", cnn6_weights, "--speed", "4",
                        "--top-k", "5", "--events", f"{RULE},Doorbell", "--events-db", tmp_path / "e.sqlite")
    screen = tmux_screen(cmd, cli_env, lambda screen: "streamtag: events:" in screen, timeout=120)
    lines = screen.splitlines()
    assert "streamtag: events: " in screen, screen
    assert any(line.startswith("│ events ") and "finished" in line for line in lines), screen
    assert any("✓" in line and RULE in line for line in lines), screen
    assert all(len(line) <= 80 for line in lines)


def test_ctrl_c_mid_event_ends_it_and_finishes_its_clip(bursts, tmp_path, cli_env, cnn6_weights):
    """SIGINT while an event is active: the event ends with the stream, its clip is complete, nothing temporary
    is left, and the recording's npz still reproduces the log."""
    clips = tmp_path / "clips"
    proc = subprocess.Popen(streamtag_cmd("replay", bursts, "--speed", "2", "--no-dashboard", "--json", "--model",
                                          "cnn6", "--weights", cnn6_weights, "--events", RULE, "--events-db",
                                          tmp_path / "e.sqlite", "--clips", clips, "--record", tmp_path / "p"),
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if '"type": "event_start"' in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped by SIGINT" in err, err
    logged = jsonl(tmp_path / "p.events.jsonl")
    assert len(logged) == 1 and '"type": "event_end"' in out
    assert without_clip(detect(tmp_path / "p.npz", RULE, cli_env)) == without_clip(logged)
    audio, _ = sf.read(bursts, dtype="float32")
    clip, _ = sf.read(logged[0]["clip"], dtype="float32")
    a = round(logged[0]["start"] * SR) - 2 * SR
    stream_end = round(load_result(tmp_path / "p.npz").duration * SR)
    np.testing.assert_array_equal(clip, audio[a:min(round(logged[0]["end"] * SR) + SR, stream_end)])
    assert [p.name for p in clips.iterdir()] == [Path(logged[0]["clip"]).name]
