"""The live path without a sound card: file replay through ring buffer → pipeline → recorder, with the real model.

Acceptance: `replay --fast --record X` gives exactly the file's full windows, raw scores equal to `tag`'s (1e-5).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import Child, streamtag_cmd

from streamtag.audio import load_audio
from streamtag.labels import audioset_labels
from streamtag.results import load_result, smooth
from streamtag.stream.pipeline import Pipeline
from streamtag.stream.sources import FileSource

SR = 32000


def make_wav(path: Path, seconds: float, rate: int = 44100, channels: int = 2, seed: int = 0) -> Path:
    """Tones that change every half second over quiet noise: something for the model to look at."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    freq = 220.0 * 2 ** (np.floor(t * 2) % 12 / 12)
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))
    data = np.stack([mono * (1 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)
    sf.write(path, data, rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def scorer(cnn6_weights, streamtag_home):
    from streamtag.engine import load_scorer

    saved = os.environ.get("STREAMTAG_HOME")
    os.environ["STREAMTAG_HOME"] = str(streamtag_home)
    try:
        yield load_scorer("cnn6", str(cnn6_weights), device="cpu", engine="inference")
    finally:
        if saved is None:
            os.environ.pop("STREAMTAG_HOME", None)
        else:
            os.environ["STREAMTAG_HOME"] = saved


class SlowScorer:
    """A real scorer that also sleeps: inference slower than real time, without faking the model."""

    def __init__(self, scorer, seconds: float):
        self.scorer, self.seconds, self.arch = scorer, seconds, scorer.arch

    def score(self, waveforms):
        time.sleep(self.seconds)
        return self.scorer.score(waveforms)

    def describe(self):
        return self.scorer.describe() + " (slowed)"


class Collect:
    def __init__(self):
        self.results = []

    def add(self, result):
        self.results.append(result)


def run(cmd, env, timeout=180):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------- CLI parity
def test_replay_fast_record_equals_tag(tmp_path, cnn6_weights, cli_env):
    wav = make_wav(tmp_path / "tones.wav", 5.3)
    model = ["--model", "cnn6", "--weights", cnn6_weights]
    done = run(streamtag_cmd("tag", wav, "--no-pad", "--output-dir", tmp_path / "tag", *model), cli_env)
    assert done.returncode == 0, done.stderr
    done = run(streamtag_cmd("replay", wav, "--fast", "--no-dashboard", "--record", tmp_path / "rec",
                             "--save-audio", tmp_path / "rec.wav", "--top-k", "4", *model), cli_env)
    assert done.returncode == 0, done.stderr
    assert "0 skipped" in done.stderr

    n = len(load_audio(wav))
    full_windows = (n - 2 * SR) // (SR * 3 // 10) + 1
    tagged, replayed = load_result(tmp_path / "tag" / "tones.npz"), load_result(tmp_path / "rec.npz")
    assert len(replayed.time) == full_windows == len(tagged.time)
    np.testing.assert_array_equal(replayed.time, tagged.time)
    np.testing.assert_allclose(replayed.scores, tagged.scores, atol=1e-5, rtol=0)
    assert (replayed.model, replayed.sample_rate, replayed.labels) == ("cnn6", 44100, list(audioset_labels()))

    # The txt is the parse format: one block per window, top-4 of the smoothed scores.
    blocks = (tmp_path / "rec.txt").read_text().split("\n\n")
    assert blocks[-1] == ""
    blocks = blocks[:-1]
    assert len(blocks) == full_windows
    smoothed = smooth(replayed.scores, 5)
    labels = audioset_labels()
    for block, t, row in zip(blocks, replayed.time, smoothed):
        lines = block.splitlines()
        assert float(lines[0]) == t
        assert len(lines) == 5
        for line in lines[1:]:
            label, score = line.rsplit(": ", 1)
            assert abs(float(score) - row[labels.index(label)]) < 1e-6
        shown = sorted(float(line.rsplit(": ", 1)[1]) for line in lines[1:])
        assert shown == pytest.approx(sorted(row)[-4:], abs=1e-6)

    # The saved audio is the stream the model saw: the file at 32 kHz mono, every sample.
    audio, rate = sf.read(tmp_path / "rec.wav", dtype="float32")
    assert rate == SR
    np.testing.assert_allclose(audio, load_audio(wav), atol=1e-7)


def test_json_lines_follow_the_label_filter(tmp_path, cnn6_weights, cli_env):
    wav = make_wav(tmp_path / "a.wav", 3.2, rate=32000, channels=1)
    keep = {"Speech", "Domestic animals, pets", "Music"}
    done = run(streamtag_cmd("replay", wav, "--fast", "--no-dashboard", "--json", "--top-k", "2", "--only",
                             "speech,Domestic animals, pets,Music", "--model", "cnn6", "--weights", cnn6_weights),
               cli_env)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["index"] for r in records] == list(range(5))  # (3.2 s - 2 s) / 0.3 s + 1
    for r in records:
        assert len(r["labels"]) == 2 and set(r["labels"]) <= keep
        assert r["scores"] == sorted(r["scores"], reverse=True)
        assert r["inference_ms"] > 0


def test_unknown_label_is_a_one_line_error_with_a_suggestion(tmp_path, cli_env):
    wav = make_wav(tmp_path / "a.wav", 1.0)
    done = run(streamtag_cmd("replay", wav, "--fast", "--no-dashboard", "--ignore", "Music,Speach"), cli_env)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "unknown label 'Speach'" in done.stderr and "did you mean 'Speech'?" in done.stderr


def test_missing_file_is_a_one_line_error(tmp_path, cli_env):
    done = run(streamtag_cmd("replay", tmp_path / "nope.wav", "--no-dashboard"), cli_env)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("streamtag: error:") and "nope.wav" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_sigterm_stops_cleanly_and_completes_the_recording(tmp_path, cnn6_weights, cli_env):
    wav = make_wav(tmp_path / "long.wav", 60.0, rate=16000, channels=1)
    with Child(streamtag_cmd("replay", wav, "--no-dashboard", "--json", "--record", tmp_path / "r", "--save-audio",
                             tmp_path / "r.wav", "--model", "cnn6", "--weights", cnn6_weights), cli_env) as child:
        lines = child.lines(12)  # 12 hops scored: ~5.3 s of audio replayed
        assert (tmp_path / "r.npz.part").is_dir() and (tmp_path / "r.wav.part").is_file()  # written as it goes
        child.proc.send_signal(signal.SIGTERM)
        rc, out, err = child.finish(timeout=60)
    assert rc == 0, err
    assert "stopped by SIGTERM" in err
    result = load_result(tmp_path / "r.npz")
    n = len(result.time)
    assert n >= 12
    assert n == len(lines) + len(out)  # every hop printed is in the recording
    assert (tmp_path / "r.txt").read_text().count("\n\n") == n
    audio, rate = sf.read(tmp_path / "r.wav", dtype="float32")
    assert rate == SR and len(audio) >= 2 * SR + (n - 1) * 9600
    assert not list(tmp_path.glob(".*.tmp*")) and not list(tmp_path.glob("*.part"))  # nothing left behind


# ---------------------------------------------------------------------------------------------- scheduling
def test_slow_inference_skips_to_the_newest_window_and_counts(tmp_path, scorer):
    wav = make_wav(tmp_path / "a.wav", 4.0)
    source = FileSource(str(wav), speed=2.0)
    sink = Collect()
    pipeline = Pipeline(source, SlowScorer(scorer, 0.3), sample_duration=1.0, hop_duration=0.1, smooth_size=3,
                        sinks=[sink])
    source.start()
    try:
        pipeline.run()
    finally:
        source.stop()
    windows = (4 * SR - SR) // 3200 + 1
    indices = [r.index for r in sink.results]
    state = pipeline.state
    assert state.skipped > 0
    assert state.hops + state.skipped == windows  # every window is either scored or counted as skipped
    assert indices == sorted(set(indices)) and indices[-1] == windows - 1  # ends on the newest window
    assert [r.time for r in sink.results] == [i * 3200 / SR for i in indices]
    assert all(r.delay_ms is not None and r.delay_ms >= r.inference_ms for r in sink.results)
    assert not state.running and state.overruns == 0


def test_fast_replay_applies_backpressure_instead_of_dropping(tmp_path, scorer):
    """A ring of 1.2 s under a slow consumer: the reader waits, no hop is dropped, every window is intact."""
    wav = make_wav(tmp_path / "a.wav", 3.0, rate=32000, channels=1)
    source = FileSource(str(wav), fast=True, ring_seconds=1.2)
    sink = Collect()
    pipeline = Pipeline(source, SlowScorer(scorer, 0.02), sample_duration=0.5, hop_duration=0.1, sinks=[sink])
    source.start()
    try:
        pipeline.run()
    finally:
        source.stop()
    audio = load_audio(wav)
    windows = (len(audio) - 16000) // 3200 + 1
    assert pipeline.state.skipped == 0 and pipeline.state.overruns == 0
    assert [r.index for r in sink.results] == list(range(windows))
    direct = scorer.score(np.stack([audio[k * 3200:k * 3200 + 16000] for k in range(windows)]))
    np.testing.assert_allclose(np.stack([r.scores for r in sink.results]), direct, atol=1e-5, rtol=0)
    # No smoothing asked: what is shown is the raw row.
    assert all(r.smoothed is r.scores for r in sink.results)


def test_duration_limits_the_audio_clock(tmp_path, scorer):
    wav = make_wav(tmp_path / "a.wav", 6.0)
    source = FileSource(str(wav), fast=True, limit_seconds=3.0)
    sink = Collect()
    pipeline = Pipeline(source, scorer, sample_duration=2.0, hop_duration=0.3, limit_seconds=3.0, sinks=[sink])
    source.start()
    try:
        pipeline.run()
    finally:
        source.stop()
    assert [r.index for r in sink.results] == [0, 1, 2, 3]  # windows ending by 3 s: 0.0, 0.3, 0.6, 0.9
    assert pipeline.state.audio_seconds == 3.0


def test_a_source_that_fails_to_start_is_its_own_error_and_leaves_no_temp_file(tmp_path, scorer):
    """A device that cannot be opened (busy, unsupported) raises a StreamtagError from start(); the session must
    pass it on as it is (not a RuntimeError from cleaning up a pipeline that never started) and discard the
    half-made wav."""
    from streamtag.errors import StreamtagError
    from streamtag.stream.session import StreamOptions, run_session

    class Unopenable(FileSource):
        def start(self):
            raise StreamtagError("cannot open input device test at 32000 Hz: busy; see `streamtag devices`")

    source = Unopenable(make_wav(tmp_path / "a.wav", 3.0), fast=True, ring_seconds=8.0)
    options = StreamOptions(dashboard=False, record=str(tmp_path / "rec"), save_audio=str(tmp_path / "rec.wav"))
    with pytest.raises(StreamtagError, match="cannot open input device test"):
        run_session(source, scorer, audioset_labels(), options, title="test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]  # no result, no empty wav, no part, no temp file
