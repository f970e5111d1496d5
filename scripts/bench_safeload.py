"""How long streamtag takes to refuse the crafted files of issue 12 (bounded safe loading). One command:

    .venv/bin/python scripts/bench_safeload.py

Builds each file in a temp dir (the 4.2 GB-of-zeros npz takes a while to compress), then times one refusal each,
in-process, and prints a table with the machine and load. No Paddle is imported: refusals happen before the arch
check.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_safeload_bounds import copy_bomb_pickle, deep_pickle, exponential_pickle, wide_pickle  # noqa: E402

from streamtag.checkpoints import read_state  # noqa: E402
from streamtag.errors import StreamtagError  # noqa: E402
from streamtag.results import load_result  # noqa: E402


def zip_bomb_npz(path: Path, zeros: int = 4_200_000_000) -> Path:
    """The issue's file: an npz whose `scores.npy` inflates to 4.2 GB of zeros."""
    rows = zeros // (527 * 4)
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, 527), }}".encode().ljust(117) + b"\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("scores.npy", "w", force_zip64=True) as f:
            f.write(b"\x93NUMPY\x01\x00" + header)
            block = bytes(64 << 20)
            for _ in range(rows * 527 * 4 // len(block)):
                f.write(block)
    return path


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-safeload-"))
    cases = [("exponential pickle (.pdparams)", "w", exponential_pickle()),
             ("wide shared pickle (.pdparams)", "w", wide_pickle()),
             ("copy bomb (.pdparams)", "w", copy_bomb_pickle()),
             ("100 000-deep nesting (.pdparams)", "w", deep_pickle())]
    rows = []
    for name, kind, data in cases:
        path = tmp / "f.pdparams"
        path.write_bytes(data)
        rows.append((name, path.stat().st_size, *timed(lambda: read_state(path, "f"))))
    began = time.perf_counter()
    bomb = zip_bomb_npz(tmp / "bomb.npz")
    print(f"(built the zip-bomb npz in {time.perf_counter() - began:.0f} s)", file=sys.stderr)
    rows.append(("zip-bomb npz (4.2 GB of zeros)", bomb.stat().st_size, *timed(lambda: load_result(bomb))))
    print(f"machine: {platform.processor() or platform.machine()}, {cpu_model()}, load {os.getloadavg()[0]:.2f}")
    print(f"{'file':<36} {'bytes':>10} {'refused in':>11}  message")
    for name, size, seconds, message in rows:
        print(f"{name:<36} {size:>10} {seconds * 1000:>9.1f} ms  {message[:90]}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()


def timed(fn) -> tuple[float, str]:
    began = time.perf_counter()
    try:
        fn()
        message = "(accepted!)"
    except StreamtagError as e:
        message = str(e).split(": ", 1)[-1]
    return time.perf_counter() - began, message


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


if __name__ == "__main__":
    main()
