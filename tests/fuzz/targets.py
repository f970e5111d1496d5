"""Fuzz targets: each feeds bytes to one of streamtag's file readers, as a file on disk, the way a user's file
reaches it. The contract under test: a reader either returns or raises StreamtagError (one line for the user).
Any other exception — or a hang, or a memory blow-up, which libFuzzer reports through -timeout / -rss_limit_mb —
is a finding: fix it, and keep the input in tests/fuzz/crashes/ so tests/test_fuzz.py replays it forever.

Targets import no Paddle (the checkpoint target stops at `checkpoints.read_state`, before the arch check), so each
execution costs milliseconds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from streamtag.errors import StreamtagError

_DIR = Path(tempfile.mkdtemp(prefix="streamtag-fuzz-"))


def _as_file(data: bytes, name: str) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


def weights(data: bytes) -> None:
    """.pth (zip and legacy) and .pdparams: the restricted unpickler and PyTorch's container formats."""
    from streamtag.checkpoints import read_state

    read_state(_as_file(data, "w.pth"), "w.pth")


def archive(data: bytes) -> None:
    """A PaddleSpeech .tar.gz: stream-checked, one member extracted."""
    from streamtag.safeload import extract_member

    dest = _DIR / "member.out"
    try:
        extract_member(_as_file(data, "a.tar.gz"), "cnn6.pdparams", dest)
    finally:
        dest.unlink(missing_ok=True)


def npz(data: bytes) -> None:
    """A result file, through the same reader `parse`, `plot` and `events detect` use."""
    from streamtag.results import load_result

    load_result(_as_file(data, "r.npz"))


def config(data: bytes) -> None:
    """A `--config` YAML file, read and checked against the `parse` and `tag` options."""
    from streamtag.cli import parse_args

    path = _as_file(data, "c.yaml")
    parse_args(["parse", "x.npz", "--config", str(path)])
    parse_args(["tag", "x.wav", "--config", str(path)])


def labels(data: bytes) -> None:
    """A `--label-file` (one label per line, or AudioSet's class_labels_indices.csv)."""
    from streamtag.labels import load_labels

    load_labels(_as_file(data, "labels.txt"))


def audio(data: bytes) -> None:
    """The audio header check every file gets before the model loads (libsndfile), then the first block."""
    from streamtag.audio import AudioReader

    reader = AudioReader(_as_file(data, "a.wav"))
    for _ in zip(range(2), reader.blocks(seconds=1.0)):
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "weights": weights, "archive": archive, "npz": npz, "config": config, "labels": labels, "audio": audio,
}


def run_one(target: str, data: bytes) -> None:
    """Run `target` on `data`; StreamtagError is the expected way to refuse, anything else propagates."""
    try:
        TARGETS[target](data)
    except StreamtagError:
        pass
    except SystemExit as e:  # argparse on a config value it rejects: exit code 2 with a one-line message
        if e.code != 2:
            raise


def corpus_files(root: Path, target: str) -> list[Path]:
    """The committed seeds and every crash found so far, for `target`."""
    files = sorted((root / "corpus" / target).glob("*")) + sorted((root / "crashes").glob(f"{target}-*"))
    return [f for f in files if f.is_file() and not f.name.startswith(".")]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run tests/fuzz/fuzz.py TARGET instead")

os.environ.setdefault("STREAMTAG_HOME", str(_DIR / "home"))
