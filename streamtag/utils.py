"""Small helpers shared by several rooms: atomic writes, the cache directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


# Read once at import (in the main thread): os.umask can only be read by setting it, which races with other threads.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def new_file_mode() -> int:
    """The permissions a newly created file gets here (0666 & ~umask); mkstemp's own 0600 is for temp files."""
    return 0o666 & ~_UMASK


def streamtag_home() -> Path:
    """Where weights and exported graphs are cached: $STREAMTAG_HOME, default ~/.cache/streamtag."""
    return Path(os.environ.get("STREAMTAG_HOME") or Path.home() / ".cache" / "streamtag")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `dest`; rename it onto `dest` only if the block succeeds.

    Readers never see a half-written file and a failure (or Ctrl-C) leaves nothing behind.
    `suffix` lets writers that insist on an extension (numpy's savez adds `.npz`) keep it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; a result file should get the permissions any other new file would (0666 & ~umask).
    os.chmod(tmp_path, new_file_mode())
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    """Write `text` to `dest` atomically (temp file + rename)."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
