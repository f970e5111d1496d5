"""audio.py: decoding, mono mixing, streaming resampling to 32 kHz, and one-line errors for bad files."""

import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamtag.audio import AudioReader, StreamResampler, load_audio
from streamtag.errors import StreamtagError


def tone(seconds, rate, freq=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1)


def test_32k_mono_wav_is_read_unchanged(tmp_path):
    x = tone(1.5, 32000)
    sf.write(tmp_path / "a.wav", x, 32000, subtype="FLOAT")
    r = AudioReader(tmp_path / "a.wav")
    assert (r.sample_rate, r.channels, r.frames, r.duration) == (32000, 1, 48000, 1.5)
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav"), x)


def test_44k_stereo_is_mixed_and_resampled_blockwise(tmp_path):
    x = tone(3.0, 44100, channels=2)
    sf.write(tmp_path / "s.wav", x, 44100, subtype="FLOAT")
    r = AudioReader(tmp_path / "s.wav")
    assert (r.sample_rate, r.channels) == (44100, 2)
    blocks = list(r.blocks(seconds=0.25))
    assert max(len(b) for b in blocks) <= 0.3 * 32000  # bounded: never the whole file at once
    y = np.concatenate(blocks)
    reference = soxr.resample(x.mean(axis=1), 44100, 32000)  # whole-file resampling of the mono mix
    assert len(y) == len(reference) == 96000
    np.testing.assert_allclose(y, reference, atol=1e-5)
    assert r.frames_read == 3 * 44100 and r.duration == 3.0


@pytest.mark.parametrize("fmt, subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_compressed_formats(tmp_path, fmt, subtype):
    x = tone(2.0, 48000)
    path = tmp_path / f"c.{fmt.lower()}"
    sf.write(path, x, 48000, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert abs(len(y) - 64000) <= 2000  # lossy codecs pad a few frames
    assert abs(np.sqrt(np.mean(y[8000:56000] ** 2)) - 0.3 / np.sqrt(2)) < 0.02


def test_stream_resampler_matches_whole_signal():
    x = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1
    r = StreamResampler(48000, 32000)
    y = np.concatenate([r.process(x[i:i + 777]) for i in range(0, len(x), 777)] + [r.flush()])
    np.testing.assert_allclose(y, soxr.resample(x, 48000, 32000), atol=1e-6)
    same = StreamResampler(32000, 32000)
    np.testing.assert_array_equal(same.process(x[:100]), x[:100])
    assert len(same.flush()) == 0


def bad_files(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(0.5, 16000), 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "truncated.wav").write_bytes(good.read_bytes()[:30])
    (tmp_path / "random.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "text.wav").write_text("this is not audio\n" * 50)
    sf.write(tmp_path / "silent0.wav", np.zeros(0, np.float32), 16000)
    nan = tone(1.0, 16000)
    nan[12000] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    inf = tone(1.0, 16000)
    inf[100] = np.inf
    sf.write(tmp_path / "inf.wav", inf, 16000, subtype="FLOAT")
    (tmp_path / "adir.wav").mkdir()
    return {
        "missing.wav": "no such file", "adir.wav": "is a directory", "empty.wav": "empty file",
        "truncated.wav": "not a readable audio file", "random.wav": "not a readable audio file",
        "text.wav": "not a readable audio file", "silent0.wav": "contains no audio",
        "nan.wav": "NaN/Inf sample at 0.750 s", "inf.wav": "NaN/Inf sample at 0.006 s",
    }


def test_bad_files_raise_one_line_errors(tmp_path):
    for name, problem in bad_files(tmp_path).items():
        with pytest.raises(StreamtagError) as info:
            load_audio(tmp_path / name)
        message = str(info.value)
        assert message.startswith(str(tmp_path / name)) and problem in message and "\n" not in message, message


def test_sox_generated_file(tmp_path):
    """A file from another encoder (sox): 22.05 kHz, 3 channels, 24-bit."""
    path = tmp_path / "sox.wav"
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "3", "-b", "24", str(path), "synth", "1.0", "sine", "300"],
                   check=True)
    r = AudioReader(path)
    assert (r.sample_rate, r.channels, r.frames) == (22050, 3, 22050)
    assert len(load_audio(path)) == 32000
