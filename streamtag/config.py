"""Defaults for every command live in `streamtag/configs/<command>.yaml` (package data), one key per CLI option.

They ship inside the package so that a wheel, pipx or any non-editable install has them; the repository's `configs/`
is the documented copy to read and copy from, kept identical by tests/test_packaging.py (`make sync-configs`).
The YAML key is the option's long name without the dashes in front (`--sample-duration` → `sample-duration`;
a `--x/--no-x` switch is `x: true|false`). `--config FILE` on any command layers a user file of the same keys on top.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from streamtag.errors import StreamtagError

SHIPPED = resources.files("streamtag") / "configs"  # the package's own defaults (a Traversable, also in a wheel)


CONFIG_HINT = "give a YAML file of `option: value` lines"
MAX_CONFIG = 1 << 20  # the shipped configs are under 2 kB


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A flat mapping of option name → value from a user's YAML file (checked to be a regular file under 1 MB)."""
    from streamtag.paths import read_input_text

    text = read_input_text(path, "config", CONFIG_HINT, MAX_CONFIG)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise StreamtagError(f"{path}: not valid YAML{at}; {CONFIG_HINT}") from None
    except RecursionError:
        raise StreamtagError(f"{path}: YAML nested too deeply; {CONFIG_HINT}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StreamtagError(f"{path}: a config must be a mapping of `option: value` lines; {CONFIG_HINT}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise StreamtagError(f"{path}: option names must be text, got {str(bad[0])[:40]!r}; {CONFIG_HINT}")
    return data


@functools.lru_cache(maxsize=None)
def command_defaults(command: str) -> dict[str, Any]:
    """The shipped defaults of `command` (empty when the command has no config file)."""
    shipped = SHIPPED / f"{command}.yaml"
    if not shipped.is_file():
        return {}
    data = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    return data or {}


def shipped_commands() -> list[str]:
    """The commands that have a shipped defaults file."""
    return sorted(p.name[:-5] for p in SHIPPED.iterdir() if p.name.endswith(".yaml"))


def as_dests(options: dict[str, Any]) -> dict[str, Any]:
    """YAML option names → argparse destinations (`sample-duration` → `sample_duration`)."""
    return {k.replace("-", "_"): v for k, v in options.items()}
