#!/usr/bin/env python
"""Archive-tagging benchmark (not a test): one 63 s file whole-process, streamtag against the authors' PyTorch.

Each figure is a fresh process from start to exit, as a user runs it, median of --runs rounds (each round runs every
configuration once, so a machine whose speed drifts moves all of them alike, and gives one ratio per round):
  * `streamtag tag FILE` with CNN14 (warm export cache; --batch-size auto and, for the table, 1 and 8), its peak RSS;
  * the authors' PyTorch code scoring the same 210 windows (scripts/authors_reference.py, run by the interpreter of
    a separate venv that has torch, torchlibrosa and librosa — never streamtag's), at batch 1 and 8;
  * start to first score with a warm cache (`streamtag bench`'s probe) and its peak RSS;
  * with --precision-bf16, `tag --precision bf16` too (AVX512-BF16/AMX CPUs; scores move by up to ~0.02).
The file: 63 s of tones and noise at 44.1 kHz stereo 16-bit (so decoding and resampling are part of the work),
generated once. Weights: seeded CNN14 of the real shapes (speed does not depend on the values), the same tensors
for both (tests/fixtures/panns/cnn14.spec.json).

    .venv/bin/python scripts/bench_archive.py --torch-python /work/torchbench-venv/bin/python \\
        --authors /path/to/audioset_tagging_cnn --json bench-archive.json
Without --torch-python/--authors only streamtag's figures are taken.
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
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "tests" / "fixtures" / "panns" / "cnn14.spec.json"


def make_file(path: Path) -> Path:
    rate, seconds = 44100, 63
    rng = np.random.default_rng(63)
    t = np.arange(seconds * rate) / rate
    tone = np.sin(2 * np.pi * (440 + 200 * np.sin(2 * np.pi * 0.1 * t)) * t) * (np.sin(2 * np.pi * 0.25 * t) > 0)
    x = 0.05 * rng.standard_normal(len(t)) + 0.3 * tone
    sf.write(path, np.stack([x, 0.8 * x], 1).astype(np.float32), rate, subtype="PCM_16")
    return path


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of one process, measured by GNU time's %M where present."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        wrapper = ["/usr/bin/time", "-f", "%M", "-o", report.name] if Path("/usr/bin/time").exists() else []
        start = time.perf_counter()
        proc = subprocess.run(wrapper + cmd, capture_output=True, text=True, env=env, timeout=3600)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
        rss = float(report.read().strip().splitlines()[-1]) / 1024 if wrapper else float("nan")
    return wall, rss, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--torch-python", help="python of a venv with torch, torchlibrosa, librosa")
    ap.add_argument("--authors", help="a checkout of qiuqiangkong/audioset_tagging_cnn")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--precision-bf16", action="store_true", help="also time `--precision bf16` (AVX512-BF16/AMX)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    home = Path(os.environ.get("STREAMTAG_HOME") or work / "home")
    env = dict(os.environ, STREAMTAG_HOME=str(home))
    audio = make_file(work / "file63.wav")
    sys.path.insert(0, str(ROOT / "tests"))
    from seeded import write_seeded_pdparams  # noqa: E402  (the fixture recipe, as a real .pdparams)

    weights = write_seeded_pdparams("cnn14", work / "cnn14_seed.pdparams")
    streamtag = [sys.executable, "-m", "streamtag"]
    tag = streamtag + ["tag", str(audio), "--model", "cnn14", "--weights", str(weights), "--device", "cpu",
                       "--output-dir", str(work / "out"), "--overwrite"]
    print("export (once) ...", file=sys.stderr)
    timed(tag + ["--batch-size", "1"], env)
    figures: dict = {"machine": {"cpu": platform.processor() or "", "cores": os.cpu_count(),
                                 "load_before": os.getloadavg()}, "file": "63 s, 44.1 kHz stereo PCM16, 210 windows"}
    with open("/proc/cpuinfo") as f:
        figures["machine"]["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                                          if line.startswith("model name")), "")
    # Every configuration runs once per round, rounds repeated --runs times: a machine that drifts (a shared VM's
    # clock, other tenants) moves every configuration alike, and each round gives one streamtag/PyTorch ratio.
    commands = {"streamtag auto": tag, "streamtag b1": tag + ["--batch-size", "1"],
                "streamtag b8": tag + ["--batch-size", "8"],
                "warm start to first score": [sys.executable, "-m", "streamtag.bench", "cnn14", str(weights), "cpu",
                                              "0", "fp32", "64000"]}
    if args.precision_bf16:
        commands["streamtag auto, --precision bf16"] = tag + ["--precision", "bf16"]
    if args.torch_python and args.authors:
        pth = work / "cnn14_seed.pth"
        for batch in (1, 8):
            commands[f"authors' PyTorch b{batch}"] = [
                args.torch_python, str(ROOT / "scripts" / "authors_reference.py"), args.authors, str(audio),
                "--checkpoint", str(pth), "--spec", str(SPEC), "--batch-size", str(batch)]
        timed(commands["authors' PyTorch b8"], env)  # writes the .pth once
    runs: dict[str, list] = {label: [] for label in commands}
    for round_ in range(args.runs):
        for label, cmd in commands.items():
            runs[label].append(timed(cmd, env))
            print(f"round {round_ + 1}: {label} {runs[label][-1][0]:.2f} s", file=sys.stderr)
    rows = {}
    for label, got in runs.items():
        rows[label] = {"wall_s": statistics.median(r[0] for r in got), "peak_rss_mb": max(r[1] for r in got),
                       "runs_s": [round(r[0], 2) for r in got]}
        if label.startswith("authors"):
            rows[label]["inside"] = json.loads(got[-1][2].strip().splitlines()[-1])
    torch_rows = [label for label in rows if label.startswith("authors")]
    if torch_rows:
        best = min(torch_rows, key=lambda label: rows[label]["wall_s"])
        ratios = [t[0] / s[0] for t, s in zip(runs[best], runs["streamtag auto"])]
        figures["speedup_vs_best_pytorch"] = round(rows[best]["wall_s"] / rows["streamtag auto"]["wall_s"], 2)
        figures["speedup_per_round"] = [round(r, 2) for r in ratios]
        figures["speedup_compared_with"] = best
    figures["machine"]["load_after"] = os.getloadavg()
    figures["rows"] = rows
    for label, row in rows.items():
        print(f"{label:28s} {row['wall_s']:7.2f} s   peak RSS {row['peak_rss_mb']:7.0f} MB")
    if "speedup_vs_best_pytorch" in figures:
        print(f"streamtag (auto) vs the faster PyTorch run ({figures['speedup_compared_with']}), medians: "
              f"{figures['speedup_vs_best_pytorch']}×; round by round: {figures['speedup_per_round']}")
    print(f"load average before {figures['machine']['load_before']}, after {figures['machine']['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
