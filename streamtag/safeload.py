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
import math
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
from typing import Any, BinaryIO, Callable, Collection

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
        if len(raw) != math.prod(shape) * dt.itemsize:
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


class _Budget:
    """Work a pickle may make us do beyond reading its own bytes.

    The unpickler itself does work linear in the pickle's length (each opcode builds at most one object, and the
    memo shares objects rather than copying them), but the stand-ins copy: `_codecs.encode` of a memoised string,
    `tuple()` or `OrderedDict()` of a memoised list can be called again and again on the same big object, a few
    bytes per call. Every element or byte they produce is charged here, and the total may not exceed a small
    multiple of the file's size, so a few hundred bytes can never make gigabytes.
    """

    def __init__(self, limit: int):
        self.left = limit

    def charge(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise NotPlain("it makes more data than the file holds (a decompression or copy bomb)")


class _Stub:
    """Wraps each allowed callable so a pickle's BUILD opcode can't set attributes on it (or on the classes and
    functions of this module): BUILD calls `__setstate__`, which refuses. Calls are charged to the unpickler's
    budget by the size of what they copy."""

    __slots__ = ("fn", "budget")

    def __init__(self, fn: Callable[..., Any], budget: _Budget | None = None):
        self.fn = fn
        self.budget = budget

    def __call__(self, *args: Any) -> Any:
        if self.budget is not None:
            self.budget.charge(1 + sum(len(a) for a in args if isinstance(a, (str, bytes, list, tuple, dict))))
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


class _SafeUnpickler(pickle._Unpickler):  # noqa: SLF001
    """An unpickler whose every global is one of the data-only stand-ins above.

    `torch=True` accepts PyTorch's persistent storage ids; a `.pdparams` pickle has none. It reads from memory
    (`io.BytesIO`), so a length the pickle declares can never make it allocate more than the bytes really there.
    It is the pure-Python unpickler on purpose: the C one keeps its memo in an array indexed by the pickle's own
    numbers, so a 5-byte `LONG_BINPUT 1349674340` allocated 10 GB (a fuzzing finding); this one's memo is a dict.
    Checkpoints hold few opcodes (the tensor bytes are a handful of long strings), so it is no slower in practice.
    """

    def __init__(self, file: io.BytesIO, budget: _Budget, torch: bool = False):
        super().__init__(file)
        self.torch = torch
        self.budget = budget
        self.storages: dict[str, _StorageRef] = {}  # every storage the pickle refers to, by key

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = _ALLOWED[(module, name)]
        except KeyError:
            raise NotPlain(f"it asks for {module}.{name}") from None
        return _Stub(found.fn, self.budget) if isinstance(found, _Stub) else found

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


# A plain checkpoint is a dict of arrays, maybe inside one or two dicts ({"model": {...}}), tensors maybe inside a
# (name, array) tuple: a handful of levels. Anything deeper, or with more containers than this, is not a checkpoint.
MAX_DEPTH = 16
MAX_NODES = 1_000_000


def _unpickle(data: bytes | io.BytesIO, torch: bool = False, budget: _Budget | None = None) -> Any:
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    budget = budget or _Budget(_budget_for(len(file.getbuffer())))
    obj = _SafeUnpickler(file, budget, torch=torch).load()
    return _unwrap(obj)


def _budget_for(size: int) -> int:
    return 2 * size + (1 << 20)


def _walk(obj: Any, leaf: Callable[[Any], Any]) -> Any:
    """Rebuild `obj` with `leaf` applied to every non-container, keeping shared objects shared.

    A pickle's memo lets a list hold the previous list twice, n times over: 2ⁿ paths to a few hundred objects. Each
    object is visited once (memo by id), so the work is linear in the objects the pickle really made; nesting and
    the number of containers are bounded, so a deep or huge structure is refused with one line instead of a
    RecursionError or minutes of work.
    """
    memo: dict[int, Any] = {}
    nodes = 0

    def visit(item: Any, depth: int) -> Any:
        nonlocal nodes
        key = id(item)
        if key in memo:
            return memo[key]
        if isinstance(item, (dict, list, tuple)):
            nodes += 1
            if depth > MAX_DEPTH or nodes > MAX_NODES:
                raise NotPlain(f"nested deeper than {MAX_DEPTH} levels or more than {MAX_NODES} containers")
            if isinstance(item, dict):
                out: Any = {k: visit(v, depth + 1) for k, v in item.items()}
            else:
                out = type(item)(visit(v, depth + 1) for v in item)
        else:
            out = leaf(item)
        memo[key] = out
        return out

    return visit(obj, 0)


def _unwrap_leaf(obj: Any) -> Any:
    if isinstance(obj, _Array):
        if obj.array is None:
            raise NotPlain("an empty numpy array record")
        return obj.array
    if isinstance(obj, (_Dtype, _StorageType, _Marker, _Stub)):
        raise NotPlain("it holds something other than data")
    return obj


def _unwrap(obj: Any) -> Any:
    """Replace numpy stand-ins by their arrays, through dicts/lists/tuples (shared objects stay shared)."""
    return _walk(obj, _unwrap_leaf)


def _resolve_tensors(obj: Any, storage: Callable[[_StorageRef], np.ndarray], limit: int) -> Any:
    """Turn every _TensorRef into an ndarray copied out of its storage (bounds-checked).

    Tensors may overlap in a storage (views), so `limit` caps the bytes all the copies add up to: many tensors
    viewing one big storage cannot multiply it.
    """
    left = limit

    def leaf(item: Any) -> Any:
        nonlocal left
        if isinstance(item, _StorageRef):
            raise NotPlain("a bare storage")
        if not isinstance(item, _TensorRef):
            return item
        data = storage(item.storage)
        if 0 in item.size:
            past_end = item.offset > data.size
        else:
            past_end = item.offset + sum((n - 1) * s for n, s in zip(item.size, item.stride)) >= data.size
        count = math.prod(item.size)
        if past_end or count > data.size:
            raise NotPlain("a tensor that reaches past its storage")
        left -= count * data.itemsize
        if left < 0:
            raise NotPlain("its tensors add up to more data than the file holds")
        view = np.lib.stride_tricks.as_strided(data[item.offset:], shape=item.size,
                                               strides=tuple(s * data.itemsize for s in item.stride), writeable=False)
        array = np.array(view)
        if item.storage.type.code == "bf16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array

    return _walk(obj, leaf)


# ---------------------------------------------------------------------------------------------- file formats
ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C

# Sizes we accept. CNN14's checkpoints are 330 MB; a day-long recording's scores are about 600 MB.
MAX_CHECKPOINT_BYTES = 2 << 30
MAX_PICKLE_IN_ZIP = 64 << 20     # torch's data.pkl holds names and shapes, never tensor bytes
MAX_ARCHIVE_BYTES = 2 << 30
MAX_UNPACKED_BYTES = 4 << 30     # what a zip or tar may expand to, in all
MAX_RATIO = 100                  # unpacked / packed: floats compress ~1.1×; zip bombs ~1000×
MAX_MEMBERS = 100_000
WEIGHTS_HINT = "pass a .pdparams or .pth checkpoint"


_ZIP_FLAGS_READ = 0x0E | 0x08 | 0x800  # deflate options, data descriptor, UTF-8 names


def check_zip(infos: list[zipfile.ZipInfo], archive_size: int) -> None:
    """Every declared size in a zip checked against what the file can really hold, before anything is inflated:
    member count, total packed bytes ≤ file size (members may not overlap, the "overlapping zip bomb"), each
    member's unpacked size ≤ MAX_RATIO × its packed size, all members ≤ MAX_UNPACKED_BYTES unpacked. zipfile
    itself stops inflating a member at its declared size and checks its CRC."""
    if len(infos) > MAX_MEMBERS:
        raise NotPlain(f"a zip of {len(infos)} members (more than {MAX_MEMBERS})")
    names = set()
    for info in infos:
        if info.filename in names:
            raise NotPlain(f"a zip with two members named {info.filename!r}")
        names.add(info.filename)
        if info.flag_bits & 0x1:
            raise NotPlain(f"member {info.filename!r} is encrypted")
        if info.flag_bits & ~_ZIP_FLAGS_READ:
            raise NotPlain(f"member {info.filename!r} uses zip features streamtag does not read (flags "
                           f"{info.flag_bits:#x})")
        if info.extract_version > zipfile.MAX_EXTRACT_VERSION:
            raise NotPlain(f"member {info.filename!r} needs zip version {info.extract_version / 10:.1f}")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):  # what torch and numpy write
            raise NotPlain(f"member {info.filename!r} uses compression method {info.compress_type}, not stored "
                           "or deflated")
        if info.file_size > max(MAX_RATIO * info.compress_size, info.compress_size + (64 << 10)):
            raise NotPlain(f"member {info.filename!r} claims to unpack {info.compress_size} bytes into "
                           f"{info.file_size} (more than {MAX_RATIO}×: a zip bomb)")
    if sum(i.compress_size for i in infos) > archive_size:
        raise NotPlain("zip members that add up to more than the file (overlapping members)")
    if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
        raise NotPlain(f"a zip that unpacks to more than {MAX_UNPACKED_BYTES >> 30} GB")


def open_zip(f: BinaryIO, size: int) -> zipfile.ZipFile:
    """A zip whose directory passed `check_zip` (zipfile refuses features it lacks with NotImplementedError)."""
    try:
        zf = zipfile.ZipFile(f)
    except NotImplementedError as e:
        raise NotPlain(f"a zip feature streamtag does not read ({e})") from None
    try:
        check_zip(zf.infolist(), size)
    except BaseException:
        zf.close()
        raise
    return zf


def _read_torch_zip(f: BinaryIO, size: int) -> Any:
    """PyTorch's zip checkpoint: `<folder>/data.pkl` + `<folder>/data/<key>` raw storages (+ `byteorder`)."""
    with open_zip(f, size) as zf:
        infos = zf.infolist()
        members = {i.filename: i for i in infos}
        pickles = [n for n in members if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise NotCheckpoint("a zip without exactly one <folder>/data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in members:
            with zf.open(prefix + "byteorder") as b:
                byteorder = b.read(16).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise NotPlain(f"an unknown byte order {byteorder!r}")
        if members[pickles[0]].file_size > MAX_PICKLE_IN_ZIP:
            raise NotPlain(f"a data.pkl of more than {MAX_PICKLE_IN_ZIP >> 20} MB")
        obj = _unpickle(zf.read(pickles[0]), torch=True, budget=_Budget(_budget_for(size)))
        cache: dict[str, np.ndarray] = {}

        def storage(ref: _StorageRef) -> np.ndarray:
            if ref.key not in cache:
                record = members.get(prefix + "data/" + ref.key)
                if "/" in ref.key or record is None:
                    raise NotPlain(f"a tensor whose storage {ref.key!r} is missing")
                dtype = ref.type.numpy(byteorder)
                need = ref.numel * dtype.itemsize
                if record.file_size < need:
                    raise NotPlain(f"storage {ref.key!r} is shorter than it says")
                with zf.open(record) as r:  # read only what the record claims: no zip-bomb expansion
                    raw = r.read(need)
                if len(raw) < need:
                    raise NotPlain(f"storage {ref.key!r} is shorter than it says")
                cache[ref.key] = np.frombuffer(raw, dtype=dtype, count=ref.numel)
            return cache[ref.key]

        return _resolve_tensors(obj, storage, limit=sum(i.file_size for i in infos) + (1 << 20))


def _read_legacy_torch(data: bytes) -> Any:
    """PyTorch's pre-1.6 format: magic, version, sys_info pickles, the object pickle, the sorted storage keys,
    then each storage as an int64 element count followed by its bytes. Read from memory: a count can never make us
    allocate more than the bytes that follow it."""
    f = io.BytesIO(data)
    budget = _Budget(_budget_for(len(data)))
    magic = _unpickle(f, budget=budget)
    if magic != _LEGACY_TORCH_MAGIC:
        raise NotPlain("a pickle that is not a state dict")  # never reached for .pdparams (caller checks)
    _unpickle(f, budget=budget)  # protocol version
    sys_info = _unpickle(f, budget=budget)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise NotPlain("a big-endian legacy checkpoint")
    unpickler = _SafeUnpickler(f, budget, torch=True)
    obj = _unwrap(unpickler.load())
    keys = _unpickle(f, budget=budget)
    if not (isinstance(keys, list) and all(isinstance(k, str) and k in unpickler.storages for k in keys)):
        raise NotPlain("a malformed storage key list")
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        head = f.read(8)
        if len(head) != 8:
            raise NotPlain("a legacy checkpoint cut short")
        (numel,) = struct.unpack("<q", head)
        dtype = unpickler.storages[key].type.numpy("little")
        if not 0 <= numel * dtype.itemsize <= len(data) - f.tell():
            raise NotPlain(f"legacy storage {key!r} declares more bytes than the file holds")
        storages[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype)

    def storage(ref: _StorageRef) -> np.ndarray:
        if ref.key not in storages:
            raise NotPlain(f"a tensor whose storage {ref.key!r} is missing")
        return storages[ref.key]

    return _resolve_tensors(obj, storage, limit=len(data) + (1 << 20))


def read_pickled(path: str | os.PathLike) -> tuple[Any, str]:
    """The file's object tree (dicts of ndarrays) and its format: 'pth' or 'pdparams'.

    The file is first checked to be a regular file of at most MAX_CHECKPOINT_BYTES (StreamtagError otherwise).
    """
    from streamtag.paths import open_input

    with open_input(path, "weights file", WEIGHTS_HINT, MAX_CHECKPOINT_BYTES) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(262)
        f.seek(0)
        if head.startswith(ZIP_MAGIC):
            return _read_torch_zip(f, size), "pth"
        if head[:1] == b"\x80":
            data = f.read()
            if head[2:3] == b"\x8a":  # LONG1: the legacy torch magic number opens the file
                return _read_legacy_torch(data), "pth"
            return _unpickle(data), "pdparams"
    if head[257:262] == b"ustar" or head[:2] == b"\x1f\x8b":
        raise NotCheckpoint("an archive; `streamtag weights import` takes the checkpoint out of it")
    raise NotCheckpoint("neither a PyTorch zip nor a pickle")


# ---------------------------------------------------------------------------------------------- npz
NPZ_HINT = "pass an .npz written by `streamtag tag`"
MAX_NPZ_BYTES = 4 << 30


def read_npz(path: str | os.PathLike, hint: str = NPZ_HINT,
             only: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Every array of an `.npz`, read as data: never unpickled, every size checked before it is allocated.

    `np.load` trusts the `.npy` headers: a shape of 10¹² elements is allocated before a byte is read (the
    `_ArrayMemoryError`), and a zip bomb is inflated whole. Here each member's header shape × itemsize must equal
    the member's declared size exactly, the zip's declared sizes must fit the file (`check_zip`), object and
    structured dtypes are refused, and a member that is not an `.npy` array is an error, not a bytes value.
    `only` reads just those arrays (the others are still checked by their declared sizes).
    """
    from streamtag.paths import open_input

    name = str(path)
    with open_input(path, "result file", hint, MAX_NPZ_BYTES) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            if not zipfile.is_zipfile(f):  # (it raises BadZipFile itself for some broken end records)
                raise StreamtagError(f"{name}: not an .npz file (not a zip archive); {hint}")
            f.seek(0)
            with open_zip(f, size) as zf:
                arrays = {}
                for info in zf.infolist():
                    key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                    if only is not None and key not in only:
                        continue
                    with zf.open(info) as member:
                        arrays[key] = _read_npy(member, info, name, hint)
                return arrays
        except NotPlain as e:
            raise StreamtagError(f"{name}: refusing the npz: {e}; {hint}") from None
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib_error(), struct.error) as e:
            raise StreamtagError(f"{name}: unreadable npz ({' '.join(f'{type(e).__name__}: {e}'.split())[:160]}); "
                                 f"{hint}") from None


def _read_npy(member: Any, info: zipfile.ZipInfo, name: str, hint: str) -> np.ndarray:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(member)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(member)
        else:
            raise ValueError(f"npy format version {version}")
    except ValueError as e:
        raise StreamtagError(f"{name}: member {info.filename!r} is not an .npy array ({' '.join(str(e).split())[:80]}); "
                             f"{hint}") from None
    if dtype.hasobject:
        raise StreamtagError(f"{name}: npz holds an object (pickled) array, which streamtag never loads because "
                             f"unpickling can run code; {hint}")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufcUS":
        raise StreamtagError(f"{name}: member {info.filename!r} has a structured or unusual dtype ({dtype}); {hint}")
    count = math.prod(shape)
    header = member.tell()
    if header + count * dtype.itemsize != info.file_size:
        raise StreamtagError(f"{name}: member {info.filename!r} declares shape {shape} ({count * dtype.itemsize} "
                             f"bytes) but holds {info.file_size - header}; {hint}")
    array = np.empty(count, dtype=dtype)
    view = memoryview(array).cast("B") if count else memoryview(b"")
    done = 0
    while done < len(view):
        n = member.readinto(view[done:])
        if not n:
            raise StreamtagError(f"{name}: member {info.filename!r} is cut short; {hint}")
        done += n
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


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


class _Limited(io.RawIOBase):
    """A read-only stream that refuses to yield more than `limit` bytes: wrapped around a decompressor, it bounds
    what a `.tar.gz` can make us inflate, headers included (a pax header may declare gigabytes)."""

    def __init__(self, stream: Any, limit: int):
        self.stream, self.left = stream, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(min(len(buffer), self.left + 1))
        self.left -= len(data)
        if self.left < 0:
            raise NotPlain(f"it unpacks to more than {MAX_RATIO}× its size (or {MAX_UNPACKED_BYTES >> 30} GB)")
        buffer[:len(data)] = data
        return len(data)


def _decompressed(raw: BinaryIO) -> Any:
    """The tar stream inside gzip/bzip2/xz (by magic number), or the file itself."""
    head = raw.read(6)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        import gzip
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head[:3] == b"BZh":
        import bz2
        return bz2.BZ2File(raw)
    if head == b"\xfd7zXZ\x00":
        import lzma
        return lzma.LZMAFile(raw)
    return raw


def extract_member(archive: str | os.PathLike, member: str, dest: str | os.PathLike,
                   label: str | None = None) -> None:
    """Copy the one regular file named `member` (any folder) out of a `.tar.gz` into `dest`.

    The archive is read as a stream, every header checked as it comes: the whole archive is refused if any member
    has an absolute path, a `..` component, is a link or a device, if there are more than MAX_MEMBERS, or if it
    unpacks to more than MAX_RATIO × its size; `dest` is then removed. Nothing is written outside `dest`, and only
    `member` is written at all.
    """
    from streamtag.paths import open_input

    label = label or str(archive)
    dest = Path(dest)
    found = 0
    try:
        with open_input(archive, "archive", "pass the .tar.gz as downloaded", MAX_ARCHIVE_BYTES) as raw:
            limit = min(MAX_RATIO * os.fstat(raw.fileno()).st_size + (16 << 20), MAX_UNPACKED_BYTES)
            stream = io.BufferedReader(_Limited(_decompressed(raw), limit), 1 << 16)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for count, m in enumerate(tar, 1):
                    reason = _unsafe_reason(m)
                    if reason:
                        raise StreamtagError(f"{label}: refusing the archive: member {m.name!r} {reason}")
                    if count > MAX_MEMBERS:
                        raise StreamtagError(f"{label}: refusing the archive: more than {MAX_MEMBERS} members")
                    if m.isreg() and m.name.replace("\\", "/").rsplit("/", 1)[-1] == member:
                        found += 1
                        if found == 1:
                            src = tar.extractfile(m)
                            assert src is not None
                            with src, open(dest, "wb") as out:
                                shutil.copyfileobj(src, out, 1 << 20)
        if found != 1:
            raise StreamtagError(f"{label}: expected one {member} in the archive, found {found}; "
                                 "is this the right archive for --model?")
    except NotPlain as e:
        dest.unlink(missing_ok=True)
        raise StreamtagError(f"{label}: refusing the archive: {e}") from None
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib_error(), _lzma_error()) as e:
        dest.unlink(missing_ok=True)
        raise StreamtagError(f"{label}: broken or truncated archive ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:120]}); download it again") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def zlib_error() -> type[Exception]:
    import zlib
    return zlib.error


def _lzma_error() -> type[Exception]:
    import lzma
    return lzma.LZMAError
