"""corpus.py and `streamtag tag` over folders: the file list, output names, the resume rule, the decode thread,
embeddings. Real files, the real seeded CNN6, real subprocesses (killed mid-run where that is the point)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tag_one_file

from streamtag import corpus
from streamtag.engine import load_scorer
from streamtag.errors import StreamtagError
from streamtag.results import load_result


def noise(seconds: float, rate: int = 32000, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(round(seconds * rate))) * 0.1).astype(np.float32)


def write(path: Path, seconds: float = 1.0, rate: int = 32000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, noise(seconds, rate, seed), rate, subtype="FLOAT" if path.suffix == ".wav" else None)
    return path


@pytest.fixture(scope="module")
def eager(cnn6_weights):
    return load_scorer("cnn6", str(cnn6_weights), device="cpu", engine="eager")


@pytest.fixture
def model(cnn6_weights):
    return ["--model", "cnn6", "--weights", str(cnn6_weights), "--device", "cpu"]


def tag(*args, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtag", "tag", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def options(**changes) -> corpus.TagOptions:
    base = dict(model="cnn6", weights_sha256="ab" * 32, sample_duration=2.0, hop_duration=0.3)
    return corpus.TagOptions(**{**base, **changes})


# ---------------------------------------------------------------------------------------------- the file list
def test_folders_recursive_hidden_and_extensions(tmp_path):
    root = tmp_path / "rec"
    for name in ["b.wav", "a.flac", "notes.txt", ".hidden.wav", "sub/c.WAV", "sub/deeper/d.ogg", ".git/x.wav"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    flat, errors = corpus.collect_sources([root])
    assert errors == []
    assert [(s.path.name, str(s.name)) for s in flat] == [("a.flac", "a"), ("b.wav", "b")]
    deep, _ = corpus.collect_sources([root], recursive=True)
    assert [str(s.name) for s in deep] == ["a", "b", "sub/c", "sub/deeper/d"]
    assert corpus.result_path(tmp_path / "out", deep[3]) == tmp_path / "out" / "sub" / "deeper" / "d.npz"
    # a file given by name is tagged whatever its extension, and its result is named after its stem
    named, _ = corpus.collect_sources([root / "notes.txt", "x/a.b.wav"])
    assert [str(s.name) for s in named] == ["notes", "a.b"]
    assert corpus.result_path("out", named[1]) == Path("out/a.b.npz")


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    write(tmp_path / "empty" / "sub" / "a.wav")
    sources, errors = corpus.collect_sources([tmp_path / "empty"])
    assert sources == [] and len(errors) == 1 and "--recursive" in errors[0]
    assert len(corpus.collect_sources([tmp_path / "empty"], recursive=True)[0]) == 1


def test_from_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.wav")
    write(tmp_path / "d" / "b.wav")
    (tmp_path / "list.txt").write_text("# my corpus\na.wav\n\n  d  \n")
    sources, errors = corpus.collect_sources([], from_list="list.txt")
    assert errors == [] and [str(s.name) for s in sources] == ["a", "b"]
    with pytest.raises(StreamtagError, match="--from-list gone.txt: no such file"):
        corpus.collect_sources([], from_list="gone.txt")


def test_same_output_twice_is_an_error_but_the_same_file_twice_is_tagged_once(tmp_path):
    write(tmp_path / "d" / "a.wav")
    write(tmp_path / "d" / "a.flac")
    sources, _ = corpus.collect_sources([tmp_path / "d"])
    plan = corpus.plan_jobs(sources, tmp_path / "out", options())
    assert [Path(j.input).name for j in plan.todo] == ["a.flac"]
    assert len(plan.errors) == 1 and "a.wav: another input already writes" in plan.errors[0]
    assert "out/a.npz" in plan.errors[0]
    write(tmp_path / "e" / "b.wav")
    again, _ = corpus.collect_sources([tmp_path / "e", tmp_path / "e" / "b.wav", tmp_path / "e" / ".." / "e"])
    plan = corpus.plan_jobs(again, tmp_path / "out", options())
    assert len(plan.todo) == 1 and plan.errors == []


# ---------------------------------------------------------------------------------------------- resume rule
def test_resume_rule_compares_model_weights_and_options(tmp_path, eager):
    write(tmp_path / "a.wav", 2.5)
    opts = options()
    (job,) = corpus.plan_jobs(corpus.collect_sources([tmp_path / "a.wav"])[0], tmp_path / "out", opts).todo
    assert corpus.tag_job(job, eager).ok
    assert corpus.is_done(job.output, opts)
    for changed in [options(weights_sha256="cd" * 32), options(model="cnn10"), options(hop_duration=0.5),
                    options(sample_duration=1.0), options(pad=False), options(precision="bf16"),
                    options(embeddings=True)]:
        assert not corpus.is_done(job.output, changed), changed
    assert not corpus.is_done(tmp_path / "out" / "missing.npz", opts)
    # a result without the stamp (older streamtag, the seed, a live recording) is never taken as done
    np.savez(tmp_path / "out" / "a.npz", time=np.zeros(1), scores=np.zeros((1, 527), np.float32))
    assert not corpus.is_done(job.output, opts)


def test_cli_resume_overwrite_and_changed_options(tmp_path, model, cli_env):
    for i, name in enumerate(["a.wav", "sub/b.wav"]):
        write(tmp_path / "in" / name, 2.0, seed=i)
    first = tag("in", "--recursive", "--output-dir", "out", *model, cwd=tmp_path, env=cli_env)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 2
    outputs = [tmp_path / "out" / "a.npz", tmp_path / "out" / "sub" / "b.npz"]
    stamps = [p.stat().st_mtime_ns for p in outputs]

    again = tag("in", "--recursive", "--output-dir", "out", "--batch-size", "3", *model, cwd=tmp_path, env=cli_env)
    assert again.returncode == 0 and again.stdout == ""
    assert "2 file(s) already tagged" in again.stderr
    assert [p.stat().st_mtime_ns for p in outputs] == stamps  # batch size is not an option that redoes work

    redo = tag("in", "--recursive", "--output-dir", "out", "--overwrite", *model, cwd=tmp_path, env=cli_env)
    assert redo.returncode == 0 and len(redo.stdout.splitlines()) == 2

    changed = tag("in", "--recursive", "--output-dir", "out", "--hop-duration", "0.5", *model, cwd=tmp_path, env=cli_env)
    assert changed.returncode == 0 and len(changed.stdout.splitlines()) == 2
    assert load_result(outputs[0]).hop_duration == 0.5


def test_an_interrupted_run_resumes(tmp_path, model, cli_env):
    """SIGTERM and SIGKILL mid-run: every result present is complete; the next run does exactly the rest."""
    for i in range(12):
        write(tmp_path / "in" / f"f{i:02d}.wav", 6.0, seed=i)
    out = tmp_path / "out"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, "-m", "streamtag", "tag", "in", "--output-dir", "out", "--batch-size", "4",
                                 *model], cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 240
        # once two files are done, the third is mid-batch: stop it there
        while proc.poll() is None and time.monotonic() < deadline and len(results(out)) < 2:
            time.sleep(0.02)
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        done = results(out)
        for name in done:
            assert load_result(out / name).scores.shape[0] == 20  # complete: ⌈6 s / 0.3 s⌉ windows
        hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
        if sig == signal.SIGTERM:
            assert hidden == []  # the temp file of the file being tagged was removed
        rest = tag("in", "--output-dir", "out", "--batch-size", "4", *model, cwd=tmp_path, env=cli_env)
        assert rest.returncode == 0, rest.stderr
        redone = [line.split(":")[0] for line in rest.stdout.splitlines()]
        assert len(redone) == 12 - len(done) and not {Path(r).stem + ".npz" for r in redone} & set(done)
        assert results(out) == [f"f{i:02d}.npz" for i in range(12)]


def results(folder: Path) -> list[str]:
    """The result files in `folder` (not the hidden temp file of one being written)."""
    return sorted(p.name for p in folder.glob("*.npz") if not p.name.startswith(".")) if folder.exists() else []


# ---------------------------------------------------------------------------------------------- executor
def test_batches_across_files_score_like_one_file_at_a_time(tmp_path, eager):
    paths = [write(tmp_path / f"{i}.wav", s, seed=i) for i, s in enumerate([0.4, 2.3, 1.0, 3.1])]
    plan = corpus.plan_jobs(corpus.collect_sources(paths)[0], tmp_path / "out", options())
    seen: list[float] = []
    outcomes = list(corpus.run_jobs(plan.todo, eager, batch_size=5, on_windows=lambda job, s: seen.append(s)))
    assert [o.ok for o in outcomes] == [True] * 4
    assert abs(sum(seen) - (0.4 + 2.3 + 1.0 + 3.1)) < 0.31 * 4
    for path, outcome in zip(paths, outcomes):
        alone = tag_one_file(path, eager, 2.0, 0.3, batch_size=1)
        got = load_result(outcome.job.output)
        np.testing.assert_array_equal(got.time, alone.time)
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-5)
        np.testing.assert_array_equal(got.level, alone.level)
        assert got.source == alone.source == str(path)
        assert got.embedding is None and got.stamp["complete"] is True


def test_a_file_failing_in_the_decode_thread_fails_alone(tmp_path, eager):
    good = [write(tmp_path / f"good{i}.wav", 2.0, seed=i) for i in range(2)]
    x = noise(5.0)
    x[100000] = np.nan  # found by the decode thread after some of the file's windows were already scored
    bad = tmp_path / "nan.wav"
    sf.write(bad, x, 32000, subtype="FLOAT")
    plan = corpus.plan_jobs(corpus.collect_sources([good[0], bad, good[1]])[0], tmp_path / "out", options())
    outcomes = list(corpus.run_jobs(plan.todo, eager, batch_size=4))
    assert [o.ok for o in outcomes] == [True, False, True]
    assert "nan.wav: NaN/Inf sample at 3.125 s" in outcomes[1].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good0.npz", "good1.npz"]
    np.testing.assert_allclose(load_result(tmp_path / "out" / "good1.npz").scores,
                               tag_one_file(good[1], eager, 2.0, 0.3).scores, atol=1e-5)


def test_a_file_that_breaks_after_planning_fails_alone_on_the_cli(tmp_path, model, cli_env):
    write(tmp_path / "a.wav", 2.0)
    x = noise(4.0)
    x[-5] = np.inf
    sf.write(tmp_path / "b.wav", x, 32000, subtype="FLOAT")
    write(tmp_path / "c.wav", 2.0, seed=2)
    proc = tag("a.wav", "b.wav", "c.wav", "--output-dir", "out", *model, cwd=tmp_path, env=cli_env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error" in line] == [
        "streamtag: error: b.wav: NaN/Inf sample at 4.000 s; the audio is corrupt — re-export it from the source"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.npz", "c.npz"]


# ---------------------------------------------------------------------------------------------- embeddings
def test_embeddings_match_the_eager_model(tmp_path, model, cli_env, eager):
    path = write(tmp_path / "a.wav", 3.0, rate=44100)
    proc = tag("a.wav", "--output-dir", "out", "--embeddings", "--engine", "inference", *model, cwd=tmp_path, env=cli_env)
    assert proc.returncode == 0, proc.stderr
    result = load_result(tmp_path / "out" / "a.npz")
    assert result.embedding.shape == (10, 512) and result.embedding.dtype == np.float32
    from streamtag.audio import load_audio
    from streamtag.tagging import iter_windows

    windows = np.stack([w for _, w in iter_windows([load_audio(path)], 64000, 9600)])
    scores, embedding = eager.embed(windows)
    np.testing.assert_allclose(result.embedding, embedding, atol=1e-4)
    np.testing.assert_allclose(result.scores, scores, atol=1e-4)
    # asking for embeddings changes the options: a result without them is redone, with them it is kept
    assert "already tagged" in tag("a.wav", "--output-dir", "out", "--embeddings", *model, cwd=tmp_path, env=cli_env).stderr
    plain = tag("a.wav", "--output-dir", "out", *model, cwd=tmp_path, env=cli_env)
    assert plain.stdout and load_result(tmp_path / "out" / "a.npz").embedding is None
