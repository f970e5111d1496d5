#!/usr/bin/env python
"""Recorder benchmark (not a test): a 12-hour live stream through `Recorder` + `WavRecorder`, as fast as they go.

What an all-day session costs the recording, hour by hour of stream time: RSS, the size of each growing part, bytes
handed to write() (`wchar`) and bytes sent to storage (`write_bytes`), both from /proc/self/io (so all the writes, the
flushes' small state.json and header rewrites included). Then the end of the session: the time and peak RSS to
assemble PREFIX.npz from its append-only part.

The model is not run for every hop (12 h of 0.3 s hops is 144,000 windows, hours of CNN6 on two cores): 64 windows
of generated audio are scored once by CNN6 with the seeded test weights and their score rows are cycled, through the
live Smoother, into HopResults fed straight to the recorder, with the matching audio blocks to --save-audio (on by
default: 12 h of 32 kHz float32 is 5.5 GB, past WAV's 4 GB, so the RF64 switch is exercised). A flush every 10 hops is
what a live session does every 3 s.

    .venv/bin/python scripts/bench_recorder.py                   # 12 hours, with audio (writes ~5.9 GB, then deletes)
    .venv/bin/python scripts/bench_recorder.py --hours 1 --no-audio
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SR, HOP, WINDOW = 32000, 9600, 64000
HOPS_PER_FLUSH = 10  # 3 s of 0.3 s hops: FLUSH_SECONDS


def proc_status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_io() -> dict[str, int]:
    return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}


def score_pool(workdir: Path, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """`n` generated 2 s windows and their CNN6 scores (seeded weights)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from seeded import write_seeded_pdparams

    from streamtag.engine import load_scorer

    os.environ.setdefault("STREAMTAG_HOME", str(workdir / "home"))
    weights = write_seeded_pdparams("cnn6", workdir / "cnn6_seeded.pdparams")
    rng = np.random.default_rng(0)
    t = np.arange(WINDOW) / SR
    windows = np.stack([0.3 * np.sin(2 * np.pi * 110 * 2 ** (i % 24 / 12) * t) + 0.05 * rng.standard_normal(WINDOW)
                        for i in range(n)]).astype(np.float32)
    scorer = load_scorer("cnn6", str(weights), device="cpu", engine="inference")
    scores = np.concatenate([scorer.score(windows[i:i + 8]) for i in range(0, n, 8)]).astype(np.float32)
    return windows, scores


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=12.0)
    ap.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True, help="also --save-audio")
    ap.add_argument("--workdir", metavar="DIR", help="where the recording goes (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the recording")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    opts = ap.parse_args()

    from streamtag.labels import audioset_labels
    from streamtag.results import Smoother
    from streamtag.stream.pipeline import HopResult
    from streamtag.stream.recorder import Recorder, WavRecorder

    with tempfile.TemporaryDirectory(prefix="bench_recorder.", dir=opts.workdir) as tmp:
        workdir = Path(tmp)
        windows, pool = score_pool(workdir)
        labels = list(audioset_labels())
        prefix = workdir / "session"
        recorder = Recorder(prefix, labels, "cnn6", SR, 2.0, 0.3, top_k=10, smooth_size=5, source="bench")
        wav = WavRecorder(workdir / "session.wav") if opts.audio else None
        smoother = Smoother(5)
        hops_per_hour = 3600 * SR // HOP
        total = int(opts.hours * hops_per_hour)
        print(f"bench_recorder: {opts.hours:g} h = {total} hops, audio {'on' if wav else 'off'}", file=sys.stderr)
        io0, began, rows = proc_io(), time.perf_counter(), []
        for i in range(total):
            k = i % len(pool)
            if wav is not None:  # the stream's new samples: the first window whole, then one hop each
                wav.write(windows[k] if i == 0 else windows[k][-HOP:])
            recorder.add(HopResult(i, i * HOP / SR, pool[k], smoother.push(pool[k]), 1.0, 1.0, level_db=-20.0))
            if (i + 1) % HOPS_PER_FLUSH == 0:
                recorder.flush(duration=(i * HOP + WINDOW) / SR)
            if (i + 1) % hops_per_hour == 0 or i + 1 == total:
                io = proc_io()
                part = sum(f.stat().st_size for f in recorder.part.dir.iterdir())
                rows.append({"hour": round((i + 1) / hops_per_hour, 2), "rss_mb": round(proc_status("VmRSS"), 1),
                             "npz_part_mb": round(part / 1e6, 1),
                             "txt_part_mb": round(recorder.txt_part.stat().st_size / 1e6, 1),
                             "wav_part_mb": round(wav.part.stat().st_size / 1e6, 1) if wav else 0.0,
                             "wchar_mb": round((io["wchar"] - io0["wchar"]) / 1e6, 1),
                             "write_bytes_mb": round((io["write_bytes"] - io0["write_bytes"]) / 1e6, 1),
                             "seconds": round(time.perf_counter() - began, 1)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        streamed = time.perf_counter() - began
        t0, io1 = time.perf_counter(), proc_io()
        outputs = recorder.finish(duration=((total - 1) * HOP + WINDOW) / SR)
        if wav is not None:
            outputs.append(wav.close())
        io2 = proc_io()
        assemble = {"seconds": round(time.perf_counter() - t0, 1),
                    "wchar_mb": round((io2["wchar"] - io1["wchar"]) / 1e6, 1),
                    "peak_rss_mb": round(proc_status("VmHWM"), 1)}
        sizes = {p.name: p.stat().st_size for p in outputs}
        with np.load(prefix.with_suffix(".npz"), allow_pickle=False) as npz:  # only the small arrays are read
            assert npz["time"].shape == (total,) and npz["level"].shape == (total,)
        if wav is not None:
            import soundfile as sf

            info = sf.info(str(workdir / "session.wav"))
            assert info.frames == WINDOW + (total - 1) * HOP, info
            sizes["session.wav format"] = info.format
        if opts.keep and opts.workdir:
            for p in outputs:
                os.replace(p, Path(opts.workdir) / p.name)

    per_hour = np.diff([0.0] + [r["wchar_mb"] for r in rows])
    figures = {"hours": opts.hours, "hops": total, "audio": bool(opts.audio), "machine": machine(),
               "load": os.getloadavg(), "stream_seconds": round(streamed, 1), "per_hour": rows,
               "wchar_mb_per_hour": round(float(np.median(per_hour)), 2),
               "rss_first_hour_mb": rows[0]["rss_mb"], "rss_last_hour_mb": rows[-1]["rss_mb"],
               "assemble": assemble, "sizes": sizes}
    print(json.dumps(figures, indent=1))
    if opts.json:
        Path(opts.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
