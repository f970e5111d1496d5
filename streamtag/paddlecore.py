"""Paddle's C++ core (libpaddle) for the predictor, without `import paddle`.

`import paddle` costs about 2 s and 390 MB on this project's 2-core machine, nearly all of it Python modules a
predictor never uses (the distributed stack, the JIT, the cpp-extension builder); libpaddle itself loads in 0.45 s.
A warm start on the CPU — the exported graph cached — needs only libpaddle's inference bindings, so `core()` loads
the extension module straight from the installed package and runs the part of `paddle.base`'s bootstrap the
predictor depends on (flags from FLAGS_* variables, logging, memory method, devices). It registers the module
under its own name, `paddle.base.libpaddle`, so a later `import paddle` in the same process (an export, the eager
engine) finds and reuses it instead of loading a second copy.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

LIBPADDLE = "paddle.base.libpaddle"


def package_dir() -> Path:
    """The installed `paddle` package's folder (found without importing it)."""
    spec = importlib.util.find_spec("paddle")
    if spec is None or not spec.submodule_search_locations:
        from streamtag.errors import StreamtagError

        raise StreamtagError("PaddlePaddle is not installed; run `make install` (or pip install "
                             "'streamtag[cpu]')", exit_code=2)
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=None)
def version() -> str:
    """paddle.__version__, read from the package's generated version file."""
    if "paddle" in sys.modules and hasattr(sys.modules["paddle"], "__version__"):
        return str(sys.modules["paddle"].__version__)
    text = (package_dir() / "version" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"^full_version\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return match.group(1) if match else "unknown"


@lru_cache(maxsize=None)
def core() -> ModuleType:
    """libpaddle: paddle.base.core when Paddle is imported already, else the extension module loaded on its own."""
    full = sys.modules.get("paddle.base.core")
    if full is not None:
        return full
    lib = sys.modules.get(LIBPADDLE)
    if lib is None:
        # as paddle.base.__bootstrap__ does: OpenMP regions single-threaded unless asked (the predictor sets its
        # own math-library threads)
        os.environ["OMP_NUM_THREADS"] = str(_int(os.environ.get("OMP_NUM_THREADS"), 1))
        path = str(package_dir() / "base" / "libpaddle.so")
        loader = importlib.machinery.ExtensionFileLoader(LIBPADDLE, path)
        spec = importlib.util.spec_from_file_location(LIBPADDLE, path, loader=loader)
        lib = importlib.util.module_from_spec(spec)
        loader.exec_module(lib)
        sys.modules[LIBPADDLE] = lib
        # as paddle.base.__bootstrap__ does: FLAGS_* environment variables become flags
        flags = [name[len("FLAGS_"):] for name in lib.globals().keys() if name.startswith("FLAGS_")]
        lib.init_gflags(["--tryfromenv=" + ",".join(flags)])
        lib.init_glog(sys.argv[0] if sys.argv and sys.argv[0] else "streamtag")
        lib.init_memory_method()
        lib.init_devices()
    return lib


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


MADV_PAGEOUT = 21  # Linux ≥ 5.4


def release_cold_library_pages() -> int:
    """Drop this process's resident copies of Paddle's shared-library pages (returns how many mappings).

    Loading libpaddle touches ~150 MB of its code and read-only data once — pybind registrations for thousands of
    ops, static initialisers — that a predictor never reads again, yet they count in the process's RSS. After the
    first run, MADV_PAGEOUT on Paddle's read-only file mappings gives them back; the ~20 MB the predictor does use
    fault back in from the page cache on the next call (no disk read, no copy). Anonymous memory — weights,
    activations — is untouched. Best effort: a kernel without MADV_PAGEOUT leaves everything as it was.
    """
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        folder = str(package_dir()) + os.sep
        released = 0
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) < 6 or "w" in fields[1] or not fields[5].strip().startswith(folder):
                    continue
                start, end = (int(v, 16) for v in fields[0].split("-"))
                if madvise(start, end - start, MADV_PAGEOUT) == 0:
                    released += 1
        return released
    except (OSError, AttributeError, ValueError):
        return 0
