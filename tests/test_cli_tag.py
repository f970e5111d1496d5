"""`streamtag tag` / `streamtag parse` end to end, as a user runs them: subprocesses, real files, real model."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import seed_reference
from streamtag.labels import audioset_labels
from streamtag.results import load_result

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "sample.wav"


def streamtag(*args, cwd=None, home=None):
    env = dict(os.environ, STREAMTAG_HOME=str(home or cwd or "/nonexistent"))
    return subprocess.run([sys.executable, "-m", "streamtag", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture
def model(cnn6_weights):
    """The seeded CNN6 on the eager engine: fast, quiet, and no export cache involved."""
    return ["--model", "cnn6", "--weights", cnn6_weights, "--engine", "eager", "--device", "cpu"]


def assert_one_line_error(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamtag: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def bad_audio(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.zeros(16000, np.float32), 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "truncated.wav").write_bytes(good.read_bytes()[:30])
    (tmp_path / "random.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 50)
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    (tmp_path / "folder.wav").mkdir()
    return {"missing.wav": "no such file", "folder.wav": "directory", "empty.wav": "empty file",
            "truncated.wav": "not a readable audio file", "random.wav": "not a readable audio file",
            "notes.wav": "not a readable audio file", "zero.wav": "no audio"}


def test_each_bad_file_is_one_line_and_leaves_nothing(tmp_path, model):
    for name, problem in bad_audio(tmp_path).items():
        out = tmp_path / f"out-{name}"
        proc = streamtag("tag", name, "--output-dir", out, *model, cwd=tmp_path)
        assert_one_line_error(proc, name, problem)
        assert not list(out.glob("*"))


def test_nan_samples(tmp_path, model):
    x = np.zeros(48000, np.float32)
    x[40000] = np.nan
    sf.write(tmp_path / "nan.wav", x, 32000, subtype="FLOAT")
    proc = streamtag("tag", "nan.wav", "--output-dir", "out", *model, cwd=tmp_path)
    assert_one_line_error(proc, "nan.wav", "NaN/Inf sample at 1.250 s")
    assert not list((tmp_path / "out").glob("*"))


@pytest.mark.parametrize("option, value", [("--hop-duration", "0"), ("--sample-duration", "-2"),
                                           ("--hop-duration", "nan"), ("--hop-duration", "1e-9")])
def test_non_positive_durations_are_rejected(tmp_path, option, value):
    sf.write(tmp_path / "a.wav", np.zeros(32000, np.float32), 32000)
    proc = streamtag("tag", "a.wav", option, value, "--output-dir", "out", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert option in proc.stderr.splitlines()[-1]  # argparse (usage + error line) or our own one-line check
    assert not (tmp_path / "out" / "a.npz").exists()


def test_unwritable_output_dir(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(32000, np.float32), 32000)
    (tmp_path / "afile").write_text("x")
    proc = streamtag("tag", "a.wav", "--output-dir", "afile/out", cwd=tmp_path)
    assert_one_line_error(proc, "afile/out", "output dir")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        proc = streamtag("tag", "a.wav", "--output-dir", "ro", cwd=tmp_path)
        assert_one_line_error(proc, "ro", "not writable")


def test_bad_file_among_good_ones(tmp_path, model):
    sf.write(tmp_path / "one.wav", np.random.default_rng(0).standard_normal(40000).astype(np.float32) * .1, 32000)
    sf.write(tmp_path / "two.flac", np.random.default_rng(1).standard_normal(30000) * .1, 48000)
    (tmp_path / "bad.wav").write_text("text")
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "one.wav", np.zeros(32000, np.float32), 32000)
    proc = streamtag("tag", "one.wav", "bad.wav", "two.flac", "sub/one.wav", "--output-dir", "out", *model,
                     cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("streamtag: error:")]
    assert len(errors) == 2 and "bad.wav" in errors[0]
    assert "sub/one.wav: another input already writes out/one.npz" in errors[1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.npz", "two.npz"]
    assert len(proc.stdout.splitlines()) == 2 and "windows" in proc.stdout
    two = load_result(tmp_path / "out" / "two.npz")
    assert two.sample_rate == 48000 and len(two.time) == int(np.ceil(20000 / 9600))


def test_parse_bad_inputs(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    np.savez(tmp_path / "noscores.npz", time=np.zeros(2))
    for name, problem in [("text.npz", "not an .npz"), ("noscores.npz", "no `scores`"), ("gone.npz", "no such")]:
        proc = streamtag("parse", name, "--output-dir", "out", cwd=tmp_path)
        assert_one_line_error(proc, name, problem)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*"))


def test_sample_tags_and_parses_like_the_seed(tmp_path, model):
    """The shipped sample end to end; the seed's parse_result.py reads our npz and writes the same bytes."""
    proc = streamtag("tag", SAMPLE, "--output-dir", "out", *model, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sample.wav: 8.0 s, 27 windows" in proc.stdout
    result = load_result(tmp_path / "out" / "sample.npz")
    assert result.scores.shape == (27, 527) and result.duration == 8.0 and result.model == "cnn6"

    proc = streamtag("parse", "out/sample.npz", "--output-dir", "out", "--top-k", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours = (tmp_path / "out" / "sample.txt").read_bytes()
    labels = tmp_path / "audioset_labels.txt"
    labels.write_text("\n".join(audioset_labels()) + "\n")
    seed = seed_reference.parse_result(str(tmp_path / "out" / "sample.npz"), top_k=5, smooth_on=True,
                                       smooth_size=5, label_file=str(labels), output_dir=str(tmp_path / "seed"))
    assert Path(seed).read_bytes() == ours
    blocks = ours.decode().split("\n\n")
    assert len(blocks) == 28 and blocks[-1] == "" and blocks[1].splitlines()[0] == "0.3"
    assert all(len(b.splitlines()) == 6 for b in blocks[:-1])
