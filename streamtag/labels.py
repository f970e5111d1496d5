"""The 527 AudioSet labels, in the order of the PANNs output vector."""

from __future__ import annotations

import csv
import difflib
import functools
import unicodedata
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


LABEL_FILE_HINT = "pass a text file with one label per line or AudioSet's class_labels_indices.csv"
MAX_LABEL_FILE = 16 << 20  # AudioSet's csv is 15 kB; a label file of 16 MB is not a label file


def load_labels(path: str | Path | None = None) -> list[str]:
    """Labels from `path`, or the shipped AudioSet labels when `path` is None.

    Accepts AudioSet's `class_labels_indices.csv` (index,mid,display_name) or the seed's
    `audioset_labels.txt` (one label per line, in index order). The file is checked to be a regular file of sane
    size first (a FIFO or /dev/zero is refused, not read forever), and no label may hold a control character.
    """
    if path is None:
        return list(audioset_labels())
    from streamtag.paths import read_input_text

    text = read_input_text(path, "label file", LABEL_FILE_HINT, MAX_LABEL_FILE)
    lines = text.removeprefix("\ufeff").split("\n")
    if lines and lines[0].replace(" ", "").lower().startswith("index,mid,display_name"):
        try:  # by position, as AudioSet writes it: index,mid,display_name (the header's spelling may vary)
            rows = [(int(r[0]), r[2]) for r in csv.reader(line.rstrip("\r") for line in lines[1:] if line.strip())]
        except (ValueError, IndexError, csv.Error) as e:
            raise StreamtagError(f"{path}: not a valid class_labels_indices.csv ({' '.join(str(e).split())[:80]}); "
                                 f"{LABEL_FILE_HINT}") from None
        if sorted(i for i, _ in rows) != list(range(len(rows))):
            raise StreamtagError(f"{path}: class_labels_indices.csv rows must have index 0…N-1 and a display_name; "
                                 f"{LABEL_FILE_HINT}")
        labels = [name for _, name in sorted(rows)]
    else:
        labels = [line.rstrip("\r").strip() for line in lines]
        while labels and not labels[-1]:
            labels.pop()
    if not labels:
        raise StreamtagError(f"{path}: label file is empty; pass one label per line, in model output order")
    check_labels(labels, str(path))
    return labels


def check_labels(labels: Sequence[str], where: str) -> None:
    """Refuse labels holding control characters or line separators: written into a txt result they would forge
    lines (a newline starts a fake `Label: score` line), on a terminal they could move the cursor."""
    for i, label in enumerate(labels):
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in label):
            raise StreamtagError(f"{where}: label {i} ({label!r:.60}) holds a control character or line break; "
                                 "labels must be plain one-line text")


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
