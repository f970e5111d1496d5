"""configs/*.yaml map 1:1 to the CLI options of their command."""

import pytest

from streamtag.cli import build_parser, parse_args
from streamtag.config import CONFIG_DIR, as_dests, command_defaults

COMMANDS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


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
