"""Webhooks against a local http.server (fails twice then succeeds: delivered once; hangs: no notifier call waits)
and `--on-event` running a real script that records its stdin and environment."""

from __future__ import annotations

import http.server
import json
import stat
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
from conftest import notify_rule

from streamtag.errors import StreamtagError
from streamtag.events.model import Event, RuleHop
from streamtag.notify import NotifySettings, build_notifier
from streamtag.notify.command import split_command


def event(eid: str, start: float, end: float | None = None) -> Event:
    return Event(id=eid, label="Dog", start=start, end=end, peak=0.9, peak_time=start, classes=["Dog", "Bark"],
                 source="mic", model="cnn6", wall_start="2026-11-27T06:00:00Z", clip=None)


class Server:
    """A webhook endpoint on 127.0.0.1: answers `fail_first` POSTs with 500, then 200; `hang` blocks every answer
    until released."""

    def __init__(self, fail_first: int = 0, hang: bool = False):
        self.bodies: list[dict] = []
        self.attempts = 0
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts += 1
                if hang:
                    outer.release.wait(30)
                if outer.attempts <= fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def flaky() -> Iterator[Server]:
    s = Server(fail_first=2)
    yield s
    s.close()


@pytest.fixture()
def hanging() -> Iterator[Server]:
    s = Server(hang=True)
    yield s
    s.close()


def test_webhook_fails_twice_then_gets_the_event_once(flaky: Server) -> None:
    notifier = build_notifier(NotifySettings(webhook=[flaky.url], node="n1"), [notify_rule("Dog")])
    started = event("w1", 1.0)
    notifier.event_started(started)
    notifier.close(15)
    assert flaky.attempts == 3
    assert flaky.bodies == [{"type": "start", "node": "n1", **started.to_dict()}]
    s = dict(notifier.stats())["webhook"]
    assert (s.sent, s.failed, s.dropped) == (1, 0, 0)


def test_hanging_webhook_costs_no_hop(hanging: Server) -> None:
    notifier = build_notifier(NotifySettings(webhook=[hanging.url], node="n1"), [notify_rule("Dog")])
    done = threading.Event()

    def inference_thread() -> None:  # what the detector does, hop after hop, while the endpoint hangs
        for i in range(100):
            if i == 3:
                notifier.event_started(event("h1", 1.0))
            if i == 50:
                notifier.event_ended(event("h1", 1.0, 15.0))
            notifier.hop(i * 0.3, -30.0, [RuleHop("Dog", 0.9, 3 <= i < 50, "h1" if 3 <= i < 50 else None)])
        done.set()

    worker = threading.Thread(target=inference_thread)
    worker.start()
    worker.join(10)
    assert done.is_set(), "a notifier call waited for the hanging webhook"
    hanging.release.set()
    notifier.close(15)
    assert [b["type"] for b in hanging.bodies] == ["start", "end"]


def test_webhook_gives_up_and_counts(tmp_path: Path) -> None:
    s = Server(fail_first=100)
    try:
        notifier = build_notifier(NotifySettings(webhook=[s.url]), [notify_rule("Dog")])
        notifier.event_started(event("x", 1.0))
        notifier.close(30)
    finally:
        s.close()
    stats = dict(notifier.stats())["webhook"]
    assert (stats.sent, stats.failed) == (0, 1) and s.attempts == 4
    assert "notify webhook: 0 sent · 0 dropped · 1 failed" in notifier.summary_lines()[0]


def test_on_event_runs_a_script_with_stdin_and_env(tmp_path: Path) -> None:
    out = tmp_path / "calls"
    out.mkdir()
    script = tmp_path / "record event.py"  # a space in the path: argv is split by shlex, never by a shell
    script.write_text(f"""#!{sys.executable}
import json, os, sys, uuid
from pathlib import Path
data = sys.stdin.read()
env = {{k: v for k, v in os.environ.items() if k.startswith("STREAMTAG_EVENT_")}}
Path(sys.argv[1], uuid.uuid4().hex + ".json").write_text(json.dumps({{"stdin": data, "env": env,
                                                                      "argv": sys.argv[1:]}}))
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    command = f"'{script}' {out} 'two words'"
    notifier = build_notifier(NotifySettings(on_event=command, node="n1"), [notify_rule("Dog")])
    started, ended = event("c1", 1.0), event("c1", 1.0, 4.5)
    notifier.event_started(started)
    notifier.event_ended(ended)
    notifier.close(30)
    calls = [json.loads(p.read_text()) for p in out.iterdir()]
    assert len(calls) == 2
    by_type = {json.loads(c["stdin"])["type"]: c for c in calls}
    assert json.loads(by_type["end"]["stdin"]) == {"type": "end", "node": "n1", **ended.to_dict()}
    env = by_type["end"]["env"]
    assert env["STREAMTAG_EVENT_TYPE"] == "end" and env["STREAMTAG_EVENT_ID"] == "c1"
    assert env["STREAMTAG_EVENT_LABEL"] == "Dog" and float(env["STREAMTAG_EVENT_END"]) == 4.5
    assert json.loads(env["STREAMTAG_EVENT_CLASSES"]) == ["Dog", "Bark"]
    assert env["STREAMTAG_EVENT_CLIP"] == "" and env["STREAMTAG_EVENT_NODE"] == "n1"
    assert by_type["start"]["env"]["STREAMTAG_EVENT_END"] == ""
    assert by_type["start"]["argv"] == [str(out), "two words"]
    assert dict(notifier.stats())["on-event"].sent == 2


def test_on_event_hanging_and_failing_commands_are_counted(tmp_path: Path) -> None:
    from streamtag.notify.command import CommandTransport
    from streamtag.notify.notifier import Notifier

    hang = CommandTransport("sleep 60", timeout=0.5, max_running=2)
    fail = CommandTransport(f"{sys.executable} -c 'import sys; sys.exit(\"no luck\")'")
    notifier = Notifier([hang, fail], [notify_rule("Dog")], "n1")
    notifier.start()
    notifier.event_started(event("k", 1.0))
    notifier.close(20)
    assert (hang.stats.sent, hang.stats.failed) == (0, 1) and "killed after 0.5 s" in hang.last_error
    assert fail.stats.failed == 1 and fail.last_error.endswith("exit 1: no luck")


@pytest.mark.parametrize("command, says", [("", "empty command"), ("'unclosed", "cannot split"),
                                           ("no-such-program-here --x", "not on PATH"),
                                           ("/nonexistent/prog", "not an executable file")])
def test_on_event_bad_commands(command: str, says: str) -> None:
    with pytest.raises(StreamtagError) as e:
        split_command(command)
    assert says in str(e.value) and e.value.exit_code == 2


@pytest.mark.parametrize("url", ["ftp://x/y", "http://", "http://host:notaport/"])
def test_bad_webhook_urls(url: str) -> None:
    with pytest.raises(StreamtagError) as e:
        build_notifier(NotifySettings(webhook=[url]), [notify_rule("Dog")])
    assert e.value.exit_code == 2 and "--webhook" in str(e.value)


def test_nothing_asked_nothing_built() -> None:
    assert build_notifier(NotifySettings(), [notify_rule("Dog")]) is None
