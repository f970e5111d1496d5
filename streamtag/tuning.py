"""The batch size `tag --batch-size auto` uses: the fastest one measured on this device, remembered per setup.

Bigger batches are not always faster, and what is fastest changes with the graph: on this project's 2-core EPYC,
CNN14 was 54 ms/window at batch 1 and 61 at batch 8 until its last block ran as one GEMM over the batch (graph.py);
now it is 54 at batch 1 and 45 at batch 8. A GPU is 60-80× cheaper per window at batch 64-256 than at batch 1
(docs/gpu.md). So the choice is measured, not assumed: `measure_batch_sizes` times each candidate on real-sized
windows and `record_choice` files the fastest under a key naming the device, model, engine backend, threads,
precision and window length (`$STREAMTAG_HOME/batch-sizes.json`). `streamtag bench --batch-sizes 1,2,4,8,16`
measures and records (once per machine and setup; in its own process, because each input shape measured leaves
oneDNN another copy of the reordered weights). Without a record, `auto` is the size measured fastest on the
machines this project has: 8 on a CPU (the 2-core EPYC above), 64 on a GPU (an H200, docs/gpu.md).
"""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import time as clock
from typing import Any, Sequence

import numpy as np

from streamtag.utils import atomic_write_text, streamtag_home

DEFAULT_BATCH = {"cpu": 8, "gpu": 64}
CANDIDATES = {"cpu": (1, 2, 4, 8, 16), "gpu": (1, 8, 32, 64, 128, 256)}


def device_name(device: str) -> str:
    """The CPU model (from /proc/cpuinfo) or the GPU's name: a choice measured on one is not reused on another."""
    if device == "gpu":
        with contextlib.suppress(Exception):
            import paddle

            return str(paddle.device.cuda.get_device_name(0))
        return "gpu"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def setup_key(scorer: Any, window: int) -> str:
    """One line naming what the speed depends on: device model, scorer (arch, backend, threads), precision, window."""
    return f"{device_name(scorer.device)} | {scorer.describe()} | {scorer.precision} | {window} samples"


def _records() -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((streamtag_home() / "batch-sizes.json").read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def recorded_choice(scorer: Any, window: int) -> int | None:
    """The batch size recorded for this setup, if any."""
    entry = _records().get(setup_key(scorer, window))
    return int(entry["batch_size"]) if isinstance(entry, dict) and isinstance(entry.get("batch_size"), int) else None


def record_choice(scorer: Any, window: int, ms_per_window: dict[int, float]) -> int:
    """File the fastest of `ms_per_window` for this setup (with the figures, for the curious); returns it."""
    best = min(ms_per_window, key=ms_per_window.get)
    records = _records()
    records[setup_key(scorer, window)] = {"batch_size": best,
                                          "ms_per_window": {str(b): round(v, 3) for b, v in ms_per_window.items()},
                                          "measured": clock.strftime("%Y-%m-%dT%H:%M:%SZ", clock.gmtime())}
    with contextlib.suppress(OSError):
        atomic_write_text(streamtag_home() / "batch-sizes.json", json.dumps(records, indent=1))
    return best


def measure_batch_sizes(scorer: Any, window: int, candidates: Sequence[int] | None = None,
                        seconds: float = 1.5, repeats: int = 3) -> dict[int, float]:
    """Median ms per window of each candidate batch size: one warm-up call, then at least `repeats` calls and about
    `seconds` of calls, whichever is more."""
    rng = np.random.default_rng(0)
    results = {}
    for batch_size in candidates or CANDIDATES.get(scorer.device, CANDIDATES["cpu"]):
        batch = (rng.standard_normal((batch_size, window)) * 0.1).astype(np.float32)
        scorer.score(batch)
        times: list[float] = []
        began = clock.perf_counter()
        while len(times) < repeats or clock.perf_counter() - began < seconds:
            t = clock.perf_counter()
            scorer.score(batch)
            times.append((clock.perf_counter() - t) * 1000 / batch_size)
        results[batch_size] = statistics.median(times)
    return results


def resolve_batch_size(value: int | str, scorer: Any, sample_duration: float) -> int:
    """`--batch-size`: a number is used as is; `auto` is the recorded choice for this setup, else the default."""
    if value != "auto":
        return int(value)
    window = int(sample_duration * 32000)
    return recorded_choice(scorer, window) or DEFAULT_BATCH.get(scorer.device, 1)
