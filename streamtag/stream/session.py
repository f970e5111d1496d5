"""One live or replay session, start to finish: sinks, pipeline, screen, signals, the final flush and the summary.

The order matters and lives here so `live` and `replay` share it: everything that can fail on a user's input (label
names, output paths, the device, the file, the model) fails before audio starts; the model is warmed up before the
source starts so the first window is not skipped; Ctrl-C, SIGTERM and SIGHUP (the terminal closed) only set a flag,
so the recording is always completed; a source that dies (device unplugged) ends the session with what was recorded
kept and a non-zero exit. A session that scored no window writes no result (there would be nothing to parse) and
says so; audio it captured is kept.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from rich.console import Console

from streamtag.errors import StreamtagError
from streamtag.events.model import EventListener
from streamtag.stream.pipeline import Pipeline, PipelineState
from streamtag.stream.recorder import FLUSH_SECONDS, JsonLines, Recorder, WavRecorder


@dataclass
class StreamOptions:
    """The options `live` and `replay` share (names as the CLI's)."""

    sample_duration: float = 2.0
    hop_duration: float = 0.3
    top_k: int = 10
    smooth: bool = True
    smooth_size: int = 5
    duration: float | None = None
    record: str | None = None
    save_audio: str | None = None
    dashboard: bool = True
    json: bool = False
    mask: np.ndarray | None = None
    plot: Any = None  # plot.PlotOptions: draw PREFIX.png from the recording at the end
    rules: list[Any] | None = None  # events.rules.Rule, parsed from --events before any device is opened
    events_db: str | None = None    # None: $STREAMTAG_HOME/events.sqlite
    clips: str | None = None
    pre_roll: float = 2.0
    post_roll: float = 1.0
    clip_max: float = 60.0


@dataclass
class Summary:
    audio_seconds: float
    wall_seconds: float
    hops: int
    skipped: int
    overflows: int
    overruns: int
    mean_ms: float | None
    outputs: list[Path] = field(default_factory=list)
    stopped_by: str = ""
    notes: list[str] = field(default_factory=list)  # more lines: events, log, clips

    def lines(self) -> list[str]:
        """What is printed at the end: the counts, then the outputs (each line fits 80 columns when paths are short)."""
        how = f" (stopped by {self.stopped_by})" if self.stopped_by else ""
        mean = "" if self.mean_ms is None else f" · {self.mean_ms:.1f} ms/hop"
        overruns = f" · {self.overruns} overruns" if self.overruns else ""
        lines = [f"{self.audio_seconds:.1f} s of audio in {self.wall_seconds:.1f} s{how} · {self.hops} hops · "
                 f"{self.skipped} skipped · {self.overflows} overflows{overruns}{mean}"]
        if self.outputs:
            lines.append(f"wrote {', '.join(map(str, self.outputs))}")
        return lines + self.notes


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[list[str]]:
    """While inside, SIGINT/SIGTERM/SIGHUP set `stop` (and record which) instead of killing the process mid-write."""
    caught: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum: int, frame: Any) -> None:
        caught.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_session(source: Any, scorer: Any, labels: Sequence[str], options: StreamOptions, title: str,
                console: Console | None = None, listeners: Sequence[EventListener] = (),
                notifier: Any = None) -> Summary:
    """Score `source` with `scorer` until it ends, `options.duration` passes, or a signal; returns the summary.

    With `options.rules` the events detector runs as a sink; `listeners` are more `EventListener`s for it (added
    after the built-in clip writer, log and JSON outputs, so they see `Event.clip`): the one place a new event
    output plugs in. `notifier` (notify.Notifier, started by the caller) is one of them that also has a dashboard
    line and summary lines; it is closed, with its deadline, when the detector finishes. Prints the summary to stderr. Raises StreamtagError (after completing every output) if the
    source died.
    """
    from streamtag.dashboard import Dashboard, DashboardView, EventBoard
    from streamtag.tagging import window_sizes

    smooth_size = options.smooth_size if options.smooth else None
    recorder = wav = events = None
    board = EventBoard() if options.rules and options.dashboard else None
    try:
        wav = WavRecorder(options.save_audio) if options.save_audio else None
        if options.record:
            recorder = Recorder(options.record, labels, scorer.arch, source.sample_rate, options.sample_duration,
                                options.hop_duration, options.top_k, smooth_size=smooth_size, source=source.name,
                                wall_clock=lambda: getattr(source, "wall_clock", None), audio=options.save_audio)
        sinks: list[Any] = [recorder] if recorder is not None else []
        if options.json:
            sinks.append(JsonLines(labels, options.top_k, options.mask, smoothed=options.smooth))
        if options.rules:
            from streamtag.events.live import SessionEvents

            window, hop = window_sizes(options.sample_duration, options.hop_duration)
            events = SessionEvents(options.rules, labels, window, hop, source, scorer.arch, options.smooth,
                                   db=options.events_db, clips=options.clips, pre_roll=options.pre_roll,
                                   post_roll=options.post_roll, clip_max=options.clip_max, record=options.record,
                                   json=options.json, listeners=[*([board] if board else []), *listeners,
                                                                 *([notifier] if notifier else [])])
            sinks.append(events)  # after JsonLines: a hop's object comes before the events it started or ended
        audio_sinks = [wav] if wav else []
        pipeline = Pipeline(source, scorer, options.sample_duration, options.hop_duration, smooth_size, sinks=sinks,
                            audio_sinks=audio_sinks, limit_seconds=options.duration,
                            keep_seconds=clip_seconds(options))
        scorer.score(np.zeros((1, pipeline.window), dtype=np.float32))  # warm-up: oneDNN primitives, allocations
    except BaseException:
        if wav is not None:
            wav.discard()
        if recorder is not None:  # (not `if recorder`: an empty Recorder is falsy)
            recorder.discard()
        if events is not None:
            events.abort()
        raise

    stop = threading.Event()
    view = DashboardView(title=title, engine=scorer.describe(), hop_duration=options.hop_duration,
                         top_k=options.top_k, labels=tuple(labels), mask=options.mask, smoothed=options.smooth)
    console = console or Console(stderr=options.json)
    screen = Dashboard(view, lambda: pipeline.state, console, board=board,
                       notify=notifier.dashboard_line if notifier else None) if options.dashboard \
        else contextlib.nullcontext()
    started = time.monotonic()
    with stop_on_signals(stop) as caught:
        try:
            source.start()
            pipeline.start()
            with screen:
                flushed = time.monotonic()
                while pipeline.running and not stop.is_set():
                    pipeline.join(timeout=0.1)
                    if recorder is not None and time.monotonic() - flushed >= FLUSH_SECONDS:
                        recorder.flush(pipeline.state.audio_seconds)  # appends only the windows since the last
                        flushed = time.monotonic()
                    if events is not None:
                        events.flush()
                pipeline.stop()
                pipeline.join()
        finally:
            # The inference thread ends before the source closes (it may be reading the stream), and the wav is
            # closed even if the last flush of the recording fails (disk full), so no temp file is left open.
            pipeline.stop()
            pipeline.join(timeout=10)
            source.stop()
            state: PipelineState = pipeline.state
            outputs: list[Path] = []
            try:
                if events is not None:  # active events end with the stream; clips and the log are completed
                    events.finish(state.audio_seconds)
                if recorder is not None:
                    outputs += recorder.finish(state.audio_seconds)
            finally:
                if wav and wav.close() is not None:
                    outputs.append(wav.path)
    if options.plot is not None and recorder is not None and len(recorder) and pipeline.exception is None:
        from streamtag.plot import plot_result

        outputs.append(plot_result(recorder.npz_path, options.plot, audio=wav.path if wav else None,
                                   find_audio=False))
    summary = Summary(audio_seconds=state.audio_seconds, wall_seconds=time.monotonic() - started, hops=state.hops,
                      skipped=state.skipped, overflows=state.overflows, overruns=state.overruns,
                      mean_ms=state.mean_ms, outputs=outputs, stopped_by=caught[0] if caught else "",
                      notes=(events.summary() if events is not None else []) +
                      (notifier.summary_lines() if notifier else []))
    for line in summary.lines():
        print(f"streamtag: {line}", file=sys.stderr, flush=True)
    if recorder is not None and state.hops == 0:
        print(f"streamtag: no window was scored ({state.audio_seconds:.1f} s of audio, a window is "
              f"{options.sample_duration:g} s), so no {recorder.npz_path} or {recorder.txt_path} was written",
              file=sys.stderr, flush=True)
    if pipeline.exception is not None:
        raise pipeline.exception
    source_exception = getattr(source, "exception", None)
    if source_exception is not None:
        raise source_exception
    if source.error:
        kept = f"; kept what was recorded ({', '.join(map(str, outputs))})" if outputs else ""
        raise StreamtagError(f"{source.error}{kept}")
    return summary


def stream_options(ns: Any, labels: Sequence[str]) -> StreamOptions:
    """StreamOptions from parsed `live`/`replay` options; checks --only/--ignore label names up front."""
    from streamtag.dashboard import label_mask

    if ns.duration is not None and ns.duration < ns.sample_duration:
        raise StreamtagError(f"--duration {ns.duration:g} is shorter than one window (--sample-duration "
                             f"{ns.sample_duration:g}), so no window would be scored; give a longer --duration",
                             exit_code=2)
    plot = None
    if ns.plot:
        if not ns.record:
            raise StreamtagError("--plot draws the recording: add --record PREFIX (and --save-audio PREFIX.wav for "
                                 "a spectrogram)")
        from streamtag.config import command_defaults
        from streamtag.plot import options_from, require_matplotlib

        require_matplotlib()
        plot = options_from(command_defaults("plot"))
    rules = None
    if ns.events:
        from streamtag.events.rules import load_rules

        rules = load_rules(ns.events, labels)
    elif ns.clips:
        raise StreamtagError("--clips saves the audio of events: give --events too (rules or labels)")
    return StreamOptions(sample_duration=ns.sample_duration, hop_duration=ns.hop_duration, top_k=ns.top_k,
                         smooth=bool(ns.smooth), smooth_size=ns.smooth_size, duration=ns.duration, record=ns.record,
                         save_audio=ns.save_audio, dashboard=bool(ns.dashboard), json=bool(ns.json),
                         mask=label_mask(labels, ns.only, ns.ignore), rules=rules, events_db=ns.events_db,
                         clips=ns.clips, pre_roll=ns.pre_roll, post_roll=ns.post_roll, clip_max=ns.clip_max,
                         plot=plot)


def clip_seconds(options: StreamOptions) -> float:
    """How much older audio clips may ask the ring for: the pre-roll, plus the longest min_duration (an event is
    announced, and its clip opened, only once it is that long)."""
    if not options.clips or not options.rules:
        return 0.0
    return options.pre_roll + max(r.min_duration + r.hold for r in options.rules)
