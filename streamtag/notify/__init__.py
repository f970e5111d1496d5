"""Notifications of sound events: MQTT (with Home Assistant discovery), webhooks and commands.

`build_notifier(settings, rules)` checks every option, connects to the broker (refused credentials or a bad URL
fail here, before any audio), starts one worker per transport and returns the `Notifier`, an EventListener the
detector calls. Each transport is its own module behind base.Transport (bounded queue, own thread, retries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from streamtag.errors import StreamtagError
from streamtag.notify.base import Stats, Transport
from streamtag.notify.notifier import Notifier, RulePolicy, default_node, message

__all__ = ["NotifySettings", "Notifier", "Stats", "Transport", "build_notifier", "message"]


@dataclass
class NotifySettings:
    """The notification options of `live`/`replay` (names as the CLI's)."""

    mqtt: str | None = None
    mqtt_ca: str | None = None
    mqtt_password_file: str | None = None
    mqtt_discovery: bool = True
    mqtt_discovery_prefix: str = "homeassistant"
    node: str | None = None
    webhook: list[str] = field(default_factory=list)
    on_event: str | None = None

    @property
    def wanted(self) -> bool:
        return bool(self.mqtt or self.webhook or self.on_event)

    @classmethod
    def from_args(cls, ns: Any) -> "NotifySettings":
        return cls(mqtt=ns.mqtt, mqtt_ca=ns.mqtt_ca, mqtt_password_file=ns.mqtt_password_file,
                   mqtt_discovery=bool(ns.mqtt_discovery), mqtt_discovery_prefix=ns.mqtt_discovery_prefix,
                   node=ns.node, webhook=list(ns.webhook or []), on_event=ns.on_event)


def build_notifier(settings: NotifySettings, rules: Sequence[RulePolicy], model: str = "") -> Notifier | None:
    """The started Notifier for `settings`, or None when no transport is asked for. Raises StreamtagError (exit 2)
    for a bad URL, a missing program, refused credentials or an untrusted certificate."""
    if not settings.wanted:
        return None
    from streamtag.notify.command import CommandTransport
    from streamtag.notify.webhook import WebhookTransport

    node = settings.node or default_node()
    transports: list[Transport] = []
    mqtt = None
    if settings.mqtt:
        from streamtag.notify.mqtt import MqttTransport, parse_url, read_password

        url = parse_url(settings.mqtt)
        if settings.mqtt_ca and not url.tls:
            raise StreamtagError("--mqtt-ca is for a TLS broker; write the URL as mqtts://...", 2)
        if settings.mqtt_password_file and not url.user:
            raise StreamtagError("--mqtt-password-file: a password needs a user; write mqtt://USER@host", 2)
        password = read_password(settings.mqtt_password_file) if url.user else None
        mqtt = MqttTransport(url, node, [r.name for r in rules if r.notify], model=model,
                             discovery=settings.mqtt_discovery, discovery_prefix=settings.mqtt_discovery_prefix,
                             password=password, ca_file=settings.mqtt_ca)
        transports.append(mqtt)
    many = len(settings.webhook) > 1
    for i, url in enumerate(settings.webhook, 1):
        transports.append(WebhookTransport(url, label=f"webhook {i}" if many else "webhook"))
    if settings.on_event:
        transports.append(CommandTransport(settings.on_event))
    if mqtt is not None:
        mqtt.open()  # last: every other option is checked before the network is touched
    notifier = Notifier(transports, rules, node)
    notifier.start()
    return notifier
