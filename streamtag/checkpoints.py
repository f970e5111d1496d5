"""Pretrained PANNs checkpoints: the registry, the cache, fetching, and strict verification of what a file holds.

Files are read as data by `safeload` (no pickle.load, paddle.load or torch.load anywhere); this module turns what it
reads into a verified Paddle-named state for one arch.

Downloads go through pooch's HTTP downloader into a private temporary folder under the cache; a file is renamed into
the cache only once its md5 and its structure (every tensor the arch needs, right shapes) are
verified, so an interrupted or corrupt download never leaves anything behind.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import struct
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.paths import input_file, os_reason
from streamtag.safeload import (MAX_ARCHIVE_BYTES, ZIP_MAGIC, NotCheckpoint, NotPlain, extract_member, read_pickled,
                                zlib_error)
from streamtag.utils import atomic_path, file_sha256, streamtag_home

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
        raise NotCheckpoint("a pickle that is not a state dict")
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
        raise NotCheckpoint("a pickle with no tensors in it")
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
    name = label or str(path)
    state, fmt = read_state(path, name)
    return verify_state(_to_paddle_names(state, fmt), arch, name)


def read_state(path: str | os.PathLike, name: str) -> tuple[dict[str, np.ndarray], str]:
    """The name → array mapping in a checkpoint file and its format ('pth' or 'pdparams'), before any arch check;
    every problem is a one-line StreamtagError naming the file as `name` (this is what tests/fuzz exercises)."""
    path = Path(path)
    try:
        obj, fmt = read_pickled(path)
        state = _flatten_state(obj)
    except NotCheckpoint as e:
        raise StreamtagError(f"{name}: not a .pdparams or .pth checkpoint ({e}); pass a checkpoint file") from None
    except NotPlain as e:
        raise StreamtagError(f"{name}: not a plain checkpoint ({e}); refusing to load it — use a .pdparams "
                             "or PyTorch .pth state dict") from None
    except zipfile.BadZipFile as e:
        raise StreamtagError(f"{name}: broken or truncated zip ({e}); download the checkpoint again") from None
    # What the C unpickler raises on malformed opcodes (a wrong-arity call is a TypeError, APPEND on a dict an
    # AttributeError, a missing memo entry a KeyError; a declared length it cannot allocate a MemoryError at once).
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, OverflowError, MemoryError, zlib_error()) as e:
        raise StreamtagError(f"{name}: corrupt or truncated checkpoint ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:80]}); download it again") from None
    except OSError as e:
        raise StreamtagError(f"{name}: cannot read ({os_reason(e, path)}); check the path and permissions") from None
    return state, fmt



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
        raise StreamtagError(f"cannot write to the weights cache {folder} ({os_reason(e)}); "
                             "set STREAMTAG_HOME to a writable directory") from None
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

    atomic_write_text(_digest_path(dest), file_sha256(file, remember=False) + "\n")


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


@dataclass(frozen=True)
class WeightsFile:
    """A checkpoint file of `arch` found on disk and its sha256, not yet read: a warm start whose exported graph is
    cached never needs the tensors (hashing is enough, and the hash itself is remembered by file stamp)."""

    arch: str
    path: Path
    sha256: str

    def state(self) -> dict[str, np.ndarray]:
        """The verified Paddle-named state (reads and checks the whole file)."""
        return read_checkpoint(self.path, self.arch)


def locate_weights(arch: str, weights: str | os.PathLike | None = None) -> WeightsFile:
    """The checkpoint `load_state` would read, without reading it: `weights` if given, else the arch's cached
    registry file (the default entry first, then any other cached one, e.g. imported), fetching the default on
    first use. A cached file whose sha256 no longer matches its sidecar is reported, removed and fetched again."""
    if arch not in ARCHS:
        raise StreamtagError(f"unknown model {arch!r}; choose one of {', '.join(ARCHS)}")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            read_checkpoint(path, arch)  # the one-line error for a missing file or a directory
        try:
            return WeightsFile(arch, path, file_sha256(path))
        except OSError as e:
            raise StreamtagError(f"{path}: cannot read ({e.strerror or e}); check the path and permissions") from None
    default = default_checkpoint(arch)
    for entry in [default] + [c for c in REGISTRY.values() if c.arch == arch and c is not default]:
        path = cache_path(entry)
        if not path.is_file():
            continue
        digest = file_sha256(path)
        expected = _digest_path(path).read_text().strip() if _digest_path(path).is_file() else None
        if expected is None or expected == digest:
            return WeightsFile(arch, path, digest)
        _say(f"[yellow]warning:[/] cached {entry.name} failed verification ({path}: sha256 differs from when it "
             "was cached); removing it and fetching again")
        path.unlink(missing_ok=True)
        _digest_path(path).unlink(missing_ok=True)
    path = fetch(default)
    return WeightsFile(arch, path, file_sha256(path))


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
    source = input_file(path, "checkpoint", "pass the path of a downloaded .tar.gz, .pdparams or .pth",
                        MAX_ARCHIVE_BYTES)
    archive = _is_archive(source)
    if archive:
        entry = next(c for c in REGISTRY.values() if c.arch == arch and c.member)
    else:
        with open(source, "rb") as f:
            head = f.read(4)
        is_torch = head.startswith(ZIP_MAGIC) or head[2:3] == b"\x8a"
        entry = next(c for c in REGISTRY.values() if c.arch == arch and (c.member is None) == is_torch)
    note = ""
    is_download = archive or entry.member is None  # an archive or an authors' .pth is the registry's download itself
    if is_download and entry.md5 and _md5(source) != entry.md5:
        note = f"{source} is not the registry's {entry.download_name} (md5 differs); its contents verified"
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
