"""Pictures of a result: the audio (log-mel spectrogram, or a level trace) over a heat map of the top classes, with
the sound events as labelled spans, on one time axis.

A result → a figure, nothing else: `plot_result` reads the npz through `results.load_result`, finds what lies beside
it (PREFIX.wav, PREFIX.events.jsonl) and writes one PNG/SVG/PDF atomically. matplotlib (Agg, through `Figure`, never
pyplot's global state) and Paddle (only for a spectrogram) are imported when needed, so `import streamtag.plot` costs
nothing and a missing matplotlib is one line naming the extra to install.

Long results stay readable and cheap: every panel is max-pooled to at most one column per pixel of its axes before it
is drawn (a 2-hour result has 24 000 windows; a 1600 px picture shows ~1300 of them, each the max of its bin, so a
short loud event never disappears). Only what is drawn is pooled — the data is never changed. The spectrogram is
computed by the model's own front end (`models.front_end`: the 64 mel bins the model saw) in blocks of a minute, each
pooled as it comes, so a 2-hour file needs as much memory as a 1-minute one.

Time alignment: a window's scores are drawn over its centre (a sound at t lights the windows that hold it, which are
centred around t), the spectrogram's frames over their centres, events at their own start/end (already stream time).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.events.model import Event
from streamtag.results import TagResult, load_result, smooth
from streamtag.utils import atomic_path

FORMATS = ("png", "svg", "pdf")
TIME_AXES = ("auto", "stream", "wall")
INSTALL_HINT = "install it with: pip install 'streamtag[plot]'"
RATE = 32000
FRAME_HOP = 320           # models.HOP_LENGTH: one log-mel frame every 10 ms (kept here: importing models needs Paddle)
SPEC_BLOCK_FRAMES = 6000  # log-mel frames computed per block (one minute of audio)
SPEC_RANGE_DB = 80.0      # the spectrogram's colour range below its loudest bin
LEVEL_FLOOR_DB = -80.0
LABEL_CHARS = 30          # class names longer than this are shortened with an ellipsis
TICK_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)


@dataclass
class PlotOptions:
    """How a picture is drawn (the `plot` command's options; configs/plot.yaml has the defaults)."""

    top: int = 10
    smooth_size: int | None = 5      # None: raw scores
    time_axis: str = "auto"          # auto = wall clock when the result has one (live recordings), else stream
    fmt: str = "png"
    width: int = 1600                # pixels
    height: int = 900
    dpi: int = 100


@dataclass
class Spectrogram:
    """Log-mel dB, max-pooled for display: `mel[64, columns]`; column c spans [start + c·step, start + (c+1)·step)."""

    mel: np.ndarray
    start: float
    step: float


def require_matplotlib() -> Any:
    """The matplotlib module, or a one-line error (exit 2) naming the extra; call it before any long work."""
    try:
        import matplotlib
    except ImportError:
        raise StreamtagError(f"plot needs matplotlib; {INSTALL_HINT}", exit_code=2) from None
    return matplotlib


def options_from(values: dict[str, Any]) -> PlotOptions:
    """PlotOptions from option values named as in configs/plot.yaml (dashes or underscores)."""
    v = {k.replace("-", "_"): x for k, x in values.items()}
    return PlotOptions(top=int(v.get("top", 10)), smooth_size=int(v.get("smooth_size", 5)) if v.get("smooth", True)
                       else None, time_axis=v.get("time_axis", "auto"), fmt=v.get("format", "png"),
                       width=int(v.get("width", 1600)), height=int(v.get("height", 900)), dpi=int(v.get("dpi", 100)))


# ---------------------------------------------------------------------------------------------- beside the npz
def prefix_of(npz: str | os.PathLike) -> Path:
    """`run.npz` → `run` (what `--record run` was given)."""
    path = Path(npz)
    return path.with_suffix("") if path.suffix == ".npz" else path


def audio_beside(npz: str | os.PathLike) -> Path | None:
    """PREFIX.wav beside PREFIX.npz — what `--record PREFIX --save-audio PREFIX.wav` leaves — if it exists."""
    path = prefix_of(npz).with_name(prefix_of(npz).name + ".wav")
    return path if os.path.isfile(path) else None


def events_beside(npz: str | os.PathLike) -> Path | None:
    """PREFIX.events.jsonl beside PREFIX.npz (the events a recording logged), if it exists."""
    path = prefix_of(npz).with_name(prefix_of(npz).name + ".events.jsonl")
    return path if os.path.isfile(path) else None


def read_events(path: str | os.PathLike) -> list[Event]:
    """Events from a JSON-lines file of `Event.to_dict()` objects (blank lines skipped)."""
    path = Path(path)
    hint = "give a .jsonl of events as `streamtag events` writes them"
    from streamtag.paths import read_input_text

    lines = read_input_text(path, "events file", hint, 256 << 20).splitlines()
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            event = Event.from_dict(d)
            event.start = float(event.start)
            event.end = None if event.end is None else float(event.end)
            event.label = str(event.label)
        except (ValueError, TypeError, AttributeError) as e:
            raise StreamtagError(f"{path}:{number}: not an event ({e.__class__.__name__}); {hint}") from None
        events.append(event)
    return events


def load_events(spec: str | None, result: TagResult, npz: str | os.PathLike,
                smooth_size: int | None) -> list[Event] | None:
    """The events to draw: `spec` is a .jsonl of events, or rules (a YAML file or comma-separated labels, as
    `streamtag events detect` takes) to detect them in `result` with the live path's own detector; without it,
    PREFIX.events.jsonl when there is one. None = no events panel."""
    if spec is None:
        beside = events_beside(npz)
        return read_events(beside) if beside else None
    if spec.endswith(".jsonl"):
        if not os.path.isfile(spec):
            raise StreamtagError(f"--events {spec}: no such file; give a .jsonl of events, or rules to detect them")
        return read_events(spec)
    from dataclasses import replace

    from streamtag.events.detector import detect
    from streamtag.events.rules import load_rules

    labels = _labels(result)
    rules = load_rules(spec, labels)
    if result.level is None:  # a result from before levels were stored: rules' min_level cannot apply
        result = replace(result, level=np.zeros(len(result.time), np.float32))
    return detect(replace(result, labels=labels), rules, smooth_size)


# ---------------------------------------------------------------------------------------------- pooling
def bin_max(centres: np.ndarray, values: np.ndarray, lo: float, step: float, columns: int) -> np.ndarray:
    """Max of `values` (rows along axis 0) per time bin [lo + c·step, lo + (c+1)·step); NaN where a bin is empty."""
    index = np.floor((np.asarray(centres, dtype=np.float64) - lo) / step).astype(np.int64)
    keep = (index >= 0) & (index < columns)
    index, values = index[keep], np.asarray(values, dtype=np.float32)[keep]
    out = np.full((columns, *values.shape[1:]), np.nan, dtype=np.float32)
    if len(index):
        order = np.argsort(index, kind="stable")
        index, values = index[order], values[order]
        firsts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
        out[index[firsts]] = np.maximum.reduceat(values, firsts, axis=0)
    return out


def bin_min(centres: np.ndarray, values: np.ndarray, lo: float, step: float, columns: int) -> np.ndarray:
    """Like `bin_max`, the minimum (the lower edge of an envelope)."""
    return -bin_max(centres, -np.asarray(values, dtype=np.float32), lo, step, columns)


def fill_edges(pooled: np.ndarray) -> np.ndarray:
    """Empty bins before the first window's centre take its values, those after the last take the last's: the
    first window holds the audio from 0 and the last the audio to the end. Gaps inside (skipped hops) stay empty."""
    full = ~np.isnan(pooled.reshape(len(pooled), -1)).all(axis=1)
    if full.any():
        first, last = int(np.argmax(full)), len(full) - 1 - int(np.argmax(full[::-1]))
        pooled[:first] = pooled[first]
        pooled[last + 1:] = pooled[last]
    return pooled


def pool_columns(block: np.ndarray, group: int) -> np.ndarray:
    """Max over groups of `group` columns (the last group may be short): [rows, n] → [rows, ⌈n/group⌉]."""
    rows, n = block.shape
    pad = -n % group
    if pad:
        block = np.concatenate([block, np.full((rows, pad), -np.inf, block.dtype)], axis=1)
    return block.reshape(rows, -1, group).max(axis=2)


# ---------------------------------------------------------------------------------------------- the spectrogram
def log_mel_image(audio: str | os.PathLike, columns: int, block_frames: int = SPEC_BLOCK_FRAMES) -> Spectrogram:
    """The log-mel spectrogram of `audio` (decoded to 32 kHz mono as the model hears it) by the model's front end,
    max-pooled to at most `columns` columns.

    Computed in blocks of `block_frames` frames, each with two frames of audio context on either side, so every
    frame equals the whole-file computation's (the front end's reflect padding only ever applies at the file's
    real ends) while memory stays that of one block.
    """
    import paddle

    from streamtag.audio import AudioReader
    from streamtag.models import front_end

    reader = AudioReader(audio)
    frames = 1 + reader.expected_samples() // FRAME_HOP
    group = max(1, math.ceil(frames / max(1, columns)))
    block_frames = max(group, block_frames // group * group)
    layer = front_end()
    context = 2 * FRAME_HOP
    pooled: list[np.ndarray] = []
    buffer = np.zeros(0, np.float32)
    start = 0        # stream sample of buffer[0]
    next_frame = 0   # first frame not yet computed
    total = 0

    def compute(end_frame: int, at_end: bool) -> None:
        nonlocal buffer, start, next_frame
        lo = max(0, next_frame * FRAME_HOP - context)
        hi = start + len(buffer) if at_end else end_frame * FRAME_HOP + context
        segment = buffer[lo - start:hi - start]
        if len(segment) <= 1024:  # reflect padding needs more than half an FFT; only a file under 32 ms gets here
            segment = np.concatenate([segment, np.zeros(1025 - len(segment), np.float32)])
        lead = (next_frame * FRAME_HOP - lo) // FRAME_HOP
        with paddle.no_grad():
            mel = layer(paddle.to_tensor(segment[None, :])).numpy()[0]
        mel = mel[:, lead:lead + end_frame - next_frame]
        pooled.append(pool_columns(mel, group))
        next_frame = end_frame
        keep = max(0, next_frame * FRAME_HOP - context)
        buffer, start = buffer[keep - start:], keep

    for block in reader.blocks(seconds=10.0):
        buffer = np.concatenate([buffer, block])
        total += len(block)
        while (next_frame + block_frames) * FRAME_HOP + context <= total:
            compute(next_frame + block_frames, at_end=False)
    last = 1 + total // FRAME_HOP
    while next_frame < last:
        compute(min(last, next_frame + block_frames), at_end=next_frame + block_frames >= last)
    mel = np.concatenate(pooled, axis=1) if pooled else np.zeros((64, 0), np.float32)
    frame_s = FRAME_HOP / RATE
    return Spectrogram(mel=mel, start=-frame_s / 2, step=group * frame_s)


# ---------------------------------------------------------------------------------------------- time axis
def time_ticks(x0: float, x1: float, max_ticks: int, offset: float = 0.0) -> tuple[np.ndarray, float]:
    """Ticks at round times between x0 and x1: the smallest step in TICK_STEPS giving at most `max_ticks`; `offset`
    shifts the grid (the wall-clock time of x = 0, so wall ticks fall on round local times)."""
    span = max(x1 - x0, 1e-9)
    step = next((s for s in TICK_STEPS if span / s <= max_ticks), TICK_STEPS[-1])
    first = math.ceil((x0 + offset) / step - 1e-9) * step - offset
    return np.arange(first, x1 + 1e-9, step), step


def clock_text(seconds: float, long: bool) -> str:
    seconds = max(0.0, seconds)
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if long else f"{m}:{s:02d}"


def duration_text(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else clock_text(seconds, seconds >= 3600)


class TimeAxis:
    """Stream seconds on x, labelled as stream time or as the local wall clock (live recordings)."""

    def __init__(self, wall_start: float | None):
        self.wall_start = wall_start
        self._utc = 0.0
        if wall_start is not None:
            local = datetime.fromtimestamp(wall_start).astimezone()
            self._utc = local.utcoffset().total_seconds() if local.utcoffset() else 0.0
            self.zone = local.strftime("%Z") or local.strftime("UTC%z")

    def apply(self, ax: Any, x0: float, x1: float, max_ticks: int) -> None:
        offset = 0.0 if self.wall_start is None else self.wall_start + self._utc
        ticks, step = time_ticks(x0, x1, max_ticks, offset)
        ax.set_xticks(ticks)
        if self.wall_start is not None:
            fmt = "%H:%M:%S" if step < 60 else "%H:%M"
            ax.set_xticklabels([datetime.fromtimestamp(self.wall_start + t).strftime(fmt) for t in ticks])
            ax.set_xlabel(f"wall clock ({self.zone})")
        elif x1 < 60:
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.set_xlabel("time (s)")
        else:
            long = x1 >= 3600
            ax.set_xticklabels([clock_text(t, long) for t in ticks])
            ax.set_xlabel("time (h:mm:ss)" if long else "time (m:ss)")
        ax.set_xlim(x0, x1)


# ---------------------------------------------------------------------------------------------- the figure
def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1] + "…"


def _labels(result: TagResult) -> list[str]:
    from streamtag.labels import audioset_labels

    n = result.scores.shape[1]
    if len(result.labels) == n:
        return list(result.labels)
    if n == len(audioset_labels()):
        return list(audioset_labels())
    return [f"class {i}" for i in range(n)]


def _geometry(result: TagResult) -> tuple[float, float, float]:
    """(window, hop, duration) in seconds, with fallbacks for files that lack them (the seed's own npz)."""
    times = np.asarray(result.time, dtype=np.float64)
    hop = result.hop_duration if math.isfinite(result.hop_duration) and result.hop_duration > 0 else \
        float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    window = result.sample_duration if math.isfinite(result.sample_duration) and result.sample_duration > 0 else hop
    duration = result.duration if math.isfinite(result.duration) and result.duration > 0 else \
        float(times[-1]) + window
    return window, hop, duration


def draw(result: TagResult, dest: str | os.PathLike, options: PlotOptions, audio: str | os.PathLike | None = None,
         events: Sequence[Event] | None = None, name: str = "") -> Path:
    """Draw `result` (+ the spectrogram of `audio`, + `events`) into `dest` atomically; returns `dest`."""
    require_matplotlib()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    dest = Path(dest)
    window, hop, duration = _geometry(result)
    wall = result.wall_clock
    if options.time_axis == "wall" and wall is None:
        raise StreamtagError(f"{name or dest}: no wall-clock start in this result (only live recordings have one); "
                             "use --time-axis stream")
    axis = TimeAxis(wall if options.time_axis in ("auto", "wall") else None)

    labels = _labels(result)
    scores = smooth(result.scores, options.smooth_size) if options.smooth_size else np.asarray(result.scores)
    top = min(options.top, scores.shape[1])
    order = np.argsort(-scores.max(axis=0), kind="stable")[:top]
    level = result.level
    audio_seconds = 0.0
    if audio is not None:
        from streamtag.audio import AudioReader

        audio_seconds = AudioReader(audio).duration  # a bad --audio fails before any drawing
    upper = "spectrogram" if audio is not None else "level" if level is not None else None

    fig = Figure(figsize=(options.width / options.dpi, options.height / options.dpi), dpi=options.dpi,
                 layout="constrained")
    lanes = sorted({e.label for e in events}) if events else []
    rows = ([upper] if upper else []) + ["scores"] + (["events"] if events is not None else [])
    heights = {"spectrogram": 3.0, "level": 1.5, "scores": max(2.0, 0.32 * top),
               "events": max(0.6, 0.3 * max(1, len(lanes)))}
    grid = fig.add_gridspec(len(rows), 2, height_ratios=[heights[r] for r in rows], width_ratios=[1, 0.012])
    axes: dict[str, Any] = {}
    for i, row in enumerate(rows):
        axes[row] = fig.add_subplot(grid[i, 0], sharex=axes[rows[0]] if i else None)
    max_ticks = max(4, options.width // 130)
    axis.apply(axes[rows[-1]], 0.0, duration, max_ticks)
    for row in rows[:-1]:
        axes[row].tick_params(labelbottom=False)

    score_ax = axes["scores"]
    score_ax.set_yticks(range(top), [_short(labels[i]) for i in order])
    score_ax.set_ylim(top - 0.5, -0.5)
    score_ax.tick_params(axis="y", length=0)
    how = f"smoothed over {options.smooth_size} windows" if options.smooth_size else "raw"
    score_ax.set_ylabel(f"top {top} classes\n(score, {how})")
    score_norm = Normalize(0.0, 1.0)
    fig.colorbar(ScalarMappable(score_norm, "viridis"), cax=fig.add_subplot(grid[rows.index("scores"), 1]),
                 label="score")
    if upper == "level":
        axes["level"].set_ylabel("level\n(dBFS)")
        axes["level"].set_ylim(LEVEL_FLOOR_DB, 0.0)
        fig.add_subplot(grid[0, 1]).set_axis_off()
    spec_bar = None
    if upper == "spectrogram":
        axes["spectrogram"].set_ylabel("log-mel\n(64 bins, model input)")
        axes["spectrogram"].set_yticks([])
        # a stand-in range with the widest tick labels, so the layout leaves room; the real one is set below
        spec_bar = fig.colorbar(ScalarMappable(Normalize(-100.0, 0.0), "magma"), cax=fig.add_subplot(grid[0, 1]),
                                label="dB")
    if events is not None:
        ev_ax = axes["events"]
        ev_ax.set_yticks(range(len(lanes)), [_short(x) for x in lanes])
        ev_ax.set_ylim(max(1, len(lanes)) - 0.5, -0.5)
        ev_ax.tick_params(axis="y", length=0)
        ev_ax.set_ylabel("events")
        fig.add_subplot(grid[rows.index("events"), 1]).set_axis_off()
    when = ""
    if wall is not None:
        when = f" · started {datetime.fromtimestamp(wall).astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')}"
    source = result.source or name or dest.stem
    fig.suptitle(f"{source} · {result.model or 'unknown model'} · window {window:g} s, hop {hop:g} s · "
                 f"{duration_text(duration)}{when}", fontsize="large")

    # Lay out once without data, so every panel's width in pixels is known before its data is pooled to it.
    with warnings.catch_warnings():  # too many panels for too few pixels: drawn cramped rather than refused
        warnings.filterwarnings("ignore", "constrained_layout not applied")
        fig.draw_without_rendering()
    pixels = max(1, int(score_ax.get_window_extent().width))
    fig.set_layout_engine("none")
    x0, x1 = 0.0, duration
    columns = max(1, min(pixels, math.floor((x1 - x0) / hop)))  # bins at least a hop wide: none falls between
    step = (x1 - x0) / columns
    starts = np.asarray(result.time, dtype=np.float64)
    centres = starts + np.clip(x1 - starts, 0.0, window) / 2  # the middle of the audio each window holds

    heat = fill_edges(bin_max(centres, scores[:, order], x0, step, columns)).T
    score_ax.imshow(np.ma.masked_invalid(heat), aspect="auto", interpolation="nearest", cmap="viridis",
                    norm=score_norm, extent=(x0, x1, top - 0.5, -0.5))
    if upper == "level":
        lv = np.asarray(level, dtype=np.float32)
        hi = fill_edges(bin_max(centres, lv, x0, step, columns))
        lo_ = fill_edges(bin_min(centres, lv, x0, step, columns))
        xs = x0 + (np.arange(columns) + 0.5) * step
        axes["level"].fill_between(xs, np.maximum(lo_, LEVEL_FLOOR_DB), np.maximum(hi, LEVEL_FLOOR_DB),
                                   color="tab:blue", alpha=0.35, linewidth=0, step="mid")
        axes["level"].plot(xs, np.maximum(hi, LEVEL_FLOOR_DB), color="tab:blue", linewidth=0.8,
                           drawstyle="steps-mid")
        axes["level"].grid(axis="y", alpha=0.3)
    if upper == "spectrogram":
        spec = log_mel_image(audio, columns=max(1, math.ceil(pixels * audio_seconds / (x1 - x0))))
        top_db = float(np.nanmax(spec.mel)) if spec.mel.size else 0.0
        image = axes["spectrogram"].imshow(spec.mel, aspect="auto", origin="lower", interpolation="nearest",
                                           cmap="magma", vmin=top_db - SPEC_RANGE_DB, vmax=top_db,
                                           extent=(spec.start, spec.start + spec.mel.shape[1] * spec.step, -0.5,
                                                   spec.mel.shape[0] - 0.5))
        spec_bar.update_normal(image)
    if events is not None:
        _draw_events(axes["events"], events, lanes, duration, pixels / (x1 - x0))
    for ax in axes.values():
        ax.set_xlim(x0, x1)
    try:
        with atomic_path(dest, suffix=f".{options.fmt}") as tmp:
            fig.savefig(tmp, format=options.fmt, dpi=options.dpi)
    except OSError as e:
        raise StreamtagError(f"{dest}: cannot write ({e.strerror or e}); choose a writable --output-dir") from None
    return dest


def _draw_events(ax: Any, events: Sequence[Event], lanes: list[str], duration: float, px_per_s: float) -> None:
    """One lane per event label; each event a bar at least 2 px wide, its label written in when it fits."""
    if not events:
        ax.text(0.5, 0.5, "no events", transform=ax.transAxes, ha="center", va="center", color="0.4")
        return
    colours = [f"C{i % 10}" for i in range(len(lanes))]
    min_width = 2.0 / px_per_s
    by_lane: dict[str, list[tuple[float, float]]] = {x: [] for x in lanes}
    for e in events:
        end = duration if e.end is None else e.end
        by_lane[e.label].append((e.start, max(end - e.start, min_width)))
        if (end - e.start) * px_per_s > 7 * len(e.label) + 12:
            ax.text(e.start + 3 / px_per_s, lanes.index(e.label), e.label, va="center", ha="left", fontsize="small",
                    color="white", clip_on=True)
    for i, lane in enumerate(lanes):
        ax.broken_barh(by_lane[lane], (i - 0.4, 0.8), facecolors=colours[i], edgecolor="none")
    ax.grid(axis="x", alpha=0.3)


def output_path(npz: str | os.PathLike, output_dir: str | os.PathLike | None, fmt: str) -> Path:
    """<output-dir>/<stem>.<fmt>, beside the npz when no output dir is given."""
    npz = Path(npz)
    return (Path(output_dir) if output_dir else npz.parent) / f"{prefix_of(npz).name}.{fmt}"


def plot_result(npz: str | os.PathLike, options: PlotOptions, output_dir: str | os.PathLike | None = None,
                audio: str | os.PathLike | None = None, events: str | None = None,
                find_audio: bool = True) -> Path:
    """Draw the result file `npz`. `audio` defaults to PREFIX.wav beside it, else to the file the result was tagged
    from (its `source`) when it is still there — unless `find_audio` is off: a session that saved no audio must not
    pick up an older PREFIX.wav. `events`: see `load_events`."""
    require_matplotlib()
    result = load_result(npz)
    found = load_events(events, result, npz, options.smooth_size)
    if audio is None and find_audio:
        audio = audio_beside(npz) or (Path(result.source) if result.source and os.path.isfile(result.source) else None)
    return draw(result, output_path(npz, output_dir, options.fmt), options, audio=audio, events=found,
                name=Path(npz).name)
