"""Coverage-guided fuzzing of one target with atheris (libFuzzer): `python tests/fuzz/fuzz.py TARGET [libFuzzer
options] [CORPUS_DIR ...]`. `make fuzz` runs every target for FUZZ_SECONDS each; see docs/security.md.

Without atheris installed, `--mutate N` runs N random mutations of the corpus in-process instead (the fallback
tests/test_fuzz.py uses when atheris cannot be installed).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One libFuzzer-like mutation: flip/set/insert/erase bytes, truncate, splice with another input, or write an
    interesting integer (sizes and lengths are where readers break)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(at, len(buf) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and buf:
            del buf[at:at + rng.randint(1, 16)]
        elif op == 4:
            del buf[at:]
        elif op == 5 and others:
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            buf[at:] = other[cut:]
        elif op == 6:
            value = rng.choice((0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40, (1 << 63) - 1))
            width = rng.choice((1, 2, 4, 8))
            buf[at:at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    return bytes(buf)


def mutation_loop(target: str, runs: int, seed: int = 0) -> int:
    """The atheris-less fallback: `runs` random mutations of the target's corpus; returns executions done."""
    from targets import corpus_files, run_one

    seeds = [p.read_bytes() for p in corpus_files(HERE, target)] or [b""]
    rng = random.Random(seed)
    for i in range(runs):
        data = mutate(rng.choice(seeds), rng, seeds)
        try:
            run_one(target, data)
        except Exception:
            crash = HERE / "crashes" / f"{target}-mutation-{seed}-{i}"
            crash.write_bytes(data)
            print(f"finding: {target} input kept as {crash}", file=sys.stderr)
            raise
    return runs


def main() -> None:
    target, rest = sys.argv[1], sys.argv[2:]
    if rest[:1] == ["--mutate"]:
        print(f"{target}: {mutation_loop(target, int(rest[1]))} mutation runs, no finding")
        return
    import atheris

    with atheris.instrument_imports(include=["streamtag", "yaml", "zipfile", "tarfile", "gzip", "csv"]):
        import targets  # noqa: F401  (instrumented: the targets import the readers lazily, inside)
        import streamtag.audio, streamtag.checkpoints, streamtag.cli, streamtag.labels  # noqa: E401,F401
        import streamtag.paths, streamtag.results, streamtag.safeload  # noqa: E401,F401
    from targets import run_one

    atheris.Setup([sys.argv[0], *rest], lambda data: run_one(target, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
