"""Small helpers shared by several rooms: atomic writes, the cache directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
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


def file_sha256(path: str | os.PathLike, remember: bool = True) -> str:
    """sha256 of a file's bytes; with `remember`, cached by (path, inode, size, mtime, ctime) in the home folder.

    Hashing CNN14's 320 MB weights and its 320 MB export costs ~0.5 s of every start on two cores; a file that was
    rewritten, truncated or replaced changes its size, mtime or ctime (the kernel sets ctime, nobody can set it
    back), so its old digest is never reused. A cache that cannot be read or written only costs the hashing.
    """
    path = Path(path)
    st = path.stat()
    key = str(path.resolve())
    stamp = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    cache_file = streamtag_home() / "sha256-cache.json"
    cache: dict = {}
    if remember:
        with contextlib.suppress(OSError, ValueError):
            cache = json.loads(cache_file.read_text(encoding="utf-8"))
            if isinstance(cache.get(key), list) and cache[key][:4] == stamp:
                return str(cache[key][4])
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    hexdigest = digest.hexdigest()
    if remember:
        cache = {k: v for k, v in cache.items() if isinstance(v, list) and os.path.exists(k)} if cache else {}
        cache[key] = [*stamp, hexdigest]
        with contextlib.suppress(OSError):
            atomic_write_text(cache_file, json.dumps(cache))
    return hexdigest
