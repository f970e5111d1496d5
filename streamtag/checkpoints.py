"""Pretrained PANNs checkpoints: the registry, the cache, and readers that treat weight files as data.

A `.pth` or `.pdparams` file is a pickle, and unpickling runs whatever callables the file names. So nothing here
calls `pickle.load`, `paddle.load` or `torch.load`: a restricted unpickler resolves only the handful of names a
checkpoint is made of (numpy's array/dtype rebuild records, PyTorch's tensor-rebuild and storage records, OrderedDict)
to stand-ins written here that build numpy arrays from raw bytes and can do nothing else. Any other name ends the
read with "not a plain checkpoint".

Downloads go through pooch's HTTP downloader into a private temporary folder under the cache; a file is renamed into
the cache only once its md5 (PaddleSpeech archives) and its structure (every tensor the arch needs, right shapes) are
verified, so an interrupted or corrupt download never leaves anything behind.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import re
import shutil
import struct
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.utils import atomic_path, streamtag_home

ARCHS = ("cnn14", "cnn10", "cnn6")
MIRROR_ENV = "STREAMTAG_MIRROR"  # base URL serving every registry file by its file name (tests, mirrors)


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Checkpoint:
    """One downloadable checkpoint. `md5` is of the download (the archive for PaddleSpeech), None when the source
    publishes none (then the structure check is the verification); `member` is the file to take out of an archive."""

    name: str
    arch: str
    source: str
    url: str
    filename: str          # what the cache keeps: weights/<filename>
    md5: str | None = None
    size: int | None = None  # bytes of the download, None when unknown
    member: str | None = None

    @property
    def download_name(self) -> str:
        """The file name at the end of the URL (without a query string)."""
        return self.url.split("?", 1)[0].rsplit("/", 1)[-1]


_PADDLESPEECH = "https://paddlespeech.bj.bcebos.com/cls/"
_ZENODO = "https://zenodo.org/record/3987831/files/"


def _paddlespeech(arch: str, md5: str, size: int | None) -> Checkpoint:
    return Checkpoint(name=f"{arch}-paddlespeech", arch=arch, source="PaddleSpeech",
                      url=f"{_PADDLESPEECH}panns_{arch}.tar.gz", filename=f"{arch}-paddlespeech.pdparams",
                      md5=md5, size=size, member=f"{arch}.pdparams")


def _authors(arch: str, file: str, md5: str, size: int | None) -> Checkpoint:
    return Checkpoint(name=f"{arch}-authors", arch=arch, source="Zenodo (authors)",
                      url=f"{_ZENODO}{file}?download=1", filename=f"{arch}-authors.pth", md5=md5, size=size)


# The first entry of each arch is its default (the PaddleSpeech archive). md5s: PaddleSpeech's own registry
# (paddlespeech/resource/pretrained_models.py) and the ones Zenodo shows for record 3987831; every file is also
# verified by structure. Sizes are given where a published figure was found (None shows as "?").
REGISTRY: dict[str, Checkpoint] = {c.name: c for c in (
    _paddlespeech("cnn14", "e3b9b5614a1595001161d0ab95edee97", None),
    _paddlespeech("cnn10", "cb8427b22176cc2116367d14847f5413", None),
    _paddlespeech("cnn6", "4cf09194a95df024fd12f84712cf0f9c", None),
    _authors("cnn14", "Cnn14_mAP=0.431.pth", "541141fa2ee191a88f24a3219fff024e", 327_428_481),
    _authors("cnn10", "Cnn10_mAP=0.380.pth", "bfb1f1f9968938fa8ef4012b8471f5f6", None),
    _authors("cnn6", "Cnn6_mAP=0.343.pth", "e25e26b84585b14c7754c91e48efc9be", None),
)}


def default_checkpoint(arch: str) -> Checkpoint:
    """The registry entry `--model ARCH` uses when no `--weights` is given."""
    return next(c for c in REGISTRY.values() if c.arch == arch)


def find_checkpoint(name: str) -> Checkpoint:
    """A registry entry by name; a bare arch name (`cnn14`) means that arch's default."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in ARCHS:
        return default_checkpoint(name)
    raise StreamtagError(f"no checkpoint named {name!r}; choose one of {', '.join(REGISTRY)} "
                         "(see `streamtag weights list`)")


def checkpoint_url(entry: Checkpoint) -> str:
    """The entry's URL, or its file name under $STREAMTAG_MIRROR when that is set."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return mirror.rstrip("/") + "/" + entry.download_name
    return entry.url


def weights_dir() -> Path:
    return streamtag_home() / "weights"


def cache_path(entry: Checkpoint) -> Path:
    return weights_dir() / entry.filename


# ---------------------------------------------------------------------------------------------- safe unpickling
class _NotPlain(Exception):
    """Raised inside the unpickler; read_checkpoint turns it into the one-line StreamtagError."""


class _NotCheckpoint(_NotPlain):
    """The file is some other kind of file (an .npz, an archive, random bytes): harmless, just not weights."""


_DTYPE_CODES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1", "?"}


class _Dtype:
    """Stand-in for `numpy.dtype(code, align, copy)` plus its `__setstate__`: plain numeric dtypes only."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True):
        if not isinstance(code, str) or code not in _DTYPE_CODES:
            raise _NotPlain(f"numpy dtype {code!r}")
        self.code = code
        self.order = "<"

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags): only simple dtypes.
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None):
            raise _NotPlain("a structured numpy dtype")
        self.order = {"=": "<" if sys.byteorder == "little" else ">"}.get(state[1], state[1])

    def numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype.newbyteorder(self.order) if dtype.itemsize > 1 else dtype


class _Marker:
    """What `numpy.ndarray` resolves to: only a marker for _reconstruct, not callable, not modifiable."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _NotPlain("it tries to modify a class")


_NDARRAY = _Marker()


class _Array:
    """Stand-in for `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` + `ndarray.__setstate__`."""

    def __init__(self, cls: Any = None, shape: Any = None, code: Any = None):
        if cls is not _NDARRAY:
            raise _NotPlain("a numpy array subclass")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _NotPlain("a malformed numpy array record")
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype) or not isinstance(raw, (bytes, bytearray)) or not _is_shape(shape):
            raise _NotPlain("a numpy array that is not plain numbers")
        dt = dtype.numpy()
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise _NotPlain("a numpy array whose bytes do not match its shape")
        # A read-only view of the pickle's bytes: no second copy of a 300 MB checkpoint.
        self.array = np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C")


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)


def _np_scalar(dtype: Any, raw: Any = None) -> Any:
    """Stand-in for `numpy.core.multiarray.scalar(dtype, bytes)` (numpy numbers in a pickle)."""
    if not isinstance(dtype, _Dtype) or not isinstance(raw, (bytes, bytearray)):
        raise _NotPlain("a numpy scalar that is not a plain number")
    dt = dtype.numpy()
    if len(raw) != dt.itemsize:
        raise _NotPlain("a malformed numpy scalar")
    return np.frombuffer(raw, dtype=dt)[0].item()


def _latin1(text: Any, encoding: Any = None) -> bytes:
    """Stand-in for `_codecs.encode(text, 'latin1')`, how protocol 2 pickles write bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _NotPlain("_codecs.encode with other arguments")
    return text.encode("latin1")


def _tuple(items: Any = ()) -> tuple:
    """Stand-in for `tuple(...)`: old `paddle.save` writes a tensor as `tuple((name, array))`."""
    if not isinstance(items, (tuple, list)):
        raise _NotPlain("tuple() of something other than a tuple")
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
        raise _NotPlain("it tries to modify a tensor record")

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
        raise _NotPlain("it tries to modify a tensor record")


@dataclass(frozen=True)
class _TensorRef:
    """What `torch._utils._rebuild_tensor_v2` resolves to; turned into an ndarray once the storages are read."""
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple

    def __setstate__(self, state: Any) -> None:
        raise _NotPlain("it tries to modify a tensor record")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _TensorRef:
    if not (isinstance(storage, _StorageRef) and isinstance(offset, int) and offset >= 0 and _is_shape(size)
            and isinstance(stride, tuple) and len(stride) == len(size)
            and all(isinstance(s, int) and s >= 0 for s in stride)):
        raise _NotPlain("a malformed tensor record")
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    if not isinstance(data, _TensorRef):
        raise _NotPlain("a parameter that is not a tensor")
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
        raise _NotPlain("it tries to modify a class")


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
            raise _NotPlain(f"it asks for {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        if not self.torch:
            raise _NotPlain("it holds a persistent reference")
        # ('storage', storage_type, key, location, numel[, view_metadata (legacy format)])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0 and (len(pid) == 5 or pid[5] is None)):
            raise _NotPlain(f"it holds an unknown persistent reference {str(pid)[:60]}")
        ref = _StorageRef(pid[1], pid[2], pid[4])
        if self.storages.setdefault(ref.key, ref) != ref:
            raise _NotPlain(f"storage {ref.key!r} is described twice, differently")
        return ref


def _unpickle(data: bytes | Any, torch: bool = False) -> Any:
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    obj = _SafeUnpickler(file, torch=torch).load()
    return _unwrap(obj)


def _unwrap(obj: Any) -> Any:
    """Replace numpy stand-ins by their arrays, recursively through dicts/lists/tuples."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise _NotPlain("an empty numpy array record")
        return obj.array
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(v) for v in obj)
    if isinstance(obj, (_Dtype, _StorageType, _Marker, _Stub)):
        raise _NotPlain("it holds something other than data")
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
            raise _NotPlain("a tensor that reaches past its storage")
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
        raise _NotPlain("a bare storage")
    return obj


# ---------------------------------------------------------------------------------------------- file formats
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def _read_torch_zip(path: Path) -> Any:
    """PyTorch's zip checkpoint: `<folder>/data.pkl` + `<folder>/data/<key>` raw storages (+ `byteorder`)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise _NotCheckpoint("a zip without exactly one <folder>/data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            with zf.open(prefix + "byteorder") as f:
                byteorder = f.read(16).decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise _NotPlain(f"an unknown byte order {byteorder!r}")
        with zf.open(pickles[0]) as f:
            obj = _unpickle(f, torch=True)
        cache: dict[str, np.ndarray] = {}

        def storage(ref: _StorageRef) -> np.ndarray:
            if ref.key not in cache:
                record = prefix + "data/" + ref.key
                if "/" in ref.key or record not in names:
                    raise _NotPlain(f"a tensor whose storage {ref.key!r} is missing")
                dtype = ref.type.numpy(byteorder)
                with zf.open(record) as f:  # read only what the record claims: no zip-bomb expansion
                    raw = f.read(ref.numel * dtype.itemsize)
                if len(raw) < ref.numel * dtype.itemsize:
                    raise _NotPlain(f"storage {ref.key!r} is shorter than it says")
                cache[ref.key] = np.frombuffer(raw, dtype=dtype, count=ref.numel)
            return cache[ref.key]

        return _resolve_tensors(obj, storage)


def _read_legacy_torch(f: Any) -> Any:
    """PyTorch's pre-1.6 format: magic, version, sys_info pickles, the object pickle, the sorted storage keys,
    then each storage as an int64 element count followed by its bytes."""
    magic = _unpickle(f)
    if magic != _LEGACY_TORCH_MAGIC:
        raise _NotPlain("a pickle that is not a state dict")  # never reached for .pdparams (caller checks)
    _unpickle(f)  # protocol version
    sys_info = _unpickle(f)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise _NotPlain("a big-endian legacy checkpoint")
    unpickler = _SafeUnpickler(f, torch=True)
    obj = unpickler.load()
    keys = _unpickle(f)
    if not (isinstance(keys, list) and all(k in unpickler.storages for k in keys)):
        raise _NotPlain("a malformed storage key list")
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8).ljust(8, b"\0"))
        dtype = unpickler.storages[key].type.numpy("little")
        if not 0 <= numel <= 1 << 40:
            raise _NotPlain("a legacy storage with an impossible size")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise _NotPlain("a legacy checkpoint cut short")
        storages[key] = np.frombuffer(raw, dtype=dtype)

    def storage(ref: _StorageRef) -> np.ndarray:
        if ref.key not in storages:
            raise _NotPlain(f"a tensor whose storage {ref.key!r} is missing")
        return storages[ref.key]

    return _resolve_tensors(_unwrap(obj), storage)


def _read_raw(path: Path) -> tuple[Any, str]:
    """The file's object tree (dicts of ndarrays) and its format: 'pth' or 'pdparams'."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return _read_torch_zip(path), "pth"
    if head[:1] == b"\x80":
        with open(path, "rb") as f:
            if head[2:3] == b"\x8a":  # LONG1: the legacy torch magic number opens the file
                return _read_legacy_torch(f), "pth"
            return _unpickle(f), "pdparams"
    if head[257:262] == b"ustar" or head[:2] == b"\x1f\x8b":
        raise _NotCheckpoint("an archive; `streamtag weights import` takes the checkpoint out of it")
    raise _NotCheckpoint("neither a PyTorch zip nor a pickle")


# ---------------------------------------------------------------------------------------------- state dicts
_IGNORED_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")
_META_KEYS = ("StructuredToParameterName@@",)


def _flatten_state(obj: Any) -> dict[str, np.ndarray]:
    """The name → array mapping inside a checkpoint object: a bare state dict, `{"model": ...}` or
    `{"state_dict": ...}`; Paddle's name table and old `(name, array)` tensor tuples are dropped/unpacked."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise _NotCheckpoint("a pickle that is not a state dict")
    state: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or key in _META_KEYS:
            continue
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]
        if not isinstance(value, np.ndarray):
            continue
        if key.startswith(_IGNORED_PREFIXES) or key.endswith("num_batches_tracked"):
            continue
        state[key] = value
    if not state:
        raise _NotCheckpoint("a pickle with no tensors in it")
    return state


def _mismatches(state: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> list[str]:
    problems = []
    for key, shape in shapes.items():
        if key not in state:
            problems.append(f"{key} is missing")
        elif tuple(state[key].shape) != tuple(shape):
            problems.append(f"{key} has shape {tuple(state[key].shape)}, expected {tuple(shape)}")
    return problems


def _to_paddle_names(state: dict[str, np.ndarray], fmt: str) -> dict[str, np.ndarray]:
    from streamtag import models  # imported late: pulls in paddle

    if fmt == "pth" or any(k.endswith(("running_mean", "running_var")) for k in state):
        state = models.torch_to_paddle(state)
        state = {k: v for k, v in state.items()
                 if not (k.startswith(_IGNORED_PREFIXES) or k.endswith("num_batches_tracked"))}
    return state


def verify_state(state: dict[str, np.ndarray], arch: str, source: str) -> dict[str, np.ndarray]:
    """Every tensor `arch` needs, with the right shape, finite, as float32; else a one-line error that names the
    arch the file looks like. Extra tensors are ignored."""
    from streamtag import models

    shapes = models.param_shapes(arch)
    problems = _mismatches(state, shapes)
    if problems:
        for other in ARCHS:
            if other != arch and not _mismatches(state, models.param_shapes(other)):
                raise StreamtagError(f"{source}: looks like a {other} checkpoint, not {arch}; pass --model {other}")
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise StreamtagError(f"{source}: not a {arch} checkpoint: {'; '.join(problems[:2])}{more}; "
                             f"check --model or use a {arch} checkpoint (`streamtag weights list`)")
    out = {}
    for key in shapes:
        value = state[key]
        if value.dtype.kind not in "fiub":
            raise StreamtagError(f"{source}: tensor {key} has dtype {value.dtype}, not numbers")
        value = np.ascontiguousarray(value, dtype=np.float32)
        if not np.isfinite(value).all():
            raise StreamtagError(f"{source}: tensor {key} holds NaN or Inf; the file is corrupt, fetch it again")
        out[key] = value
    return out


def read_checkpoint(path: str | os.PathLike, arch: str, label: str | None = None) -> dict[str, np.ndarray]:
    """The Paddle-named float32 state of `arch` in a `.pdparams` or `.pth` file, read without running any code.

    Strict: a missing or mis-shaped tensor is an error naming the arch the file looks like. `label` is how
    errors name the file (default: its path).
    """
    path = Path(path)
    name = label or str(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise StreamtagError(f"weights file {path} {what}; pass an existing .pdparams/.pth file, "
                             "or leave out --weights to use the registry")
    try:
        obj, fmt = _read_raw(path)
        state = _flatten_state(obj)
    except _NotCheckpoint as e:
        raise StreamtagError(f"{name}: not a .pdparams or .pth checkpoint ({e}); pass a checkpoint file") from None
    except _NotPlain as e:
        raise StreamtagError(f"{name}: not a plain checkpoint ({e}); refusing to load it — use a .pdparams "
                             "or PyTorch .pth state dict") from None
    except zipfile.BadZipFile as e:
        raise StreamtagError(f"{name}: broken or truncated zip ({e}); download the checkpoint again") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, OverflowError, MemoryError, RecursionError, zlib_error()) as e:
        raise StreamtagError(f"{name}: corrupt or truncated checkpoint ({type(e).__name__}: {str(e)[:80]}); "
                             "download it again") from None
    except OSError as e:
        raise StreamtagError(f"{name}: cannot read ({e.strerror or e}); check the path and permissions") from None
    return verify_state(_to_paddle_names(state, fmt), arch, name)


def zlib_error() -> type[Exception]:
    import zlib
    return zlib.error


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


# ---------------------------------------------------------------------------------------------- download
class _RichDownloadBar:
    """The progress-bar object pooch's HTTPDownloader drives (total/update/reset/close), drawn with rich."""

    def __init__(self, label: str, intro: str = ""):
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self._label = label
        self._intro = intro  # said once the server answers, so an offline run prints only its one error line
        self._task: Any = None
        self._total = 0
        self._final = False

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = int(value or 0)
        if self._task is None:
            if self._intro:
                self._progress.console.print(self._intro, highlight=False, soft_wrap=True)
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=self._total or None)
        else:
            self._progress.update(self._task, total=self._total or None)

    def update(self, n: int) -> None:
        if self._task is None:
            self.total = 0
        if self._final:  # pooch ends with reset() + update(total): set the count, keep the timing
            self._progress.update(self._task, completed=n)
        else:
            self._progress.update(self._task, advance=n)

    def reset(self) -> None:
        self._final = True

    def close(self) -> None:
        if self._task is not None:  # never started (no response): draw nothing
            self._progress.stop()


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    cut = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected", text)
    if cut:
        return f"connection closed after {cut.group(1)} bytes, {cut.group(2)} more expected"
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Read timed out)", r"(Connection broken[^'\")]*)",
                    r"(\d{3} (?:Client|Server) Error: [^\n]+?) for url"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip().rstrip(",:")
    return type(exc).__name__


def _download(url: str, dest: Path, label: str, intro: str) -> None:
    """Stream `url` into `dest` with a bytes/speed progress bar; network errors → _FetchFailed."""
    import pooch
    import requests

    downloader = pooch.HTTPDownloader(progressbar=_RichDownloadBar(label, intro), timeout=30)
    bar = downloader.progressbar
    try:
        downloader(url, str(dest), None)
    except requests.exceptions.HTTPError as e:
        raise _FetchFailed(url, _short_reason(e)) from None
    except (requests.exceptions.RequestException, OSError) as e:
        raise _FetchFailed(url, _short_reason(e)) from None
    finally:
        bar.close()


class _FetchFailed(Exception):
    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


def _md5(path: Path) -> str:
    import pooch

    return pooch.file_hash(str(path), alg="md5")


def _say(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(message, soft_wrap=True)


def fetch(entry: Checkpoint) -> Path:
    """Download, verify (md5 and structure) and rename `entry` into the cache; returns the cached path.

    Work happens in a private temporary folder beside the cache, deleted on any failure, so the cache only ever
    holds verified files. Offline → StreamtagError exit code 2 naming the URL and `streamtag weights import`.
    """
    return _fetch(entry)[0]


def _fetch(entry: Checkpoint) -> tuple[Path, dict[str, np.ndarray]]:
    url = checkpoint_url(entry)
    dest = cache_path(entry)
    _prepare_cache(dest.parent)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        download = Path(tmp) / entry.download_name
        try:
            _download(url, download, entry.download_name, f"downloading {entry.name} from {url}")
        except _FetchFailed as e:
            raise StreamtagError(
                f"could not download {e.url} ({e.reason}); fetch that file on a machine with internet, copy it "
                f"here and run `streamtag weights import PATH --model {entry.arch}`", exit_code=2) from None
        if entry.md5:
            got = _md5(download)
            if got != entry.md5:
                raise StreamtagError(f"{url}: md5 {got} does not match the registry's {entry.md5} (corrupt or "
                                     "changed download); nothing was kept — try again or `streamtag weights import`")
        state = _install(download, entry, dest, url)
    _say(f"saved {entry.name} to {dest}")
    return dest, state


def _prepare_cache(folder: Path) -> None:
    """Create the cache folder (one clear error if we can't) and sweep temporaries a killed run left behind."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-")
        probe.close()
    except OSError as e:
        raise StreamtagError(f"cannot write to the weights cache {folder} ({e.strerror or e}); "
                             "set STREAMTAG_HOME to a writable folder") from None
    day_ago = time.time() - 24 * 3600
    for stale in [*folder.glob(".fetch-*"), *folder.glob(".*.tmp")]:
        try:
            if stale.stat().st_mtime < day_ago:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        except OSError:
            pass


def _install(file: Path, entry: Checkpoint, dest: Path, label: str) -> dict[str, np.ndarray]:
    """Take the checkpoint out of `file` (an archive or the checkpoint itself), verify it, move it to `dest`;
    returns the verified state. `label` names the file in errors (the URL or the user's path, not our temporary
    name)."""
    with atomic_path(dest) as tmp:
        if _is_archive(file):
            member = entry.member or f"{entry.arch}.pdparams"
            extract_member(file, member, tmp, label)
            label = f"{label} ({member})"
        else:
            shutil.copyfile(file, tmp)
        state = read_checkpoint(tmp, entry.arch, label)  # raises on any structural problem; tmp is then deleted
        os.chmod(tmp, 0o644)
        _write_digest(tmp, dest)
    return state


def _is_archive(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(262)
    return head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00"


def _digest_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _write_digest(file: Path, dest: Path) -> None:
    """A sidecar sha256 so a later run notices a cached file that changed on disk (bit rot, partial copy)."""
    from streamtag.utils import atomic_write_text

    atomic_write_text(_digest_path(dest), file_sha256(file) + "\n")


def _cached_state(entry: Checkpoint) -> tuple[dict[str, np.ndarray], str] | None:
    """The verified state of a cached entry, None if not cached; a cached file that fails verification is
    reported, removed and None returned (so the caller re-fetches)."""
    path = cache_path(entry)
    if not path.is_file():
        return None
    digest = file_sha256(path)
    expected = _digest_path(path).read_text().strip() if _digest_path(path).is_file() else None
    try:
        if expected is not None and expected != digest:
            raise StreamtagError(f"{path}: sha256 differs from when it was cached")
        state = read_checkpoint(path, entry.arch)
    except StreamtagError as e:
        _say(f"[yellow]warning:[/] cached {entry.name} failed verification ({e}); removing it and fetching again")
        path.unlink(missing_ok=True)
        _digest_path(path).unlink(missing_ok=True)
        return None
    return state, digest


def ensure_cached(entry: Checkpoint) -> Path:
    """The cached, verified file of `entry`, fetching it only when missing or failing verification."""
    if _cached_state(entry) is not None:
        return cache_path(entry)
    return fetch(entry)


def is_cached(entry: Checkpoint) -> bool:
    return cache_path(entry).is_file()


def load_state(arch: str, weights: str | os.PathLike | None = None) -> tuple[dict[str, np.ndarray], str]:
    """The Paddle-named state for `arch` and the sha256 of its file (a cache key for exported graphs).

    `weights` is a file path (bypasses the registry); None uses the arch's cached checkpoint (the default entry,
    else any other cached entry of that arch, e.g. one brought in by `streamtag weights import`), fetching the
    default on first use.
    """
    if arch not in ARCHS:
        raise StreamtagError(f"unknown model {arch!r}; choose one of {', '.join(ARCHS)}")
    if weights is not None:
        return read_checkpoint(weights, arch), file_sha256(weights)
    candidates = [default_checkpoint(arch)] + [c for c in REGISTRY.values()
                                               if c.arch == arch and c is not default_checkpoint(arch)]
    for entry in candidates:
        cached = _cached_state(entry)
        if cached is not None:
            return cached
    path, state = _fetch(default_checkpoint(arch))
    return state, file_sha256(path)


def import_checkpoint(path: str | os.PathLike, arch: str) -> tuple[Checkpoint, Path]:
    """Verify a checkpoint fetched elsewhere and copy it atomically into the cache, so later runs find it offline.

    A PaddleSpeech `.tar.gz` (its md5 checked against the registry when it matches one), a `.pdparams` or an
    authors' `.pth`; it is filed under the registry entry of its kind for `arch`.
    """
    source = Path(path)
    if not source.is_file():
        raise StreamtagError(f"{source} does not exist; pass the path of a downloaded .tar.gz, .pdparams or .pth")
    note = ""
    if _is_archive(source):
        entry = next(c for c in REGISTRY.values() if c.arch == arch and c.member)
        if entry.md5 and _md5(source) != entry.md5:
            note = f"{source} is not the registry's {entry.download_name} (md5 differs); its contents verified"
    else:
        with open(source, "rb") as f:
            head = f.read(4)
        is_torch = head.startswith(_ZIP_MAGIC) or head[2:3] == b"\x8a"
        entry = next(c for c in REGISTRY.values() if c.arch == arch and (c.member is None) == is_torch)
    dest = cache_path(entry)
    _prepare_cache(dest.parent)
    try:
        _install(source, entry, dest, str(source))
    except OSError as e:
        raise StreamtagError(f"cannot copy {source} into {dest.parent} ({e.strerror or e}); "
                             "check free space and permissions") from None
    if note:
        _say(f"[yellow]note:[/] {note}")
    return entry, dest
