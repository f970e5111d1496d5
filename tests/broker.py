"""A real Mosquitto broker for the notification tests, and a recording MQTT client.

`Broker` runs `mosquitto -c <its own config>` on 127.0.0.1 on a free port, in its own directory (never the system
service): anonymous, with a password file (mosquitto_passwd), or TLS with a CA made here by openssl. It can be
killed (SIGKILL) and started again on the same port. Persistence is saved on every change, so a client's
persistent session (its subscription and the QoS 1 messages queued for it) survives the kill: the recorder then
gets what was published while it was away, whichever of it and streamtag reconnects first.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import need

TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_mosquitto() -> None:
    for tool in ("mosquitto", "mosquitto_passwd", "openssl"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            need(f"{tool} is not installed (Debian: mosquitto mosquitto-clients openssl; scripts/system-deps.sh)")
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        need("paho-mqtt is not installed (pip install -e '.[test]')")


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def make_ca(directory: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost signed by it (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)
    p = {k: directory / f"{k}.pem" for k in ("ca", "ca-key", "server", "server-key")}
    csr, ext = directory / "server.csr", directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for cmd in (
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=streamtag test CA",
         "-keyout", p["ca-key"], "-out", p["ca"]],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", p["server-key"],
         "-out", csr],
        ["openssl", "x509", "-req", "-in", csr, "-CA", p["ca"], "-CAkey", p["ca-key"], "-CAcreateserial", "-days",
         "2", "-extfile", ext, "-out", p["server"]],
    ):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=60)
    return p


class Broker:
    def __init__(self, directory: Path, users: dict[str, str] | None = None, tls: dict[str, Path] | None = None):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {self.dir}/",
                 "autosave_on_changes true", "autosave_interval 1", f"log_dest file {self.dir / 'mosquitto.log'}",
                 "log_type all"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to user `mosquitto`, who cannot read this directory
        if users:
            passwd = self.dir / "passwd"
            passwd.touch()
            for user, password in users.items():
                subprocess.run([_exe("mosquitto_passwd"), "-b", str(passwd), user, password], check=True,
                               capture_output=True, timeout=30)
            lines += [f"password_file {passwd}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['server']}", f"keyfile {tls['server-key']}"]
        self.config = self.dir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([_exe("mosquitto"), "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace')[-800:]} {self.log()[-800:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()[-800:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self.proc = None

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@dataclass
class Received:
    topic: str
    payload: str
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Recorder:
    """An MQTT client that subscribes to `topics` (QoS 1, persistent session) and keeps every message in order."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("#",), client_id: str = "recorder",
                 tls_ca: Path | None = None, auth: tuple[str, str] | None = None):
        import paho.mqtt.client as paho

        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        if tls_ca:
            self.client.tls_set(ca_certs=str(tls_ca))
        if auth:
            self.client.username_pw_set(*auth)
        self.topics = topics

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if not reason.is_failure:
                client.subscribe([(t, 1) for t in topics])

        def on_subscribe(*args: Any) -> None:
            self._subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self._cond:
                self.messages.append(Received(msg.topic, msg.payload.decode(), bool(msg.retain)))
                self._cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(TIMEOUT):
            raise RuntimeError("recorder: no SUBACK")

    def wait_for(self, predicate: Any, what: str, timeout: float = TIMEOUT) -> list[Received]:
        """Block until `predicate(messages)` holds (a hang guard, not a speed check)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload) for m in self.messages]
                    raise AssertionError(f"timed out waiting for {what}; got {seen}")
                self._cond.wait(min(left, 0.5))
            return list(self.messages)

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
