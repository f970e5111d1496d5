"""`streamtag bench`: how fast each model scores on this machine, engine against eager Paddle, in one run.

Per model: ms per window at batch 1 (median after warm-up) and windows/s at batch 8, for the inference engine and
eager Paddle side by side; the real-time load of live use (ms per window / ms per hop); the time from process start
to the first score with a cold and with a warm export cache, and the peak RSS of such a process. Start-up is timed in
child processes (a fresh STREAMTAG_HOME makes the cold one) because that is what a user waits for.

Speed does not depend on the weights' values, so on an offline machine without the registry checkpoints the bench
scores with seeded random weights of the right shapes, written once as a real .pdparams so that every process goes
through the same checkpoint reader as a user's run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.utils import atomic_path, streamtag_home

SAMPLE_RATE = 32000
BATCH = 8
FIRST_SCORE_MARK = "STREAMTAG-FIRST-SCORE "
GOALS = (("cnn14", "engine_ms_b1", "<=", 60.0, "ms/window"), ("cnn14", "speedup_b1", ">=", 7.0, "× eager"),
         ("cnn6", "engine_ms_b1", "<=", 25.0, "ms/window"), ("*", "first_score_warm_s", "<=", 6.0, "s warm start"),
         ("cnn14", "first_score_warm_s", "<=", 1.5, "s warm start"), ("cnn14", "peak_rss_mb", "<=", 900.0, "MB"))


@dataclass
class ModelBench:
    """One model's figures; times in ms or s as named, None where not measured."""

    model: str
    engine: str = ""
    engine_ms_b1: float = 0.0
    eager_ms_b1: float | None = None
    speedup_b1: float | None = None
    engine_wps_b8: float = 0.0
    eager_wps_b8: float | None = None
    speedup_b8: float | None = None
    realtime_load: float = 0.0
    first_score_cold_s: float | None = None
    first_score_warm_s: float | None = None
    peak_rss_mb: float | None = None
    peak_rss_cold_mb: float | None = None
    samples_ms_b1: list[float] = field(default_factory=list)
    batch_ms: dict[str, float] = field(default_factory=dict)  # --batch-sizes: ms per window by batch size
    best_batch: int | None = None  # the fastest of them, recorded for `tag --batch-size auto`


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including the vector extensions oneDNN picks its kernels by."""
    import paddle

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                   ("amx_bf16", "AMX")) if flag in flags]
    from streamtag.engine import default_threads

    return {"cpu": cpu, "isa": isa, "cores": default_threads(), "os": platform.platform(terse=True),
            "python": platform.python_version(), "paddle": paddle.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []}


# ---------------------------------------------------------------------------------------------- weights
def seeded_random_state(arch: str) -> dict[str, np.ndarray]:
    """Random weights of the right shapes (He-scaled convs, identity BatchNorm): realistic activations, fixed seed."""
    from streamtag.models import param_shapes

    rng = np.random.default_rng(0)
    state = {}
    for key, shape in param_shapes(arch).items():
        if key.endswith(("_variance",)) or (key.endswith(".weight") and len(shape) == 1):
            value = np.ones(shape, np.float32)
        elif len(shape) == 1:
            value = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
            value = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        state[key] = value
    return state


def bench_weights(arch: str) -> tuple[Path, str]:
    """A checkpoint file for `arch`: the cached registry one, else seeded random weights ('registry'/'seeded')."""
    from streamtag.checkpoints import REGISTRY, cache_path

    for entry in REGISTRY.values():
        if entry.arch == arch and cache_path(entry).is_file():
            return cache_path(entry), "registry"
    path = streamtag_home() / "bench" / f"seeded-random-{arch}.pdparams"
    if not path.is_file():
        import paddle

        with atomic_path(path, suffix=".pdparams") as tmp:
            paddle.save(seeded_random_state(arch), str(tmp))
    return path, "seeded"


# ---------------------------------------------------------------------------------------------- timing
def time_scorer(scorer: Any, window: int, repeats: int) -> tuple[float, float, list[float]]:
    """(median ms per window at batch 1, windows/s at batch 8, the batch-1 samples in ms).

    One scorer at a time, never interleaved: eager Paddle's OpenMP threads slow a predictor called in between, on
    two cores to half its speed (measured: CNN14 92 ms instead of 48).
    """
    rng = np.random.default_rng(1)
    batch = (rng.standard_normal((BATCH, window)) * 0.1).astype(np.float32)
    figures = []
    for inputs, warmup, calls in ((batch[:1], 3, repeats), (batch, 1, max(3, repeats // 4))):
        for _ in range(warmup):
            scorer.score(inputs)
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            scorer.score(inputs)
            samples.append((time.perf_counter() - start) * 1000)
        figures.append(samples)
    one, eight = figures
    return statistics.median(one), BATCH * 1000 / statistics.median(eight), one


def first_score(arch: str, weights: Path, home: Path, device: str, threads: int | None, precision: str,
                window: int) -> tuple[float, float]:
    """(seconds from process start to the first score, peak RSS MB) of a fresh `python` scoring one window."""
    env = dict(os.environ, STREAMTAG_HOME=str(home))
    args = [sys.executable, "-m", "streamtag.bench", arch, str(weights), device, str(threads or 0), precision,
            str(window)]
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, env=env, text=True)
        elapsed, report = None, None
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(FIRST_SCORE_MARK):
                elapsed = time.perf_counter() - start
                report = json.loads(line[len(FIRST_SCORE_MARK):])
        child.wait()
        if child.returncode != 0 or report is None or elapsed is None:
            errors.seek(0)
            tail = errors.read().decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise StreamtagError(f"bench: the start-up run of {arch} failed ({tail[0]}); "
                                 f"try `streamtag tag` with --model {arch} to see the whole error")
    return elapsed, report["peak_rss_mb"]


def peak_rss_mb() -> float:
    """This process's peak resident set in MB.

    Linux's VmHWM belongs to the process image; getrusage's ru_maxrss survives exec, so a child started by a big
    parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def _child(argv: Sequence[str]) -> None:
    """Start-up probe run by `first_score`: load the scorer the way commands do, score one window, report."""
    from streamtag.engine import load_scorer

    arch, weights, device, threads, precision, window = argv
    scorer = load_scorer(arch, weights, device, "inference", int(threads) or None, precision)
    scorer.score(np.zeros((1, int(window)), np.float32))
    print(FIRST_SCORE_MARK + json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


# ---------------------------------------------------------------------------------------------- the run
def run_bench(models: Sequence[str], device: str = "auto", threads: int | None = None, precision: str = "fp32",
              sample_duration: float = 2.0, hop_duration: float = 0.3, repeats: int = 20, eager: bool = True,
              startup: bool = True, batch_sizes: Sequence[int] = (), say: Callable[[str], None] = lambda text: None,
              note: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Measure every model in `models`; returns the JSON document (machine, weights, per-model figures, goals).

    `say` gets transient progress ("cnn14: eager paddle"), `note` lines worth keeping (seeded weights).
    """
    from streamtag.checkpoints import file_sha256, read_checkpoint
    from streamtag.engine import make_scorer, resolve_device

    from streamtag.tagging import window_sizes

    window, _ = window_sizes(sample_duration, hop_duration)  # cut exactly as tag/live/replay cut their windows
    device = resolve_device(device)
    results: list[ModelBench] = []
    sources: dict[str, str] = {}
    for arch in models:
        say(f"{arch}: weights")
        weights, sources[arch] = bench_weights(arch)
        if sources[arch] == "seeded":
            note(f"{arch}: no cached registry weights; timing seeded random weights of the same shapes "
                 "(speed does not depend on the values)")
        bench = ModelBench(arch)
        say(f"{arch}: inference engine (exports the graph on first use)")
        scorer = make_scorer(arch, read_checkpoint(weights, arch), file_sha256(weights), device, "inference",
                             threads, precision)
        bench.engine = scorer.describe()
        bench.engine_ms_b1, bench.engine_wps_b8, bench.samples_ms_b1 = time_scorer(scorer, window, repeats)
        bench.realtime_load = bench.engine_ms_b1 / (hop_duration * 1000)
        if batch_sizes:
            from streamtag.tuning import measure_batch_sizes, record_choice

            say(f"{arch}: batch sizes {', '.join(map(str, batch_sizes))}")
            measured = measure_batch_sizes(scorer, window, batch_sizes)
            bench.batch_ms = {str(b): round(ms, 2) for b, ms in measured.items()}
            bench.best_batch = record_choice(scorer, window, measured)
        del scorer
        if startup:
            say(f"{arch}: start to first score, warm export cache")
            bench.first_score_warm_s, bench.peak_rss_mb = first_score(
                arch, weights, streamtag_home(), device, threads, precision, window)
            say(f"{arch}: start to first score, cold export cache")
            with tempfile.TemporaryDirectory(prefix="streamtag-bench-") as cold_home:
                bench.first_score_cold_s, bench.peak_rss_cold_mb = first_score(
                    arch, weights, Path(cold_home), device, threads, precision, window)
        results.append(bench)
    # Eager last: once eager Paddle has run in a process, its OpenMP threads slow every later predictor call there
    # (measured: CNN6 18 ms before, 24-29 ms after), so no engine figure may be taken after it.
    for bench in results if eager else ():
        say(f"{bench.model}: eager paddle")
        weights, _ = bench_weights(bench.model)
        reference = make_scorer(bench.model, read_checkpoint(weights, bench.model), file_sha256(weights), device,
                                "eager", threads, "fp32")
        bench.eager_ms_b1, bench.eager_wps_b8, _ = time_scorer(reference, window, repeats)
        bench.speedup_b1 = bench.eager_ms_b1 / bench.engine_ms_b1
        bench.speedup_b8 = bench.engine_wps_b8 / bench.eager_wps_b8
        del reference
    return {"machine": machine(), "device": device, "threads": threads, "precision": precision,
            "sample_duration": sample_duration, "hop_duration": hop_duration, "repeats": repeats,
            "weights": sources, "models": [asdict(r) for r in results],
            "goals": check_goals(results) if device == "cpu" else []}


def check_goals(results: Sequence[ModelBench]) -> list[dict[str, Any]]:
    """The CPU targets (2-core laptop class) against what was measured, for the models and figures measured."""
    goals = []
    for arch, figure, op, target, unit in GOALS:
        for r in results:
            value = getattr(r, figure)
            if (arch != "*" and r.model != arch) or value is None:
                continue
            met = value <= target if op == "<=" else value >= target
            goals.append({"model": r.model, "figure": figure, "target": f"{op} {target:g} {unit}",
                          "value": round(value, 2), "met": met})
    return goals


# ---------------------------------------------------------------------------------------------- output
def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def render(report: dict[str, Any]) -> Any:
    """The rich renderable of a bench report: a header line, the table, the goals."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    m = report["machine"]
    isa = f" ({', '.join(m['isa'])})" if m.get("isa") else ""
    load = f" · load {m['load_average'][0]:.1f}" if m.get("load_average") else ""  # shared machines: context
    header = Text(f"streamtag bench · {m['cpu']}{isa} · {m['cores']} cores{load} · "
                  f"{m['os']} · Python {m['python']} · "
                  f"Paddle {m['paddle']} · {report['device']} · {report['sample_duration']:g} s windows, "
                  f"{report['hop_duration']:g} s hop")
    # Narrow enough for an 80-column terminal: eleven columns, one space of padding.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1),
                  collapse_padding=True)
    columns = ("model", "b1 ms\nengine", "b1 ms\neager", "×", "b8 w/s\nengine", "b8 w/s\neager", "×",
               "RT\nload", "cold\nstart", "warm\nstart", "peak\nRSS")
    for name in columns:
        table.add_column(name, justify="left" if name == "model" else "right", no_wrap=True)
    for r in report["models"]:
        table.add_row(r["model"], _fmt(r["engine_ms_b1"], ".1f"), _fmt(r["eager_ms_b1"], ".1f"),
                      _fmt(r["speedup_b1"], ".1f"), _fmt(r["engine_wps_b8"], ".1f"),
                      _fmt(r["eager_wps_b8"], ".1f"), _fmt(r["speedup_b8"], ".1f"),
                      _fmt(r["realtime_load"], ".0%"), _fmt(r["first_score_cold_s"], ".1f", "s"),
                      _fmt(r["first_score_warm_s"], ".1f", "s"), _fmt(r["peak_rss_mb"], ".0f", "M"))
    legend = Text("b1 ms: median ms per window at batch 1 · b8 w/s: windows per second at batch 8 · ×: engine "
                  "speed-up over eager · RT load: b1 ms / hop ms · start: process start to first score with a "
                  "cold/warm export cache · peak RSS of the warm start (MB)", style="dim")
    engines = Text("engine: " + "; ".join(r["engine"] for r in report["models"]) + "; weights: " +
                   ", ".join(f"{arch} {source}" for arch, source in report["weights"].items()), style="dim")
    lines = [header, table, legend, engines]
    for r in report["models"]:
        if r.get("batch_ms"):
            sizes = " · ".join(f"{b}: {ms:.1f}" for b, ms in r["batch_ms"].items())
            lines.append(Text(f"{r['model']} ms/window by batch size: {sizes} → fastest {r['best_batch']} "
                              "(recorded for `tag --batch-size auto`)"))
    for g in report["goals"]:
        mark = "[green]✓[/]" if g["met"] else "[red]✗[/]"
        lines.append(Text.from_markup(f"{mark} {g['model']} {g['figure']} {g['target']}: {g['value']:g}"))
    return Group(*lines)


if __name__ == "__main__":
    _child(sys.argv[1:])
