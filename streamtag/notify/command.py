"""`--on-event CMD`: run a program for each event start and end.

The command line is split with shlex and run without a shell (no quoting surprises, no injection through a label).
The program gets the message (notifier.message()) as JSON on stdin and each of its fields as an environment
variable `STREAMTAG_EVENT_<FIELD>` (TYPE, NODE, ID, LABEL, START, END, PEAK, PEAK_TIME, CLASSES as a JSON list,
SOURCE, MODEL, WALL_START, WALL_END, CLIP; empty when unset). At most MAX_RUNNING run at once (one worker thread
each); a run longer than TIMEOUT seconds is killed with its whole process group. A non-zero exit, a kill or a
program that cannot start counts as failed (not retried: a command may not be safe to run twice); its last stderr
line is kept for the summary. Runs still going at the close deadline are killed. Its stdout is discarded so it
cannot write over the dashboard or `--json`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
from typing import Any

from streamtag.errors import StreamtagError
from streamtag.notify.base import DEFAULT_CAPACITY, Transport
from streamtag.notify.notifier import Notification

TIMEOUT = 30.0
MAX_RUNNING = 4
ENV_PREFIX = "STREAMTAG_EVENT_"


def split_command(command: str) -> list[str]:
    """argv of `command`; the program must exist (one-line error, exit 2, before any audio)."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise StreamtagError(f"--on-event: cannot split {command!r} ({e}); quote it as a shell would", 2) from None
    if not argv:
        raise StreamtagError("--on-event: empty command; give a program and its arguments", 2)
    program = argv[0]
    found = shutil.which(program)
    if found is None:
        where = "is not an executable file" if os.sep in program else "is not on PATH"
        raise StreamtagError(f"--on-event: {program!r} {where}; give the program's path", 2)
    return argv


def event_env(payload: dict[str, Any]) -> dict[str, str]:
    """STREAMTAG_EVENT_* variables for one message."""
    env = {}
    for key, value in payload.items():
        if value is None:
            text = ""
        elif isinstance(value, (list, dict)):
            text = json.dumps(value)
        else:
            text = str(value)
        env[f"{ENV_PREFIX}{key.upper()}"] = text
    return env


class CommandTransport(Transport):
    def __init__(self, command: str, capacity: int = DEFAULT_CAPACITY, timeout: float = TIMEOUT,
                 max_running: int = MAX_RUNNING):
        super().__init__("on-event", capacity, threads=max_running)
        self.argv = split_command(command)
        self.timeout = timeout
        self._running: set[subprocess.Popen] = set()

    def deliver(self, item: Any) -> bool:
        if not isinstance(item, Notification):
            return True
        env = {**os.environ, **event_env(item.payload)}
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as e:
            self.last_error = f"{self.argv[0]}: {e.strerror or e.__class__.__name__}"
            return False
        self._running.add(proc)
        try:
            _, err = proc.communicate(json.dumps(item.payload).encode("utf-8"), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.communicate()
            self.last_error = f"{self.argv[0]}: killed after {self.timeout:g} s"
            return False
        finally:
            self._running.discard(proc)
        if proc.returncode != 0:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            self.last_error = f"{self.argv[0]}: exit {proc.returncode}" + (f": {lines[-1][:120]}" if lines else "")
            return False
        return True

    def interrupt(self) -> None:
        for proc in list(self._running):
            _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group (start_new_session made it its own): a script's children go too."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
