"""MQTT: events, per-rule ON/OFF states and the level on a broker, with Home Assistant discovery (paho-mqtt 2.x).

Topics (`<base>` = `<prefix>/<node>`, prefix from the URL's path, default `streamtag`):

    <base>/status              online / offline, retained; `offline` is also the last will
    <base>/events              one JSON message per event start and end (notifier.message())
    <base>/<rule>/state        ON / OFF, retained
    <base>/<rule>/attributes   {"id", "score", "peak"}, retained
    <base>/level               input level in dBFS, about once a second

Delivery: every message is QoS 1 and waited for (PUBACK) before the next, so the order on the broker is the order
of the events. While the broker is away the worker waits; paho keeps the one message in flight and re-sends it on
reconnection, the rest wait in the bounded queue (base.Transport). After every (re)connection the worker first
publishes the discovery configs, `online` and each rule's current state, so a broker restarted without
persistence is whole again before the gap's events arrive.

A rule that disappeared since the last session: its retained discovery config is still on the broker. The
transport subscribes to this node's binary_sensor configs; any that names no current rule is cleared with an empty
retained message, which is how Home Assistant removes the entity. The broker is the memory, so no state file.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import unquote, urlsplit

from streamtag import __version__
from streamtag.errors import StreamtagError
from streamtag.events.model import RuleHop
from streamtag.events.rules import slug
from streamtag.notify.base import DEFAULT_CAPACITY, Transport
from streamtag.notify.notifier import Notification

PASSWORD_ENV = "STREAMTAG_MQTT_PASSWORD"
INSTALL_HINT = "install it with: pip install 'streamtag[mqtt]'"
CONNECT_WAIT = 5.0  # seconds the start-up check waits for the broker's answer
REFUSED_LOGIN = (134, 135)  # CONNACK "Bad user name or password", "Not authorized" (MQTT 3's 4 and 5, as paho
#                             maps them)


@dataclass(frozen=True)
class MqttUrl:
    """`mqtt://[user@]host[:port][/prefix]` or `mqtts://...` (TLS). Never holds a password."""

    tls: bool
    host: str
    port: int
    user: str | None
    prefix: str

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}/{self.prefix}"


def parse_url(text: str) -> MqttUrl:
    """Check and split an --mqtt URL; anything wrong is a one-line error (exit 2) that never repeats a password."""
    where = "--mqtt"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise StreamtagError(f"{where}: not a valid URL; write mqtt://[user@]host[:port][/prefix]", 2) from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise StreamtagError(f"{where}: the URL must start with mqtt:// or mqtts:// (TLS); "
                             "write mqtt://[user@]host[:port][/prefix]", 2)
    if parts.password is not None:
        raise StreamtagError(f"{where}: the URL holds a password; never put it on the command line: set "
                             f"{PASSWORD_ENV} or pass --mqtt-password-file FILE", 2)
    if not parts.hostname:
        raise StreamtagError(f"{where}: the URL names no host; write mqtt://[user@]host[:port][/prefix]", 2)
    if parts.query or parts.fragment:
        raise StreamtagError(f"{where}: the URL has a ?query or #fragment; write mqtt://[user@]host[:port][/prefix]",
                             2)
    prefix = unquote(parts.path).strip("/") or "streamtag"
    if any(c in prefix for c in "+#\0"):
        raise StreamtagError(f"{where}: the topic prefix {prefix!r} holds a wildcard (+ or #); pick a plain one", 2)
    tls = parts.scheme == "mqtts"
    return MqttUrl(tls=tls, host=parts.hostname, port=port or (8883 if tls else 1883),
                   user=unquote(parts.username) if parts.username else None, prefix=prefix)


def read_password(password_file: str | None) -> str | None:
    """The broker password: the file's first line (--mqtt-password-file), else $STREAMTAG_MQTT_PASSWORD, else None."""
    if password_file:
        from streamtag.paths import read_input_text

        try:
            text = read_input_text(password_file, "password file", "give a file whose first line is the password",
                                   64 << 10)
        except StreamtagError as e:
            raise StreamtagError(f"--mqtt-password-file {e}", 2) from None
        return text.split("\n", 1)[0].rstrip("\r")
    return os.environ.get(PASSWORD_ENV) or None


def import_paho() -> Any:
    try:
        import paho.mqtt.client as paho
    except ImportError:
        raise StreamtagError(f"--mqtt needs paho-mqtt; {INSTALL_HINT}", 2) from None
    if not hasattr(paho, "CallbackAPIVersion"):
        raise StreamtagError(f"--mqtt needs paho-mqtt 2.0 or newer; {INSTALL_HINT}", 2)
    return paho


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _say(text: str) -> None:
    print(f"streamtag: {text}", file=sys.stderr, flush=True)


Batch = list[tuple[str, str, bool]]  # (topic, payload, retain), published in order


class MqttTransport(Transport):
    """One broker connection for one node: `open()` checks it at start, then a worker thread publishes."""

    def __init__(self, url: MqttUrl, node: str, rules: Sequence[str], model: str = "", discovery: bool = True,
                 discovery_prefix: str = "homeassistant", password: str | None = None, ca_file: str | None = None,
                 capacity: int = DEFAULT_CAPACITY):
        super().__init__("mqtt", capacity)
        paho = import_paho()
        self.url = url
        self.node = node
        self.node_id = slug(node)
        self.base = f"{url.prefix}/{self.node_id}"
        self.model = model
        self.discovery = discovery
        self.discovery_prefix = discovery_prefix.strip("/") or "homeassistant"
        self.slugs = {name: slug(name) for name in rules}  # unique: load_rules refuses two rules of one slug
        self.states = {name: "OFF" for name in self.slugs}  # as last delivered: what a fresh connection republishes
        self._paho = paho
        self._connected = threading.Event()
        self._answered = threading.Event()  # the first CONNACK (or a failed TCP/TLS connect) arrived
        self._refused: str | None = None
        self._ever_connected = False
        self._fresh = False  # a (re)connection happened: the preamble is due before anything else
        self._acked: set[int] = set()
        self._ack_cond = threading.Condition()

        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"streamtag-{self.node_id}-"
                             f"{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv311)
        client.connect_timeout = 3.0
        client.reconnect_delay_set(1, 30)  # paho's own backoff: 1, 2, 4, ... 30 s
        client.will_set(self.topic("status"), "offline", qos=1, retain=True)
        if url.user:
            client.username_pw_set(url.user, password)
        if url.tls:
            try:
                client.tls_set(ca_certs=ca_file)
            except (OSError, ssl.SSLError) as e:
                raise StreamtagError(f"--mqtt-ca {ca_file}: cannot load the CA certificate "
                                     f"({getattr(e, 'strerror', None) or e.__class__.__name__}); give a PEM file", 2) \
                    from None
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client

    def topic(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    # ---------------------------------------------------------------------------------- start-up
    def open(self) -> None:
        """Connect now (before any audio): refused credentials, a TLS failure → StreamtagError (exit 2); an
        unreachable broker → a warning, and paho keeps retrying in the background."""
        where = f"MQTT broker {self.url.host}:{self.url.port}"
        try:
            self.client.connect(self.url.host, self.url.port, keepalive=30)
            reached = True
        except ssl.SSLCertVerificationError as e:
            raise StreamtagError(f"{where}: its TLS certificate is not trusted ({e.verify_message}); pass the CA "
                                 "that signed it with --mqtt-ca FILE", 2) from None
        except ssl.SSLError as e:
            raise StreamtagError(f"{where}: TLS handshake failed ({e.reason or e.__class__.__name__}); is that port "
                                 "a TLS listener (mqtts://) or a plain one (mqtt://)?", 2) from None
        except OSError as e:
            _say(f"warning: {where} unreachable ({e.strerror or e.__class__.__name__}); retrying in the background")
            self.client.connect_async(self.url.host, self.url.port, keepalive=30)
            reached = False
        self.client.loop_start()
        if not reached:
            return
        if not self._answered.wait(CONNECT_WAIT):
            _say(f"warning: {where} has not answered in {CONNECT_WAIT:g} s; retrying in the background")
        elif self._refused is not None:
            self.client.disconnect()
            self.client.loop_stop()
            who = f"user {self.url.user!r}" if self.url.user else "an anonymous login"
            raise StreamtagError(f"{where} refused {who} ({self._refused}); check the user in --mqtt and the password "
                                 f"in {PASSWORD_ENV} or --mqtt-password-file", 2)

    # ---------------------------------------------------------------------------------- paho callbacks (its thread)
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason) if reason.value in REFUSED_LOGIN else None
            if self._refused is None and not self._ever_connected:
                _say(f"warning: MQTT broker refused the connection ({reason}); retrying in the background")
            self._answered.set()
            return
        if self._ever_connected:
            self.stats.reconnects += 1
        self._ever_connected = True
        self._refused = None
        self._fresh = True
        if self.discovery:
            client.subscribe(f"{self.discovery_prefix}/binary_sensor/streamtag_{self.node_id}/+/config", qos=1)
        self._connected.set()
        self._answered.set()
        self.put_latest("preamble", [])  # wakes the worker even with nothing queued: deliver() publishes it first

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._answered.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._ack_cond:
            self._acked.add(mid)
            self._ack_cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        """A retained discovery config of this node: clear it if it names no current rule."""
        object_id = msg.topic.rsplit("/", 2)[-2]
        if msg.payload and object_id not in self.slugs.values():
            self.put_latest(("remove", msg.topic), [(msg.topic, "", True)])

    # ---------------------------------------------------------------------------------- producer side
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def put(self, item: Any) -> None:
        if isinstance(item, Notification):
            with self._cond:  # a pending score reading of this rule must not land after its end
                self._latest.pop(("attributes", item.rule), None)
        super().put(item)

    def level(self, level_db: float, active: Sequence[RuleHop]) -> None:
        value = level_db if math.isfinite(level_db) else -120.0
        self.put_latest("level", [(self.topic("level"), f"{max(value, -120.0):.1f}", False)])
        for r in active:
            if r.rule in self.slugs:
                attrs = {"id": r.event_id, "score": round(r.score, 4),
                         "peak": None if r.peak is None else round(r.peak, 4)}
                self.put_latest(("attributes", r.rule), [(self.topic(self.slugs[r.rule], "attributes"),
                                                          _json(attrs), True)])

    # ---------------------------------------------------------------------------------- worker side
    def ready(self) -> bool:
        return self._connected.is_set()

    def deliver(self, item: Any) -> bool:
        while True:
            if not self._await_connection():
                return False
            if self._fresh:
                self._fresh = False  # a reconnection while publishing sets it again: the preamble repeats
                if not self._publish(self._preamble()):
                    return False
                continue
            batch = self._event_batch(item) if isinstance(item, Notification) else item
            if not self._publish(batch):
                return False
            if isinstance(item, Notification) and item.rule in self.states:
                self.states[item.rule] = "ON" if item.kind == "start" else "OFF"
            return True

    def _event_batch(self, note: Notification) -> Batch:
        p = note.payload
        batch: Batch = []
        s = self.slugs.get(note.rule)
        if s is not None:
            score = p.get("peak") if note.kind == "start" else None
            batch.append((self.topic(s, "attributes"), _json({"id": p.get("id"), "score": score,
                                                               "peak": p.get("peak")}), True))
            batch.append((self.topic(s, "state"), "ON" if note.kind == "start" else "OFF", True))
        batch.append((self.topic("events"), _json(p), False))
        return batch

    def _preamble(self) -> Batch:
        """What a fresh connection gets first: discovery configs, `online`, every rule's state."""
        batch: Batch = []
        if self.discovery:
            batch += [(t, _json(c), True) for t, c in self.discovery_configs()]
        batch.append((self.topic("status"), "online", True))
        batch += [(self.topic(s, "state"), self.states[name], True) for name, s in self.slugs.items()]
        return batch

    def discovery_configs(self) -> list[tuple[str, dict[str, Any]]]:
        """Home Assistant MQTT discovery: one binary_sensor (device_class sound) per rule and a level sensor, all
        under one device, available while `<base>/status` is `online`."""
        device = {"identifiers": [f"streamtag_{self.node_id}"], "name": f"streamtag {self.node}",
                  "manufacturer": "streamtag", "model": f"PANNs {self.model}".strip(), "sw_version": __version__}
        common = {"availability_topic": self.topic("status"), "payload_available": "online",
                  "payload_not_available": "offline", "device": device, "qos": 1,
                  "origin": {"name": "streamtag", "sw_version": __version__}}
        node = f"streamtag_{self.node_id}"
        configs = []
        for name, s in self.slugs.items():
            configs.append((f"{self.discovery_prefix}/binary_sensor/{node}/{s}/config",
                            {"name": name, "unique_id": f"{node}_{s}", "device_class": "sound",
                             "state_topic": self.topic(s, "state"), "payload_on": "ON", "payload_off": "OFF",
                             "json_attributes_topic": self.topic(s, "attributes"), **common}))
        configs.append((f"{self.discovery_prefix}/sensor/{node}/level/config",
                        {"name": "Level", "unique_id": f"{node}_level", "state_topic": self.topic("level"),
                         "unit_of_measurement": "dBFS", "state_class": "measurement", "icon": "mdi:waveform",
                         **common}))
        return configs

    def _await_connection(self) -> bool:
        while not self._connected.wait(0.25):
            if self.aborted:
                return False
        return True

    def _publish(self, batch: Batch) -> bool:
        """Publish in order, each waited for (PUBACK). paho re-sends an unacknowledged message itself after a
        reconnection, so a message is never published twice by us; False only once the close deadline passed."""
        for topic, payload, retain in batch:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            with self._ack_cond:
                while info.mid not in self._acked:
                    if self.aborted:
                        return False
                    self._ack_cond.wait(0.25)
                self._acked.discard(info.mid)
        return True

    def finish(self) -> None:
        """At close, after the queue: every rule OFF, then `offline`, then a clean disconnect (best effort, ~2 s:
        if the broker is away, its last will says `offline` for us)."""
        if self._connected.is_set():
            infos = [self.client.publish(self.topic(s, "state"), "OFF", qos=1, retain=True)
                     for s in self.slugs.values()]
            infos.append(self.client.publish(self.topic("status"), "offline", qos=1, retain=True))
            end = time.monotonic() + 2.0
            for info in infos:
                try:
                    info.wait_for_publish(max(0.0, end - time.monotonic()))
                except (RuntimeError, ValueError):
                    break
        self.client.disconnect()
        self.client.loop_stop()
