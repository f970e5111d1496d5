"""Pictures: `streamtag plot`, `tag --plot`, `replay --record --plot`, as a user runs them, and the pooling behind them.

Every picture is decoded and checked for its pixel size and that it is not blank; the panels are found by colour
(viridis for scores, magma for the spectrogram, the events' lane colours), so a panel that silently vanished fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import streamtag_cmd

from streamtag.errors import StreamtagError
from streamtag.events.model import Event
from streamtag.labels import audioset_labels
from streamtag.plot import (PlotOptions, bin_max, draw, fill_edges, log_mel_image, plot_result, read_events,
                            time_ticks)
from streamtag.results import TagResult, load_result, save_result

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "sample.wav"
LABELS = list(audioset_labels())
VIRIDIS_TOP = (253, 231, 37)   # a score of 1
TAB_BLUE = (31, 119, 180)      # the first events lane (matplotlib's C0)


def run(cmd, env, timeout=300):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def image(path: Path) -> np.ndarray:
    """The picture as an [height, width, 3] uint8 array (decoded by Pillow, which matplotlib depends on)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def assert_picture(path: Path, width: int = 1600, height: int = 900) -> np.ndarray:
    pixels = image(path)
    assert pixels.shape == (height, width, 3)
    assert pixels.astype(np.float64).var() > 100.0  # not a blank page
    return pixels


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels are within `tolerance` of `colour` in every channel."""
    return int((np.abs(pixels.astype(np.int16) - np.array(colour)) <= tolerance).all(axis=2).sum())


@pytest.fixture
def model(cnn6_weights):
    return ["--model", "cnn6", "--weights", cnn6_weights, "--engine", "eager", "--device", "cpu"]


# ---------------------------------------------------------------------------------------------- end to end
def test_tag_plot_draws_the_spectrogram_and_the_scores_of_a_short_file(tmp_path, model, cli_env):
    done = run(streamtag_cmd("tag", SAMPLE, "--output-dir", tmp_path, "--plot", *model), cli_env)
    assert done.returncode == 0, done.stderr
    assert f"→ {tmp_path / 'sample.npz'}, {tmp_path / 'sample.png'}" in done.stdout
    pixels = assert_picture(tmp_path / "sample.png")
    top, bottom = pixels[: 900 // 3], pixels[900 // 2:]
    assert near(top, (0, 0, 4), 40) + near(top, (252, 253, 191), 40) > 1000  # magma: the log-mel panel
    assert near(bottom, (68, 1, 84), 60) + near(bottom, VIRIDIS_TOP, 60) > 1000  # viridis: the heat map

    # the same result through `plot`, at another size, as svg and pdf too
    done = run(streamtag_cmd("plot", tmp_path / "sample.npz", "--audio", SAMPLE, "--width", "1000", "--height",
                             "600", "--dpi", "80", "--output-dir", tmp_path / "pics", "--top", "5"), cli_env)
    assert done.returncode == 0, done.stderr
    assert_picture(tmp_path / "pics" / "sample.png", 1000, 600)
    for fmt, magic in (("svg", b"<?xml"), ("pdf", b"%PDF")):
        done = run(streamtag_cmd("plot", tmp_path / "sample.npz", "--format", fmt), cli_env)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / f"sample.{fmt}").read_bytes().startswith(magic)
    assert not list(tmp_path.rglob(".*.tmp*"))  # written through temp files, none left

    # --events SPEC: detected on the fly by the live path's detector (the seeded model scores Speech high here)
    done = run(streamtag_cmd("plot", tmp_path / "sample.npz", "--events", "Speech,Music", "--output-dir",
                             tmp_path / "ev"), cli_env)
    assert done.returncode == 0, done.stderr
    assert near(assert_picture(tmp_path / "ev" / "sample.png")[int(900 * 0.75):], TAB_BLUE, 10) > 1000
    done = run(streamtag_cmd("plot", tmp_path / "sample.npz", "--events", "Speach"), cli_env)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1 and "Speach" in done.stderr


def test_a_recording_with_audio_and_events(tmp_path, model, cli_env):
    from test_stream import make_wav

    wav = make_wav(tmp_path / "tones.wav", 12.0)
    prefix = tmp_path / "rec"
    done = run(streamtag_cmd("replay", wav, "--fast", "--no-dashboard", "--record", prefix, "--save-audio",
                             f"{prefix}.wav", "--events", "Music", "--plot", *model[:4]), cli_env)
    assert done.returncode == 0, done.stderr
    assert f"{prefix}.png" in done.stderr  # listed with the session's outputs
    logged = read_events(tmp_path / "rec.events.jsonl")  # the session's own events, drawn in its picture
    assert logged and {e.label for e in logged} == {"Music"}
    pixels = assert_picture(tmp_path / "rec.png")
    assert near(pixels[: 900 // 3], (0, 0, 4), 40) > 100  # the spectrogram of the saved audio
    assert near(pixels[int(900 * 0.75):], TAB_BLUE, 10) > 1000  # the Music lane

    events = [Event(id="speech-1", label="Speech", start=1.0, end=4.5, peak=0.9, peak_time=2.0),
              Event(id="siren-1", label="Siren", start=5.0, end=5.1, peak=0.7, peak_time=5.05),  # 0.1 s: still seen
              Event(id="speech-2", label="Speech", start=8.0, end=None, peak=0.8, peak_time=9.0)]  # still active
    (tmp_path / "rec.events.jsonl").write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events))
    done = run(streamtag_cmd("plot", f"{prefix}.npz"), cli_env)
    assert done.returncode == 0, done.stderr
    pixels = assert_picture(tmp_path / "rec.png")
    lanes = pixels[int(900 * 0.75):]
    assert near(lanes, TAB_BLUE, 10) > 100  # lane 0, "Siren", sorted first: the 0.1 s event is drawn
    assert near(lanes, (255, 127, 14), 10) > 5000  # lane 1, "Speech" (C1): two long spans

    # --events FILE overrides the one beside the npz; a broken one is one line and writes nothing
    (tmp_path / "bad.jsonl").write_text('{"label": "Dog"}\nnot json\n')
    (tmp_path / "rec.png").unlink()
    done = run(streamtag_cmd("plot", f"{prefix}.npz", "--events", tmp_path / "bad.jsonl"), cli_env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"streamtag: error: {tmp_path / 'bad.jsonl'}:1: not an event (TypeError); give a .jsonl of events as "
        "`streamtag events` writes them"]
    assert not (tmp_path / "rec.png").exists()


def test_two_hours_of_scores_only(tmp_path):
    """24 000 windows into ~1300 pixel columns: a one-second event must survive (max-pooling), the data is not
    touched, and the picture keeps its size."""
    n, hop = 24000, 0.3
    rng = np.random.default_rng(0)
    scores = (rng.random((n, 527), dtype=np.float32) ** 8) * 0.3
    scores[:, 0] += 0.4 * (np.arange(n) % 4000 < 2000)
    scores[12000:12003, 137] = 1.0  # 0.9 s of music at 1:00:00
    result = TagResult(time=np.arange(n) * hop, scores=scores, duration=n * hop + 1.7, sample_rate=32000,
                       model="cnn14", sample_duration=2.0, hop_duration=hop, labels=LABELS)
    save_result(tmp_path / "long.npz", result)
    before = load_result(tmp_path / "long.npz").scores.copy()
    dest = plot_result(tmp_path / "long.npz", PlotOptions(smooth_size=None))
    assert dest == tmp_path / "long.png"
    pixels = assert_picture(dest)
    assert near(pixels, VIRIDIS_TOP, 10) > 10  # the 0.9 s spike at full score is there
    np.testing.assert_array_equal(load_result(tmp_path / "long.npz").scores, before)


def test_a_seed_npz_and_a_file_shorter_than_a_window(tmp_path):
    """The seed's own npz (time as t/T, scores only) and a 0.5 s file (one padded 2 s window) still draw."""
    np.savez(tmp_path / "seed.npz", time=np.arange(10) / 10, scores=np.random.default_rng(0).random((10, 527)))
    assert_picture(plot_result(tmp_path / "seed.npz", PlotOptions()))
    short = TagResult(time=np.zeros(1), scores=np.full((1, 527), 0.9, np.float32), duration=0.5, sample_rate=32000,
                      model="cnn6", sample_duration=2.0, hop_duration=0.3, labels=LABELS)
    save_result(tmp_path / "short.npz", short)
    assert near(assert_picture(plot_result(tmp_path / "short.npz", PlotOptions())), (189, 223, 38), 10) > 10000


def test_missing_matplotlib_is_one_line_naming_the_extra(tmp_path, model, cli_env):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'matplotlib':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Block())\n")
    env = {**cli_env, "PYTHONPATH": str(blocker)}
    save_result(tmp_path / "a.npz", TagResult(time=np.zeros(1), scores=np.zeros((1, 527), np.float32), duration=1.0,
                                              sample_rate=32000, model="cnn6", sample_duration=2.0,
                                              hop_duration=0.3, labels=LABELS))
    message = "streamtag: error: plot needs matplotlib; install it with: pip install 'streamtag[plot]'"
    for cmd in (("plot", tmp_path / "a.npz"), ("tag", SAMPLE, "--plot", "--output-dir", tmp_path / "out", *model)):
        done = run(streamtag_cmd(*cmd), env)
        assert (done.returncode, done.stderr.strip()) == (2, message), done.stderr
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "out" / "sample.npz").exists()


def test_bad_requests_are_one_line(tmp_path, cli_env):
    save_result(tmp_path / "a.npz", TagResult(time=np.arange(4) * 0.3, scores=np.zeros((4, 527), np.float32),
                                              duration=3.0, sample_rate=32000, model="cnn6", sample_duration=2.0,
                                              hop_duration=0.3, labels=LABELS))
    cases = [
        (("plot", tmp_path / "a.npz", "--time-axis", "wall"), "no wall-clock start in this result"),
        (("plot", tmp_path / "a.npz", tmp_path / "a.npz", "--audio", SAMPLE), "--audio is the audio of one result"),
        (("plot", tmp_path / "a.npz", "--audio", tmp_path / "none.wav"), "none.wav: no such file"),
        (("plot", tmp_path / "a.npz", "--events", tmp_path / "none.jsonl"), "none.jsonl: no such file"),
        (("plot", tmp_path / "a.npz", "--width", "5"), "must be 300 to 20000 pixels"),
        (("replay", SAMPLE, "--plot", "--no-dashboard"), "--plot draws the recording: add --record PREFIX"),
    ]
    for cmd, words in cases:
        done = run(streamtag_cmd(*cmd), cli_env)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, done.stderr
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*"))


# ---------------------------------------------------------------------------------------------- the pieces
def test_the_blockwise_spectrogram_is_the_model_front_end_on_the_whole_file(tmp_path):
    import paddle
    import soundfile as sf

    from streamtag.models import front_end

    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal(32000 * 3 + 123)).astype(np.float32)
    sf.write(tmp_path / "n.wav", audio, 32000, subtype="FLOAT")
    with paddle.no_grad():
        whole = front_end()(paddle.to_tensor(audio[None])).numpy()[0]
    blocks = log_mel_image(tmp_path / "n.wav", columns=10**6, block_frames=70)  # 70 frames a block, one per column
    assert blocks.mel.shape == whole.shape == (64, 1 + len(audio) // 320)
    np.testing.assert_allclose(blocks.mel, whole, atol=1e-3, rtol=0)
    pooled = log_mel_image(tmp_path / "n.wav", columns=100, block_frames=70)
    assert pooled.mel.shape[1] <= 100
    np.testing.assert_allclose(pooled.mel[:, 0], whole[:, :pooled.mel.shape[1] and 4].max(axis=1), atol=1e-3)


def test_pooling_keeps_peaks_and_leaves_gaps_empty():
    centres = np.array([0.5, 1.5, 2.5, 6.5, 7.5])
    values = np.array([[0.1], [0.9], [0.2], [0.3], [0.4]], np.float32)
    pooled = bin_max(centres, values, 0.0, 2.0, 4)[:, 0]
    np.testing.assert_allclose(pooled[[0, 1, 3]], [0.9, 0.2, 0.4])
    assert np.isnan(pooled[2])  # no window there (skipped hops): drawn as a gap, not invented
    edges = fill_edges(bin_max(np.array([3.0, 5.0]), np.array([1.0, 2.0]), 0.0, 1.0, 8))
    np.testing.assert_array_equal(edges, [1, 1, 1, 1, np.nan, 2, 2, 2])


def test_time_ticks_fall_on_round_times():
    ticks, step = time_ticks(0.0, 7200.0, 12)
    assert step == 600 and ticks[0] == 0 and ticks[-1] == 7200 and len(ticks) == 13
    ticks, step = time_ticks(0.0, 8.0, 12)
    assert step == 1 and list(ticks) == list(range(9))
    ticks, step = time_ticks(0.0, 600.0, 12, offset=37.0)  # wall clock 00:00:37 at x = 0
    assert step == 60 and ticks[0] == 23.0


def test_the_wall_clock_axis_of_a_live_recording(tmp_path, monkeypatch):
    import time
    from datetime import datetime, timezone

    from matplotlib.figure import Figure

    from streamtag.plot import TimeAxis

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        start = datetime(2026, 11, 27, 6, 0, 37, tzinfo=timezone.utc).timestamp()
        ax = Figure().add_subplot()
        TimeAxis(start).apply(ax, 0.0, 600.0, 12)
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[:3] == ["06:01", "06:02", "06:03"] and ax.get_xticks()[0] == 23.0  # round minutes
        assert ax.get_xlabel() == "wall clock (UTC)"
        result = TagResult(time=np.arange(2000) * 0.3, scores=np.zeros((2000, 527), np.float32), duration=601.7,
                           sample_rate=48000, model="cnn14", sample_duration=2.0, hop_duration=0.3, labels=LABELS,
                           level=np.full(2000, -30.0, np.float32), source="0: pulse", wall_clock=start)
        save_result(tmp_path / "live.npz", result)
        assert_picture(plot_result(tmp_path / "live.npz", PlotOptions(time_axis="wall")))  # auto would pick wall
    finally:
        monkeypatch.undo()
        time.tzset()


def test_events_file_lines_are_events(tmp_path):
    e = Event(id="x", label="Dog", start=1.0, end=2.0, peak=0.5, peak_time=1.5, classes=["Dog", "Bark"])
    (tmp_path / "e.jsonl").write_text(json.dumps(e.to_dict()) + "\n\n")
    assert read_events(tmp_path / "e.jsonl") == [e]
    (tmp_path / "e.jsonl").write_text('{"id": "x", "label": "Dog", "start": "soon", "end": null, "peak": 1, '
                                      '"peak_time": 1}\n')
    with pytest.raises(StreamtagError, match=r"e.jsonl:1: not an event"):
        read_events(tmp_path / "e.jsonl")


def test_draw_is_atomic_and_needs_no_paddle_without_audio(tmp_path, cli_env):
    result = TagResult(time=np.arange(3) * 0.3, scores=np.zeros((3, 527), np.float32), duration=1.0,
                       sample_rate=32000, model="cnn6", sample_duration=2.0, hop_duration=0.3, labels=LABELS)
    (tmp_path / "x.png").write_bytes(b"old")
    with pytest.raises(StreamtagError, match="cannot write"):
        draw(result, tmp_path / "x.png" / "y.png", PlotOptions())
    assert (tmp_path / "x.png").read_bytes() == b"old" and not list(tmp_path.glob(".*"))
    save_result(tmp_path / "x.npz", result)
    code = ("import sys; from streamtag.plot import PlotOptions, plot_result; "
            f"plot_result({str(tmp_path / 'x.npz')!r}, PlotOptions()); print('paddle' in sys.modules)")
    done = run([sys.executable, "-c", code], cli_env)
    assert done.stdout.strip() == "False", done.stderr  # Paddle is only imported for a spectrogram
