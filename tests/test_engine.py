"""The Paddle Inference engine against eager Paddle and the PANNs fixtures; its export cache; the bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from seeded import seeded_state, write_seeded_pdparams

from streamtag import engine
from streamtag.errors import StreamtagError
from streamtag.utils import file_sha256

FIXTURES = Path(__file__).parent / "fixtures" / "panns"
REFERENCE = np.load(FIXTURES / "reference.npz")
WAVEFORM = REFERENCE["waveform"]
WINDOW = 64000  # the fixtures' 2 s window
DIGEST = "5eed" * 16  # the export cache key of the seeded weights


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STREAMTAG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _windows(count: int) -> np.ndarray:
    """`count` different 2 s windows cut from the 3 s reference waveform."""
    starts = np.linspace(0, len(WAVEFORM) - WINDOW, count).astype(int)
    return np.stack([WAVEFORM[s:s + WINDOW] for s in starts])


def _assert_close(scores: np.ndarray, embeddings: np.ndarray, ref_scores: np.ndarray, ref_embeddings: np.ndarray):
    """The fixture README's tolerances: clipwise max|Δ| ≤ 1e-4; embedding max|Δ|/max|ref| ≤ 1e-4."""
    assert scores.shape == ref_scores.shape and embeddings.shape == ref_embeddings.shape
    assert np.abs(scores - ref_scores).max() <= 1e-4
    assert np.abs(embeddings - ref_embeddings).max() / np.abs(ref_embeddings).max() <= 1e-4


@pytest.mark.parametrize("arch", ["cnn6", "cnn10", "cnn14"])
def test_engine_equals_eager_and_the_fixtures(arch: str, home: Path):
    state = seeded_state(arch)
    eager = engine.make_scorer(arch, state, DIGEST, device="cpu", engine="eager")
    fast = engine.make_scorer(arch, state, DIGEST, device="cpu", engine="inference")
    assert (eager.engine, fast.engine, fast.device) == ("eager", "inference", "cpu")
    assert "paddle-inference oneDNN" in fast.describe()

    one = WAVEFORM[None, :WINDOW]
    fixture = (REFERENCE[f"{arch}/win2s/clipwise"][None], REFERENCE[f"{arch}/win2s/embedding"][None])
    _assert_close(*fast.embed(one), *fixture)
    _assert_close(*fast.embed(one), *eager.embed(one))

    eight = _windows(8)
    fast_eight = fast.embed(eight)
    _assert_close(*fast_eight, *eager.embed(eight))
    assert fast_eight[0].dtype == np.float32 and fast_eight[0].shape == (8, 527)
    np.testing.assert_allclose(fast.score(eight), fast_eight[0])  # score() is embed()'s first half
    assert len([p for p in (home / "exported").iterdir()]) == 1  # one entry, no leftovers


@pytest.mark.parametrize("arch", ["cnn6", "cnn14"])
def test_whole_clip_length_matches_the_fixture(arch: str):
    """Window length is free: the 3 s fixture input goes through the same exported graph (for CNN14 that includes
    block 6 rewritten as a GEMM on a 9 x 2 map instead of 2 s windows' 6 x 2: graph.py)."""
    fast = engine.make_scorer(arch, seeded_state(arch), DIGEST, device="cpu")
    _assert_close(*fast.embed(WAVEFORM[None]), REFERENCE[f"{arch}/full/clipwise"][None],
                  REFERENCE[f"{arch}/full/embedding"][None])


def _entry(home: Path) -> Path:
    (entry,) = (home / "exported").iterdir()
    return entry


@pytest.mark.parametrize("damage", ["truncate", "garble", "no-manifest", "garble-with-matching-manifest"])
def test_corrupt_cache_entry_is_rebuilt(damage: str, home: Path, capfd: pytest.CaptureFixture):
    state = seeded_state("cnn6")
    before = engine.make_scorer("cnn6", state, DIGEST, device="cpu").score(WAVEFORM[None, :WINDOW])
    entry = _entry(home)
    params, graph, manifest = entry / "model.pdiparams", entry / "model.json", entry / "manifest.json"
    if damage == "truncate":
        params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    elif damage == "garble":
        data = bytearray(graph.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64
        graph.write_bytes(bytes(data))
    elif damage == "no-manifest":
        manifest.unlink()
    else:  # files that verify against their manifest but do not load: the predictor's failure triggers the rebuild
        graph.write_text("{not a graph", encoding="utf-8")
        files = json.loads(manifest.read_text())
        files["files"]["model.json"] = file_sha256(graph)
        manifest.write_text(json.dumps(files))
    capfd.readouterr()

    after = engine.make_scorer("cnn6", state, DIGEST, device="cpu").score(WAVEFORM[None, :WINDOW])
    err = capfd.readouterr().err
    assert "rebuilding" in err
    assert ("unloadable" in err) == (damage == "garble-with-matching-manifest")
    np.testing.assert_allclose(after, before, atol=1e-6)
    assert engine.verify_export(_entry(home))  # the rebuilt entry replaced the bad one, nothing left beside it


_RACER = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from seeded import seeded_state
from streamtag.engine import make_scorer
wave = np.load({reference!r})["waveform"][None, :64000]
scores = make_scorer("cnn6", seeded_state("cnn6"), {digest!r}, device="cpu").score(wave)
np.save(sys.argv[1], scores)
"""


def test_two_processes_racing_to_build_the_cache_both_succeed(tmp_path: Path, home: Path):
    code = _RACER.format(tests=str(Path(__file__).parent), reference=str(FIXTURES / "reference.npz"), digest=DIGEST)
    env = dict(os.environ, STREAMTAG_HOME=str(home))
    outs = [tmp_path / f"scores{i}.npy" for i in range(2)]
    racers = [subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, stderr=subprocess.PIPE, text=True)
              for out in outs]
    for racer in racers:
        _, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err
    first, second = (np.load(out) for out in outs)
    np.testing.assert_array_equal(first, second)
    assert np.abs(first[0] - REFERENCE["cnn6/win2s/clipwise"]).max() <= 1e-4
    assert [p.name for p in (home / "exported").iterdir()] == [_entry(home).name]  # no temp dirs left
    assert engine.verify_export(_entry(home))


def test_load_scorer_reads_a_weights_file(tmp_path: Path):
    path = write_seeded_pdparams("cnn6", tmp_path / "cnn6.pdparams")
    scorer = engine.load_scorer("cnn6", str(path), device="cpu", engine="eager", threads=1)
    assert (scorer.arch, scorer.engine, scorer.device, scorer.threads) == ("cnn6", "eager", "cpu", 1)
    assert np.abs(scorer.score(WAVEFORM[None, :WINDOW])[0] - REFERENCE["cnn6/win2s/clipwise"]).max() <= 1e-4


def test_fp16_on_cpu_falls_back_with_a_notice(capfd: pytest.CaptureFixture):
    scorer = engine.make_scorer("cnn6", seeded_state("cnn6"), DIGEST, device="cpu", precision="fp16")
    assert scorer.precision == "fp32"
    assert "fp16 needs a GPU" in capfd.readouterr().err


@pytest.mark.skipif(not engine.cpu_has_fast_bf16(), reason="this CPU has no AMX/AVX512-BF16")
def test_bf16_on_a_capable_cpu_stays_close(capfd: pytest.CaptureFixture):
    """bf16 is opt-in speed: scores move by ~1e-2, not more."""
    scorer = engine.make_scorer("cnn6", seeded_state("cnn6"), DIGEST, device="cpu", precision="bf16")
    assert "oneDNN bf16" in scorer.describe()
    scores = scorer.score(WAVEFORM[None, :WINDOW])
    assert np.abs(scores[0] - REFERENCE["cnn6/win2s/clipwise"]).max() <= 0.05
    assert capfd.readouterr().out == ""


def test_batch_norms_are_folded_at_export():
    from streamtag.models import build_model

    from streamtag.graph import fold_batch_norms

    model = build_model("cnn14")
    assert fold_batch_norms(model) == 12  # two per block; bn0 follows the log-mel, not a conv
    assert "bn0" in dict(model.named_sublayers())


def test_first_run_keeps_stdout_clean(capfd: pytest.CaptureFixture):
    """oneDNN prints a diagnostic on the C++ stdout at the first run; `--json` output must not carry it."""
    engine.make_scorer("cnn6", seeded_state("cnn6"), DIGEST, device="cpu").score(WAVEFORM[None, :WINDOW])
    assert capfd.readouterr().out == ""


@pytest.mark.skipif(engine.gpu_available(), reason="a GPU is visible here")
def test_gpu_without_cuda_is_a_user_error():
    with pytest.raises(StreamtagError, match="--device cpu"):
        engine.make_scorer("cnn6", seeded_state("cnn6"), DIGEST, device="gpu")
    assert engine.resolve_device("auto") == "cpu"


def test_too_short_window_is_a_user_error():
    scorer = engine.make_scorer("cnn6", seeded_state("cnn6"), DIGEST, device="cpu", engine="eager")
    with pytest.raises(StreamtagError, match="--sample-duration"):
        scorer.score(np.zeros((1, 100), np.float32))


def test_bench_json(capsys: pytest.CaptureFixture):
    from streamtag.cli import main

    assert main(["bench", "--models", "cnn6", "--repeats", "2", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    (cnn6,) = report["models"]
    assert report["weights"] == {"cnn6": "seeded"}
    assert "seeded random weights" in captured.err
    for figure in ("engine_ms_b1", "eager_ms_b1", "engine_wps_b8", "eager_wps_b8", "first_score_cold_s",
                   "first_score_warm_s", "peak_rss_mb"):
        assert cnn6[figure] > 0, figure
    assert cnn6["realtime_load"] == pytest.approx(cnn6["engine_ms_b1"] / 300)
    assert {g["figure"] for g in report["goals"]} == {"engine_ms_b1", "first_score_warm_s"}  # cnn6 has no RSS goal


def test_bench_rejects_unknown_models(capsys: pytest.CaptureFixture):
    from streamtag.cli import main

    assert main(["bench", "--models", "cnn6,cnn99"]) == 1
    assert "cnn99" in capsys.readouterr().err


def test_unwritable_cache_is_a_user_error(home: Path):
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text("a file where the cache folder should be")
    with pytest.raises(StreamtagError, match="STREAMTAG_HOME"):
        engine.make_scorer("cnn6", seeded_state("cnn6"), DIGEST, device="cpu")


def test_a_backend_with_batch_and_length_limits_scores_in_chunks(home: Path):
    """TensorRT engines have a maximum batch and window (their optimisation profile): bigger batches are scored in
    chunks with the same results, longer windows are a one-line error. Checked on the CPU predictor with the limits
    set by hand, since no GPU is here."""
    fast = engine.make_scorer("cnn6", seeded_state("cnn6"), DIGEST, device="cpu", engine="inference")
    eight = _windows(8)
    whole = fast.embed(eight)
    fast.max_batch, fast.max_samples = 3, WINDOW
    chunked = fast.embed(eight)
    _assert_close(*chunked, *whole)
    with pytest.raises(StreamtagError, match="longer than .* use a shorter --sample-duration"):
        fast.score(WAVEFORM[None, :WINDOW + 320])
