"""The warm start: a cached export is scored without `import paddle`, without reading the checkpoint and without
building a Paddle layer; one predictor thread; remembered hashes; the batch-size record. Real model (seeded CNN6),
real processes. Speed itself is measured by `streamtag bench` / scripts/bench_archive.py, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamtag import engine, tuning
from streamtag.results import load_result
from streamtag.utils import file_sha256

PROBE = """
import sys
from streamtag import checkpoints, engine
def refuse(*a, **k):
    raise AssertionError("the checkpoint was read on a warm start")
checkpoints.read_checkpoint = refuse
from streamtag.cli import main
code = main(sys.argv[1:])
print("PADDLE-IMPORTED" if "paddle" in sys.modules or "streamtag.models" in sys.modules else "PADDLE-NOT-IMPORTED")
raise SystemExit(code)
"""


def test_warm_tag_needs_neither_paddle_nor_the_checkpoint(tmp_path, cnn6_weights):
    audio = tmp_path / "a.wav"
    sf.write(audio, (np.random.default_rng(0).standard_normal(80000) * 0.1).astype(np.float32), 32000)
    env = dict(os.environ, STREAMTAG_HOME=str(tmp_path / "home"))
    args = ["tag", str(audio), "--model", "cnn6", "--weights", str(cnn6_weights), "--device", "cpu",
            "--output-dir", str(tmp_path / "out"), "--overwrite"]
    cold = subprocess.run([sys.executable, "-m", "streamtag", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert cold.returncode == 0, cold.stderr  # exports: reads the checkpoint, imports paddle
    first = load_result(tmp_path / "out" / "a.npz").scores
    warm = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.splitlines()[-1] == "PADDLE-NOT-IMPORTED"
    assert "Traceback" not in warm.stderr
    np.testing.assert_allclose(load_result(tmp_path / "out" / "a.npz").scores, first, atol=1e-6)
    # and the eager model (full Paddle) agrees with the light path's scores
    eager = engine.load_scorer("cnn6", str(cnn6_weights), device="cpu", engine="eager")
    from streamtag.audio import load_audio
    from streamtag.tagging import iter_windows

    windows = np.stack([w for _, w in iter_windows([load_audio(audio)], 64000, 9600)])
    np.testing.assert_allclose(first, eager.score(windows), atol=1e-4)


COLD_PROBE = """
import sys
from streamtag.cli import main
code = main(sys.argv[1:])
print("PADDLE-IMPORTED" if "paddle" in sys.modules or "streamtag.models" in sys.modules else "PADDLE-NOT-IMPORTED")
raise SystemExit(code)
"""


def test_cold_start_exports_in_a_child_process(tmp_path, cnn6_weights):
    """The export (all of Paddle, the eager model, the weights read) happens in a child that exits, so a session that
    exported at its start holds no more memory than a warm one; a bad checkpoint still gives one line."""
    audio = tmp_path / "a.wav"
    sf.write(audio, (np.random.default_rng(0).standard_normal(80000) * 0.1).astype(np.float32), 32000)
    env = dict(os.environ, STREAMTAG_HOME=str(tmp_path / "home"))
    args = ["tag", str(audio), "--device", "cpu", "--output-dir", str(tmp_path / "out"), "--overwrite"]
    cold = subprocess.run([sys.executable, "-c", COLD_PROBE, *args, "--model", "cnn6", "--weights",
                           str(cnn6_weights)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert cold.returncode == 0, cold.stderr
    assert "exporting cnn6" in cold.stderr
    assert cold.stdout.splitlines()[-1] == "PADDLE-NOT-IMPORTED"
    assert len(list((tmp_path / "home" / "exported").iterdir())) == 1
    assert load_result(tmp_path / "out" / "a.npz").scores.shape[1] == 527

    wrong = subprocess.run([sys.executable, "-m", "streamtag", *args, "--model", "cnn14", "--weights",
                            str(cnn6_weights)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert wrong.returncode != 0
    assert "Traceback" not in wrong.stderr
    (line,) = [x for x in wrong.stderr.splitlines() if x.startswith("streamtag: error") or "cnn6" in x][-1:]
    assert "cnn14" in line and "cnn6" in line  # names the model asked for and what the file looks like


def test_the_predictor_runs_on_one_thread_whoever_calls(tmp_path, monkeypatch, cnn6_weights):
    monkeypatch.setenv("STREAMTAG_HOME", str(tmp_path / "home"))
    scorer = engine.load_scorer("cnn6", str(cnn6_weights), device="cpu")
    seen = set()
    original = scorer._run_here

    def spy(batch):
        seen.add(threading.get_ident())
        return original(batch)

    scorer._run_here = spy
    x = np.zeros((1, 64000), np.float32)
    here = scorer.score(x)
    other = []
    t = threading.Thread(target=lambda: other.append(scorer.score(x)))
    t.start()
    t.join()
    assert len(seen) == 1 and threading.get_ident() not in seen
    np.testing.assert_array_equal(here, other[0])


def test_remembered_hashes_follow_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMTAG_HOME", str(tmp_path / "home"))
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    assert json.loads((tmp_path / "home" / "sha256-cache.json").read_text())[str(path.resolve())][4] == first
    assert file_sha256(path) == first
    time.sleep(0.05)
    path.write_bytes(b"b" * 1000)  # same size, new content: mtime/ctime move on
    assert file_sha256(path) == file_sha256(path, remember=False) != first
    (tmp_path / "home" / "sha256-cache.json").write_text("{not json")
    assert file_sha256(path) == file_sha256(path, remember=False)  # a broken cache only costs the hashing


class FakeScorer:
    arch, device, precision, threads = "cnn6", "cpu", "fp32", 2

    def describe(self):
        return "cnn6 · fake · cpu ×2"


def test_batch_size_record_and_auto(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMTAG_HOME", str(tmp_path / "home"))
    scorer = FakeScorer()
    assert tuning.resolve_batch_size("auto", scorer, 2.0) == tuning.DEFAULT_BATCH["cpu"]
    assert tuning.resolve_batch_size(5, scorer, 2.0) == 5
    assert tuning.record_choice(scorer, 64000, {1: 50.0, 2: 45.0, 4: 47.0}) == 2
    assert tuning.resolve_batch_size("auto", scorer, 2.0) == 2
    default = tuning.DEFAULT_BATCH["cpu"]
    assert tuning.resolve_batch_size("auto", scorer, 1.0) == default  # another window length: not measured
    scorer.threads = 1
    scorer.describe = lambda: "cnn6 · fake · cpu ×1"
    assert tuning.resolve_batch_size("auto", scorer, 2.0) == default  # another setup: not measured


def test_bench_measures_and_records_batch_sizes(tmp_path, monkeypatch, capsys):
    from streamtag.cli import main

    monkeypatch.setenv("STREAMTAG_HOME", str(tmp_path / "home"))
    assert main(["bench", "--models", "cnn6", "--repeats", "2", "--no-eager", "--no-startup", "--batch-sizes",
                 "1,3", "--device", "cpu", "--json"]) == 0
    (cnn6,) = json.loads(capsys.readouterr().out)["models"]
    assert set(cnn6["batch_ms"]) == {"1", "3"} and cnn6["best_batch"] in (1, 3)
    records = json.loads((tmp_path / "home" / "batch-sizes.json").read_text())
    (entry,) = records.values()
    assert entry["batch_size"] == cnn6["best_batch"] and set(entry["ms_per_window"]) == {"1", "3"}
    assert main(["bench", "--models", "cnn6", "--batch-sizes", "1,x"]) == 1
