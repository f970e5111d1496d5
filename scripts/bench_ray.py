#!/usr/bin/env python3
"""Benchmark `streamtag tag --ray`: files/s and audio-hours per hour, plain `tag` against Ray with 1 and 2 workers.

    .venv/bin/python scripts/bench_ray.py                    # CNN14, 12 files of 20 s at 44.1 kHz
    .venv/bin/python scripts/bench_ray.py --decode-only      # decode + resample speed of one core (GPU sizing)
    .venv/bin/python scripts/bench_ray.py --model cnn6 --files 24 --json bench-ray.json

A benchmark, not a test (timings are never asserted). Every run is a whole `streamtag tag` process, as a user times
it: start-up, Ray start-up and actor start included. Ray only ever runs inside `unshare -n -p -f --mount-proc` (a
network namespace with only loopback, a PID namespace so nothing outlives the run), so this needs root, as the tests
do. The weights are the seeded test weights of the real shapes (speed does not depend on the values), the export
cache is warmed first, and the machine (lscpu) and its load (uptime) are printed with the figures, because on a
shared machine other people's load changes them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def machine() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", out)
    return f"{model.group(1).strip() if model else 'unknown CPU'}, {os.cpu_count()} cores"


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def make_corpus(folder: Path, files: int, seconds: float, rate: int) -> float:
    """`files` noisy chirps of `seconds` at `rate` Hz (resampled to 32 kHz by streamtag, as real archives are)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(files):
        audio = 0.3 * np.sin(2 * np.pi * (100 + 40 * i) * t * (1 + t / seconds)) + 0.05 * rng.standard_normal(len(t))
        sf.write(folder / f"f{i:03d}.flac", audio.astype(np.float32), rate)
    return files * seconds


def decode_rate(folder: Path, rate: int, seconds: float = 300.0) -> dict[str, float]:
    """× real time of decode + resample to 32 kHz + cutting 2 s / 0.3 s windows, one core, FLAC and WAV: what one
    actor can feed its Scorer (the GPU sizing in docs/archives.md divides by it)."""
    from streamtag.audio import AudioReader
    from streamtag.tagging import iter_windows, window_sizes

    win, hop = window_sizes(2.0, 0.3)
    t = np.arange(int(seconds * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(len(t)))
    rates = {}
    for ext in ("flac", "wav"):
        path = folder / f"decode.{ext}"
        sf.write(path, audio.astype(np.float32), rate)
        began = time.perf_counter()
        for _ in iter_windows(AudioReader(path).blocks(), win, hop):
            pass
        rates[ext] = round(seconds / (time.perf_counter() - began), 1)
    return rates


def run(cmd: list[str], env: dict, netns: bool) -> float:
    if netns:
        inner = " ".join(f"'{c}'" for c in cmd)
        cmd = ["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", f"ip link set lo up && exec {inner}"]
    began = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    took = time.perf_counter() - began
    if proc.returncode != 0:
        sys.exit(f"bench_ray: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn14", choices=("cnn14", "cnn10", "cnn6"))
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=20.0, help="audio seconds per file")
    ap.add_argument("--rate", type=int, default=44100, help="sample rate of the generated files")
    ap.add_argument("--batch-size", default="auto", help="as `tag --batch-size` (default: auto)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--decode-only", action="store_true", help="only time decoding + resampling (no model, no Ray)")
    args = ap.parse_args()
    if args.decode_only:
        with tempfile.TemporaryDirectory() as folder:
            rates = decode_rate(Path(folder), args.rate)
        print(f"machine: {machine()}; load: {load()}")
        print(f"decode + resample {args.rate} Hz → 32 kHz + windows, one core: "
              + ", ".join(f"{ext.upper()} {r}× real time" for ext, r in rates.items()))
        return
    if os.geteuid() != 0 or not shutil.which("unshare"):
        sys.exit("bench_ray: needs root and unshare (Ray runs only in a private network namespace)")

    from seeded import write_seeded_pdparams

    work = Path(tempfile.mkdtemp(prefix="strb", dir="/tmp"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        audio = make_corpus(corpus, args.files, args.seconds, args.rate)
        weights = write_seeded_pdparams(args.model, work / f"{args.model}.pdparams")
        home = work / "home"
        home.mkdir()
        env = dict(os.environ, STREAMTAG_HOME=str(work / "streamtag"), HOME=str(home), RAY_TMPDIR=str(work),
                   RAY_USAGE_STATS_ENABLED="0")
        tag = [sys.executable, "-m", "streamtag", "tag"]
        model = ["--model", args.model, "--weights", str(weights), "--device", "cpu",
                 "--batch-size", str(args.batch_size)]
        files = sorted(str(p) for p in corpus.iterdir())
        run(tag + files[:1] + model + ["--output-dir", str(work / "warm")], env, False)  # warm the export cache
        cores = os.cpu_count() or 1
        configs = [
            ("plain tag", [f"--threads={cores}"], False),
            ("ray, 1 worker × 1 thread", ["--ray", "--ray-workers=1", "--threads=1"], True),
            (f"ray, 1 worker × {cores} threads", ["--ray", "--ray-workers=1", f"--threads={cores}"], True),
            (f"ray, {cores} workers × 1 thread", ["--ray", f"--ray-workers={cores}", "--threads=1"], True),
        ]
        rows = []
        load_before = load()
        print(f"machine: {machine()}; load before: {load_before}", flush=True)
        for name, extra, netns in configs:
            out = work / f"out-{len(rows)}"
            seconds = run(tag + files + model + ["--output-dir", str(out)] + extra, env, netns)
            assert len(list(out.glob("*.npz"))) == args.files
            rows.append({"config": name, "seconds": round(seconds, 2), "files_per_s": round(args.files / seconds, 3),
                         "audio_hours_per_hour": round(audio / seconds, 1), "load_after": load()})
            print(f"  {name}: {seconds:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = {"machine": machine(), "model": args.model, "files": args.files, "seconds_per_file": args.seconds,
              "rate": args.rate, "batch_size": args.batch_size, "audio_hours": round(audio / 3600, 4),
              "load_before": load_before,
              "command": "scripts/bench_ray.py " + " ".join(sys.argv[1:]), "rows": rows}
    print(f"\n{args.files} files × {args.seconds:g} s ({args.rate} Hz), {args.model}, batch {args.batch_size}; "
          "whole process (start-up included)\n")
    print("| run | wall s | files/s | audio-hours/hour | load after (1/5/15 min) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['seconds']} | {r['files_per_s']} | {r['audio_hours_per_hour']} | "
              f"{r['load_after']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
