"""Shared test plumbing: a private PulseAudio server for real capture tests, seeded CNN6 weights, a CLI runner.

Live capture is tested for real, without a microphone: the `pulse` fixture starts a PulseAudio daemon of our own
(in a private XDG_RUNTIME_DIR, so a desktop session's server is never touched, and with HOME, XDG_* and PULSE_*
state paths inside it, so nothing is written into the real home directory) with a null sink `streamtag_test`.
What `paplay --device=streamtag_test` plays comes out of the sink's monitor source, which is the server's default
source; PortAudio reads it through ALSA's `pulse` device (the pulse plugin of libasound2-plugins), exactly the path
a user's microphone takes. In CI (CI=true) a missing piece is a test failure, locally a skip.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SINK = "streamtag_test"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent
REAL_HOME = Path.home()  # before the `pulse` fixture points HOME at its private one
SESSION_START = time.time()


def need(reason: str) -> None:
    """Skip locally; fail in CI, where the live tests must run."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: live tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


@dataclass
class PulseServer:
    runtime_dir: Path
    sink: str = SINK

    @property
    def home(self) -> Path:
        """The HOME the daemon and its clients get: PulseAudio's cookie, state and config land here."""
        return self.runtime_dir / "home"

    @property
    def private(self) -> dict[str, str]:
        """The variables that point the server and its clients at this server and away from the real home."""
        home = self.home
        return {"XDG_RUNTIME_DIR": str(self.runtime_dir), "HOME": str(home),
                "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
                "XDG_STATE_HOME": str(home / ".local" / "state"), "PULSE_STATE_PATH": str(home / "pulse-state"),
                "PULSE_COOKIE": str(home / "pulse-cookie"),
                "PULSE_SERVER": f"unix:{self.runtime_dir / 'pulse' / 'native'}"}

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.private}

    def play(self, path: str | Path) -> subprocess.Popen:
        """Start playing `path` into the null sink (its monitor is what `--input-device pulse` records)."""
        return subprocess.Popen(["paplay", f"--device={self.sink}", str(path)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def pactl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=15)


def start_pulseaudio(runtime_dir: Path, sink: str = SINK) -> PulseServer:
    """Start a PulseAudio daemon serving `runtime_dir` with one null sink; returns once it answers."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    runtime_dir.chmod(0o700)
    server = PulseServer(runtime_dir, sink)
    server.home.mkdir(exist_ok=True)
    env = {**server.env}
    env.pop("PULSE_SERVER")  # the daemon serves XDG_RUNTIME_DIR/pulse/native; the variable is for clients
    cmd = ["pulseaudio", "-D", "--exit-idle-time=-1", "-n", "--log-target=stderr",
           "--load=module-native-protocol-unix", f"--load=module-null-sink sink_name={sink}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.pactl("info").returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise RuntimeError(f"pulseaudio did not start (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    done = server.pactl("set-default-source", f"{sink}.monitor")
    if done.returncode != 0:
        raise RuntimeError(f"pactl set-default-source failed: {done.stderr.strip()}")
    return server


def stop_pulseaudio(server: PulseServer) -> None:
    """Stop the daemon of `server` (by its own pid file: only the one we started)."""
    env = {**server.env}
    env.pop("PULSE_SERVER")
    subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=15)


def _portaudio_sees_pulse() -> bool:
    import sounddevice as sd

    sd._terminate()  # PortAudio enumerates devices once, at initialisation: look again now the server runs
    sd._initialize()
    return any(d["name"] == "pulse" and d["max_input_channels"] > 0 for d in sd.query_devices())


@pytest.fixture(scope="session")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> PulseServer:
    """A running PulseAudio server with the `streamtag_test` null sink, visible to PortAudio as device `pulse`.

    Sets its private variables (PulseServer.private: XDG_RUNTIME_DIR, PULSE_SERVER, HOME, XDG_*, PULSE_*) in
    os.environ for the session, so this process and every child talks to it and writes only below its runtime dir.
    """
    for tool in ("pulseaudio", "pactl", "paplay"):
        if not shutil.which(tool):
            need(f"{tool} is not installed; run `make system-deps`")
    try:
        import sounddevice  # noqa: F401
    except OSError as e:
        need(f"PortAudio is missing ({e}); run `make system-deps`")
    runtime_dir = tmp_path_factory.mktemp("xdg-runtime")
    try:
        server = start_pulseaudio(runtime_dir)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        need(f"cannot start PulseAudio: {e}")
    saved = {k: os.environ.get(k) for k in server.private}
    os.environ.update(server.private)
    try:
        if not _portaudio_sees_pulse():
            # ALSA has no `pulse` device configured (no libasound2-plugins conf.d snippet): add one in the private
            # HOME (ALSA reads $HOME/.asoundrc), never in the user's.
            (server.home / ".asoundrc").write_text("pcm.pulse { type pulse }\nctl.pulse { type pulse }\n")
            if not _portaudio_sees_pulse():
                need("PortAudio shows no ALSA `pulse` device; install libasound2-plugins (`make system-deps`)")
        yield server
    finally:
        stop_pulseaudio(server)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def cnn6_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded CNN6 checkpoint as a real .pdparams file (tests/seeded.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from seeded import write_seeded_pdparams

    return write_seeded_pdparams("cnn6", tmp_path_factory.mktemp("weights") / "cnn6_seed0.pdparams")


@pytest.fixture(scope="session")
def streamtag_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One STREAMTAG_HOME for the session's CLI runs, so the inference export of a model happens once."""
    return tmp_path_factory.mktemp("streamtag-home")


@pytest.fixture(scope="session")
def cli_env(streamtag_home: Path) -> dict[str, str]:
    """Environment for `python -m streamtag` subprocesses."""
    return {**os.environ, "STREAMTAG_HOME": str(streamtag_home), "PYTHONUNBUFFERED": "1"}


def tmux_screen(cmd: list, env: dict[str, str], ready, timeout: float) -> str:
    """Run `cmd` in a real 80×30 terminal (tmux) and return the screen once `ready(screen)` holds or `timeout`
    seconds pass. The socket is unique per process and test, so checkouts running the suite at once never share a
    tmux server (one run's kill-server would empty another's screen)."""
    if not shutil.which("tmux"):
        need("tmux is not installed; run `make system-deps`")
    import shlex

    shown = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("STREAMTAG_HOME", "PATH") if k in env)
    tmux = ["tmux", "-L", f"streamtag-test-{os.getpid()}-{time.monotonic_ns()}"]
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "30",
                    f"env {shown} {shlex.join(map(str, cmd))}; sleep 60"], check=True, timeout=30)
    try:
        screen = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True,
                                    timeout=10).stdout
            if ready(screen):
                break
            time.sleep(0.25)
        return screen
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)


def tag_one_file(source, scorer, sample_duration, hop_duration, batch_size=8, pad=True):
    """One file through `tag`'s executor (corpus: decode thread, batches, the saved npz), read back."""
    from streamtag.audio import AudioReader
    from streamtag.corpus import Job, TagOptions, tag_job
    from streamtag.errors import StreamtagError
    from streamtag.results import load_result

    path = source.path if isinstance(source, AudioReader) else Path(source)
    options = TagOptions(scorer.arch, "test", sample_duration, hop_duration, pad=pad)
    output = path.with_name(f"{path.stem}-{sample_duration}-{hop_duration}-{pad}.npz")
    outcome = tag_job(Job(str(path), str(output), options), scorer, batch_size)
    if not outcome.ok:
        raise StreamtagError(outcome.error)
    return load_result(output)


def notify_rule(name: str, cooldown: float = 0.0, notify: bool = True):
    """A real events.rules.Rule carrying only what notifications read (name, cooldown, notify)."""
    from streamtag.events.rules import Rule

    return Rule(name, (name,), (), cooldown=cooldown, notify=notify)


def streamtag_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamtag", *map(str, args)]


class Child:
    """A child process whose stdout and stderr are read on threads, so a test waits for output with a timeout and a
    hung child fails the test instead of hanging the suite. Use as a context manager: the child is killed on exit
    if it is still running."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._out: queue.Queue[str | None] = queue.Queue()
        self._err: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self._out.put), daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self._err.append), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, put) -> None:
        for line in stream:
            put(line)
        put(None)

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    @property
    def stderr(self) -> str:
        return "".join(x for x in self._err if x is not None)

    def lines(self, n: int, timeout: float = 120) -> list[str]:
        """The next `n` stdout lines; fails the test if they do not come within `timeout` seconds."""
        deadline, got = time.monotonic() + timeout, []
        while len(got) < n:
            try:
                line = self._out.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no stdout line {len(got) + 1} of {n} within {timeout} s; stderr: {self.stderr[-2000:]}")
            if line is None:
                pytest.fail(f"the child ended (exit {self.proc.wait(timeout=30)}) after {len(got)} of {n} lines; "
                            f"stderr: {self.stderr[-2000:]}")
            got.append(line)
        return got

    def finish(self, timeout: float = 120) -> tuple[int, list[str], str]:
        """Wait for the child to end: (exit code, the stdout lines not read yet, all of stderr)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the child did not end within {timeout} s; stderr: {self.stderr[-2000:]}")
        for t in self._threads:
            t.join(timeout=30)
        rest = []
        while True:
            line = self._out.get(timeout=30)
            if line is None:
                break
            rest.append(line)
        return rc, rest, self.stderr


@pytest.fixture()
def broker(tmp_path: Path):
    """A real Mosquitto on 127.0.0.1 (tests/broker.py), killed after the test."""
    from broker import Broker, need_mosquitto

    need_mosquitto()
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()

