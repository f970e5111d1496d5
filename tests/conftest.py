"""Shared test plumbing: a private PulseAudio server for real capture tests, seeded CNN6 weights, a CLI runner.

Live capture is tested for real, without a microphone: the `pulse` fixture starts a PulseAudio daemon of our own
(in a private XDG_RUNTIME_DIR, so a desktop session's server is never touched) with a null sink `streamtag_test`.
What `paplay --device=streamtag_test` plays comes out of the sink's monitor source, which is the server's default
source; PortAudio reads it through ALSA's `pulse` device (the pulse plugin of libasound2-plugins), exactly the path
a user's microphone takes. In CI (CI=true) a missing piece is a test failure, locally a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SINK = "streamtag_test"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent


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
    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime_dir),
                "PULSE_SERVER": f"unix:{self.runtime_dir / 'pulse' / 'native'}"}

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

    Sets XDG_RUNTIME_DIR/PULSE_SERVER in os.environ for the session, so this process and every child talks to it.
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
    saved = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "PULSE_SERVER")}
    os.environ.update(XDG_RUNTIME_DIR=str(server.runtime_dir), PULSE_SERVER=server.env["PULSE_SERVER"])
    wrote_asoundrc = None
    try:
        if not _portaudio_sees_pulse():
            # ALSA has no `pulse` device configured (no libasound2-plugins conf.d snippet): add one for this user,
            # only when the user has no ~/.asoundrc of their own.
            asoundrc = Path.home() / ".asoundrc"
            if not asoundrc.exists():
                asoundrc.write_text("pcm.pulse { type pulse }\nctl.pulse { type pulse }\n")
                wrote_asoundrc = asoundrc
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
        if wrote_asoundrc is not None:
            wrote_asoundrc.unlink()


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


def streamtag_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamtag", *map(str, args)]
