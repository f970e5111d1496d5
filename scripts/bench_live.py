#!/usr/bin/env python
"""Live-path benchmark (not a test): `streamtag replay --speed 1` of a generated N-minute file with CNN14.

It checks the three promises of the live path on this machine, at 2 s windows every 0.3 s:
  * no hop is skipped (inference keeps up with real time),
  * memory is flat: RSS at the end is within 50 MB of RSS after one minute,
  * the median delay from a window's last sample arriving to its result being published is at most the median
    inference time + 20 ms (scheduling adds almost nothing).

    .venv/bin/python scripts/bench_live.py               # 10 minutes, the acceptance run
    .venv/bin/python scripts/bench_live.py --minutes 1   # a quick look
    # the all-day check (docs/benchmarks.md): an hour, recording scores and audio, RSS logged each minute
    .venv/bin/python scripts/bench_live.py --minutes 60 --record --max-rss-growth 30 --workdir /work/bench-live-1h \
        --log /work/bench-live-1h/minutes.jsonl --json /work/bench-live-1h/figures.json

Weights: --weights PATH, else the cached registry checkpoint for the model, else seeded weights from the test
fixture recipe (timing does not depend on the values). Prints a table and, with --json FILE, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
SR = 32000


def make_audio(path: Path, seconds: float) -> Path:
    """Changing tones, chirps and noise bursts, written block by block (a 10-minute file never sits in memory)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
        for start in range(0, int(seconds * SR), SR):
            t = (start + np.arange(SR)) / SR
            second = start // SR
            freq = 110.0 * 2 ** ((second * 7) % 36 / 12)
            tone = 0.25 * np.sin(2 * np.pi * freq * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.25 * t))
            noise = (0.2 if second % 5 == 0 else 0.02) * rng.standard_normal(SR)
            f.write((tone + noise).astype(np.float32))
    return path


def pick_weights(model: str, weights: str | None, workdir: Path) -> tuple[str, str]:
    if weights:
        return weights, "given"
    from streamtag.checkpoints import cache_path, default_checkpoint

    cached = cache_path(default_checkpoint(model))
    if cached.exists():
        return str(cached), "pretrained (cache)"
    sys.path.insert(0, str(ROOT / "tests"))
    from seeded import write_seeded_pdparams

    return str(write_seeded_pdparams(model, workdir / f"{model}_seeded.pdparams")), "seeded"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def written_bytes(pid: int) -> int | None:
    """Bytes the process has caused to be written to storage so far (/proc/PID/io write_bytes)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--model", default="cnn14")
    ap.add_argument("--weights")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--record", action="store_true",
                    help="also --record the session and --save-audio it (into the work dir): the all-day check")
    ap.add_argument("--max-rss-growth", type=float, default=50.0, metavar="MB",
                    help="the RSS check: end within this of RSS after one minute (default: %(default)s)")
    ap.add_argument("--workdir", metavar="DIR", help="keep the audio and recording here (default: a temp dir)")
    ap.add_argument("--log", metavar="FILE", help="append one JSON line per minute: time, hops, RSS, bytes written")
    opts = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_live.") as tmp:
        workdir = Path(opts.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        seconds = opts.minutes * 60
        audio = workdir / f"bench-{opts.minutes:g}min.wav"
        if not audio.exists() or sf.info(str(audio)).frames != len(range(0, int(seconds * SR), SR)) * SR:
            make_audio(audio, seconds)
        weights, weights_kind = pick_weights(opts.model, opts.weights, workdir)
        cmd = [sys.executable, "-m", "streamtag", "replay", str(audio), "--speed", "1", "--model", opts.model,
               "--weights", weights, "--no-dashboard", "--json", "--sample-duration", "2", "--hop-duration", "0.3"]
        if opts.threads:
            cmd += ["--threads", str(opts.threads)]
        if opts.record:
            for stale in workdir.glob("session*"):
                if stale.is_file():
                    stale.unlink()
            cmd += ["--record", str(workdir / "session"), "--save-audio", str(workdir / "session.wav")]
        log = open(opts.log, "a") if opts.log else None  # noqa: SIM115 (open for the whole run)
        print(f"bench_live: {opts.minutes:g} min replay, {opts.model} ({weights_kind} weights)", file=sys.stderr)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        records: list[dict] = []
        first_hop: list[float] = []

        def read() -> None:
            for line in proc.stdout:
                records.append(json.loads(line))
                if not first_hop:
                    first_hop.append(time.monotonic())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        timeline: list[tuple[float, int, float]] = []  # (seconds since the first hop, hops so far, RSS MB)
        next_minute = 0.0
        while proc.poll() is None:
            rss = rss_mb(proc.pid)
            if rss is not None and first_hop:
                t = time.monotonic() - first_hop[0]
                timeline.append((t, len(records), rss))
                if log is not None and t >= next_minute:
                    written = written_bytes(proc.pid)
                    log.write(json.dumps({"t": round(t, 1), "hops": len(records), "rss_mb": round(rss, 1),
                                          "write_bytes": written, "load": os.getloadavg()[0]}) + "\n")
                    log.flush()
                    next_minute += 60.0
            time.sleep(1.0)
        reader.join()
        err = proc.stderr.read()
        if proc.returncode != 0:
            print(err, file=sys.stderr)
            return proc.returncode

    expected = (int(seconds * SR) - 2 * SR) // 9600 + 1
    # RSS while scoring: after one minute, and the last reading before the final hop (not during shutdown).
    running = [(t, rss) for t, hops, rss in timeline if hops < len(records)]
    rss_1min = next((rss for t, rss in running if t >= 60), None)
    rss_end = running[-1][1] if running else None
    indices = [r["index"] for r in records]
    delays = [r["delay_ms"] for r in records if r["delay_ms"] is not None]
    inference = [r["inference_ms"] for r in records]
    figures = {
        "minutes": opts.minutes, "model": opts.model, "weights": weights_kind,
        "hops": len(records), "expected_hops": expected, "skipped": expected - len(set(indices)),
        "rss_1min_mb": rss_1min, "rss_end_mb": rss_end,
        "rss_growth_mb": None if rss_1min is None or rss_end is None else rss_end - rss_1min,
        "median_delay_ms": statistics.median(delays), "median_inference_ms": statistics.median(inference),
        "p95_delay_ms": float(np.percentile(delays, 95)), "max_delay_ms": max(delays),
    }
    figures["delay_overhead_ms"] = figures["median_delay_ms"] - figures["median_inference_ms"]
    figures["machine"] = cpu_model()
    figures["load_end"] = os.getloadavg()
    if opts.record:
        figures["recording_bytes"] = {p.name: p.stat().st_size for p in sorted(workdir.glob("session*"))}
    checks = {
        "no hop skipped": figures["skipped"] == 0,
        f"RSS end within {opts.max_rss_growth:g} MB of 1 min":
            figures["rss_growth_mb"] is not None and figures["rss_growth_mb"] <= opts.max_rss_growth,
        "median delay <= inference + 20 ms": figures["delay_overhead_ms"] <= 20,
    }
    figures["checks"] = checks
    figures["rss_timeline"] = [(round(t, 1), hops, round(rss, 1)) for t, hops, rss in timeline[::10]]
    for key, value in figures.items():
        if key not in ("checks", "rss_timeline"):
            print(f"{key:>22}: {value:.1f}" if isinstance(value, float) else f"{key:>22}: {value}")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(err.strip().splitlines()[-1] if err.strip() else "", file=sys.stderr)
    if opts.json:
        Path(opts.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
