"""Defaults for every command live in `configs/<command>.yaml`, one key per CLI option.

The YAML key is the option's long name without the dashes in front (`--sample-duration` → `sample-duration`;
a `--x/--no-x` switch is `x: true|false`). `--config FILE` on any command layers a user file of the same keys on top.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from streamtag.errors import StreamtagError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A flat mapping of option name → value from a YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise StreamtagError(f"{path}: cannot read config ({e.__class__.__name__}); "
                             "give a YAML file of `option: value` lines") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StreamtagError(f"{path}: a config must be a mapping of `option: value` lines")
    return data


@functools.lru_cache(maxsize=None)
def command_defaults(command: str) -> dict[str, Any]:
    """The shipped defaults of `command` (empty when the command has no config file)."""
    path = CONFIG_DIR / f"{command}.yaml"
    return read_yaml(path) if path.exists() else {}


def as_dests(options: dict[str, Any]) -> dict[str, Any]:
    """YAML option names → argparse destinations (`sample-duration` → `sample_duration`)."""
    return {k.replace("-", "_"): v for k, v in options.items()}
