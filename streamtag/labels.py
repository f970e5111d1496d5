"""The 527 AudioSet labels, in the order of the PANNs output vector."""

from __future__ import annotations

import csv
import difflib
import functools
from importlib import resources
from pathlib import Path
from typing import Sequence

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


# ---------------------------------------------------------------------------------------------- names a user types
LABELS_HINT = "labels are AudioSet display names (streamtag/assets/class_labels_indices.csv)"


def canonical(name: str) -> str:
    """How names are compared: case-insensitive, whitespace and the space after a comma normalised."""
    return " ".join(name.replace(",", ", ").split()).casefold().replace(" ,", ",")


def suggestion(name: str, names: Sequence[str]) -> str:
    """`did you mean 'X'? ` for the closest of `names` (difflib), or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6) or \
        difflib.get_close_matches(name.casefold(), [n.casefold() for n in names], n=1, cutoff=0.6)
    if not close:
        return ""
    match = next(n for n in names if n.casefold() == close[0].casefold())
    return f"did you mean {match!r}? "


def parse_label_list(text: str, labels: Sequence[str], option: str, hint: str = LABELS_HINT) -> list[int]:
    """Indices of the comma-separated labels in `text`. Labels may contain commas themselves ("Domestic animals,
    pets"), so the longest run of pieces that names a label wins. Unknown name → one-line error with a suggestion."""
    index = {canonical(label): i for i, label in enumerate(labels)}
    pieces = [p.strip() for p in text.split(",")]
    found: list[int] = []
    i = 0
    while i < len(pieces):
        if not pieces[i]:
            i += 1
            continue
        for j in range(len(pieces), i, -1):
            key = canonical(", ".join(pieces[i:j]))
            if key in index:
                found.append(index[key])
                i = j
                break
        else:
            name = pieces[i]
            raise StreamtagError(f"{option}: unknown label {name!r}; {suggestion(name, labels)}{hint}")
    return found
