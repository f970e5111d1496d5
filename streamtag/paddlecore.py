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
