#!/usr/bin/env python3
"""What notifications cost the inference thread: microseconds per `hop()` and per event start/end, with an MQTT
transport whose broker is down (so every message waits in the queue), two webhooks and a command.

    .venv/bin/python scripts/bench_notify.py [--rules 20] [--hops 20000]

A benchmark, not a test: the figure depends on the machine and its load (print both with it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import socket
import statistics
import time
from dataclasses import dataclass

from streamtag.events.model import Event, RuleHop
from streamtag.notify.command import CommandTransport
from streamtag.notify.mqtt import MqttTransport, parse_url
from streamtag.notify.notifier import Notifier
from streamtag.notify.webhook import WebhookTransport


@dataclass(frozen=True)
class Rule:
    name: str
    cooldown: float = 0.0
    notify: bool = True


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=20)
    ap.add_argument("--hops", type=int, default=20000)
    args = ap.parse_args()
    rules = [Rule(f"rule {i}") for i in range(args.rules)]
    port = closed_port()
    with contextlib.redirect_stderr(io.StringIO()):  # the "unreachable" warning
        mqtt = MqttTransport(parse_url(f"mqtt://127.0.0.1:{port}"), "bench", [r.name for r in rules])
        mqtt.open()
    transports = [mqtt, WebhookTransport(f"http://127.0.0.1:{port}/a"),
                  WebhookTransport(f"http://127.0.0.1:{port}/b"), CommandTransport("true")]
    notifier = Notifier(transports, rules, "bench")
    notifier.start()
    hops = [RuleHop(r.name, 0.1, False) for r in rules]
    hop_ns, event_ns = [], []
    for i in range(args.hops):
        t = i * 0.3
        began = time.perf_counter_ns()
        notifier.hop(t, -30.0, hops)
        hop_ns.append(time.perf_counter_ns() - began)
        if i % 10 == 0:
            e = Event(id=f"e{i}", label=rules[i % len(rules)].name, start=t, end=None, peak=0.8, peak_time=t)
            began = time.perf_counter_ns()
            notifier.event_started(e)
            e.end = t + 1.0
            notifier.event_ended(e)
            event_ns.append((time.perf_counter_ns() - began) / 2)
    notifier.close(0.5)
    print(f"{args.rules} rules, {len(transports)} transports (MQTT broker down, webhooks refused), {args.hops} hops")
    for what, ns in (("hop()", hop_ns), ("start/end call", event_ns)):
        us = sorted(n / 1000 for n in ns)
        print(f"{what:>15}: median {statistics.median(us):.2f} µs · p99 {us[len(us) * 99 // 100]:.2f} µs")
    print(f"mqtt dropped {mqtt.stats.dropped} (queue of {mqtt.capacity}, broker down)")


if __name__ == "__main__":
    main()
