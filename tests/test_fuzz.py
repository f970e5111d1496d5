"""Issue 12: the fuzzed readers. Every committed seed and every crash the fuzzer ever found (tests/fuzz/crashes/)
is replayed: each must be read or refused with StreamtagError, nothing else. Then a short coverage-guided run of
each target (atheris, a fixed number of executions, no time limit asserted); without atheris (it is in the `test`
extra, so only a hand-made venv lacks it) a seeded in-process mutation loop runs instead — in CI that is a failure.
`make fuzz` is the long run (FUZZ_SECONDS per target).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))

from targets import TARGETS, corpus_files, run_one  # noqa: E402

RUNS = int(os.environ.get("FUZZ_RUNS", "300"))
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_and_every_crash_found_replay_cleanly(target):
    files = corpus_files(FUZZ, target)
    assert files, f"no seeds for {target}: run tests/fuzz/make_seeds.py"
    for path in files:
        try:
            run_one(target, path.read_bytes())
        except Exception as e:  # pragma: no cover - the assertion message is the point
            pytest.fail(f"{path.relative_to(FUZZ)}: {type(e).__name__}: {e}", pytrace=False)


def test_seeds_are_valid_files():
    """The seeds are real files of each format (so the fuzzer starts deep inside the parsers)."""
    from streamtag.checkpoints import read_state
    from streamtag.results import load_result

    for path in corpus_files(FUZZ, "weights"):
        if not path.parent.name == "crashes":
            state, _ = read_state(path, path.name)
            assert set(state) == {"fc1.bias", "conv.weight"}, path
    for path in (FUZZ / "corpus" / "npz").glob("*.npz"):
        assert load_result(path).scores.shape == (4, 3)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_fuzz_run(target, tmp_path):
    if not HAVE_ATHERIS:
        if IN_CI:
            pytest.fail("atheris is not installed (it is in the `test` extra): `make install`", pytrace=False)
        cmd = [sys.executable, str(FUZZ / "fuzz.py"), target, "--mutate", str(RUNS)]
    else:
        cmd = [sys.executable, str(FUZZ / "fuzz.py"), target, f"-runs={RUNS}", "-seed=1", "-max_len=65536",
               "-timeout=30", "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/", str(tmp_path / "new"),
               str(FUZZ / "corpus" / target)]
        (tmp_path / "new").mkdir()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "STREAMTAG_HOME": str(tmp_path / "home")})
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("oom-*")) \
        + sorted(p.name for p in tmp_path.glob("timeout-*"))
    assert proc.returncode == 0 and not crashes, (
        f"fuzz finding in {target}: {crashes}; copy the input to tests/fuzz/crashes/{target}-<name>, fix the "
        f"reader, commit both\n{proc.stderr[-4000:]}")
