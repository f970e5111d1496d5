"""Command line: argparse, config defaults, one function per command.

Every command takes its defaults from `configs/<command>.yaml` (see config.py). A StreamtagError becomes one line on
stderr and its exit code; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Iterator, Sequence

from streamtag import __version__
from streamtag.config import as_dests, command_defaults, read_yaml
from streamtag.errors import StreamtagError

ARCHS = ("cnn14", "cnn10", "cnn6")
FORMATS = ("table", "jsonl", "csv")  # events output formats (events/output.py)


def _number(text: str, cast: type) -> float | int:
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'number' if cast is float else 'whole number'}") \
            from None


def _positive(text: str, unit: str, limit: float) -> float:
    value = _number(text, float)
    if not 0 < value <= limit:  # also refuses NaN and inf
        raise argparse.ArgumentTypeError(f"must be a positive number of {unit} up to {limit:g}, got {text}")
    return value


# Bounds keep a typo from asking for terabytes or centuries: a window is scored whole (60 s of CNN14 activations
# is about 1 GB per batch item), a hop past an hour never makes sense, and a session cap past 115 days overflows
# nothing but is surely a mistake.
MAX_WINDOW_SECONDS = 60.0
MAX_HOP_SECONDS = 3600.0
MAX_DURATION_SECONDS = 1e7
MAX_SPEED = 1000.0
MAX_BATCH = 256


def positive_float(text: str) -> float:
    """Seconds for --duration."""
    return _positive(text, "seconds", MAX_DURATION_SECONDS)


def window_seconds(text: str) -> float:
    return _positive(text, "seconds", MAX_WINDOW_SECONDS)


def hop_seconds(text: str) -> float:
    return _positive(text, "seconds", MAX_HOP_SECONDS)


def speed(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= MAX_SPEED:
        raise argparse.ArgumentTypeError(f"must be a pace above 0 and up to {MAX_SPEED:g} (× real time), got {text}; "
                                         "--fast replays as fast as the model goes")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def batch_size(text: str) -> int | str:
    """`auto` or a whole number from 1 to MAX_BATCH."""
    if str(text) == "auto":
        return "auto"
    value = positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_BATCH} windows, got {text}")
    return value


def thread_count(text: str) -> int:
    """CPU threads, at most 4× the cores this process may use: OpenMP aborts the process on absurd counts."""
    value = positive_int(text)
    limit = 4 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    if value > limit:
        raise argparse.ArgumentTypeError(f"must be at most {limit} (4× this machine's usable cores), got {text}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to look), not the whole usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def pixels(text: str) -> int:
    value = positive_int(text)
    if not 300 <= value <= 20000:
        raise argparse.ArgumentTypeError(f"must be 300 to 20000 pixels, got {text}")
    return value


def dots_per_inch(text: str) -> int:
    value = positive_int(text)
    if not 20 <= value <= 1200:
        raise argparse.ArgumentTypeError(f"must be 20 to 1200, got {text}")
    return value


# ---------------------------------------------------------------------------------------------- option groups
def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=ARCHS, help="PANNs architecture (default: %(default)s)")
    g.add_argument("--weights", metavar="PATH", help="a .pdparams or .pth checkpoint; bypasses the registry")
    g.add_argument("--device", choices=("auto", "cpu", "gpu"),
                   help="auto = GPU when Paddle has CUDA and a GPU is visible (default: %(default)s)")
    g.add_argument("--engine", choices=("inference", "eager"),
                   help="inference = Paddle Inference (oneDNN on CPU, GPU predictor); eager = plain Paddle "
                        "(default: %(default)s)")
    g.add_argument("--threads", type=thread_count, metavar="N", help="CPU threads (default: the machine's cores)")
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16"),
                   help="fp16 on GPU only; bf16 on GPUs and on CPUs with AMX/AVX512-BF16: faster, scores differ "
                        "by ~1e-2 (default: %(default)s)")


def add_window_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("windows")
    g.add_argument("--sample-duration", type=window_seconds, metavar="S",
                   help="window length in seconds (default: %(default)s)")
    g.add_argument("--hop-duration", type=hop_seconds, metavar="S",
                   help="seconds between window starts (default: %(default)s)")


def add_smoothing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-k", type=positive_int, metavar="K", help="labels shown per step (default: %(default)s)")
    p.add_argument("--smooth", action=argparse.BooleanOptionalAction,
                   help="causal moving average of past posteriors (default: %(default)s)")
    p.add_argument("--smooth-size", type=positive_int, metavar="N",
                   help="steps in the moving average (default: %(default)s)")


def add_stream_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    add_window_options(p)
    add_smoothing_options(p)
    p.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    p.add_argument("--record", metavar="PREFIX", help="write PREFIX.npz (raw scores) and PREFIX.txt (smoothed top-k)")
    p.add_argument("--save-audio", metavar="FILE.wav", help="save the audio that was scored")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction,
                   help="at the end, draw the recording into PREFIX.png as `streamtag plot` does (needs --record)")
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction,
                   help="live top-k table in the terminal (default: %(default)s)")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, help="one JSON object per hop on stdout")
    p.add_argument("--only", metavar="LABEL,...", help="show only these labels")
    p.add_argument("--ignore", metavar="LABEL,...", help="never show these labels")
    g = p.add_argument_group("events (docs/events.md)")
    g.add_argument("--events", metavar="SPEC", help="detect sound events: a YAML rules file or comma-separated "
                                                    "AudioSet labels/ontology nodes")
    g.add_argument("--events-db", metavar="PATH", help="the SQLite event log (default: $STREAMTAG_HOME/events.sqlite)")
    g.add_argument("--clips", metavar="DIR", help="save each event's audio as a 32 kHz WAV in DIR")
    g.add_argument("--pre-roll", type=non_negative_float, metavar="S",
                   help="seconds of audio before the onset in a clip (default: %(default)s)")
    g.add_argument("--post-roll", type=non_negative_float, metavar="S",
                   help="seconds of audio after the offset in a clip (default: %(default)s)")
    g.add_argument("--clip-max", type=positive_float, metavar="S", help="longest clip, seconds (default: %(default)s)")


def add_notify_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("notifications of events (need --events; docs/home-assistant.md)")
    g.add_argument("--mqtt", metavar="URL", help="publish to an MQTT broker: mqtt://[user@]host[:port][/prefix] or "
                                                 "mqtts://... (password: $STREAMTAG_MQTT_PASSWORD or "
                                                 "--mqtt-password-file)")
    g.add_argument("--mqtt-ca", metavar="FILE", help="CA certificate (PEM) that signed an mqtts:// broker's")
    g.add_argument("--mqtt-password-file", metavar="FILE", help="file whose first line is the broker password")
    g.add_argument("--mqtt-discovery", action=argparse.BooleanOptionalAction,
                   help="announce a sensor per rule to Home Assistant (default: %(default)s)")
    g.add_argument("--mqtt-discovery-prefix", metavar="PREFIX",
                   help="Home Assistant's discovery prefix (default: %(default)s)")
    g.add_argument("--node", metavar="NAME", help="this tagger's name in topics and messages (default: the host name)")
    g.add_argument("--webhook", metavar="URL", action="append",
                   help="POST each event start and end as JSON to URL (repeatable)")
    g.add_argument("--on-event", metavar="CMD",
                   help="run CMD (no shell) per event start and end: JSON on stdin, STREAMTAG_EVENT_* variables")


# ---------------------------------------------------------------------------------------------- commands
def cmd_tag(args: argparse.Namespace) -> int:
    """Tag audio files, folders (--recursive) and --from-list files into <output-dir> (see corpus.py).

    Every file's header is checked before the model loads, so a typo fails in a moment; a bad file is reported on
    one line and the others are still tagged; results already complete with the same model, weights and options
    are skipped (--overwrite redoes them); the exit code is 1 if any file failed.
    """
    import signal

    from streamtag import corpus
    from streamtag.checkpoints import locate_weights
    from streamtag.paths import OutputPlan, check_output_dir
    from streamtag.tagging import realtime_factor, window_sizes

    window_sizes(args.sample_duration, args.hop_duration)  # a bad duration fails before any file or model
    if args.ray is not None:
        from streamtag.cluster import check_address, import_ray

        check_address(args.ray)
        import_ray()
    elif args.ray_workers is not None:
        raise StreamtagError("--ray-workers needs --ray (e.g. --ray local, or --ray HOST:PORT)", exit_code=2)
    if not args.files and args.from_list is None:
        raise StreamtagError("no input: give audio files or folders, or --from-list FILE", exit_code=2)
    sources, errors = corpus.collect_sources(args.files, args.recursive, args.from_list)
    plot_options = None
    if args.plot:
        from streamtag.plot import options_from, plot_result, require_matplotlib

        require_matplotlib()  # before hours of tagging, not after
        plot_options = options_from(command_defaults("plot"))
    out_dir = check_output_dir(args.output_dir, "--output-dir")  # created by the first result, not before
    weights = locate_weights(args.model, args.weights)
    options = corpus.TagOptions(args.model, weights.sha256, args.sample_duration, args.hop_duration, args.pad,
                                args.precision, args.embeddings)
    guard = OutputPlan([*(s.path for s in sources), args.weights, args.config, args.from_list])
    plan = corpus.plan_jobs(sources, out_dir, options, overwrite=args.overwrite, guard=guard)
    errors += plan.errors
    for message in errors:
        print(f"streamtag: error: {message}", file=sys.stderr)
    if plan.done:
        print(f"streamtag: {len(plan.done)} file(s) already tagged with these options, skipped "
              "(--overwrite redoes them)", file=sys.stderr)
    failures = len(errors)
    # SIGTERM (a scheduler, `kill`) stops like Ctrl-C: the file being written is removed, finished ones stay.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if plan.todo:
        from streamtag.progress import CorpusProgress

        if args.ray is None:
            from streamtag.engine import load_scorer
            from streamtag.tuning import resolve_batch_size

            scorer = load_scorer(args.model, args.weights, args.device, args.engine, args.threads, args.precision)
            batch_size = resolve_batch_size(args.batch_size, scorer, args.sample_duration)
        with CorpusProgress(len(plan.todo), plan.seconds) as bar:
            if args.ray is None:
                outcomes = corpus.run_jobs(plan.todo, scorer, batch_size, lambda job, s: bar.advance(s))
            else:
                outcomes = _tag_on_ray(args, plan.todo, weights, bar.advance)
            for outcome in outcomes:
                bar.finished(outcome.ok)
                try:
                    if not outcome.ok:
                        raise StreamtagError(outcome.error)
                    picture = ""
                    if plot_options is not None:
                        picture = f", {plot_result(outcome.job.output, plot_options, audio=outcome.job.input)}"
                    print(f"{outcome.job.input}: {outcome.duration:.1f} s, {outcome.windows} windows in "
                          f"{outcome.seconds:.1f} s ({realtime_factor(outcome.duration, outcome.seconds):.1f}× "
                          f"real time) → {outcome.job.output}{picture}", flush=True)
                except StreamtagError as e:
                    print(f"streamtag: error: {e}", file=sys.stderr, flush=True)
                    failures += 1
    return 1 if failures else 0


def _tag_on_ray(args: argparse.Namespace, jobs: list, weights: Any, advance: Callable[[float], None]) -> Iterator:
    """`tag --ray`: the planned jobs on a Ray cluster (streamtag.cluster); yields their Outcomes as `run_jobs` does.

    Workers report whole files, so the progress bar moves by a file's audio when it is done."""
    from streamtag.checkpoints import read_checkpoint
    from streamtag.cluster import WorkerSpec, run_on_ray

    spec = WorkerSpec(args.model, weights.sha256, args.engine, threads=args.threads, precision=args.precision,
                      batch_size=args.batch_size)
    state = read_checkpoint(weights.path, args.model)
    for outcome in run_on_ray(jobs, state, spec, args.ray, args.device, args.ray_workers, args.output_dir,
                              say=lambda text: print(f"streamtag: {text}", file=sys.stderr, flush=True)):
        if outcome.ok:
            advance(outcome.duration)
        yield outcome


def cmd_parse(args: argparse.Namespace) -> int:
    """Turn tagging .npz files into top-k text (issue: result parsing); same error policy as `tag`."""
    from pathlib import Path

    from streamtag.labels import audioset_labels, load_labels
    from streamtag.paths import OutputPlan, check_output_dir
    from streamtag.results import get_writer, load_result

    out_dir = check_output_dir(args.output_dir, "--output-dir")  # created by the first result, not before
    label_file = load_labels(args.label_file) if args.label_file else None
    writer = get_writer(args.format)
    plan = OutputPlan([*args.files, args.label_file, args.config])
    smooth_size = args.smooth_size if args.smooth else None
    failures = 0
    for name in args.files:
        try:
            dest = plan.add(out_dir / f"{Path(name).stem}.{writer.ext}", "--output-dir")
            result = load_result(name)
            labels = label_file or result.labels or list(audioset_labels())
            source = args.label_file or ("the labels stored in it" if result.labels else "the AudioSet labels")
            if len(labels) != result.scores.shape[1]:
                raise StreamtagError(f"{name}: {result.scores.shape[1]} scores per step but {source} has "
                                     f"{len(labels)} labels; pass a --label-file with one label per model output")
            result.labels = labels
            dest = writer.write(result, dest, top_k=args.top_k, smooth_size=smooth_size, time_format=args.time_format)
            how = f"smoothed over {smooth_size} steps" if smooth_size else "raw scores"
            print(f"{name}: {len(result.time)} steps, top {args.top_k}, {how} → {dest}", flush=True)
        except StreamtagError as e:
            print(f"streamtag: error: {e}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw result files into <output-dir>/<stem>.png (issue: pictures); same error policy as `parse`."""
    from streamtag.plot import options_from, plot_result, require_matplotlib

    require_matplotlib()
    if args.audio and len(args.files) > 1:
        raise StreamtagError("--audio is the audio of one result; plot one NPZ at a time with it")
    options = options_from(vars(args))
    failures = 0
    for name in args.files:
        try:
            dest = plot_result(name, options, output_dir=args.output_dir, audio=args.audio, events=args.events)
            print(f"{name} → {dest}", flush=True)
        except StreamtagError as e:
            print(f"streamtag: error: {e}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def start_notifier(args: argparse.Namespace, options: Any) -> Any:
    """The started notify.Notifier for --mqtt/--webhook/--on-event (None without them), built before the device
    and the model so that a bad URL or refused credentials fail first (exit 2)."""
    from streamtag.notify import NotifySettings, build_notifier

    settings = NotifySettings.from_args(args)
    if settings.wanted and not options.rules:
        raise StreamtagError("--mqtt, --webhook and --on-event notify about events: give --events too (a rules "
                             "file or labels; docs/events.md)", 2)
    return build_notifier(settings, options.rules or [], model=args.model)


def check_stream_outputs(args: argparse.Namespace, inputs: list[str]) -> None:
    """Every file a live/replay session will write, checked before the device, the file or the model is opened:
    a `--save-audio` or `--record` path that cannot be written, or that would overwrite an input or another output
    (`--save-audio rec.npz --record rec`), fails now, not after the session when the audio is gone."""
    from streamtag.paths import OutputPlan
    from streamtag.stream.recorder import record_paths

    plan = OutputPlan([*inputs, args.weights, args.config])
    if args.record:
        for path in record_paths(args.record):
            plan.add(path, "--record")
    if args.save_audio:
        plan.add(args.save_audio, "--save-audio", suffix=".wav")


def cmd_live(args: argparse.Namespace) -> int:
    """Tag the microphone live: capture → ring buffer → inference thread → dashboard / recording."""
    from streamtag.engine import load_scorer
    from streamtag.labels import audioset_labels
    from streamtag.stream.session import clip_seconds, run_session, stream_options
    from streamtag.stream.sources import MicSource, ring_seconds

    labels = audioset_labels()
    options = stream_options(args, labels)  # label names are checked before the device is touched
    check_stream_outputs(args, inputs=[])
    notifier = start_notifier(args, options)
    try:
        source = MicSource(args.input_device, ring_seconds(args.sample_duration, args.hop_duration,
                                                           clip_seconds(options)))
        scorer = load_scorer(args.model, args.weights, args.device, args.engine, args.threads, args.precision)
        run_session(source, scorer, labels, options, title=f"live · {source.name}", notifier=notifier)
    finally:
        if notifier is not None:  # already closed by the session, unless start-up failed before it
            notifier.close(1.0)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a file through the live path, paced at --speed x real time or --fast (no hop dropped)."""
    from streamtag.engine import load_scorer
    from streamtag.labels import audioset_labels
    from streamtag.stream.session import clip_seconds, run_session, stream_options
    from streamtag.stream.sources import FileSource, ring_seconds

    labels = audioset_labels()
    options = stream_options(args, labels)
    check_stream_outputs(args, inputs=[args.file])
    source = FileSource(args.file, speed=args.speed, fast=args.fast, limit_seconds=args.duration,
                        ring_seconds=ring_seconds(args.sample_duration, args.hop_duration, clip_seconds(options)))
    seconds = source.reader.frames / source.reader.sample_rate
    if seconds < args.sample_duration:
        raise StreamtagError(f"{args.file}: {seconds:.2f} s of audio is shorter than one window (--sample-duration "
                             f"{args.sample_duration:g}), so a replay would score nothing; use `streamtag tag` (it "
                             "pads a short file to one window) or a shorter --sample-duration")
    notifier = start_notifier(args, options)
    try:
        scorer = load_scorer(args.model, args.weights, args.device, args.engine, args.threads, args.precision)
        pace = "fast" if args.fast else f"×{args.speed:g}"
        run_session(source, scorer, labels, options, title=f"replay · {os.path.basename(args.file)} · {pace}",
                    notifier=notifier)
    finally:
        if notifier is not None:
            notifier.close(1.0)
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    """Finish what a killed `--record`/`--save-audio` session left (`.part` files): PREFIX.npz, PREFIX.txt, the WAV."""
    from streamtag.recording import recover

    failures = 0
    for target in args.targets:
        try:
            for line in recover(target):
                print(line, flush=True)
        except StreamtagError as e:
            print(f"streamtag: error: {e}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def cmd_labels(args: argparse.Namespace) -> int:
    """List AudioSet classes and ontology nodes matching QUERY, with the classes a node stands for in rules."""
    from streamtag.events.rules import describe_labels

    rows = describe_labels(args.query)
    if not rows:
        raise StreamtagError(f"no class or ontology node contains {args.query!r}; try a shorter QUERY")
    for name, kind, classes in rows:
        if kind == "class" and classes == [name]:
            print(f"{name}  (class)")
        else:
            what = f"{kind}, {len(classes)} classes" if kind == "node" else f"class + {len(classes) - 1} below"
            print(f"{name}  ({what}): {'; '.join(classes)}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """Sound events: detect them in a results file, or list/show the event log."""
    from streamtag.events.output import format_events

    if args.events_command == "detect":
        import math

        from streamtag.events.detector import detect
        from streamtag.events.rules import load_rules
        from streamtag.results import load_result

        result = load_result(args.file)
        if not (math.isfinite(result.sample_duration) and math.isfinite(result.hop_duration)):
            raise StreamtagError(f"{args.file}: no window/hop durations stored (a seed npz?); tag the audio again "
                                 "with `streamtag tag` to detect events in it")
        rules = load_rules(args.events, result.labels or None)
        if not result.labels:
            from streamtag.labels import audioset_labels

            result.labels = list(audioset_labels())
        if len(result.labels) != result.scores.shape[1]:
            raise StreamtagError(f"{args.file}: {result.scores.shape[1]} scores per step but {len(result.labels)} "
                                 "labels; events need a result of the 527 AudioSet classes")
        if result.level is None and any(r.min_level > -120 for r in rules):
            print(f"streamtag: note: {args.file} has no `level` array (written before levels were stored); "
                  "min_level is not applied", file=sys.stderr)
        events = detect(result, rules, args.smooth_size if args.smooth else None)
        sys.stdout.write(format_events(events, args.format))
        return 0
    from streamtag.events import store

    db = store.EventStore.open_for_reading(args.db)
    try:
        if args.events_command == "show":
            event = db.get(args.id)
            if event is None:
                raise StreamtagError(f"no event {args.id!r} in {db.path}; see `streamtag events list`")
            if args.format == "table":  # one event: every field on its own line
                import json

                print(json.dumps(event.to_dict(), indent=1, ensure_ascii=False))
            else:
                sys.stdout.write(format_events([event], args.format))
            return 0
        events = db.query(label=args.label, since=store.parse_since(args.since) if args.since else None,
                          source=args.source, min_peak=args.min_peak, limit=args.limit)
        sys.stdout.write(format_events(events, args.format))
    finally:
        db.close()
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    """List input devices: index, name, channels, default rate (* = the default input)."""
    from streamtag.stream.sources import input_devices

    devices = input_devices()
    if not devices:
        raise StreamtagError("no audio input device found (PortAudio sees none); connect a microphone, or start "
                             "PulseAudio/PipeWire")
    width = max(len(d["name"]) for d in devices)
    print(f"  {'index':>5}  {'name':<{width}}  {'channels':>8}  {'rate':>7}  host API")
    for d in devices:
        mark = "*" if d["default"] else " "
        print(f"{mark} {d['index']:>5}  {d['name']:<{width}}  {d['channels']:>8}  {d['rate']:>7.0f}  {d['hostapi']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmark the inference engine against eager Paddle: a table on stdout, or one JSON document (--json)."""
    import json

    from rich.console import Console

    from streamtag.bench import render, run_bench

    models = [m.strip() for m in str(args.models).split(",") if m.strip()]
    unknown = [m for m in models if m not in ARCHS]
    if unknown or not models:
        raise StreamtagError(f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; "
                             f"give a comma-separated subset of {','.join(ARCHS)}")
    err = Console(stderr=True)
    with err.status("bench: starting") as status:
        report = run_bench(models, args.device, args.threads, args.precision, args.sample_duration,
                           args.hop_duration, args.repeats, eager=args.eager, startup=args.startup,
                           batch_sizes=_batch_sizes(args.batch_sizes),
                           say=lambda text: status.update(f"bench: {text}"),
                           note=lambda text: err.print(f"streamtag: {text}", highlight=False))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        Console().print(render(report))
    return 0


def _batch_sizes(text: str | None) -> list[int]:
    """`--batch-sizes 1,2,4,8` → [1, 2, 4, 8]; none or empty → []."""
    try:
        sizes = [int(x) for x in str(text or "").split(",") if x.strip()]
    except ValueError:
        sizes = [0]
    if any(size < 1 for size in sizes):
        raise StreamtagError(f"--batch-sizes {text}: give whole numbers ≥ 1 separated by commas, e.g. 1,2,4,8")
    return sizes


def cmd_weights(args: argparse.Namespace) -> int:
    """Manage pretrained checkpoints: list, fetch, import."""
    from rich.console import Console
    from rich.table import Table

    from streamtag import checkpoints

    console = Console()
    if args.weights_command == "list":
        table = Table(title=f"checkpoints (cache: {checkpoints.weights_dir()})")
        for column in ("name", "arch", "source", "size", "default", "cached"):
            table.add_column(column, justify="right" if column == "size" else "left")
        for entry in checkpoints.REGISTRY.values():
            size = f"{entry.size / 1e6:.1f} MB" if entry.size else "?"
            default = "yes" if checkpoints.default_checkpoint(entry.arch) is entry else ""
            cached = "yes" if checkpoints.is_cached(entry) else "no"
            table.add_row(entry.name, entry.arch, entry.source, size, default, cached)
        console.print(table)
    elif args.weights_command == "fetch":
        entry = checkpoints.find_checkpoint(args.name)
        path = checkpoints.ensure_cached(entry)
        console.print(str(path), highlight=False, soft_wrap=True)
    else:
        entry, path = checkpoints.import_checkpoint(args.path, args.model)
        console.print(f"imported {args.path} as {entry.name}: {path}", highlight=False, soft_wrap=True)
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _subcommand(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str,
                configured: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(func=func, command=name)
    if configured:
        p.add_argument("--config", metavar="FILE.yaml",
                       help=f"YAML of option defaults layered over configs/{name}.yaml")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="streamtag", description="Real-time audio tagging with PANNs.")
    parser.add_argument("--version", action="version", version=f"streamtag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subcommand(sub, "tag", cmd_tag, "tag audio files and folders: one .npz of window scores per file")
    p.add_argument("files", nargs="*", metavar="PATH", help="audio files, and folders of them")
    p.add_argument("--recursive", action=argparse.BooleanOptionalAction,
                   help="also tag the audio files in subfolders of the folders given")
    p.add_argument("--from-list", metavar="FILE", help="also tag the paths listed in FILE, one per line (- = stdin)")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction,
                   help="redo files whose result is already complete with the same model, weights and options")
    p.add_argument("--embeddings", action=argparse.BooleanOptionalAction,
                   help="also store each window's embedding (2048 values for cnn14, 512 for cnn10/cnn6)")
    add_model_options(p)
    add_window_options(p)
    p.add_argument("--output-dir", metavar="DIR",
                   help="where .npz results go; files found in a folder keep their subfolders (default: %(default)s)")
    p.add_argument("--batch-size", type=batch_size, metavar="N|auto",
                   help="windows per model call; auto = the fastest measured here (default: %(default)s)")
    p.add_argument("--pad", action=argparse.BooleanOptionalAction,
                   help="zero-pad the last windows as the seed does; --no-pad keeps full windows only")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction,
                   help="also draw <output-dir>/<stem>.png, as `streamtag plot` does with configs/plot.yaml")
    g = p.add_argument_group("cluster (needs `pip install 'streamtag[ray]'`)")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="tag on Ray: `local` (the default when no address is given) starts Ray on this machine; "
                        "HOST:PORT, ray://HOST:PORT or auto joins a running cluster. --output-dir and the inputs "
                        "must be paths every worker can reach")
    g.add_argument("--ray-workers", type=positive_int, metavar="N",
                   help="Ray actors, each holding one model (default: one per GPU of the cluster, else one per "
                        "--threads CPUs)")

    p = _subcommand(sub, "parse", cmd_parse, "turn tagging .npz results into top-k text")
    p.add_argument("files", nargs="+", metavar="NPZ")
    add_smoothing_options(p)
    p.add_argument("--label-file", metavar="FILE", help="labels, one per line (default: shipped AudioSet labels)")
    p.add_argument("--output-dir", metavar="DIR", help="where results go (default: %(default)s)")
    p.add_argument("--time-format", choices=("seconds", "ratio"),
                   help="time line: window start in seconds, or t/T as the seed printed (default: %(default)s)")
    p.add_argument("--format", choices=("txt", "jsonl", "csv"), help="output format (default: %(default)s)")

    p = _subcommand(sub, "plot", cmd_plot, "draw results: spectrogram, top classes over time, events")
    p.add_argument("files", nargs="+", metavar="NPZ")
    p.add_argument("--audio", metavar="FILE",
                   help="draw the log-mel spectrogram of FILE on top (default: PREFIX.wav beside PREFIX.npz, else "
                        "the file a `tag` result came from, if either exists; otherwise the npz's level trace)")
    p.add_argument("--events", metavar="SPEC",
                   help="events drawn as spans: a .jsonl of events, or rules to detect them with (a YAML file or "
                        "comma-separated labels, as `events detect --events`); default: PREFIX.events.jsonl beside "
                        "the npz, if there is one")
    p.add_argument("--top", type=positive_int, metavar="N",
                   help="classes with the highest peak score shown (default: %(default)s)")
    p.add_argument("--smooth", action=argparse.BooleanOptionalAction,
                   help="smooth scores as `parse` does before ranking and drawing (default: %(default)s)")
    p.add_argument("--smooth-size", type=positive_int, metavar="N",
                   help="steps in the moving average (default: %(default)s)")
    p.add_argument("--time-axis", choices=("auto", "stream", "wall"),
                   help="x axis: seconds of stream, or the wall clock (live recordings); auto = wall when the "
                        "result has a start time (default: %(default)s)")
    p.add_argument("--format", choices=("png", "svg", "pdf"), help="image format (default: %(default)s)")
    p.add_argument("--output-dir", metavar="DIR", help="where pictures go (default: beside each npz)")
    p.add_argument("--width", type=pixels, metavar="PX", help="picture width in pixels (default: %(default)s)")
    p.add_argument("--height", type=pixels, metavar="PX", help="picture height in pixels (default: %(default)s)")
    p.add_argument("--dpi", type=dots_per_inch, metavar="N",
                   help="dots per inch: text size relative to the picture (default: %(default)s)")

    p = _subcommand(sub, "live", cmd_live, "tag the microphone live")
    p.add_argument("--input-device", metavar="DEV", help="index or name substring (see `streamtag devices`)")
    add_stream_options(p)
    add_notify_options(p)

    p = _subcommand(sub, "replay", cmd_replay, "replay an audio file through the live path")
    p.add_argument("file", metavar="FILE")
    add_stream_options(p)
    add_notify_options(p)
    p.add_argument("--speed", type=speed, metavar="X", help="pace, x real time (default: %(default)s)")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction,
                   help="as fast as inference goes, no hop dropped")

    p = _subcommand(sub, "recover", cmd_recover, "finish a recording whose session was killed (PREFIX.npz.part, "
                    "PREFIX.txt.part, FILE.wav.part)", configured=False)
    p.add_argument("targets", nargs="+", metavar="PREFIX", help="a --record PREFIX, or a FILE.wav.part")

    _subcommand(sub, "devices", cmd_devices, "list audio input devices", configured=False)

    p = _subcommand(sub, "labels", cmd_labels, "list AudioSet classes and ontology nodes (what a rule name covers)",
                    configured=False)
    p.add_argument("query", nargs="?", metavar="QUERY", help="only names containing QUERY (case-insensitive)")

    p = _subcommand(sub, "events", cmd_events, "sound events: detect in a results file, list or show the log",
                    configured=False)
    esub = p.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    ed = esub.add_parser("detect", help="run the event detector over a results .npz (as live would have)")
    ed.add_argument("file", metavar="RESULT.npz")
    ed.add_argument("--events", metavar="SPEC", required=True, help="rules: a YAML file or comma-separated labels")
    ed.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=True,
                    help="detect on smoothed scores, as live does by default (default: %(default)s)")
    ed.add_argument("--smooth-size", type=positive_int, metavar="N", default=5,
                    help="steps in the moving average, as the session used (default: %(default)s)")
    ed.add_argument("--format", choices=FORMATS, default="table", help="output format (default: %(default)s)")
    el = esub.add_parser("list", help="events from the log (newest last)")
    el.add_argument("--db", metavar="PATH", help="the event log (default: $STREAMTAG_HOME/events.sqlite)")
    el.add_argument("--label", metavar="L", help="only this rule's events")
    el.add_argument("--since", metavar="2h|ISO", help="only events since a time: 90s, 15m, 2h, 3d, or ISO 8601")
    el.add_argument("--source", metavar="S", help="only events whose source contains S")
    el.add_argument("--min-peak", type=float, metavar="X", help="only events with peak ≥ X")
    el.add_argument("--limit", type=positive_int, metavar="N", help="only the newest N")
    el.add_argument("--format", choices=FORMATS, default="table", help="output format (default: %(default)s)")
    es = esub.add_parser("show", help="one event, all fields")
    es.add_argument("id", metavar="ID")
    es.add_argument("--db", metavar="PATH", help="the event log (default: $STREAMTAG_HOME/events.sqlite)")
    es.add_argument("--format", choices=FORMATS, default="table", help="output format (default: JSON)")

    p = _subcommand(sub, "bench", cmd_bench, "benchmark the inference engine against eager Paddle")
    p.add_argument("--models", metavar="A,B", help="comma-separated archs (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"))
    p.add_argument("--threads", type=thread_count, metavar="N")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"))
    add_window_options(p)
    p.add_argument("--repeats", type=positive_int, metavar="N", help="timed calls per model (default: %(default)s)")
    p.add_argument("--eager", action=argparse.BooleanOptionalAction,
                   help="also time eager Paddle, for the speed-up column (default: %(default)s)")
    p.add_argument("--startup", action=argparse.BooleanOptionalAction,
                   help="time start to first score in fresh processes, cold and warm (default: %(default)s)")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, help="print JSON instead of a table")
    p.add_argument("--batch-sizes", metavar="A,B",
                   help="also time these batch sizes and record the fastest for `tag --batch-size auto`")

    p = _subcommand(sub, "weights", cmd_weights, "list, fetch or import pretrained checkpoints", configured=False)
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    wsub.add_parser("list", help="registry entries: name, source, size, cached?")
    wf = wsub.add_parser("fetch", help="download a registry entry into the cache")
    wf.add_argument("name")
    wi = wsub.add_parser("import", help="put a checkpoint fetched elsewhere into the cache (offline machines)")
    wi.add_argument("path")
    wi.add_argument("--model", choices=ARCHS, required=True)

    for name, subparser in sub.choices.items():
        subparser.set_defaults(**as_dests(command_defaults(name)))
    return parser


def _checked(path: str, subparser: argparse.ArgumentParser, values: dict[str, Any],
             shipped: dict[str, Any]) -> dict[str, Any]:
    """Config values through the same checks as the command line (argparse checks neither a default's type nor
    its choices), so `top-k: -1` in a file is the same one-line error as `--top-k -1`. A value must be one YAML
    scalar (`label-file: [a]` is refused, not passed on as a list), and `null` is only allowed where the shipped
    default is null (`top-k: null` would otherwise skip every check)."""
    actions = {a.dest: a for a in subparser._actions}  # noqa: SLF001
    checked = {}
    for dest, value in values.items():
        action, option = actions[dest], dest.replace("_", "-")
        if value is None:
            if shipped.get(dest) is not None:
                raise StreamtagError(f"{path}: {option}: null is not allowed here; give a value "
                                     f"(the default is {shipped[dest]!r})")
        elif isinstance(action, argparse._AppendAction):  # noqa: SLF001  a list key: each item checked
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise StreamtagError(f"{path}: {option}: give a list of strings, e.g. [{option.upper()}1, ...]")
        elif isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise StreamtagError(f"{path}: {option}: {_shown(value)} is not true or false")
        elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise StreamtagError(f"{path}: {option}: {_shown(value)} is not a single value; give one "
                                 f"{'number' if action.type is not None else 'string'}")
        elif action.type is not None:
            try:
                value = action.type(str(value))
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise StreamtagError(f"{path}: {option}: {e}") from None
        else:
            value = str(value)  # a path or a name written as a number (`output-dir: 2024`, `input-device: 3`)
        if value is not None and action.choices is not None and value not in action.choices:
            raise StreamtagError(f"{path}: {option}: {_shown(value)} is not one of "
                                 f"{', '.join(map(str, action.choices))}")
        checked[dest] = value
    return checked


def _shown(value: Any) -> str:
    """A config value for a message: its type for containers (a YAML alias bomb must never be printed whole)."""
    if isinstance(value, (list, dict, set, tuple)):
        return f"a {'list' if isinstance(value, (list, tuple, set)) else 'mapping'}"
    return repr(value)[:60]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv`; a `--config FILE` re-parses with that file's values as defaults (the CLI still wins)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        overrides = as_dests(read_yaml(args.config))
        subparser = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
        known = {a.dest for a in subparser._actions  # noqa: SLF001
                 if a.option_strings and a.dest not in ("help", "config")}
        unknown = sorted(k for k in overrides if k not in known)
        if unknown:
            raise StreamtagError(f"{args.config}: unknown option(s) for `{args.command}`: {', '.join(unknown)}; "
                                 f"see `streamtag {args.command} --help`")
        subparser.set_defaults(**_checked(args.config, subparser, overrides, as_dests(command_defaults(args.command))))
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        return int(args.func(args) or 0)
    except StreamtagError as e:
        print(f"streamtag: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("streamtag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (`streamtag parse ... | head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
