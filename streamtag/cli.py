"""Command line: argparse, config defaults, one function per command.

Every command takes its defaults from `configs/<command>.yaml` (see config.py). A StreamtagError becomes one line on
stderr and its exit code; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

from streamtag import __version__
from streamtag.config import as_dests, command_defaults, read_yaml
from streamtag.errors import StreamtagError

ARCHS = ("cnn14", "cnn10", "cnn6")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
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
    g.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads (default: the machine's cores)")
    g.add_argument("--precision", choices=("fp32", "fp16"), help="fp16 on GPU only (default: %(default)s)")


def add_window_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("windows")
    g.add_argument("--sample-duration", type=positive_float, metavar="S",
                   help="window length in seconds (default: %(default)s)")
    g.add_argument("--hop-duration", type=positive_float, metavar="S",
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
    p.add_argument("--dashboard", action=argparse.BooleanOptionalAction,
                   help="live top-k table in the terminal (default: %(default)s)")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, help="one JSON object per hop on stdout")
    p.add_argument("--only", metavar="LABEL,...", help="show only these labels")
    p.add_argument("--ignore", metavar="LABEL,...", help="never show these labels")


# ---------------------------------------------------------------------------------------------- commands
def cmd_tag(args: argparse.Namespace) -> int:
    """Tag audio files into <output-dir>/<stem>.npz (issue: file tagging)."""
    raise StreamtagError("tag: not implemented yet")


def cmd_parse(args: argparse.Namespace) -> int:
    """Turn tagging .npz files into top-k text (issue: result parsing)."""
    raise StreamtagError("parse: not implemented yet")


def cmd_live(args: argparse.Namespace) -> int:
    """Tag the microphone live."""
    raise StreamtagError("live: not implemented yet")


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a file through the live path."""
    raise StreamtagError("replay: not implemented yet")


def cmd_devices(args: argparse.Namespace) -> int:
    """List input devices."""
    raise StreamtagError("devices: not implemented yet")


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmark the inference engine against eager Paddle."""
    raise StreamtagError("bench: not implemented yet")


def cmd_weights(args: argparse.Namespace) -> int:
    """Manage pretrained checkpoints: list, fetch, import."""
    raise StreamtagError("weights: not implemented yet")


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
    parser = argparse.ArgumentParser(prog="streamtag", description="Real-time audio tagging with PANNs.")
    parser.add_argument("--version", action="version", version=f"streamtag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subcommand(sub, "tag", cmd_tag, "tag audio files: one .npz of window scores per file")
    p.add_argument("files", nargs="+", metavar="FILE")
    add_model_options(p)
    add_window_options(p)
    p.add_argument("--output-dir", metavar="DIR", help="where .npz results go (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="windows per model call (default: %(default)s)")
    p.add_argument("--pad", action=argparse.BooleanOptionalAction,
                   help="zero-pad the last windows as the seed does; --no-pad keeps full windows only")

    p = _subcommand(sub, "parse", cmd_parse, "turn tagging .npz results into top-k text")
    p.add_argument("files", nargs="+", metavar="NPZ")
    add_smoothing_options(p)
    p.add_argument("--label-file", metavar="FILE", help="labels, one per line (default: shipped AudioSet labels)")
    p.add_argument("--output-dir", metavar="DIR", help="where results go (default: %(default)s)")
    p.add_argument("--time-format", choices=("seconds", "ratio"),
                   help="time line: window start in seconds, or t/T as the seed printed (default: %(default)s)")
    p.add_argument("--format", choices=("txt", "jsonl", "csv"), help="output format (default: %(default)s)")

    p = _subcommand(sub, "live", cmd_live, "tag the microphone live")
    p.add_argument("--input-device", metavar="DEV", help="index or name substring (see `streamtag devices`)")
    add_stream_options(p)

    p = _subcommand(sub, "replay", cmd_replay, "replay an audio file through the live path")
    p.add_argument("file", metavar="FILE")
    add_stream_options(p)
    p.add_argument("--speed", type=positive_float, metavar="X", help="pace, x real time (default: %(default)s)")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction,
                   help="as fast as inference goes, no hop dropped")

    _subcommand(sub, "devices", cmd_devices, "list audio input devices", configured=False)

    p = _subcommand(sub, "bench", cmd_bench, "benchmark the inference engine against eager Paddle")
    p.add_argument("--models", metavar="A,B", help="comma-separated archs (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"))
    p.add_argument("--threads", type=positive_int, metavar="N")
    p.add_argument("--precision", choices=("fp32", "fp16"))
    add_window_options(p)
    p.add_argument("--repeats", type=positive_int, metavar="N", help="timed calls per model (default: %(default)s)")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, help="print JSON instead of a table")

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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv`; a `--config FILE` re-parses with that file's values as defaults (the CLI still wins)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        overrides = as_dests(read_yaml(args.config))
        subparser = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
        known = {a.dest for a in subparser._actions}  # noqa: SLF001
        unknown = sorted(k for k in overrides if k not in known)
        if unknown:
            raise StreamtagError(f"{args.config}: unknown option(s) for `{args.command}`: {', '.join(unknown)}; "
                                 f"see `streamtag {args.command} --help`")
        subparser.set_defaults(**overrides)
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
