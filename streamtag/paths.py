"""What a path given to streamtag may be, checked before any work starts.

Inputs: every file we read is first checked to be a regular file of a sane size, so a FIFO, `/dev/zero`, a folder
or a symlink loop gets a message that says what it is instead of a hang, an out-of-memory or a misleading "no such
file". Outputs: every path we will write is checked up front — not a folder, not one of the run's inputs, not
another output of the same run, its folder creatable and writable — so a run never does its work and then loses it
at the end. Folders are not created here: the first write creates them, so a run that fails leaves none behind.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable

from streamtag.errors import StreamtagError

KB, MB, GB = 1 << 10, 1 << 20, 1 << 30


def _size(n: int) -> str:
    for unit, scale in (("GB", GB), ("MB", MB), ("kB", KB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def os_reason(e: OSError, path: str | os.PathLike | None = None) -> str:
    """A short, correct reason for an OSError on `path` (a symlink loop is not "no such file")."""
    code = e.errno
    if code == errno.ENOENT and path is not None and os.path.islink(path):
        return "a broken symbolic link (its target does not exist)"
    return {
        errno.ENOENT: "no such file or directory",
        errno.ELOOP: "too many levels of symbolic links (a symlink loop)",
        errno.ENAMETOOLONG: "file name too long (over the system's 255-byte name or path limit)",
        errno.EACCES: "permission denied (the file, or a directory on its path, is not accessible to this user)",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a component of the path is a file, not a directory",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on the device",
        errno.EISDIR: "is a directory",
    }.get(code, e.strerror or str(e))


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a regular file; reading it could wait forever"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    return "is not a regular file"


def input_file(path: str | os.PathLike, what: str, hint: str, max_bytes: int | None = None,
               allow_empty: bool = False) -> Path:
    """`path` checked to be a readable regular file of at most `max_bytes`; else a one-line StreamtagError
    `<path>: <what is wrong>; <hint>`. `what` names the file's role ("label file", "config")."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise StreamtagError(f"{p}: {os_reason(e, p)}; {hint}") from None
    except ValueError:  # an embedded NUL byte
        raise StreamtagError(f"{str(p)!r}: not a valid path (it contains a NUL byte); {hint}") from None
    kind = _kind(st.st_mode)
    if kind:
        raise StreamtagError(f"{p}: {kind}; {hint}")
    if st.st_size == 0 and not allow_empty:
        raise StreamtagError(f"{p}: empty file (0 bytes); {hint}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise StreamtagError(f"{p}: {_size(st.st_size)}, more than a {what} can be ({_size(max_bytes)}); {hint}")
    if not os.access(p, os.R_OK):
        raise StreamtagError(f"{p}: cannot read the {what}: permission denied; {hint}")
    return p


def open_input(path: str | os.PathLike, what: str, hint: str, max_bytes: int | None = None) -> BinaryIO:
    """A checked input file opened for binary reading. The descriptor itself is checked again (fstat), so a file
    swapped for a FIFO between the check and the open is refused rather than read forever (O_NONBLOCK: even the
    open of a FIFO cannot wait for a writer)."""
    p = input_file(path, what, hint, max_bytes, allow_empty=True)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOCTTY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise StreamtagError(f"{p}: cannot read the {what}: {os_reason(e, p)}; {hint}") from None
    st = os.fstat(fd)
    kind = _kind(st.st_mode)
    if kind or (max_bytes is not None and st.st_size > max_bytes):
        os.close(fd)
        raise StreamtagError(f"{p}: {kind or 'changed size while being opened'}; {hint}")
    return os.fdopen(fd, "rb")


def read_input(path: str | os.PathLike, what: str, hint: str, max_bytes: int) -> bytes:
    """The bytes of a checked input file (`open_input`), never more than `max_bytes`."""
    with open_input(path, what, hint, max_bytes) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise StreamtagError(f"{path}: cannot read the {what}: {os_reason(e, path)}; {hint}") from None
    if len(data) > max_bytes:
        raise StreamtagError(f"{path}: more than a {what} can be ({_size(max_bytes)}); {hint}")
    return data


def read_input_text(path: str | os.PathLike, what: str, hint: str, max_bytes: int) -> str:
    """`read_input`, decoded as UTF-8 (a one-line error names the first bad byte's offset)."""
    data = read_input(path, what, hint, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StreamtagError(f"{path}: the {what} is not UTF-8 text (bad byte at offset {e.start}); {hint}") from None


# ---------------------------------------------------------------------------------------------- outputs
def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """A folder results can go to: an existing writable folder, or one that can be created (it is not created
    here; the first result written creates it, so a run that writes nothing leaves no empty folder)."""
    p = Path(path)
    hint = f"choose a writable {option}"
    try:
        st = os.stat(p)
    except FileNotFoundError:
        _check_creatable(p, hint)
        return p
    except OSError as e:
        raise StreamtagError(f"{p}: cannot use this output dir: {os_reason(e, p)}; {hint}") from None
    except ValueError:
        raise StreamtagError(f"{str(p)!r}: not a valid path (it contains a NUL byte); {hint}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StreamtagError(f"{p}: output dir exists but is not a directory; choose another {option}")
    _probe(p, hint)
    return p


def _check_creatable(p: Path, hint: str) -> None:
    """`p` does not exist: its nearest existing ancestor must be a folder we can create things in."""
    ancestor = p.absolute().parent
    while True:
        try:
            st = os.stat(ancestor)
            break
        except FileNotFoundError:
            ancestor = ancestor.parent
        except OSError as e:
            raise StreamtagError(f"{p}: cannot create the output dir: {ancestor}: {os_reason(e, ancestor)}; {hint}") \
                from None
    if not stat.S_ISDIR(st.st_mode):
        raise StreamtagError(f"{p}: cannot create the output dir: {ancestor} is a file, not a directory; {hint}")
    _probe(ancestor, hint, label=p)


def _probe(folder: Path, hint: str, label: Path | None = None) -> None:
    """Create and remove a temp file in `folder`: the only check that is true for root, read-only mounts, ACLs."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".streamtag-probe-"):
            pass
    except OSError as e:
        raise StreamtagError(f"{label or folder}: {folder} is not writable ({os_reason(e, folder)}); {hint}") from None


class OutputPlan:
    """Every path one run will write, checked together before the run starts.

    `add(path, option)` checks one output: not a folder or device, its folder writable (or creatable), not one of
    `inputs`, not an output already added. The message names the option the path came from.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike | None] = ()):
        self.inputs = [Path(p) for p in inputs if p]
        self.outputs: dict[Path, str] = {}

    def add(self, path: str | os.PathLike, option: str, suffix: str | None = None) -> Path:
        p = Path(path)
        hint = f"choose another {option}"
        if suffix and p.suffix.lower() != suffix:
            raise StreamtagError(f"{option} {p}: must end in {suffix} (streamtag writes {suffix[1:].upper()} "
                                 f"there, whatever the name says); {hint}")
        try:
            st = os.stat(p)
        except FileNotFoundError:
            _check_creatable(p, hint)
            st = None
        except OSError as e:
            raise StreamtagError(f"{option} {p}: cannot write it: {os_reason(e, p)}; {hint}") from None
        except ValueError:
            raise StreamtagError(f"{option} {str(p)!r}: not a valid path (it contains a NUL byte); {hint}") from None
        if st is not None:
            kind = _kind(st.st_mode)
            if kind:
                raise StreamtagError(f"{option} {p}: {kind}; {hint}")
            _probe(p.parent if str(p.parent) else Path("."), hint, label=p)
        for source in self.inputs:
            if _same_file(p, source):
                raise StreamtagError(f"{option} {p}: is also an input of this run and would be overwritten; {hint}")
        for other, other_option in self.outputs.items():
            if _same_file(p, other):
                raise StreamtagError(f"{option} {p}: {other_option} already writes that file in this run; {hint}")
        self.outputs[p] = option
        return p
