"""Seeded PANNs weights from the fixture recipe, for tests that need a model with weights.

The reference fixtures (tests/fixtures/panns/) were computed with these exact
weights, so a model loaded with `seeded_state(arch)` must reproduce
reference.npz. Use `cnn6` where the model is not the point: it is the fastest.

    from seeded import seeded_state, write_seeded_pdparams
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from streamtag.models import torch_to_paddle

FIXTURES = Path(__file__).parent / "fixtures" / "panns"


def torch_seeded_state(arch: str) -> dict[str, np.ndarray]:
    """The recipe's tensors under their PyTorch names (fresh arrays on each call)."""
    return {k: v.copy() for k, v in _torch_seeded_state(arch).items()}


@functools.lru_cache(maxsize=None)
def _torch_seeded_state(arch: str) -> dict[str, np.ndarray]:
    spec = json.loads((FIXTURES / f"{arch}.spec.json").read_text())
    state = {}
    for e in spec["params"]:
        rng = np.random.default_rng(e["seed"])
        z = rng.standard_normal(e["shape"])
        if e["kind"] == "abs":
            z = np.abs(z)
        state[e["key"]] = (z * e["scale"] + e["offset"]).astype(np.float32)
    return state


@functools.lru_cache(maxsize=None)
def _seeded_state(arch: str) -> dict[str, np.ndarray]:
    state = torch_to_paddle(_torch_seeded_state(arch))
    for value in state.values():
        value.setflags(write=False)  # shared by every caller: keep it intact
    return state


def seeded_state(arch: str) -> dict[str, np.ndarray]:
    """The recipe's tensors under Paddle names (cached; arrays are read-only)."""
    return dict(_seeded_state(arch))


def write_seeded_pdparams(arch: str, path: str | Path) -> Path:
    """Save the seeded state as a real `.pdparams` file (paddle.save of a dict of arrays)."""
    import paddle

    path = Path(path)
    paddle.save({k: np.array(v) for k, v in seeded_state(arch).items()}, str(path))
    return path
