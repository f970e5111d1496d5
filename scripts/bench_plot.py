#!/usr/bin/env python3
"""Benchmark (not a test): how long `streamtag plot` takes on a 2-hour result, and its peak memory.

    .venv/bin/python scripts/bench_plot.py                      # scores + level only (the < 10 s goal)
    .venv/bin/python scripts/bench_plot.py --audio-hours 2      # also a spectrogram of 2 hours of audio

A synthetic result of the real shape (2 h at the default 0.3 s hop: 24 000 windows × 527 classes, with a level
array) is written to a temp dir and drawn by `python -m streamtag plot` in a fresh process, as a user runs it; the
time is the command's wall time (imports included) and the memory its peak RSS (ru_maxrss of the child). With
`--audio-hours H` an H-hour 16 kHz 16-bit wav of noise and tones is drawn as the spectrogram too (decoded,
resampled to 32 kHz and run through the model's front end in blocks). Prints one JSON object; say the machine
(`lscpu`) and its load (`uptime`) with any figure you quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def synthetic_result(path: Path, hours: float, hop: float = 0.3) -> None:
    from streamtag.labels import audioset_labels
    from streamtag.results import TagResult, save_result

    n = int(hours * 3600 / hop)
    rng = np.random.default_rng(0)
    scores = (rng.random((n, 527), dtype=np.float32) ** 8) * 0.3
    scores[:, 0] += 0.5 * (np.arange(n) % 4000 < 2000)
    scores[n // 2:n // 2 + 3, 137] = 1.0
    t = np.arange(n) * hop
    level = (-40 + 10 * np.sin(t / 100) + rng.standard_normal(n)).astype(np.float32)
    save_result(path, TagResult(time=t, scores=scores, duration=n * hop + 1.7, sample_rate=32000, model="cnn14",
                                sample_duration=2.0, hop_duration=hop, labels=list(audioset_labels()), level=level))


def synthetic_audio(path: Path, hours: float, rate: int = 16000) -> None:
    """Noise with a tone that changes every 10 s, written a minute at a time (never whole in memory)."""
    import soundfile as sf

    rng = np.random.default_rng(1)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for minute in range(int(round(hours * 60))):
            t = minute * 60 + np.arange(60 * rate) / rate
            freq = 300 + 100 * (np.floor(t / 10) % 20)
            f.write((0.2 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32))


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of `cmd`, run from a small wrapper process of its own: a process's
    RUSAGE_CHILDREN peak is the maximum over all its children, so each measurement gets a fresh parent."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            f"done = subprocess.run({cmd!r}, capture_output=True, text=True); "
            "sys.exit(done.stderr) if done.returncode else None; "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    took, peak = map(float, done.stdout.split())
    return took, peak


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0, help="length of the synthetic result (default 2)")
    ap.add_argument("--audio-hours", type=float, default=0.0, help="also draw a spectrogram of this much audio")
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=900)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-plot-") as tmp:
        npz = Path(tmp) / "long.npz"
        synthetic_result(npz, args.hours)
        cmd = [sys.executable, "-m", "streamtag", "plot", str(npz), "--width", str(args.width), "--height",
               str(args.height)]
        report = {"hours": args.hours, "windows": int(args.hours * 3600 / 0.3), "width": args.width,
                  "height": args.height}
        report["scores_s"], report["scores_peak_rss_mb"] = measure(cmd)
        if args.audio_hours:
            wav = Path(tmp) / "long.wav"
            synthetic_audio(wav, args.audio_hours)
            took, peak = measure(cmd + ["--audio", str(wav)])
            report.update(audio_hours=args.audio_hours, spectrogram_s=took, spectrogram_peak_rss_mb=peak)
    report.update(machine=cpu_model(), cpus=os.cpu_count(),
                  load=[round(x, 2) for x in os.getloadavg()])
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
