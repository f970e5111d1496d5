#!/usr/bin/env python3
"""What events cost the inference thread per hop: the detector with 527 one-label rules (one per class), plus the
SQLite log, clips and the dashboard board as listeners (goal: < 1 ms per hop). A benchmark, not a test.

    .venv/bin/python scripts/bench_events.py [--hops 3000] [--speed 20] [--json]

Scores are synthetic but shaped like a session's: every class idles low with small noise and, at random, a few
classes at a time rise above `on` for a few seconds, so events start and end all along (about one every 2 s). The
ring buffer is fed 0.3 s of audio per hop as a microphone would; only `Detector.push` (which calls the listeners)
is timed. The writer threads (SQLite, clips) run beside it as they would in a session, on the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamtag.dashboard import EventBoard  # noqa: E402
from streamtag.events.clips import ClipWriter  # noqa: E402
from streamtag.events.detector import Collector, Detector  # noqa: E402
from streamtag.events.rules import Rule  # noqa: E402
from streamtag.events.store import EventStore  # noqa: E402
from streamtag.labels import audioset_labels  # noqa: E402
from streamtag.stream.ring import RingBuffer  # noqa: E402

SR, WINDOW, HOP = 32000, 64000, 9600


def scores(hops: int, classes: int, seed: int = 0) -> np.ndarray:
    """[hops, classes] float32: low noise everywhere, bursts of 5–30 hops above `on` for random classes."""
    rng = np.random.default_rng(seed)
    out = (0.05 + 0.03 * rng.random((hops, classes))).astype(np.float32)
    k = 0
    while k < hops:
        k += int(rng.integers(2, 12))
        c = int(rng.integers(classes))
        length = int(rng.integers(5, 30))
        out[k:k + length, c] = 0.6 + 0.3 * rng.random(min(length, max(0, hops - k)))
    return out


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} CPUs"


def run(hops: int, listeners_on: bool, speed: float) -> dict:
    labels = list(audioset_labels())
    rules = [Rule(name=label, labels=(label,), classes=(i,)) for i, label in enumerate(labels)]
    rows = scores(hops, len(labels))
    ring = RingBuffer(int(32 * SR), SR)
    noise = (0.05 * np.random.default_rng(1).standard_normal(HOP)).astype(np.float32)
    ring.write(np.tile(noise, WINDOW // HOP + 1)[:WINDOW])
    with tempfile.TemporaryDirectory() as tmp:
        collector = Collector()
        listeners: list = [collector]
        store = clips = None
        if listeners_on:
            clips = ClipWriter(Path(tmp) / "clips", ring, WINDOW / SR, lag=HOP / SR)
            store = EventStore(Path(tmp) / "events.sqlite")
            listeners = [clips, store, EventBoard(), collector]
        detector = Detector(rules, labels, WINDOW / SR, HOP / SR, listeners=listeners, source="bench", model="-")
        times = []
        began = time.perf_counter()
        for k in range(hops):
            due = began + k * HOP / SR / speed  # paced like a stream at `speed` × real time
            while time.perf_counter() < due:
                time.sleep(max(0.0, min(0.005, due - time.perf_counter())))
            ring.write(noise)  # the stream moves on by one hop
            t0 = time.perf_counter()
            detector.push(k * HOP / SR, rows[k], -20.0)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        detector.finish((hops * HOP + WINDOW) / SR)
        if clips is not None:
            clips.finish((hops * HOP + WINDOW) / SR)
        for listener in listeners:
            listener.close(30.0)
        drain = time.perf_counter() - t0
        ms = sorted(x * 1000 for x in times)
        return {
            "listeners": "clips + sqlite + board" if listeners_on else "none",
            "rules": len(rules), "hops": hops, "events": len(collector.events),
            "mean_ms": statistics.fmean(ms), "median_ms": ms[len(ms) // 2], "p95_ms": ms[int(len(ms) * 0.95)],
            "max_ms": ms[-1], "drain_s": drain,
            "clips_written": clips.written if clips else None, "db_rows": store.written if store else None,
            "dropped": (clips.dropped + store.dropped) if clips and store else 0,
        }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hops", type=int, default=3000, help="hops to push (0.3 s each; default 3000 = 15 min)")
    p.add_argument("--speed", type=float, default=20.0,
                   help="pace hops at this many × real time (default 20: 3000 hops in 45 s); the writer threads "
                        "then keep up as they do live")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    load = os.getloadavg()
    report = {"machine": machine(), "load_before": [round(x, 2) for x in load], "python": platform.python_version(),
              "speed": args.speed, "runs": [run(args.hops, False, args.speed), run(args.hops, True, args.speed)]}
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"machine: {report['machine']} · load before {report['load_before']} · after {report['load_after']} · "
          f"paced at {args.speed:g}× real time")
    print(f"{'listeners':<24} {'rules':>5} {'hops':>5} {'events':>6} {'mean':>8} {'median':>8} {'p95':>8} "
          f"{'max':>8}  clips/rows/dropped")
    for r in report["runs"]:
        print(f"{r['listeners']:<24} {r['rules']:>5} {r['hops']:>5} {r['events']:>6} {r['mean_ms']:>6.3f}ms "
              f"{r['median_ms']:>6.3f}ms {r['p95_ms']:>6.3f}ms {r['max_ms']:>6.2f}ms  "
              f"{r['clips_written']}/{r['db_rows']}/{r['dropped']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
