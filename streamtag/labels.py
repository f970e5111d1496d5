"""The 527 AudioSet labels, in the order of the PANNs output vector."""

from __future__ import annotations

import csv
import functools
from importlib import resources
from pathlib import Path

from streamtag.errors import StreamtagError

NUM_CLASSES = 527


@functools.lru_cache(maxsize=1)
def audioset_labels() -> tuple[str, ...]:
    """The display names shipped in the package (AudioSet `class_labels_indices.csv`, CC BY 4.0)."""
    text = resources.files("streamtag").joinpath("assets/class_labels_indices.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    return tuple(r["display_name"] for r in sorted(rows, key=lambda r: int(r["index"])))


def load_labels(path: str | Path | None = None) -> list[str]:
    """Labels from `path`, or the shipped AudioSet labels when `path` is None.

    Accepts AudioSet's `class_labels_indices.csv` (index,mid,display_name) or the seed's
    `audioset_labels.txt` (one label per line, in index order).
    """
    if path is None:
        return list(audioset_labels())
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StreamtagError(f"{path}: cannot read label file ({e.__class__.__name__}: {e}); "
                             "pass a text file with one label per line or AudioSet's class_labels_indices.csv") from None
    lines = text.splitlines()
    if lines and lines[0].replace(" ", "").lower().startswith("index,mid,display_name"):
        rows = list(csv.DictReader(lines))
        labels = [r["display_name"] for r in sorted(rows, key=lambda r: int(r["index"]))]
    else:
        labels = [line.strip() for line in lines]
        while labels and not labels[-1]:
            labels.pop()
    if not labels:
        raise StreamtagError(f"{path}: label file is empty; pass one label per line, in model output order")
    return labels
