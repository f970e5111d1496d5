"""The shipped configs (streamtag/configs/*.yaml, = repo configs/) map 1:1 to the CLI options of their command."""

import pytest

from streamtag.cli import build_parser, parse_args
from streamtag.config import as_dests, command_defaults, shipped_commands

COMMANDS = shipped_commands()


def _subparser(name):
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("command", COMMANDS)
def test_config_keys_are_exactly_the_options(command):
    sub = _subparser(command)
    options = {a.dest for a in sub._actions if a.option_strings} - {"help", "config"}
    keys = set(as_dests(command_defaults(command)))
    assert keys == options


def test_cli_overrides_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("top-k: 3\nsmooth-size: 9\n")
    args = parse_args(["parse", "x.npz", "--config", str(cfg), "--top-k", "4"])
    assert (args.top_k, args.smooth_size, args.format) == (4, 9, "txt")


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    from streamtag.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("topk: 3\n")
    assert main(["parse", "x.npz", "--config", str(cfg)]) == 1
    assert "unknown option(s) for `parse`: topk" in capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ("top-k: -1", "top-k: must be 1 or more"),
    ("time-format: minutes", "time-format: 'minutes' is not one of seconds, ratio"),
    ("smooth: maybe", "smooth: 'maybe' is not true or false"),
    ("smooth-size: 2.5", "smooth-size: '2.5' is not a whole number"),
])
def test_config_values_get_the_command_line_checks(tmp_path, capsys, line, message):
    from streamtag.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(line + "\n")
    assert main(["parse", "x.npz", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_config_values_are_converted(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("speed: 2\nhop-duration: 0.5\n")
    args = parse_args(["replay", "x.wav", "--config", str(cfg)])
    assert args.speed == 2.0 and isinstance(args.speed, float) and args.hop_duration == 0.5
