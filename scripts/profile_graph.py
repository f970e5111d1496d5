#!/usr/bin/env python
"""Where a window's time goes in the exported graph, op by op: the graph as exported now against the plain one.

A benchmark, not a test. Two graphs of the same seeded model (speed does not depend on the weights' values) are
exported to a temp dir: "plain" (BatchNorm folded, nothing else: the export before graph.py's rewrites) and
"exported" (graph.optimise_for_export, what the engine runs). Each is run by a Paddle Inference predictor set up as
the engine sets it up, with Paddle's op profiler on, and the table gives ms per window for each op type, plus the
plain ms per window without the profiler. Run it on a quiet machine; it prints the machine and its load.

    .venv/bin/python scripts/profile_graph.py                      # CNN14, batch 8 and 1, 2 s windows
    .venv/bin/python scripts/profile_graph.py --model cnn6 --batch-sizes 1 --json profile.json
    .venv/bin/python scripts/profile_graph.py --ab 6               # + each rewrite's worth, interleaved rounds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def export(arch: str, dest: Path, rewrite: bool, gemm: bool = True) -> Path:
    """Export `arch` (seeded weights) to `dest`: plain (BN folded only), or rewritten (with or without GemmConv)."""
    import paddle

    from seeded import seeded_state
    from streamtag import graph
    from streamtag.models import build_model, load_weights

    model = build_model(arch)
    load_weights(model, seeded_state(arch))
    model.eval()
    if rewrite:
        graph.optimise_for_export(model, graph.GEMM_MAX_FREQUENCY_BINS if gemm else 0)
    else:
        graph.fold_batch_norms(model)
    static = paddle.jit.to_static(model, input_spec=[paddle.static.InputSpec([None, None], "float32")],
                                  full_graph=True)
    with warnings_off():
        paddle.jit.save(static, str(dest / "model"))
    return dest


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def predictor(folder: Path, threads: int, profile: bool):
    """A predictor set up exactly as the engine's CPU Scorer sets it up (engine.cpu_config), profiler optional."""
    import paddle.inference as pi

    from streamtag.engine import cpu_config

    config, _ = cpu_config(folder / "model", threads)
    if profile:
        config.enable_profile()
    return pi.create_predictor(config)


def run(pred, batch: np.ndarray) -> None:
    handle = pred.get_input_handle(pred.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(batch)
    pred.run()
    for name in pred.get_output_names():
        pred.get_output_handle(name).copy_to_cpu()


def ms_per_window(folder: Path, batch: np.ndarray, threads: int, repeats: int) -> float:
    pred = predictor(folder, threads, profile=False)
    run(pred, batch)
    run(pred, batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(pred, batch)
        times.append((time.perf_counter() - t) * 1000 / len(batch))
    return float(np.median(times))


def op_profile(folder: Path, batch: np.ndarray, threads: int, repeats: int) -> dict[str, float]:
    """ms per window per op type, from Paddle's profiler report (printed on stdout when the predictor goes)."""
    read, write = os.pipe()
    saved = os.dup(1)
    sys.stdout.flush()
    os.dup2(write, 1)
    try:
        pred = predictor(folder, threads, profile=True)
        run(pred, batch)  # the first run (kernel selection) is in the report too: divided over repeats + 1 runs
        for _ in range(repeats):
            run(pred, batch)
        del pred
        import gc

        gc.collect()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(write)
    text = os.fdopen(read, errors="replace").read()
    ops: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        match = re.match(r"^thread\d+::(\S+)\s+(\d+)\s+([\d.]+)", line)
        if match and not match.group(1).startswith(("PhiKernel", "builtin")):
            ops[match.group(1)] += float(match.group(3)) / (repeats + 1) / len(batch)
    return dict(ops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn14")
    ap.add_argument("--batch-sizes", default="8,1")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--ab", type=int, default=0, metavar="ROUNDS",
                    help="also: plain / exported / exported without the GEMM block, interleaved ROUNDS times per batch "
                         "size (all three predictors in one process, so the machine's drift moves them alike)")
    args = ap.parse_args()

    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   platform.processor())
    figures: dict = {"machine": {"cpu": cpu, "cores": os.cpu_count(), "load_before": os.getloadavg()},
                     "model": args.model, "threads": args.threads, "seconds": args.seconds, "runs": {}}
    work = Path(tempfile.mkdtemp(prefix="profile-graph-"))
    graphs = {name: export(args.model, work / name, rewrite) for name, rewrite in (("plain", False),
                                                                                   ("exported", True))}
    rng = np.random.default_rng(0)
    for size in [int(b) for b in args.batch_sizes.split(",")]:
        batch = (rng.standard_normal((size, int(args.seconds * 32000))) * 0.1).astype(np.float32)
        for name, folder in graphs.items():
            total = ms_per_window(folder, batch, args.threads, args.repeats)
            ops = op_profile(folder, batch, args.threads, args.repeats)
            figures["runs"][f"{name} b{size}"] = {"ms_per_window": round(total, 2),
                                                  "ops_ms_per_window": {k: round(v, 3) for k, v in ops.items()}}
            print(f"{name:9s} batch {size:2d}: {total:6.1f} ms/window", flush=True)
    if args.ab:
        graphs["exported without GEMM"] = export(args.model, work / "no-gemm", True, gemm=False)
        predictors = {name: predictor(folder, args.threads, profile=False) for name, folder in graphs.items()}
        figures["interleaved"] = {}
        for size in [int(b) for b in args.batch_sizes.split(",")]:
            batch = (rng.standard_normal((size, int(args.seconds * 32000))) * 0.1).astype(np.float32)
            got: dict[str, list[float]] = {name: [] for name in predictors}
            for _ in range(args.ab):
                for name, pred in predictors.items():
                    run(pred, batch)
                    t = time.perf_counter()
                    for _ in range(args.repeats):
                        run(pred, batch)
                    got[name].append((time.perf_counter() - t) * 1000 / args.repeats / size)
            figures["interleaved"][f"b{size}"] = {name: {"median_ms_per_window": round(float(np.median(v)), 2),
                                                         "rounds": [round(x, 1) for x in v]}
                                                  for name, v in got.items()}
            for name, v in got.items():
                print(f"interleaved, batch {size:2d}, {name:22s}: median {np.median(v):6.1f} ms/window "
                      f"{[round(x, 1) for x in v]}", flush=True)
    figures["machine"]["load_after"] = os.getloadavg()

    names = sorted({op for run in figures["runs"].values() for op in run["ops_ms_per_window"]},
                   key=lambda op: -max(r["ops_ms_per_window"].get(op, 0) for r in figures["runs"].values()))
    runs = list(figures["runs"])
    print(f"\n{'op (ms per window, profiler on)':34s}" + "".join(f"{r:>14s}" for r in runs))
    for op in names[:16]:
        print(f"{op:34s}" + "".join(f"{figures['runs'][r]['ops_ms_per_window'].get(op, 0):14.2f}" for r in runs))
    print(f"{'total without the profiler':34s}" + "".join(f"{figures['runs'][r]['ms_per_window']:14.1f}"
                                                          for r in runs))
    print(f"\n{cpu}, {os.cpu_count()} cores; load before {figures['machine']['load_before']}, "
          f"after {figures['machine']['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
