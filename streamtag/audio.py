"""Decode audio files to mono float32 at the model's 32 kHz, in bounded-memory blocks.

libsndfile (through soundfile) decodes wav, flac, ogg/vorbis/opus and mp3 (libsndfile ≥ 1.1); channels are averaged
to mono; soxr's streaming resampler converts any rate to 32 kHz block by block, so a two-hour file never sits in
memory decoded. Every problem a user's file can have becomes a one-line StreamtagError that names the file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from streamtag.errors import StreamtagError
from streamtag.paths import input_file

TARGET_RATE = 32000  # the PANNs models' rate (models.SAMPLE_RATE); kept here so decoding never imports Paddle
FORMATS_HINT = "streamtag reads wav, flac, ogg and mp3 files"
SILENCE_DB = -120.0  # the level reported for digital silence (RMS under 1e-6)


def dbfs(value: float) -> float:
    """An amplitude (RMS or peak, full scale 1.0) in dBFS; SILENCE_DB below 1e-6."""
    return 20.0 * math.log10(value) if value > 1e-6 else SILENCE_DB


def window_level_db(samples: np.ndarray) -> float:
    """A window's RMS level in dBFS, rounded to float32: the value stored in the npz `level` array, so events
    detected offline compare exactly what the live detector compared."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    return float(np.float32(dbfs(rms)))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class StreamResampler:
    """Chunk-by-chunk resampling of a mono stream (file blocks or live capture) with soxr's HQ filter.

    The output of successive `process` calls plus `flush` equals resampling the whole signal at once, up to the
    filter's delay being handled inside soxr. With equal rates it passes chunks through untouched.
    """

    def __init__(self, in_rate: int, out_rate: int = TARGET_RATE, quality: str = "HQ"):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self._stream = None if self.in_rate == self.out_rate else soxr.ResampleStream(
            self.in_rate, self.out_rate, 1, dtype="float32", quality=quality)

    def process(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample one chunk (1-D mono, or [frames, channels] which is averaged to mono)."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim == 2:
            chunk = chunk.mean(axis=1, dtype=np.float32)
        if self._stream is None:
            return np.ascontiguousarray(chunk)
        return self._stream.resample_chunk(np.ascontiguousarray(chunk), last=last)

    def flush(self) -> np.ndarray:
        """The samples still inside the filter; call once at the end of the stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


class AudioReader:
    """An audio file checked up front (exists, decodable, non-empty) and readable in 32 kHz mono blocks.

    `sample_rate`, `channels`, `frames` and `duration` describe the file as stored; `blocks()` yields the model's
    input. `frames_read` counts input frames actually decoded (headers of truncated files can overstate them).
    """

    def __init__(self, path: str | os.PathLike, target_rate: int = TARGET_RATE):
        self.path = Path(path)
        self.target_rate = target_rate
        p = input_file(self.path, "audio file", FORMATS_HINT)
        try:
            info = sf.info(str(p))
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise StreamtagError(f"{p}: not a readable audio file ({_one_line(getattr(e, 'error_string', e))}); "
                                 f"{FORMATS_HINT}") from None
        if info.samplerate <= 0 or info.channels <= 0:
            raise StreamtagError(f"{p}: bad header ({info.samplerate} Hz, {info.channels} channels); {FORMATS_HINT}")
        if info.frames <= 0:
            raise StreamtagError(f"{p}: contains no audio (0 samples); record or export some sound into it")
        self.sample_rate = int(info.samplerate)
        self.channels = int(info.channels)
        self.frames = int(info.frames)
        self.format = f"{info.format}/{info.subtype}"
        self.frames_read = 0

    @property
    def duration(self) -> float:
        """Seconds of audio, from the decoded frame count once fully read, else from the header."""
        return (self.frames_read or self.frames) / self.sample_rate

    def expected_samples(self) -> int:
        """About how many 32 kHz samples `blocks()` will yield (from the header; for progress bars)."""
        return int(np.ceil(self.frames * self.target_rate / self.sample_rate))

    def blocks(self, seconds: float = 10.0) -> Iterator[np.ndarray]:
        """Yield the file as mono float32 at `target_rate`, about `seconds` of input per block.

        NaN or Inf samples raise a StreamtagError naming where they are: a model fed NaN scores NaN everywhere.
        """
        blocksize = max(1, int(seconds * self.sample_rate))
        resampler = StreamResampler(self.sample_rate, self.target_rate)
        self.frames_read = 0
        any_audio = False
        try:
            with sf.SoundFile(str(self.path)) as f:
                while True:
                    block = f.read(blocksize, dtype="float32", always_2d=True)
                    if len(block) == 0:
                        break
                    if not np.isfinite(block).all():
                        bad = int(np.argmin(np.isfinite(block).all(axis=1)))
                        at = (self.frames_read + bad) / self.sample_rate
                        raise StreamtagError(f"{self.path}: NaN/Inf sample at {at:.3f} s; the audio is corrupt — "
                                             "re-export it from the source")
                    self.frames_read += len(block)
                    mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
                    out = resampler.process(mono)
                    any_audio = True
                    if len(out):
                        yield out
        except (sf.LibsndfileError, RuntimeError) as e:
            raise StreamtagError(f"{self.path}: decoding failed after {self.frames_read / self.sample_rate:.2f} s "
                                 f"({_one_line(getattr(e, 'error_string', e))}); the file may be truncated or "
                                 "corrupt") from None
        if not any_audio:
            raise StreamtagError(f"{self.path}: contains no audio (0 samples decoded); the file may be truncated")
        tail = resampler.flush()
        if len(tail):
            yield tail


def load_audio(path: str | os.PathLike, target_rate: int = TARGET_RATE) -> np.ndarray:
    """The whole file as mono float32 at `target_rate` (same samples as `AudioReader.blocks`, concatenated)."""
    reader = AudioReader(path, target_rate)
    parts = list(reader.blocks())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
