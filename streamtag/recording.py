"""A recording while it is being made: append-only files, so an all-day session keeps constant memory, each flush
writes only what is new, and a session killed outright (SIGKILL, power cut of the process) leaves a readable result.

During a `--record PREFIX` session (docs/file-formats.md has the byte layout):

    PREFIX.npz.part/   meta.json    what never changes: labels, model, rates, window, source, top-k, smoothing
                       state.json   rewritten (tiny, atomic) at each flush: duration so far, wall clock
                       time.npy, scores.npy, level.npy, ...   one file per per-window column: a 128-byte .npy
                                    header (its row count rewritten in place at each flush), then the rows, appended
    PREFIX.txt.part    the top-k text, appended block by block
    FILE.wav.part      --save-audio: a WAV whose header sizes are rewritten after every block (RF64 past 4 GB)

At the end the columns are streamed into PREFIX.npz (the `tag` format), PREFIX.txt.part and FILE.wav.part are renamed,
and the part directory is removed. `results.load_result` reads a part directory as it reads an npz (so `parse`, `plot`
and `events detect` work on a session still running); `streamtag recover PREFIX` finishes a killed one.

A reader trusts the file sizes, not the headers: rows = (size - header) // row bytes, and the smallest count over the
columns (a kill between two columns' appends leaves one a flush ahead). A failed append (disk full) is cut back to the
last whole row, so later appends never land after half a row.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.utils import atomic_path, atomic_write_text, new_file_mode

PART = ".part"
LAYOUT_VERSION = 1
HEADER_BYTES = 128  # every column's .npy header, padded so the row count can be rewritten in place
COLUMN_DTYPES = {"time": np.float64}  # per-window columns are float32 unless named here
_COPY_CHUNK = 1 << 20


def part_dir(npz_path: str | os.PathLike) -> Path:
    """Where the recording that will become `npz_path` lives while it is made: `X.npz` → `X.npz.part/`."""
    return Path(str(npz_path) + PART)


def is_part_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "meta.json").is_file()


# ---------------------------------------------------------------------------------------------- columns
def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    body = text.encode("latin1")
    pad = HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"column shape {shape} does not fit a {HEADER_BYTES}-byte header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", HEADER_BYTES - 10) + body + b" " * pad + b"\n"


class ColumnFile:
    """One per-window column as an .npy file that grows: rows are appended, the header's count follows them."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), tuple(row_shape)
        self.rows = 0
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, new_file_mode())
        self._write_at(self._header(), 0)
        self._size = HEADER_BYTES

    def _header(self) -> bytes:
        return _npy_header(self.dtype, (self.rows, *self.row_shape))

    def _write_at(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]}, the column holds {self.row_shape}")
        try:
            self._write_at(rows.data, self._size)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # never leave half a row for the next append to land after
            raise
        self._size += rows.nbytes
        self.rows += len(rows)
        self._write_at(self._header(), 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_column_header(path: Path) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, row shape, data offset, whole rows present) of a column file, checked to be plain numbers."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except (ValueError, OSError, SyntaxError) as e:
            raise StreamtagError(f"{path}: not a column file ({' '.join(str(e).split())}); "
                                 "it is part of an unfinished recording, see docs/file-formats.md") from None
        offset = f.tell()
    if fortran or dtype.kind not in "fiu" or len(shape) < 1:
        raise StreamtagError(f"{path}: a column must hold plain numbers, one row per window; "
                             "see docs/file-formats.md")
    row_shape = tuple(int(x) for x in shape[1:])
    row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
    if row_bytes <= 0:
        raise StreamtagError(f"{path}: empty rows {row_shape}; see docs/file-formats.md")
    return dtype, row_shape, offset, (path.stat().st_size - offset) // row_bytes


def _columns(part: Path) -> dict[str, tuple[np.dtype, tuple[int, ...], int, int]]:
    try:
        return {p.stem: _read_column_header(p) for p in sorted(part.glob("*.npy"))}
    except OSError as e:  # the session finished (and removed its part) while we read it, or a permission problem
        raise StreamtagError(f"{part}: cannot read the recording ({e.strerror or e}); if its session just "
                             "ended, read the finished PREFIX.npz") from None


# ---------------------------------------------------------------------------------------------- writing
class PartWriter:
    """Make `X.npz.part/`: `append` whole windows (a dict of per-window columns), `finish` it into `X.npz`.

    Columns are created on their first append, so any per-window array (scores, level, an embedding) is stored
    the same way: one .npy that grows.
    """

    def __init__(self, npz_path: Path, meta: Mapping[str, Any]):
        self.npz_path = Path(npz_path)
        self.dir = part_dir(npz_path)
        self.dir.mkdir()
        try:
            atomic_write_text(self.dir / "meta.json", json.dumps({"layout": LAYOUT_VERSION, **meta},
                                                                 ensure_ascii=False))
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.columns: dict[str, ColumnFile] = {}
        self._state: dict[str, Any] = {}

    @property
    def rows(self) -> int:
        return min((c.rows for c in self.columns.values()), default=0)

    def append(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append rows to every column; `time` last, so a reader never sees a time without its scores."""
        for name in sorted(columns, key=lambda n: n == "time"):
            rows = np.asarray(columns[name])
            column = self.columns.get(name)
            if column is None:
                dtype = COLUMN_DTYPES.get(name, np.float32)
                column = self.columns[name] = ColumnFile(self.dir / f"{name}.npy", dtype, rows.shape[1:])
            column.append(rows)

    def set_state(self, **state: Any) -> None:
        """Rewrite state.json (duration, wall_clock) when it changed: a few dozen bytes, atomically."""
        if state != self._state:
            atomic_write_text(self.dir / "state.json", json.dumps(state))
            self._state = dict(state)

    def close(self) -> None:
        for column in self.columns.values():
            column.close()

    def finish(self) -> Path | None:
        """Stream the part into the npz and remove it; with no window at all, remove it and return None."""
        self.close()
        if self.rows == 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        assemble(self.dir, self.npz_path)
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.npz_path


# ---------------------------------------------------------------------------------------------- reading
def _meta(part: Path) -> tuple[dict, dict]:
    try:
        meta = json.loads((part / "meta.json").read_text(encoding="utf-8"))
        state_path = part / "state.json"
        state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else {}
    except (OSError, ValueError) as e:
        raise StreamtagError(f"{part}: unreadable recording metadata ({' '.join(str(e).split())}); "
                             "see docs/file-formats.md") from None
    if not isinstance(meta, dict) or not isinstance(state, dict) or meta.get("layout") != LAYOUT_VERSION:
        raise StreamtagError(f"{part}: not a recording of layout {LAYOUT_VERSION}; see docs/file-formats.md")
    return meta, state


def _scalars(meta: Mapping[str, Any], state: Mapping[str, Any], times: np.ndarray) -> dict[str, Any]:
    """The npz's scalar arrays (results.metadata_arrays) for a part: duration from state.json, else the last window's
    end (a session killed before its first flush)."""
    from streamtag.results import metadata_arrays

    duration = state.get("duration")
    if not isinstance(duration, (int, float)) or not math.isfinite(duration):
        duration = float(times[-1]) + float(meta.get("sample_duration", 0.0)) if len(times) else 0.0
    wall = state.get("wall_clock")
    return metadata_arrays(duration=float(duration), sample_rate=int(meta.get("sample_rate", 0)),
                           model=str(meta.get("model", "")), sample_duration=float(meta.get("sample_duration", 0)),
                           hop_duration=float(meta.get("hop_duration", 0)),
                           labels=[str(x) for x in meta.get("labels", [])], source=str(meta.get("source", "")),
                           wall_clock=float(wall) if isinstance(wall, (int, float)) else None)


def read_part(part: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a part directory as `np.load` of the finished npz would give them (rows: the whole windows
    every column has)."""
    part = Path(part)
    meta, state = _meta(part)
    columns = _columns(part)
    if "time" not in columns or "scores" not in columns:
        raise StreamtagError(f"{part}: no window was recorded yet; wait for the first hop or remove it")
    rows = min(c[3] for c in columns.values())
    if rows == 0:
        raise StreamtagError(f"{part}: no window was recorded yet; wait for the first hop or remove it")
    data: dict[str, np.ndarray] = {}
    for name, (dtype, row_shape, offset, _) in columns.items():
        count = rows * int(np.prod(row_shape, dtype=np.int64))
        try:
            with open(part / f"{name}.npy", "rb") as f:
                data[name] = np.fromfile(f, dtype=dtype, count=count, offset=offset).reshape((rows, *row_shape))
        except (OSError, ValueError) as e:
            raise StreamtagError(f"{part}: cannot read {name}.npy ({' '.join(str(e).split())}); "
                                 "see docs/file-formats.md") from None
    data.update(_scalars(meta, state, data["time"]))
    return data


def assemble(part: str | os.PathLike, npz_path: str | os.PathLike) -> Path:
    """Write `npz_path` (atomically) from a part directory, copying each column in 1 MB pieces: memory stays
    constant however long the recording is."""
    part, npz_path = Path(part), Path(npz_path)
    meta, state = _meta(part)
    columns = _columns(part)
    rows = min((c[3] for c in columns.values()), default=0)
    if rows == 0 or "time" not in columns:
        raise StreamtagError(f"{part}: no window was recorded, nothing to assemble")
    with open(part / "time.npy", "rb") as f:
        dtype, _, offset, _ = columns["time"]
        last_time = np.fromfile(f, dtype=dtype, count=1, offset=offset + (rows - 1) * dtype.itemsize)
    scalars = _scalars(meta, state, last_time)
    with atomic_path(npz_path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, (dtype, row_shape, offset, _) in columns.items():
                nbytes = rows * dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out, open(part / f"{name}.npy", "rb") as f:
                    out.write(_npy_header(dtype, (rows, *row_shape)))
                    f.seek(offset)
                    while nbytes:
                        chunk = f.read(min(_COPY_CHUNK, nbytes))
                        if not chunk:
                            raise StreamtagError(f"{part / name}.npy shrank while it was read; try again")
                        out.write(chunk)
                        nbytes -= len(chunk)
            for name, value in scalars.items():
                with zf.open(f"{name}.npy", "w") as out:
                    np.lib.format.write_array(out, np.asanyarray(value), allow_pickle=False)
    return npz_path


# ---------------------------------------------------------------------------------------------- audio
class WavAppender:
    """The --save-audio stream as `FILE.wav.part`: 32-bit float mono WAV, each block appended with one write and the
    header's sizes rewritten after it, so the file is a valid WAV at every moment (a kill loses nothing written).

    The header keeps a 28-byte JUNK chunk where RF64's ds64 goes (EBU Tech 3306): past 4 GB the file turns into
    RF64 in place, which libsndfile and most editors read. `close` renames the part onto FILE.
    """

    RIFF_LIMIT = 0xFFFFFFFF
    HEADER = 12 + 36 + 24 + 8  # RIFF/WAVE, JUNK(28), fmt (16), data header

    def __init__(self, path: str | os.PathLike, sample_rate: int):
        self.path = Path(path)
        self.part = Path(str(self.path) + PART)
        self.sample_rate = int(sample_rate)
        self.frames = 0
        self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_EXCL, new_file_mode())
        os.write(self._fd, wav_header(self.sample_rate, 0, self.RIFF_LIMIT))

    def write(self, block: np.ndarray) -> None:
        """Append `block` (float32 mono at `sample_rate`) and bring the header up to date."""
        data = np.ascontiguousarray(block, dtype="<f4").data.cast("B")
        size = self.HEADER + self.frames * 4
        while data:
            n = os.pwrite(self._fd, data, size)
            data, size = data[n:], size + n
        self.frames += len(block)
        os.pwrite(self._fd, wav_header(self.sample_rate, self.frames * 4, self.RIFF_LIMIT), 0)

    def close(self) -> Path | None:
        """Move the part onto FILE; a stream with no sample at all is removed instead (returns None)."""
        os.close(self._fd)
        if self.frames == 0:
            self.part.unlink(missing_ok=True)
            return None
        os.replace(self.part, self.path)
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self.part.unlink(missing_ok=True)


def wav_header(sample_rate: int, data_bytes: int, riff_limit: int = WavAppender.RIFF_LIMIT) -> bytes:
    """The 80-byte header of a float32 mono WAV holding `data_bytes`: RIFF with a JUNK chunk, or RF64 with ds64 in
    its place once the RIFF size would pass `riff_limit`."""
    riff = WavAppender.HEADER - 8 + data_bytes
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 3, 1, sample_rate, sample_rate * 4, 4, 32)
    if riff > riff_limit:
        ds64 = struct.pack("<4sIQQQI", b"ds64", 28, riff, data_bytes, data_bytes // 4, 0)
        return struct.pack("<4sI4s", b"RF64", 0xFFFFFFFF, b"WAVE") + ds64 + fmt + \
            struct.pack("<4sI", b"data", 0xFFFFFFFF)
    junk = struct.pack("<4sI", b"JUNK", 28) + bytes(28)
    return struct.pack("<4sI4s", b"RIFF", riff, b"WAVE") + junk + fmt + struct.pack("<4sI", b"data", data_bytes)


def fix_wav(part: Path, dest: Path) -> Path | None:
    """A killed session's `FILE.wav.part` → FILE: the header is set from the file's real size (whole frames), the
    file renamed. An empty one is removed (None)."""
    with open(part, "r+b") as f:
        head = f.read(WavAppender.HEADER)
        if len(head) < WavAppender.HEADER or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RF64"):
            raise StreamtagError(f"{part}: not a WAV written by streamtag; leave it or remove it by hand")
        (rate,) = struct.unpack("<I", head[60:64])
        frames = (os.fstat(f.fileno()).st_size - WavAppender.HEADER) // 4
        if frames <= 0:
            f.close()
            part.unlink()
            return None
        f.truncate(WavAppender.HEADER + frames * 4)
        f.seek(0)
        f.write(wav_header(rate, frames * 4))
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------------- recover
def recover(target: str | os.PathLike) -> list[str]:
    """Finish what a killed session left for `target` (PREFIX, PREFIX.npz, PREFIX.npz.part or FILE.wav.part):
    PREFIX.npz assembled from its part, PREFIX.txt rendered from those same rows, the WAV's header fixed. Returns
    one line per thing done."""
    from streamtag.results import TxtWriter, load_result

    name = str(target).rstrip("/")
    if name.endswith(".wav" + PART) or name.endswith(".wav"):
        wav = Path(name if name.endswith(PART) else name + PART)
        if not wav.is_file():
            raise StreamtagError(f"{wav}: no such file; nothing to recover")
        done = fix_wav(wav, Path(str(wav)[: -len(PART)]))
        return [f"{wav} → {done}" if done else f"{wav}: no audio in it, removed"]
    if name.endswith(PART):
        name = name[: -len(PART)]
    prefix = name[: -len(".npz")] if name.endswith(".npz") else name
    npz, txt = Path(prefix + ".npz"), Path(prefix + ".txt")
    part = part_dir(npz)
    if not is_part_dir(part):
        raise StreamtagError(f"{part}: no unfinished recording there; pass the --record PREFIX of a session that "
                             "was killed")
    meta, _ = _meta(part)
    lines = []
    audio = meta.get("audio")
    if isinstance(audio, str) and Path(audio + PART).is_file():
        lines += recover(audio + PART)
    if min((c[3] for c in _columns(part).values()), default=0) == 0:
        shutil.rmtree(part)
        Path(prefix + ".txt" + PART).unlink(missing_ok=True)
        return lines + [f"{part}: no window was scored before the session ended; removed"]
    assemble(part, npz)
    result = load_result(npz)
    smooth_size = meta.get("smooth_size")
    TxtWriter().write(result, txt, top_k=int(meta.get("top_k", 10)),
                      smooth_size=int(smooth_size) if smooth_size else None)
    shutil.rmtree(part)
    Path(prefix + ".txt" + PART).unlink(missing_ok=True)
    return lines + [f"{part} → {npz}, {txt} ({len(result.time)} windows, {result.duration:.1f} s)"]
