"""Reading weight files and archives as data: nothing in a file we load can run code.

A `.pth` or `.pdparams` file is a pickle, and unpickling runs whatever callables the file names. So nothing here
calls `pickle.load`, `paddle.load` or `torch.load`: a restricted unpickler resolves only the handful of names a
checkpoint is made of (numpy's array/dtype rebuild records, PyTorch's tensor-rebuild and storage records, OrderedDict)
to stand-ins written here that build numpy arrays from raw bytes and can do nothing else. Any other name ends the
read with `NotPlain`. PyTorch's zip and legacy formats are read without torch. Archives are checked member by member
before anything is extracted, and only the one file asked for is written.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import shutil
import struct
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamtag.errors import StreamtagError

# ---------------------------------------------------------------------------------------------- safe unpickling
class NotPlain(Exception):
    """Raised inside the unpickler; read_checkpoint turns it into the one-line StreamtagError."""


class NotCheckpoint(NotPlain):
    """The file is some other kind of file (an .npz, an archive, random bytes): harmless, just not weights."""


_DTYPE_CODES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1", "?"}


class _Dtype:
    """Stand-in for `numpy.dtype(code, align, copy)` plus its `__setstate__`: plain numeric dtypes only."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True):
        if not isinstance(code, str) or code not in _DTYPE_CODES:
            raise NotPlain(f"numpy dtype {code!r}")
        self.code = code
        self.order = "<"

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags): only simple dtypes.
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None):
            raise NotPlain("a structured numpy dtype")
        self.order = {"=": "<" if sys.byteorder == "little" else ">"}.get(state[1], state[1])

    def numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype.newbyteorder(self.order) if dtype.itemsize > 1 else dtype


class _Marker:
    """What `numpy.ndarray` resolves to: only a marker for _reconstruct, not callable, not modifiable."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise NotPlain("it tries to modify a class")


_NDARRAY = _Marker()


class _Array:
    """Stand-in for `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` + `ndarray.__setstate__`."""

    def __init__(self, cls: Any = None, shape: Any = None, code: Any = None):
        if cls is not _NDARRAY:
            raise NotPlain("a numpy array subclass")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise NotPlain("a malformed numpy array record")
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype) or not isinstance(raw, (bytes, bytearray)) or not _is_shape(shape):
            raise NotPlain("a numpy array that is not plain numbers")
        dt = dtype.numpy()
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise NotPlain("a numpy array whose bytes do not match its shape")
        # A read-only view of the pickle's bytes: no second copy of a 300 MB checkpoint.
        self.array = np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C")


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)


def _np_scalar(dtype: Any, raw: Any = None) -> Any:
    """Stand-in for `numpy.core.multiarray.scalar(dtype, bytes)` (numpy numbers in a pickle)."""
    if not isinstance(dtype, _Dtype) or not isinstance(raw, (bytes, bytearray)):
        raise NotPlain("a numpy scalar that is not a plain number")
    dt = dtype.numpy()
    if len(raw) != dt.itemsize:
        raise NotPlain("a malformed numpy scalar")
    return np.frombuffer(raw, dtype=dt)[0].item()


def _latin1(text: Any, encoding: Any = None) -> bytes:
    """Stand-in for `_codecs.encode(text, 'latin1')`, how protocol 2 pickles write bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise NotPlain("_codecs.encode with other arguments")
    return text.encode("latin1")


def _tuple(items: Any = ()) -> tuple:
    """Stand-in for `tuple(...)`: old `paddle.save` writes a tensor as `tuple((name, array))`."""
    if not isinstance(items, (tuple, list)):
        raise NotPlain("tuple() of something other than a tuple")
    return tuple(items)


# PyTorch: storage classes → numpy dtype of their elements ("bf16" is widened to float32 after reading).
_TORCH_STORAGES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "bf16",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}


@dataclass(frozen=True)
class _StorageType:
    code: str

    def __setstate__(self, state: Any) -> None:
        raise NotPlain("it tries to modify a tensor record")

    def numpy(self, byteorder: str) -> np.dtype:
        dtype = np.dtype("<u2" if self.code == "bf16" else self.code)
        return dtype.newbyteorder(">") if byteorder == "big" and dtype.itemsize > 1 else dtype


@dataclass(frozen=True)
class _StorageRef:
    """A persistent id `('storage', type, key, location, numel)`: the bytes live outside the pickle."""
    type: _StorageType
    key: str
    numel: int

    def __setstate__(self, state: Any) -> None:
        raise NotPlain("it tries to modify a tensor record")


@dataclass(frozen=True)
class _TensorRef:
    """What `torch._utils._rebuild_tensor_v2` resolves to; turned into an ndarray once the storages are read."""
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple

    def __setstate__(self, state: Any) -> None:
        raise NotPlain("it tries to modify a tensor record")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _TensorRef:
    if not (isinstance(storage, _StorageRef) and isinstance(offset, int) and offset >= 0 and _is_shape(size)
            and isinstance(stride, tuple) and len(stride) == len(size)
            and all(isinstance(s, int) and s >= 0 for s in stride)):
        raise NotPlain("a malformed tensor record")
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    if not isinstance(data, _TensorRef):
        raise NotPlain("a parameter that is not a tensor")
    return data


class _Stub:
    """Wraps each allowed callable so a pickle's BUILD opcode can't set attributes on it (or on the classes and
    functions of this module): BUILD calls `__setstate__`, which refuses."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise NotPlain("it tries to modify a class")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _Stub(collections.OrderedDict),
    ("builtins", "tuple"): _Stub(_tuple), ("__builtin__", "tuple"): _Stub(_tuple),
    ("_codecs", "encode"): _Stub(_latin1),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Stub(_Dtype),
    ("numpy.core.multiarray", "_reconstruct"): _Stub(_Array), ("numpy._core.multiarray", "_reconstruct"): _Stub(_Array),
    ("numpy.core.multiarray", "scalar"): _Stub(_np_scalar), ("numpy._core.multiarray", "scalar"): _Stub(_np_scalar),
    ("torch._utils", "_rebuild_tensor_v2"): _Stub(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor"): _Stub(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Stub(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Stub(_rebuild_parameter),
    **{("torch", name): _StorageType(code) for name, code in _TORCH_STORAGES.items()},
}


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler whose every global is one of the data-only stand-ins above.

    `torch=True` accepts PyTorch's persistent storage ids; a `.pdparams` pickle has none.
    """

    def __init__(self, file: Any, torch: bool = False):
        super().__init__(file)
        self.torch = torch
        self.storages: dict[str, _StorageRef] = {}  # every storage the pickle refers to, by key

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise NotPlain(f"it asks for {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        if not self.torch:
            raise NotPlain("it holds a persistent reference")
        # ('storage', storage_type, key, location, numel[, view_metadata (legacy format)])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0 and (len(pid) == 5 or pid[5] is None)):
            raise NotPlain(f"it holds an unknown persistent reference {str(pid)[:60]}")
        ref = _StorageRef(pid[1], pid[2], pid[4])
        if self.storages.setdefault(ref.key, ref) != ref:
            raise NotPlain(f"storage {ref.key!r} is described twice, differently")
        return ref


def _unpickle(data: bytes | Any, torch: bool = False) -> Any:
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    obj = _SafeUnpickler(file, torch=torch).load()
    return _unwrap(obj)


def _unwrap(obj: Any) -> Any:
    """Replace numpy stand-ins by their arrays, recursively through dicts/lists/tuples."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise NotPlain("an empty numpy array record")
        return obj.array
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(v) for v in obj)
    if isinstance(obj, (_Dtype, _StorageType, _Marker, _Stub)):
        raise NotPlain("it holds something other than data")
    return obj


def _resolve_tensors(obj: Any, storage: Callable[[_StorageRef], np.ndarray]) -> Any:
    """Turn every _TensorRef into an ndarray view of its storage (bounds-checked), copied."""
    if isinstance(obj, _TensorRef):
        data = storage(obj.storage)
        if 0 in obj.size:
            past_end = obj.offset > data.size
        else:
            past_end = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) >= data.size
        if past_end or int(np.prod(obj.size, dtype=object)) > data.size:
            raise NotPlain("a tensor that reaches past its storage")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(data[obj.offset:], shape=obj.size,
                                               strides=tuple(s * item for s in obj.stride), writeable=False)
        array = np.array(view)
        if obj.storage.type.code == "bf16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array
    if isinstance(obj, dict):
        return {k: _resolve_tensors(v, storage) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve_tensors(v, storage) for v in obj)
    if isinstance(obj, _StorageRef):
        raise NotPlain("a bare storage")
    return obj


# ---------------------------------------------------------------------------------------------- file formats
ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def _read_torch_zip(path: Path) -> Any:
    """PyTorch's zip checkpoint: `<folder>/data.pkl` + `<folder>/data/<key>` raw storages (+ `byteorder`)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise NotCheckpoint("a zip without exactly one <folder>/data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            with zf.open(prefix + "byteorder") as f:
                byteorder = f.read(16).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise NotPlain(f"an unknown byte order {byteorder!r}")
        with zf.open(pickles[0]) as f:
            obj = _unpickle(f, torch=True)
        cache: dict[str, np.ndarray] = {}

        def storage(ref: _StorageRef) -> np.ndarray:
            if ref.key not in cache:
                record = prefix + "data/" + ref.key
                if "/" in ref.key or record not in names:
                    raise NotPlain(f"a tensor whose storage {ref.key!r} is missing")
                dtype = ref.type.numpy(byteorder)
                with zf.open(record) as f:  # read only what the record claims: no zip-bomb expansion
                    raw = f.read(ref.numel * dtype.itemsize)
                if len(raw) < ref.numel * dtype.itemsize:
                    raise NotPlain(f"storage {ref.key!r} is shorter than it says")
                cache[ref.key] = np.frombuffer(raw, dtype=dtype, count=ref.numel)
            return cache[ref.key]

        return _resolve_tensors(obj, storage)


def _read_legacy_torch(f: Any) -> Any:
    """PyTorch's pre-1.6 format: magic, version, sys_info pickles, the object pickle, the sorted storage keys,
    then each storage as an int64 element count followed by its bytes."""
    magic = _unpickle(f)
    if magic != _LEGACY_TORCH_MAGIC:
        raise NotPlain("a pickle that is not a state dict")  # never reached for .pdparams (caller checks)
    _unpickle(f)  # protocol version
    sys_info = _unpickle(f)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise NotPlain("a big-endian legacy checkpoint")
    unpickler = _SafeUnpickler(f, torch=True)
    obj = unpickler.load()
    keys = _unpickle(f)
    if not (isinstance(keys, list) and all(k in unpickler.storages for k in keys)):
        raise NotPlain("a malformed storage key list")
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8).ljust(8, b"\0"))
        dtype = unpickler.storages[key].type.numpy("little")
        if not 0 <= numel <= 1 << 40:
            raise NotPlain("a legacy storage with an impossible size")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise NotPlain("a legacy checkpoint cut short")
        storages[key] = np.frombuffer(raw, dtype=dtype)

    def storage(ref: _StorageRef) -> np.ndarray:
        if ref.key not in storages:
            raise NotPlain(f"a tensor whose storage {ref.key!r} is missing")
        return storages[ref.key]

    return _resolve_tensors(_unwrap(obj), storage)


def read_pickled(path: Path) -> tuple[Any, str]:
    """The file's object tree (dicts of ndarrays) and its format: 'pth' or 'pdparams'."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(ZIP_MAGIC):
        return _read_torch_zip(path), "pth"
    if head[:1] == b"\x80":
        with open(path, "rb") as f:
            if head[2:3] == b"\x8a":  # LONG1: the legacy torch magic number opens the file
                return _read_legacy_torch(f), "pth"
            return _unpickle(f), "pdparams"
    if head[257:262] == b"ustar" or head[:2] == b"\x1f\x8b":
        raise NotCheckpoint("an archive; `streamtag weights import` takes the checkpoint out of it")
    raise NotCheckpoint("neither a PyTorch zip nor a pickle")


# ---------------------------------------------------------------------------------------------- archives
def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "has a '..' component"
    if member.issym() or member.islnk():
        return "is a link"
    if member.isdev() or member.isfifo():
        return "is a device or fifo"
    if not (member.isreg() or member.isdir()):
        return "is not a regular file or folder"
    return None


def extract_member(archive: str | os.PathLike, member: str, dest: str | os.PathLike,
                   label: str | None = None) -> None:
    """Copy the one regular file named `member` (any folder) out of a `.tar.gz` into `dest`.

    The whole archive is refused if any member has an absolute path, a `..` component, is a link or a device:
    nothing is written outside `dest`, and only `member` is written at all.
    """
    label = label or str(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                reason = _unsafe_reason(m)
                if reason:
                    raise StreamtagError(f"{label}: refusing the archive: member {m.name!r} {reason}")
            found = [m for m in members if m.isreg() and m.name.replace("\\", "/").rsplit("/", 1)[-1] == member]
            if len(found) != 1:
                raise StreamtagError(f"{label}: expected one {member} in the archive, found {len(found)}; "
                                     "is this the right archive for --model?")
            src = tar.extractfile(found[0])
            assert src is not None
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
        raise StreamtagError(f"{label}: broken or truncated archive ({type(e).__name__}: {e}); "
                             "download it again") from None


def zlib_error() -> type[Exception]:
    import zlib
    return zlib.error
