"""Notifications from real `streamtag replay` sessions (seeded CNN6, tone bursts that trigger events) to a real
Mosquitto, a local webhook and an --on-event script: what arrives matches the event log; the broker killed and
restarted mid-session costs no hop and loses no event; refused credentials are one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from broker import Broker, Recorder, need_mosquitto
from conftest import streamtag_cmd
from test_events_cli import RULE, make_bursts
from test_notify_webhook_command import Server

NODE = "testnode"
BASE = f"streamtag/{NODE}"
SLUG = "female-singing"


@pytest.fixture(scope="module")
def bursts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bursts(tmp_path_factory.mktemp("audio") / "bursts.wav")


def replay_args(bursts: Path, weights: Path, tmp_path: Path, *extra: object) -> list[str]:
    return streamtag_cmd("replay", bursts, "--no-dashboard", "--model", "cnn6", "--weights", weights,
                         "--events", RULE, "--events-db", tmp_path / "events.sqlite", "--record", tmp_path / "rec",
                         "--node", NODE, *extra)


def logged(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "rec.events.jsonl").read_text().splitlines()]


def recorder_script(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "calls"
    out.mkdir()
    script = tmp_path / "on-event.py"
    script.write_text(f"#!{sys.executable}\nimport os, sys, uuid\n"
                      f"open(os.path.join({str(out)!r}, uuid.uuid4().hex), 'w').write(sys.stdin.read())\n")
    script.chmod(0o755)
    return script, out


def test_replay_notifies_mqtt_webhook_and_command_as_logged(broker: Broker, bursts: Path, tmp_path: Path,
                                                            cli_env: dict, cnn6_weights: Path) -> None:
    hook = Server()
    script, calls = recorder_script(tmp_path)
    rec = Recorder(broker.port, ("streamtag/#", "homeassistant/#"))
    try:
        done = subprocess.run(replay_args(bursts, cnn6_weights, tmp_path, "--fast", "--mqtt", broker.url,
                                          "--webhook", hook.url, "--on-event", script),
                              env=cli_env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        got = rec.wait_for(lambda ms: any(m.topic == f"{BASE}/status" and m.payload == "offline" for m in ms),
                           "offline")
    finally:
        rec.close()
        hook.close()
    events = logged(tmp_path)
    assert len(events) == 2  # the 3 s and 4 s bursts (docs: test_events_session)
    expected = [{"type": kind, "node": NODE, **e} for e in events for kind in ("start", "end")]
    published = [m.json() for m in got if m.topic == f"{BASE}/events"]
    assert [(p["type"], p["id"]) for p in published] == [(x["type"], x["id"]) for x in expected]  # in order
    topics = [m.topic for m in got]
    config = f"homeassistant/binary_sensor/streamtag_{NODE}/{SLUG}/config"
    assert topics.index(config) < topics.index(f"{BASE}/status") < topics.index(f"{BASE}/{SLUG}/state") \
        < topics.index(f"{BASE}/events")
    states = [m.payload for m in got if m.topic == f"{BASE}/{SLUG}/state"]
    assert states[0] == "OFF" and states[1:5] == ["ON", "OFF", "ON", "OFF"] and states[-1] == "OFF"
    assert [m.payload for m in got if m.topic == f"{BASE}/status"] == ["online", "offline"]
    assert any(m.topic == f"{BASE}/level" for m in got)
    ran = [json.loads(p.read_text()) for p in calls.iterdir()]
    for bodies in (published, hook.bodies, ran):  # a start carries the event as it was then (no end yet)
        order = sorted(bodies, key=lambda b: (b["start"], b["type"] != "start"))
        assert [(b["type"], b["id"]) for b in order] == [(x["type"], x["id"]) for x in expected]
        assert [b for b in order if b["type"] == "end"] == [x for x in expected if x["type"] == "end"]
        assert all(b["end"] is None for b in order if b["type"] == "start")
    for line in ("notify mqtt: 4 sent · 0 dropped · 0 failed · 0 reconnects", "notify webhook: 4 sent",
                 "notify on-event: 4 sent"):
        assert line in done.stderr, done.stderr


def test_broker_killed_mid_session_costs_no_hop_and_no_event(broker: Broker, bursts: Path, tmp_path: Path,
                                                            cli_env: dict, cnn6_weights: Path) -> None:
    """Real-time replay; the broker dies at the first event and comes back 3 s later; a webhook hangs all along."""
    hanging = Server(hang=True)
    rec = Recorder(broker.port, (f"{BASE}/events", f"{BASE}/status"), client_id="session-gap")
    proc = subprocess.Popen(replay_args(bursts, cnn6_weights, tmp_path, "--speed", "1", "--json", "--mqtt",
                                        broker.url, "--webhook", hanging.url),
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rec.wait_for(lambda ms: any(m.topic.endswith("/events") for m in ms), "the first event", timeout=120)
        broker.kill()
        threading.Event().wait(3.0)  # the gap (not a speed check: any length works)
        broker.start()
        out, err = proc.communicate(timeout=300)
        got = rec.wait_for(lambda ms: any(m.payload == "offline" for m in ms), "offline", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        rec.close()
        hanging.close()
    assert proc.returncode == 0, err
    hops = [json.loads(line) for line in out.splitlines() if json.loads(line).get("scores") is not None]
    assert " 0 skipped" in err, err
    assert len(hops) >= 60
    events = logged(tmp_path)
    published = [(m.json()["type"], m.json()["id"]) for m in got if m.topic.endswith("/events")]
    # QoS 1 is at-least-once: a message the broker had passed on but not yet acknowledged when it was killed is sent
    # again after the reconnect (seen once in CI: the first start twice). Every event, in order, no other repeat.
    assert len(published) - len(set(published)) <= 1, published
    assert list(dict.fromkeys(published)) == [(k, e["id"]) for e in events for k in ("start", "end")]
    assert "notify mqtt: 4 sent · 0 dropped · 0 failed · 1 reconnects" in err, err
    assert "notify webhook: 0 sent" in err  # it never answered: what was pending is counted at the deadline


def test_login_refused_is_one_line_and_never_shows_the_password(tmp_path: Path, bursts: Path, cli_env: dict,
                                                                 cnn6_weights: Path) -> None:
    need_mosquitto()
    broker = Broker(tmp_path / "broker", users={"alice": "right-Pw-1"}).start()
    try:
        url = f"mqtt://alice@127.0.0.1:{broker.port}"
        args = replay_args(bursts, cnn6_weights, tmp_path, "--fast", "--duration", "2", "--mqtt", url)
        bad = subprocess.run(args, env={**cli_env, "STREAMTAG_MQTT_PASSWORD": "wrong-Pw-2"}, capture_output=True,
                             text=True, timeout=120)
        good = subprocess.run(args, env={**cli_env, "STREAMTAG_MQTT_PASSWORD": "right-Pw-1"}, capture_output=True,
                              text=True, timeout=300)
    finally:
        broker.kill()
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("streamtag: error: MQTT broker 127.0.0.1:")
    assert "refused user 'alice'" in bad.stderr and "wrong-Pw-2" not in bad.stderr + bad.stdout
    assert good.returncode == 0, good.stderr
    assert "right-Pw-1" not in good.stderr + good.stdout


@pytest.mark.parametrize("extra, says", [
    (["--mqtt", "mqtt://u:pw@host"], "holds a password"),
    (["--webhook", "ftp://x"], "--webhook"),
    (["--on-event", "no-such-program-xyz"], "not on PATH"),
])
def test_bad_notification_options_fail_before_the_model(extra, says, tmp_path: Path, bursts: Path,
                                                         cli_env: dict) -> None:
    done = subprocess.run(streamtag_cmd("replay", bursts, "--no-dashboard", "--model", "cnn6", "--weights",
                                        tmp_path / "missing.pdparams", "--events", RULE, *extra),
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "pw@" not in done.stderr


def test_notifications_need_events(tmp_path: Path, bursts: Path, cli_env: dict) -> None:
    done = subprocess.run(streamtag_cmd("replay", bursts, "--no-dashboard", "--webhook", "http://127.0.0.1:9/"),
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--events" in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_missing_paho_names_the_extra(tmp_path: Path, bursts: Path, cli_env: dict) -> None:
    code = ("import sys; sys.modules['paho'] = None; from streamtag.cli import main; "
            f"sys.exit(main(['replay', {str(bursts)!r}, '--no-dashboard', '--events', {RULE!r}, "
            "'--mqtt', 'mqtt://127.0.0.1:9']))")
    done = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == ("streamtag: error: --mqtt needs paho-mqtt; install it with: "
                           "pip install 'streamtag[mqtt]'\n")


def test_dashboard_shows_the_notification_counts() -> None:
    from rich.console import Console

    from streamtag.dashboard import DashboardView, render
    from streamtag.labels import audioset_labels
    from streamtag.notify.notifier import Notifier
    from streamtag.notify.webhook import WebhookTransport
    from streamtag.stream.pipeline import PipelineState

    hook = WebhookTransport("http://127.0.0.1:9/")
    hook.stats.sent, hook.stats.dropped, hook.stats.failed = 12, 3, 1
    line = Notifier([hook], [], "n").dashboard_line()
    assert line == "sent 12 · pending 0 · dropped 3 · failed 1 · reconnects 0"
    with open("/dev/null", "w") as sink:
        console = Console(width=80, record=True, color_system=None, file=sink)
        console.print(render(PipelineState(), DashboardView("t", "e", 0.3, 5, tuple(audioset_labels())),
                             notify=line))
    assert f"notify  {line}" in console.export_text()
