"""Recordings that last all day and survive a kill: the append-only layout (recording.py), the Recorder on top of it,
`streamtag recover`, empty sessions, SIGHUP, and PREFIX.txt byte-identical to `streamtag parse PREFIX.npz`."""

from __future__ import annotations

import signal
import subprocess
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import Child, streamtag_cmd
from test_stream import make_wav

from streamtag.errors import StreamtagError
from streamtag.labels import audioset_labels
from streamtag.recording import HEADER_BYTES, WavAppender, fix_wav, recover
from streamtag.results import Smoother, TxtWriter, load_result, smooth, top_k
from streamtag.stream.pipeline import HopResult
from streamtag.stream.recorder import Recorder

SR = 32000
LABELS = list(audioset_labels())


def hop(i: int, rng: np.random.Generator, smoother: Smoother | None = None) -> HopResult:
    scores = rng.random(len(LABELS), dtype=np.float32)
    shown = smoother.push(scores) if smoother else scores
    return HopResult(i, i * 0.3, scores, shown, 1.0, 1.0, level_db=float(np.float32(-20 - i % 7)))


def recorder(prefix: Path, smooth_size: int | None = 5, **kw) -> Recorder:
    return Recorder(prefix, LABELS, "cnn6", 44100, 2.0, 0.3, top_k=4, smooth_size=smooth_size, source="test", **kw)


def run(cmd, env, timeout=180):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------- the layout
def test_each_flush_appends_only_the_new_rows_and_the_result_reads_the_same_in_progress_and_finished(tmp_path):
    rng, smoother = np.random.default_rng(0), Smoother(5)
    rec = recorder(tmp_path / "r")
    hops = [hop(i, rng, smoother) for i in range(25)]
    scores_file = tmp_path / "r.npz.part" / "scores.npy"
    sizes = []
    for start in range(0, 25, 10):
        for h in hops[start:start + 10]:
            rec.add(h)
        rec.flush(duration=2 + hops[min(start + 9, 24)].time)
        sizes.append(scores_file.stat().st_size)
        assert not rec._pending  # nothing kept in memory once flushed
    assert np.diff([HEADER_BYTES, *sizes]).tolist() == [10 * 527 * 4, 10 * 527 * 4, 5 * 527 * 4]

    live = load_result(tmp_path / "r.npz")  # a session still running reads through its part, transparently
    assert not (tmp_path / "r.npz").exists()
    np.testing.assert_array_equal(live.scores, np.stack([h.scores for h in hops]))
    np.testing.assert_array_equal(live.time, [h.time for h in hops])
    np.testing.assert_array_equal(live.level, np.float32([h.level_db for h in hops]))
    assert (live.model, live.sample_rate, live.source, live.duration) == ("cnn6", 44100, "test", 2 + 24 * 0.3)
    assert (tmp_path / "r.txt.part").read_text() == TxtWriter().render(live, top_k=4, smooth_size=5)

    assert rec.finish(duration=9.5) == [tmp_path / "r.npz", tmp_path / "r.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz", "r.txt"]
    done = load_result(tmp_path / "r.npz")
    for field in ("time", "scores", "level"):
        np.testing.assert_array_equal(getattr(done, field), getattr(live, field))
    assert done.duration == 9.5 and done.labels == LABELS
    with np.load(tmp_path / "r.npz", allow_pickle=False) as npz:  # a plain npz: the seed's reader works on it
        assert npz["scores"].shape == (25, 527) and npz["time"].dtype == np.float64
    assert (tmp_path / "r.txt").read_text() == TxtWriter().render(done, top_k=4, smooth_size=5)


def test_recording_memory_does_not_grow_with_the_session(tmp_path):
    rng = np.random.default_rng(1)
    rec = recorder(tmp_path / "r", smooth_size=None)
    row = hop(0, rng)
    tracemalloc.start()
    try:
        used = []
        for flush in range(300):  # 3000 hops, a flush every 10 as a live session does every 3 s
            for i in range(10):
                rec.add(HopResult(flush * 10 + i, (flush * 10 + i) * 0.3, row.scores, row.scores, 1.0, 1.0))
            rec.flush(duration=flush * 3.0)
            if flush in (30, 299):
                used.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert used[1] - used[0] < 64 * 1024, used  # 2700 more hops (5.7 MB of scores) held nowhere in memory
    assert len(load_result(tmp_path / "r.npz").time) == 3000
    rec.finish(duration=900.0)


def test_a_kill_between_two_columns_reads_the_whole_rows_every_column_has(tmp_path):
    rng = np.random.default_rng(2)
    rec = recorder(tmp_path / "r")
    for i in range(6):
        rec.add(hop(i, rng))
    rec.flush(duration=3.5)
    part = tmp_path / "r.npz.part"
    with open(part / "scores.npy", "ab") as f:  # the next flush got one and a half rows of scores out, then died
        f.write(rng.random(527 + 200, dtype=np.float32).tobytes())
    result = load_result(part)
    assert len(result.time) == 6 and result.scores.shape == (6, 527)
    rec.part.close()
    lines = recover(tmp_path / "r")
    assert "6 windows" in lines[-1]
    assert len(load_result(tmp_path / "r.npz").time) == 6 and not part.exists()


def test_recover_writes_the_npz_and_the_txt_parse_would_write(tmp_path):
    rng, smoother = np.random.default_rng(3), Smoother(3)
    rec = recorder(tmp_path / "k", smooth_size=3, audio=str(tmp_path / "k.wav"))
    wav = WavAppender(tmp_path / "k.wav", SR)
    for i in range(14):
        rec.add(hop(i, rng, smoother))
        if i == 9:
            rec.flush(duration=4.7)  # the last flush before the kill: rows 10..13 were still queued
    wav.write(rng.standard_normal(SR * 5).astype(np.float32))
    rec.part.close()  # SIGKILL: no finish, files as the kernel has them
    with open(tmp_path / "k.txt.part", "ab") as f:
        f.write(b"4.2\nSpeech: 0.")  # and a txt block cut in the middle
    lines = recover(tmp_path / "k.npz.part")
    assert any("k.wav" in line for line in lines) and "10 windows" in lines[-1]
    result = load_result(tmp_path / "k.npz")
    assert len(result.time) == 10 and result.duration == 4.7
    assert (tmp_path / "k.txt").read_bytes() == TxtWriter().render(result, top_k=4, smooth_size=3).encode()
    audio, rate = sf.read(tmp_path / "k.wav", dtype="float32")
    assert rate == SR and len(audio) == SR * 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.npz", "k.txt", "k.wav"]
    with pytest.raises(StreamtagError, match="no unfinished recording"):
        recover(tmp_path / "k")


def test_an_unfinished_recording_is_never_overwritten(tmp_path):
    (tmp_path / "r.npz.part").mkdir()
    with pytest.raises(StreamtagError, match=r"unfinished recording.*streamtag recover"):
        recorder(tmp_path / "r")
    (tmp_path / "a.wav.part").write_bytes(b"")
    from streamtag.stream.recorder import WavRecorder

    with pytest.raises(StreamtagError, match="--save-audio.*unfinished recording"):
        WavRecorder(tmp_path / "a.wav")


def test_a_recording_of_no_window_leaves_nothing(tmp_path):
    rec = recorder(tmp_path / "e")
    rec.flush(duration=0.4)
    with pytest.raises(StreamtagError, match="no window was recorded yet"):
        load_result(tmp_path / "e.npz")
    assert rec.finish(duration=0.8) == []
    assert list(tmp_path.iterdir()) == []


def test_the_wav_part_is_a_valid_wav_at_every_moment_and_turns_rf64_past_4_gb(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    blocks = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (1000, 3200, 17)]
    wav = WavAppender(tmp_path / "a.wav", SR)
    for i, block in enumerate(blocks):
        wav.write(block)
        audio, rate = sf.read(tmp_path / "a.wav.part", dtype="float32")  # while still being written
        np.testing.assert_array_equal(audio, np.concatenate(blocks[:i + 1]))
    assert wav.close() == tmp_path / "a.wav" and not (tmp_path / "a.wav.part").exists()
    assert sf.info(str(tmp_path / "a.wav")).frames == 4217

    monkeypatch.setattr(WavAppender, "RIFF_LIMIT", WavAppender.HEADER + 4 * 2000)  # "4 GB" after 2000 frames
    big = WavAppender(tmp_path / "b.wav", SR)
    for block in blocks:
        big.write(block)
    monkeypatch.undo()
    head = (tmp_path / "b.wav.part").read_bytes()[:16]
    assert head[:4] == b"RF64" and head[12:16] == b"ds64"
    audio, _ = sf.read(tmp_path / "b.wav.part", dtype="float32")
    np.testing.assert_array_equal(audio, np.concatenate(blocks))

    # A header a kill left one block behind, and a torn last frame: fixed from the file's size.
    stale = WavAppender(tmp_path / "c.wav", SR)
    stale.write(blocks[0])
    with open(tmp_path / "c.wav.part", "ab") as f:
        f.write(blocks[1].tobytes() + b"\x01\x02")
    assert fix_wav(tmp_path / "c.wav.part", tmp_path / "c.wav") == tmp_path / "c.wav"
    audio, _ = sf.read(tmp_path / "c.wav", dtype="float32")
    np.testing.assert_array_equal(audio, np.concatenate(blocks[:2]))
    empty = WavAppender(tmp_path / "d.wav", SR)
    assert empty.close() is None and not list(tmp_path.glob("d.wav*"))


# ---------------------------------------------------------------------------------------------- one smoothing, one top-k
@pytest.mark.parametrize("size", [1, 3, 5, 8])
def test_the_live_smoother_equals_parse_smoothing_bit_for_bit(size):
    scores = np.random.default_rng(size).random((40, 527), dtype=np.float32)
    smoother = Smoother(size)
    live = np.stack([smoother.push(row) for row in scores])
    assert live.dtype == np.float32
    np.testing.assert_array_equal(live, smooth(scores, size))


def test_one_top_k_in_the_seed_order_with_and_without_a_label_filter():
    row = np.zeros(527, np.float32)
    row[[3, 7, 100, 400]] = [0.5, 0.9, 0.5, 0.5]  # ties: the seed's argsort decides their order
    seed = [LABELS[i] for i in (-row).argsort()[:3]]
    assert [label for label, _ in top_k(row, 3, LABELS)] == seed
    mask = np.ones(527, bool)
    mask[7] = False
    masked = np.where(mask, row, -np.inf)
    assert [label for label, _ in top_k(row, 3, LABELS, mask)] == [LABELS[i] for i in (-masked).argsort()[:3]]
    only = np.zeros(527, bool)
    only[[3, 7]] = True
    assert top_k(row, 5, LABELS, only) == [(LABELS[7], 0.8999999761581421), (LABELS[3], 0.5)]


# ---------------------------------------------------------------------------------------------- whole sessions
@pytest.mark.parametrize("options", [["--top-k", "4", "--smooth-size", "3"], ["--no-smooth", "--top-k", "2"]])
def test_the_recording_txt_is_what_parse_writes_from_its_npz(tmp_path, cnn6_weights, cli_env, options):
    wav = make_wav(tmp_path / "a.wav", 6.1, rate=22050, channels=2)
    model = ["--model", "cnn6", "--weights", cnn6_weights]
    done = run(streamtag_cmd("replay", wav, "--fast", "--no-dashboard", "--record", tmp_path / "rec", *options,
                             *model), cli_env)
    assert done.returncode == 0, done.stderr
    done = run(streamtag_cmd("parse", tmp_path / "rec.npz", "--output-dir", tmp_path / "parsed", *options), cli_env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "parsed" / "rec.txt").read_bytes() == (tmp_path / "rec.txt").read_bytes()


def wait_for(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def part_rows(part: Path) -> int:
    time_file = part / "time.npy"
    return (time_file.stat().st_size - HEADER_BYTES) // 8 if time_file.exists() else 0


def test_sigkill_mid_session_loses_at_most_the_last_flush(tmp_path, cnn6_weights, cli_env):
    wav = make_wav(tmp_path / "long.wav", 60.0, rate=16000, channels=1)
    prefix, part = tmp_path / "k", tmp_path / "k.npz.part"
    with Child(streamtag_cmd("replay", wav, "--no-dashboard", "--json", "--record", prefix, "--save-audio",
                             tmp_path / "k.wav", "--model", "cnn6", "--weights", cnn6_weights), cli_env) as child:
        seen = len(child.lines(6))
        wait_for(lambda: part_rows(part) >= seen, what="a flush of the first hops")  # flushed within ~3 s
        child.lines(4)
        child.proc.kill()  # SIGKILL: no handler, no final flush
        _, rest, _ = child.finish(timeout=30)
        printed = seen + 4 + len(rest)
    assert part.is_dir() and (tmp_path / "k.txt.part").exists() and (tmp_path / "k.wav.part").exists()

    during = load_result(prefix.with_suffix(".npz"))  # readable as it is, before any recover
    assert seen <= len(during.time) <= printed + 1  # (a row is queued for the recorder just before it is printed)
    done = run(streamtag_cmd("parse", part, "--output-dir", tmp_path / "parsed"), cli_env)
    assert done.returncode == 0, done.stderr

    done = run(streamtag_cmd("recover", prefix), cli_env)
    assert done.returncode == 0, done.stderr
    assert f"{len(during.time)} windows" in done.stdout and "k.wav" in done.stdout
    result = load_result(tmp_path / "k.npz")
    np.testing.assert_array_equal(result.scores, during.scores)
    done = run(streamtag_cmd("parse", tmp_path / "k.npz", "--output-dir", tmp_path / "parsed"), cli_env)
    assert (tmp_path / "parsed" / "k.txt").read_bytes() == (tmp_path / "k.txt").read_bytes()
    audio, rate = sf.read(tmp_path / "k.wav", dtype="float32")  # the audio of every recovered window is there
    assert rate == SR and len(audio) >= 2 * SR + (len(result.time) - 1) * 9600
    assert not list(tmp_path.glob("*.part"))


def test_sighup_stops_like_sigterm(tmp_path, cnn6_weights, cli_env):
    wav = make_wav(tmp_path / "long.wav", 60.0, rate=16000, channels=1)
    with Child(streamtag_cmd("replay", wav, "--no-dashboard", "--json", "--record", tmp_path / "h", "--save-audio",
                             tmp_path / "h.wav", "--model", "cnn6", "--weights", cnn6_weights), cli_env) as child:
        lines = child.lines(5)
        child.proc.send_signal(signal.SIGHUP)  # the terminal was closed
        rc, out, err = child.finish(timeout=60)
    assert rc == 0, err
    assert "stopped by SIGHUP" in err and "h.npz" in err and "h.wav" in err
    result = load_result(tmp_path / "h.npz")
    assert len(result.time) == len(lines) + len(out)
    assert (tmp_path / "h.txt").read_text().count("\n\n") == len(result.time)
    assert sf.info(str(tmp_path / "h.wav")).frames >= 2 * SR + (len(result.time) - 1) * 9600
    assert not list(tmp_path.glob("*.part"))


# ---------------------------------------------------------------------------------------------- empty sessions
def test_a_duration_shorter_than_a_window_is_refused_before_anything_starts(tmp_path, cli_env):
    wav = make_wav(tmp_path / "a.wav", 5.0)
    done = run(streamtag_cmd("replay", wav, "--duration", "1.5", "--no-dashboard", "--record", tmp_path / "r",
                             "--save-audio", tmp_path / "r.wav"), cli_env)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert err.count("\n") == 0 and "--duration 1.5 is shorter than one window" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_a_replay_shorter_than_a_window_is_refused_with_the_way_out(tmp_path, cli_env):
    wav = make_wav(tmp_path / "short.wav", 1.2)
    done = run(streamtag_cmd("replay", wav, "--no-dashboard", "--record", tmp_path / "r", "--save-audio",
                             tmp_path / "r.wav"), cli_env)
    assert done.returncode == 1
    err = done.stderr.strip()
    assert err.count("\n") == 0 and "shorter than one window" in err and "streamtag tag" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.wav"]


def test_ctrl_c_before_the_first_window_keeps_the_audio_and_writes_no_result(tmp_path, cnn6_weights, cli_env):
    wav = make_wav(tmp_path / "a.wav", 30.0, rate=32000, channels=1)
    audio_part = tmp_path / "r.wav.part"
    with Child(streamtag_cmd("replay", wav, "--no-dashboard", "--json", "--sample-duration", "20", "--record",
                             tmp_path / "r", "--save-audio", tmp_path / "r.wav", "--model", "cnn6", "--weights",
                             cnn6_weights), cli_env) as child:
        wait_for(lambda: audio_part.exists() and audio_part.stat().st_size > WavAppender.HEADER + 4 * SR,
                 what="a second of audio")  # audio flows; the first 20 s window is far off
        child.proc.send_signal(signal.SIGINT)
        rc, out, err = child.finish(timeout=60)
    assert rc == 0, err
    assert out == [] and "stopped by SIGINT" in err and "no window was scored" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "r.wav"]
    assert sf.info(str(tmp_path / "r.wav")).frames >= SR


def test_recover_with_nothing_to_recover_is_a_one_line_error(tmp_path, cli_env):
    done = run(streamtag_cmd("recover", tmp_path / "nothing"), cli_env)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "no unfinished recording" in done.stderr


def test_a_part_that_vanishes_while_read_falls_back_to_the_finished_npz(tmp_path, monkeypatch):
    import streamtag.recording as recording

    rng = np.random.default_rng(5)
    rec = recorder(tmp_path / "v")
    for i in range(3):
        rec.add(hop(i, rng))
    rec.flush(duration=2.6)
    real_read_part = recording.read_part

    def finish_then_read(part):  # the session ends between the reader's look and its read
        rec.finish(duration=2.6)
        return real_read_part(part)

    monkeypatch.setattr(recording, "read_part", finish_then_read)
    assert len(load_result(tmp_path / "v.npz").time) == 3
