"""tagging.py: the seed's windows over blockwise decoding, scored by a real (seeded CNN6) model."""

import math
import subprocess

import numpy as np
import pytest
import soundfile as sf

import seed_reference
from conftest import tag_one_file
from streamtag.audio import AudioReader, load_audio
from streamtag.engine import load_scorer
from streamtag.errors import StreamtagError
from streamtag.labels import audioset_labels
from streamtag.tagging import iter_windows, window_count, window_starts

WIN, HOP = 64000, 9600  # the defaults 2.0 s / 0.3 s at 32 kHz


@pytest.fixture(scope="module")
def scorer(cnn6_weights):
    return load_scorer("cnn6", str(cnn6_weights), device="cpu", engine="eager")


def noise(seconds, rate=32000, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(round(seconds * rate))) * 0.1).astype(np.float32)


def test_windows_equal_the_seed_split_for_any_blocking():
    rng = np.random.default_rng(1)
    for _ in range(200):
        length, win, hop, block = (int(rng.integers(1, 400)), int(rng.integers(1, 60)), int(rng.integers(1, 80)),
                                   int(rng.integers(1, 50)))
        x = rng.standard_normal(length).astype(np.float32)
        got = list(iter_windows((x[i:i + block] for i in range(0, length, block)), win, hop, pad=True))
        times, data = seed_reference.split(x, win, hop)
        assert len(got) == len(data) == math.ceil(length / hop) == window_count(length, win, hop)
        assert [s for s, _ in got] == list(window_starts(length, win, hop))
        assert [s / length for s, _ in got] == times
        assert all(np.array_equal(w, d) for (_, w), d in zip(got, data))
        full = list(iter_windows([x], win, hop, pad=False))
        expected = [(s, w) for s, w in got if s + win <= length] or got[:1]  # a short file keeps one padded window
        assert [s for s, _ in full] == [s for s, _ in expected] == list(window_starts(length, win, hop, pad=False))


@pytest.mark.parametrize("seconds", [0.5, 2.0, 2.55])
def test_window_count_time_grid_and_scores_match_the_seed(tmp_path, scorer, seconds):
    x = noise(seconds)
    path = tmp_path / "n.wav"
    sf.write(path, x, 32000, subtype="FLOAT")
    result = tag_one_file(path, scorer, 2.0, 0.3, batch_size=3)
    n = math.ceil(len(x) / HOP)
    assert result.scores.shape == (n, 527) and result.scores.dtype == np.float32
    np.testing.assert_array_equal(result.time, np.arange(n) * HOP / 32000)
    assert result.time.dtype == np.float64
    assert [repr(float(t)) for t in result.time[:4]] == ["0.0", "0.3", "0.6", "0.9"][:n]  # k·hop, not a sum of 0.3s
    assert (result.duration, result.sample_rate, result.model) == (len(x) / 32000, 32000, "cnn6")
    assert (result.sample_duration, result.hop_duration) == (2.0, 0.3)
    assert result.labels == list(audioset_labels())
    _, windows = seed_reference.split(x, WIN, HOP)  # what the seed feeds its model
    np.testing.assert_allclose(result.scores, scorer.score(np.stack(windows)), atol=1e-5)


def test_sox_file_at_44k_stereo_resamples_and_tags(tmp_path, scorer):
    path = tmp_path / "siren.wav"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", str(path), "synth", "3.3", "sine", "600-1200",
                    "sine", "900", "vol", "0.5"], check=True)
    resampled = load_audio(path)
    assert len(resampled) == round(3.3 * 32000)
    result = tag_one_file(path, scorer, 2.0, 0.3)
    assert len(result.time) == math.ceil(len(resampled) / HOP) == 11
    assert result.sample_rate == 44100 and abs(result.duration - 3.3) < 1e-9
    _, windows = seed_reference.split(resampled, WIN, HOP)
    np.testing.assert_allclose(result.scores, scorer.score(np.stack(windows)), atol=1e-5)


def test_no_pad_and_other_durations(tmp_path, scorer):
    path = tmp_path / "n.wav"
    sf.write(path, noise(3.0), 32000, subtype="FLOAT")
    full = tag_one_file(path, scorer, 2.0, 0.3, pad=False)
    np.testing.assert_array_equal(full.time, np.arange(4) * HOP / 32000)  # starts 0, .3, .6, .9 end by 3.0 s
    padded = tag_one_file(AudioReader(path), scorer, 2.0, 0.3, batch_size=1)
    np.testing.assert_allclose(padded.scores[:4], full.scores, atol=1e-5)
    assert len(padded.time) == 10
    # the seed's int(seconds · 32000): 1.001 s is 32031 samples, and the time grid follows the samples
    odd = tag_one_file(path, scorer, 1.0, 1.001)
    np.testing.assert_array_equal(odd.time, np.arange(3) * 32031 / 32000)
    short = tmp_path / "short.wav"
    sf.write(short, noise(0.4), 32000, subtype="FLOAT")
    assert len(tag_one_file(short, scorer, 2.0, 0.3, pad=False).time) == 1


def test_nan_in_the_middle_is_an_error(tmp_path, scorer):
    x = noise(5.0)
    x[100000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 32000, subtype="FLOAT")
    with pytest.raises(StreamtagError, match=r"nan\.wav: NaN/Inf sample at 3\.125 s"):
        tag_one_file(path, scorer, 2.0, 0.3)


def test_long_file_is_never_decoded_whole(tmp_path):
    """10 minutes at 8 kHz decode to 77 MB of 32 kHz float32; reading it window by window stays at a few MB."""
    import tracemalloc

    path = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=8000, channels=2, subtype="PCM_16") as f:
        for _ in range(60):
            f.write((rng.standard_normal((80000, 2)) * 0.1).astype(np.float32))
    reader = AudioReader(path)
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_windows(reader.blocks(), WIN, HOP))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == math.ceil(600 * 32000 / HOP)
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB"
