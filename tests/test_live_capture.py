"""Real capture through PortAudio: PulseAudio's null sink monitor is the microphone (see conftest.py `pulse`).

What `paplay` plays into the sink must come out of `streamtag live`: in the saved audio (cross-correlation), in the
hop count, and in complete npz/txt files, also when the session ends on Ctrl-C or on a device that goes away.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REAL_HOME, SESSION_START, Child, start_pulseaudio, stop_pulseaudio, streamtag_cmd

from streamtag.results import load_result

pytestmark = pytest.mark.live
SR = 32000


@pytest.fixture(scope="module")
def played(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """~4.5 s to play: espeak-ng speech, a sox chirp and a noise burst (sharp cross-correlation peak), 32 kHz."""
    d = tmp_path_factory.mktemp("played")
    speech = d / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "streamtag hears this sentence"], check=True, timeout=30)
    out = d / "played.wav"
    subprocess.run(["sox", str(speech), "-r", "32000", "-c", "1", str(d / "speech32.wav")], check=True, timeout=30)
    subprocess.run(["sox", "-n", "-r", "32000", "-c", "1", str(d / "chirp.wav"), "synth", "1", "sine", "300-4000",
                    "vol", "0.5"], check=True, timeout=30)
    subprocess.run(["sox", "-n", "-r", "32000", "-c", "1", str(d / "noise.wav"), "synth", "1", "whitenoise",
                    "vol", "0.3"], check=True, timeout=30)
    subprocess.run(["sox", str(d / "speech32.wav"), str(d / "chirp.wav"), str(d / "noise.wav"), str(out)],
                   check=True, timeout=30)
    audio, rate = sf.read(out, dtype="float32")
    assert rate == SR
    return out, audio


def best_match(recorded: np.ndarray, played: np.ndarray) -> tuple[float, int]:
    """Peak normalised cross-correlation of `played` inside `recorded`, and where it is."""
    n = len(played)
    size = 1 << int(np.ceil(np.log2(len(recorded) + n)))
    corr = np.fft.irfft(np.fft.rfft(recorded, size) * np.conj(np.fft.rfft(played, size)), size)[: len(recorded) - n + 1]
    energy = np.concatenate([[0.0], np.cumsum(recorded.astype(np.float64) ** 2)])
    played_energy = float(np.sum(played.astype(np.float64) ** 2))
    # A stretch with under 1% of the played energy is no match; the floor also keeps float error in near-silence
    # from dividing by ~0 (the bound |ncc| <= 1 still holds).
    window_energy = np.maximum(energy[n:] - energy[:-n], 0.01 * played_energy)
    ncc = corr / np.sqrt(window_energy * played_energy)
    lag = int(np.argmax(ncc))
    return float(ncc[lag]), lag


def live_cmd(weights, *extra):
    return streamtag_cmd("live", "--input-device", "pulse", "--no-dashboard", "--json", "--model", "cnn6",
                         "--weights", weights, *extra)


def test_the_pulse_server_writes_nothing_into_the_real_home(pulse):
    assert Path(pulse.env["HOME"]).is_relative_to(pulse.runtime_dir) and Path.home() == pulse.home
    written = [p for p in pulse.home.rglob("*") if p.is_file()]
    assert any("cookie" in p.name for p in written), written  # PulseAudio's state went to the private HOME
    pulse_dir = REAL_HOME / ".config" / "pulse"
    touched = [p for p in pulse_dir.rglob("*") if p.lstat().st_mtime >= SESSION_START] if pulse_dir.exists() else []
    assert touched == [], touched
    asoundrc = REAL_HOME / ".asoundrc"
    assert not asoundrc.exists() or asoundrc.stat().st_mtime < SESSION_START


def test_devices_lists_the_pulse_device(pulse, cli_env):
    done = subprocess.run(streamtag_cmd("devices"), env={**cli_env, **pulse.env}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert any(line.split()[1:2] == ["pulse"] for line in done.stdout.splitlines()[1:]), done.stdout
    assert "channels" in done.stdout and "rate" in done.stdout


def test_a_device_name_that_matches_nothing_lists_what_exists(pulse, cli_env, cnn6_weights):
    done = subprocess.run(streamtag_cmd("live", "--input-device", "no-such-mic", "--no-dashboard"),
                          env={**cli_env, **pulse.env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    err = done.stderr.strip()
    assert err.count("\n") == 0 and "no-such-mic" in err and "pulse" in err


def test_live_capture_records_what_was_played(pulse, played, tmp_path, cli_env, cnn6_weights):
    wav, signal_played = played
    with Child(live_cmd(cnn6_weights, "--duration", "12", "--record", tmp_path / "live", "--save-audio",
                        tmp_path / "live.wav"), {**cli_env, **pulse.env}) as child:
        (first,) = child.lines(1)  # the first window is scored: the stream is running
        player = pulse.play(wav)
        assert player.wait(timeout=30) == 0, player.stderr.read()
        rc, out, err = child.finish(timeout=60)
    assert rc == 0, err
    records = [json.loads(first)] + [json.loads(line) for line in out]

    expected_hops = (12 * SR - 2 * SR) // 9600 + 1  # 34 windows end within 12 s of audio
    result = load_result(tmp_path / "live.npz")
    assert abs(len(result.time) - expected_hops) <= 2, err
    assert len(records) == len(result.time)
    assert result.scores.shape == (len(result.time), 527) and np.isfinite(result.scores).all()
    assert (result.model, result.sample_duration, result.hop_duration) == ("cnn6", 2.0, 0.3)
    blocks = (tmp_path / "live.txt").read_text().split("\n\n")[:-1]
    assert len(blocks) == len(result.time) and all(len(b.splitlines()) == 11 for b in blocks)

    recorded, rate = sf.read(tmp_path / "live.wav", dtype="float32")
    assert rate == SR and len(recorded) == 12 * SR
    score, lag = best_match(recorded, signal_played)
    assert score > 0.8, f"played signal not found in the capture (peak NCC {score:.3f} at {lag / SR:.2f} s)"
    assert lag >= 2 * SR - SR // 2  # it was played after the first window had been scored


def test_capture_at_another_rate_is_resampled_to_32k(pulse, played, tmp_path, cnn6_weights, streamtag_home,
                                                     monkeypatch):
    """A device that cannot do 32 kHz: capture at 44.1 kHz stereo, resample on the consumer side."""
    from streamtag.engine import load_scorer
    from streamtag.stream.pipeline import Pipeline
    from streamtag.stream.sources import MicSource

    monkeypatch.setenv("STREAMTAG_HOME", str(streamtag_home))
    scorer = load_scorer("cnn6", str(cnn6_weights), device="cpu")
    wav, signal_played = played

    class Audio:
        blocks: list = []

        def write(self, block):
            self.blocks.append(block.copy())

    audio = Audio()
    source = MicSource("pulse", capture_rate=44100)
    assert source.sample_rate == 44100 and source.channels == 2 and source.ring is not source.capture
    pipeline = Pipeline(source, scorer, 2.0, 0.3, smooth_size=5, audio_sinks=[audio], limit_seconds=7.0)
    source.start()
    try:
        pipeline.start()
        assert source.ring.wait_for(SR // 2, timeout=20)  # the stream delivers (its start-up takes up to ~1 s)
        player = pulse.play(wav)
        assert player.wait(timeout=30) == 0
        assert pipeline.join(timeout=30)
    finally:
        pipeline.stop()
        source.stop()
    assert pipeline.exception is None and source.error is None
    recorded = np.concatenate(audio.blocks)
    assert len(recorded) == 7 * SR
    score, _ = best_match(recorded, signal_played)
    assert score > 0.8, f"played signal not found after resampling (peak NCC {score:.3f})"
    assert pipeline.state.hops + pipeline.state.skipped == (7 * SR - 2 * SR) // 9600 + 1


def test_ctrl_c_during_live_saves_the_recording(pulse, tmp_path, cli_env, cnn6_weights):
    with Child(live_cmd(cnn6_weights, "--record", tmp_path / "c", "--save-audio", tmp_path / "c.wav"),
               {**cli_env, **pulse.env}) as child:
        child.lines(3)
        child.proc.send_signal(signal.SIGINT)
        rc, out, err = child.finish(timeout=60)
    assert rc == 0, err
    assert "stopped by SIGINT" in err and "c.npz" in err and "c.wav" in err
    result = load_result(tmp_path / "c.npz")
    assert len(result.time) == 3 + len(out)
    assert (tmp_path / "c.txt").read_text().count("\n\n") == len(result.time)
    audio, rate = sf.read(tmp_path / "c.wav", dtype="float32")
    assert rate == SR and len(audio) >= 2 * SR + 2 * 9600


def test_device_lost_mid_session_keeps_the_recording(pulse, tmp_path, cli_env, cnn6_weights):
    """A second PulseAudio server, killed under a running session: the device is gone for good."""
    doomed = start_pulseaudio(tmp_path / "xdg", sink="doomed")
    try:
        with Child(live_cmd(cnn6_weights, "--record", tmp_path / "d", "--save-audio", tmp_path / "d.wav"),
                   {**cli_env, **doomed.env}) as child:
            child.lines(1)
            stop_pulseaudio(doomed)
            rc, _, err = child.finish(timeout=60)
    finally:
        stop_pulseaudio(doomed)
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("streamtag: error: input device") and "kept what was recorded" in last, err
    result = load_result(tmp_path / "d.npz")
    assert len(result.time) >= 1
    assert sf.info(str(tmp_path / "d.wav")).frames >= 2 * SR
