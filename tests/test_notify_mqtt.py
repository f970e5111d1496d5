"""MQTT notifications against a real Mosquitto (tests/broker.py), driving a Notifier with Event/RuleHop objects as
the detector would: discovery, status, states and events in order; a broker killed and restarted mid-session; a
password listener; a TLS listener with a CA made by openssl; rules that disappeared are removed from discovery."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import notify_rule
from broker import Broker, Recorder, make_ca, need_mosquitto

from streamtag.errors import StreamtagError
from streamtag.events.model import Event, RuleHop
from streamtag.notify import NotifySettings, build_notifier

NODE = "testnode"
BASE = f"streamtag/{NODE}"


RULES = [notify_rule("Dog"), notify_rule("Smoke detector, smoke alarm")]


def event(eid: str, label: str, start: float, end: float | None = None, peak: float = 0.8) -> Event:
    return Event(id=eid, label=label, start=start, end=end, peak=peak, peak_time=start + 0.3, classes=[label],
                 source="test.wav", model="cnn6", clip=f"clips/{eid}.wav")


def hops(notifier, t0: float, n: int, rules=(), step: float = 0.3) -> None:
    for i in range(n):
        notifier.hop(t0 + i * step, -20.0 - i % 3, rules)


def settings(url: str, **kw) -> NotifySettings:
    return NotifySettings(mqtt=url, node=NODE, **kw)


def test_session_in_order(broker: Broker) -> None:
    rec = Recorder(broker.port, ("streamtag/#", "homeassistant/#"))
    try:
        notifier = build_notifier(settings(broker.url), RULES, model="cnn6")
        dog = event("dog-1", "Dog", 1.0)
        hops(notifier, 0.0, 3)
        notifier.event_started(dog)
        hops(notifier, 1.2, 5, [RuleHop("Dog", 0.7, True, "dog-1", 0.8), RuleHop("Smoke detector, smoke alarm", 0.0,
                                                                                   False)])
        rec.wait_for(lambda ms: any(m.topic == f"{BASE}/level" for m in ms), "a level reading")
        ended = event("dog-1", "Dog", 1.0, 2.5)
        notifier.event_ended(ended)
        notifier.close(10)
        got = rec.wait_for(lambda ms: any(m.topic == f"{BASE}/status" and m.payload == "offline" for m in ms),
                           "offline")
    finally:
        rec.close()
    topics = [m.topic for m in got]
    configs = [m for m in got if m.topic.endswith("/config")]
    assert [m.topic for m in configs] == [
        "homeassistant/binary_sensor/streamtag_testnode/dog/config",
        "homeassistant/binary_sensor/streamtag_testnode/smoke-detector-smoke-alarm/config",
        "homeassistant/sensor/streamtag_testnode/level/config"]
    dog_config = configs[0].json()
    assert dog_config["device_class"] == "sound" and dog_config["state_topic"] == f"{BASE}/dog/state"
    assert dog_config["availability_topic"] == f"{BASE}/status"
    assert dog_config["json_attributes_topic"] == f"{BASE}/dog/attributes"
    assert dog_config["device"]["identifiers"] == ["streamtag_testnode"]
    assert configs[2].json()["unit_of_measurement"] == "dBFS"
    assert all(m.retain is False for m in configs)  # delivered live, not from the retained store
    # discovery, then online, then the states, then the event (start → ON), the end (OFF), then offline
    first_online = topics.index(f"{BASE}/status")
    assert max(topics.index(m.topic) for m in configs) < first_online
    states = [(m.topic, m.payload) for m in got if m.topic.endswith("/state")]
    assert states[:2] == [(f"{BASE}/dog/state", "OFF"), (f"{BASE}/smoke-detector-smoke-alarm/state", "OFF")]
    assert states[2:4] == [(f"{BASE}/dog/state", "ON"), (f"{BASE}/dog/state", "OFF")]
    events = [m.json() for m in got if m.topic == f"{BASE}/events"]
    assert events == [{"type": "start", "node": NODE, **dog.to_dict()},
                      {"type": "end", "node": NODE, **ended.to_dict()}]
    i_on = states.index((f"{BASE}/dog/state", "ON"))
    assert topics.index(f"{BASE}/dog/state") < topics.index(f"{BASE}/events")
    assert i_on == 2
    attrs = [m.json() for m in got if m.topic == f"{BASE}/dog/attributes"]
    assert attrs[0] == {"id": "dog-1", "score": 0.8, "peak": 0.8}
    assert attrs[-1]["id"] == "dog-1" and attrs[-1]["score"] is None
    levels = [float(m.payload) for m in got if m.topic == f"{BASE}/level"]
    assert levels and all(-30 < v < 0 for v in levels)
    statuses = [m.payload for m in got if m.topic == f"{BASE}/status"]
    assert statuses == ["online", "offline"]
    s = dict(notifier.stats())["mqtt"]
    assert (s.sent, s.dropped, s.failed, s.reconnects) == (2, 0, 0, 0)


def test_broker_killed_mid_session(broker: Broker) -> None:
    rec = Recorder(broker.port, ("streamtag/#",), client_id="gap-recorder")
    try:
        notifier = build_notifier(settings(broker.url, mqtt_discovery=False), RULES)
        notifier.event_started(event("a", "Dog", 1.0))
        rec.wait_for(lambda ms: any(m.topic == f"{BASE}/events" for m in ms), "the first event")
        broker.kill()
        # the gap: nothing here waits for the broker; every call returns (the thread would hang otherwise)
        done = threading.Event()

        def gap() -> None:
            notifier.event_ended(event("a", "Dog", 1.0, 2.0))
            hops(notifier, 2.0, 200)
            notifier.event_started(event("b", "Smoke detector, smoke alarm", 60.0))
            notifier.event_ended(event("b", "Smoke detector, smoke alarm", 60.0, 63.0))
            done.set()

        worker = threading.Thread(target=gap)
        worker.start()
        worker.join(10)
        assert done.is_set(), "a notifier call waited for the dead broker"
        broker.start()
        got = rec.wait_for(lambda ms: sum(m.topic == f"{BASE}/events" for m in ms) >= 4, "the gap's events",
                           timeout=60)
        notifier.close(10)
    finally:
        rec.close()
    events = [(m.json()["type"], m.json()["id"]) for m in got if m.topic == f"{BASE}/events"]
    assert events == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
    s = dict(notifier.stats())["mqtt"]
    assert s.reconnects >= 1 and s.sent == 4 and s.dropped == 0


def test_full_queue_drops_oldest(broker: Broker) -> None:
    from streamtag.notify.mqtt import MqttTransport, parse_url
    from streamtag.notify.notifier import Notifier

    broker.kill()  # unreachable at start: a warning, and retries in the background
    transport = MqttTransport(parse_url(broker.url), NODE, ["Dog"], discovery=False, capacity=3)
    transport.open()
    notifier = Notifier([transport], [notify_rule("Dog")], NODE)
    notifier.start()
    for i in range(5):
        notifier.event_started(event(f"e{i}", "Dog", 10.0 * i))
        notifier.event_ended(event(f"e{i}", "Dog", 10.0 * i, 10.0 * i + 1))
    assert transport.stats.dropped == 7 and transport.stats.pending == 3
    broker.start()
    rec = Recorder(broker.port, (f"{BASE}/events",), client_id="drop-recorder")
    try:
        got = rec.wait_for(lambda ms: len(ms) >= 3, "the newest three", timeout=60)
        notifier.close(10)
    finally:
        rec.close()
    assert [(m.json()["type"], m.json()["id"]) for m in got] == [("end", "e3"), ("start", "e4"), ("end", "e4")]


def test_cooldown_and_notify_false(broker: Broker) -> None:
    rec = Recorder(broker.port, (f"{BASE}/events", "homeassistant/#"), client_id="policy-recorder")
    try:
        rules = [notify_rule("Dog", cooldown=30.0), notify_rule("Speech", notify=False)]
        notifier = build_notifier(settings(broker.url), rules)
        for eid, start in (("d1", 0.0), ("d2", 10.0), ("d3", 50.0)):  # d2 starts 8 s after d1 ended: muted
            notifier.event_started(event(eid, "Dog", start))
            notifier.event_ended(event(eid, "Dog", start, start + 2.0))
        notifier.event_started(event("s1", "Speech", 5.0))
        notifier.event_ended(event("s1", "Speech", 5.0, 6.0))
        notifier.close(10)
        got = rec.wait_for(lambda ms: sum(m.topic.endswith("events") for m in ms) >= 4, "the events")
    finally:
        rec.close()
    assert [(m.json()["type"], m.json()["id"]) for m in got if m.topic.endswith("events")] == [
        ("start", "d1"), ("end", "d1"), ("start", "d3"), ("end", "d3")]
    assert not any("speech" in m.topic for m in got)  # notify: false → not even discovered
    assert notifier.muted == 1


def test_vanished_rule_is_removed_from_discovery(broker: Broker) -> None:
    first = build_notifier(settings(broker.url), [notify_rule("Dog"), notify_rule("Cat")])
    first.close(10)
    rec = Recorder(broker.port, ("homeassistant/binary_sensor/#",), client_id="discovery-recorder")
    try:
        rec.wait_for(lambda ms: len(ms) == 2, "the retained configs of both rules")
        second = build_notifier(settings(broker.url), [notify_rule("Dog")])
        got = rec.wait_for(lambda ms: any(m.topic.endswith("/cat/config") and m.payload == "" for m in ms),
                           "the empty config that removes Cat")
        second.close(10)
    finally:
        rec.close()
    cat = [m for m in got if m.topic.endswith("/cat/config")]
    assert cat[-1].payload == "" and cat[0].retain  # the retained one from the first session, then its removal
    check = Recorder(broker.port, ("homeassistant/binary_sensor/#",), client_id="discovery-check")
    try:
        left = check.wait_for(lambda ms: len(ms) >= 1, "the retained configs")
    finally:
        check.close()
    assert [m.topic.rsplit("/", 2)[-2] for m in left] == ["dog"]


def test_password_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_mosquitto()
    broker = Broker(tmp_path / "broker", users={"alice": "s3cret-Pw"}).start()
    try:
        url = f"mqtt://alice@127.0.0.1:{broker.port}"
        monkeypatch.setenv("STREAMTAG_MQTT_PASSWORD", "s3cret-Pw")
        notifier = build_notifier(settings(url), [notify_rule("Dog")])
        assert notifier.transports[0].connected
        notifier.close(10)
        monkeypatch.setenv("STREAMTAG_MQTT_PASSWORD", "wrong-Pw")
        with pytest.raises(StreamtagError) as e:
            build_notifier(settings(url), [notify_rule("Dog")])
        assert e.value.exit_code == 2
        text = str(e.value)
        assert "refused user 'alice'" in text and "\n" not in text and "wrong-Pw" not in text
        pw_file = tmp_path / "pw"
        pw_file.write_text("s3cret-Pw\n")
        notifier = build_notifier(settings(url, mqtt_password_file=str(pw_file)), [notify_rule("Dog")])
        notifier.close(10)
    finally:
        broker.kill()


def test_tls_listener_with_own_ca(tmp_path: Path) -> None:
    need_mosquitto()
    ca = make_ca(tmp_path / "ca")
    broker = Broker(tmp_path / "broker", tls=ca).start()
    try:
        url = f"mqtts://127.0.0.1:{broker.port}"
        rec = Recorder(broker.port, (f"{BASE}/#",), client_id="tls-recorder", tls_ca=ca["ca"])
        try:
            notifier = build_notifier(settings(url, mqtt_ca=str(ca["ca"])), [notify_rule("Dog")])
            notifier.event_started(event("t1", "Dog", 1.0))
            notifier.close(10)
            got = rec.wait_for(lambda ms: any(m.topic == f"{BASE}/events" for m in ms), "the event over TLS")
        finally:
            rec.close()
        assert json.loads([m for m in got if m.topic == f"{BASE}/events"][0].payload)["id"] == "t1"
        with pytest.raises(StreamtagError) as e:  # without the CA: the certificate is not trusted
            build_notifier(settings(url), [notify_rule("Dog")])
        assert e.value.exit_code == 2 and "--mqtt-ca" in str(e.value)
    finally:
        broker.kill()


@pytest.mark.parametrize("url, says", [
    ("http://host", "mqtt:// or mqtts://"),
    ("mqtt://user:pw@host", "holds a password"),
    ("mqtt://:1883", "names no host"),
    ("mqtt://host:99999", "not a valid URL"),
    ("mqtt://host/a/+", "wildcard"),
    ("mqtt://host/a#b", "#fragment"),
])
def test_bad_urls(url: str, says: str) -> None:
    from streamtag.notify.mqtt import parse_url

    with pytest.raises(StreamtagError) as e:
        parse_url(url)
    assert says in str(e.value) and e.value.exit_code == 2 and "pw@" not in str(e.value)


def test_close_with_the_broker_away_counts_what_is_lost(broker: Broker, capsys: pytest.CaptureFixture) -> None:
    broker.kill()
    notifier = build_notifier(settings(broker.url), [notify_rule("Dog")])
    assert "unreachable" in capsys.readouterr().err  # a warning, not an error: retried in the background
    notifier.event_started(event("lost", "Dog", 1.0))
    notifier.event_ended(event("lost", "Dog", 1.0, 2.0))
    notifier.close(1.0)
    notifier.close(1.0)  # a second close does nothing
    s = dict(notifier.stats())["mqtt"]
    assert (s.sent, s.dropped, s.pending) == (0, 2, 0)
    assert "notify mqtt: 0 sent · 2 dropped · 0 failed · 0 reconnects" in notifier.summary_lines()
