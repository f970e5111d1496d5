"""Issue 12 item 6: hostile inputs that used to get through. Each case from the issue, and the class behind it:
every input is a regular file of sane size (paths.input_file), every output is checked before work starts
(paths.OutputPlan), every declared size is checked against what is there (safeload), and config values are typed.

Every subprocess has a timeout, so a regression to a hang (a FIFO read forever) fails instead of stalling the suite.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamtag.errors import StreamtagError
from streamtag.labels import audioset_labels
from streamtag.results import load_result

SETPRIV = shutil.which("setpriv")


def streamtag(*args, cwd: Path, env: dict | None = None, as_user: bool = False, timeout: int = 120):
    """Run the CLI; `as_user` drops root's permission override (CAP_DAC_OVERRIDE/READ_SEARCH) with setpriv, so
    file modes apply as they do for an ordinary user, while root's own files (the venv) stay readable."""
    cmd = [sys.executable, "-m", "streamtag", *map(str, args)]
    if as_user and os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        cmd = [SETPRIV, f"--bounding-set={caps}", f"--inh-caps={caps}", *cmd]
    full_env = {**os.environ, "STREAMTAG_HOME": str(cwd / "home"), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout)


def errors(proc) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("streamtag: error: ")]


def one_line(proc, *words: str) -> str:
    assert proc.returncode != 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamtag: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def model(cnn6_weights):
    return ["--model", "cnn6", "--weights", cnn6_weights, "--engine", "eager", "--device", "cpu"]


@pytest.fixture
def good_wav(tmp_path) -> Path:
    path = tmp_path / "good.wav"
    sf.write(path, np.random.default_rng(0).standard_normal(40000).astype(np.float32) * 0.1, 32000)
    return path


def write_npz(path: Path, **override) -> Path:
    arrays = {"time": np.arange(3) * 0.3, "scores": np.full((3, 527), 0.25, np.float32),
              "labels": np.array(audioset_labels())}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------------------------------------- inputs
def test_fifo_devnull_loop_and_long_names_as_tag_inputs(tmp_path, model, good_wav):
    """Each bad input is one correct line, none hangs, and the good file in the batch is still tagged."""
    os.mkfifo(tmp_path / "fifo.wav")
    (tmp_path / "loop.wav").symlink_to("loop.wav")
    (tmp_path / "dangling.wav").symlink_to("nowhere.wav")
    long_name = "b" * 300 + ".wav"
    proc = streamtag("tag", "fifo.wav", "/dev/zero", "loop.wav", "dangling.wav", long_name, "good.wav",
                     "--output-dir", "out", *model, cwd=tmp_path)
    assert proc.returncode == 1
    lines = errors(proc)
    expected = [("fifo.wav", "named pipe (FIFO)"), ("/dev/zero", "is a device"),
                ("loop.wav", "symlink loop"), ("dangling.wav", "broken symbolic link"),
                (long_name[:20], "file name too long")]
    assert len(lines) == len(expected), proc.stderr
    for line, (name, message) in zip(lines, expected):
        assert name in line and message in line, line
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.npz"]


@pytest.mark.skipif(not SETPRIV and os.geteuid() == 0, reason="needs setpriv to drop root's permission override")
def test_unsearchable_directory_as_an_ordinary_user(model, good_wav):
    """A file in a directory without search permission: one line, the good files in the batch are still tagged.
    Run with root's override dropped (setpriv), so the directory's mode really applies."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        work = Path(tmp)
        shutil.copy(good_wav, work / "good.wav")
        locked = work / "locked"
        locked.mkdir()
        shutil.copy(good_wav, locked / "a.wav")
        locked.chmod(0o000)
        try:
            proc = streamtag("tag", "locked/a.wav", "good.wav", "--output-dir", "out", *model, cwd=work,
                             as_user=True)
        finally:
            locked.chmod(0o755)
        assert proc.returncode == 1
        (line,) = errors(proc)
        assert "locked/a.wav" in line and "permission denied" in line, line
        assert [p.name for p in (work / "out").iterdir()] == ["good.npz"]
        # and an output dir that is not writable for this user
        ro = work / "ro"
        ro.mkdir(mode=0o555)
        proc = streamtag("tag", "good.wav", "--output-dir", "ro", *model, cwd=work, as_user=True)
        one_line(proc, "ro", "not writable")


def test_fifo_and_devzero_as_label_file_config_and_npz(tmp_path, good_wav):
    os.mkfifo(tmp_path / "fifo")
    npz = write_npz(tmp_path / "ok.npz")
    cases = [
        (["parse", npz, "--label-file", "fifo"], "named pipe (FIFO)"),
        (["parse", npz, "--label-file", "/dev/zero"], "is a device"),
        (["parse", npz, "--config", "fifo"], "named pipe (FIFO)"),
        (["parse", npz, "--config", "/dev/zero"], "is a device"),
        (["parse", "fifo"], "named pipe (FIFO)"),
        (["parse", "/dev/zero"], "is a device"),
        (["tag", "good.wav", "--weights", "/dev/zero", "--model", "cnn6"], "/dev/zero: is a device"),
        (["weights", "import", "/dev/zero", "--model", "cnn6"], "/dev/zero: is a device"),
        (["weights", "import", "fifo", "--model", "cnn6"], "named pipe (FIFO)"),
    ]
    for args, message in cases:
        proc = streamtag(*args, cwd=tmp_path, timeout=60)
        line = "\n".join(errors(proc))
        assert proc.returncode != 0 and message in line, (args, proc.stderr)
        assert "empty file" not in line and "does not exist" not in line
    assert not (tmp_path / "output_dir").exists()


def test_symlink_loop_config_and_weights(tmp_path):
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    one_line(streamtag("parse", "x.npz", "--config", "loop.yaml", cwd=tmp_path), "symlink loop")
    one_line(streamtag("weights", "import", "loop.yaml", "--model", "cnn6", cwd=tmp_path), "symlink loop")


def test_npz_header_declaring_a_huge_shape_and_later_files_still_parse(tmp_path):
    """An `.npy` header's shape must match the member's size: no 10¹²-element allocation, the next file parses."""
    good = write_npz(tmp_path / "good.npz")
    huge = tmp_path / "huge.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(huge, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "scores.npy":  # same header length: the new shape eats some of the padding
                old, new = b"'shape': (3, 527), }", b"'shape': (999999999999, 527), }"
                at = data.index(old)
                assert data[at + len(old):at + len(new)].strip() == b""
                data = data[:at] + new + data[at + len(new):]
            dst.writestr(info.filename, data)
    proc = streamtag("parse", "huge.npz", "good.npz", cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = errors(proc)
    assert "huge.npz" in line and "declares shape (999999999999, 527)" in line, line
    assert (tmp_path / "output_dir" / "good.txt").exists() and not (tmp_path / "output_dir" / "huge.txt").exists()


def test_zip_bomb_npz_is_refused_before_inflating(tmp_path):
    """The issue's 7.9 MB npz held 4.2 GB of zeros; this one holds 256 MB: refused from the declared sizes."""
    bomb = tmp_path / "bomb.npz"
    header = b"\x93NUMPY\x01\x00" + b"{'descr': '<f4', 'fortran_order': False, 'shape': (127336, 527), }".ljust(
        117) + b"\n"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("time.npy", _npy(np.arange(127336) * 0.3))
        with zf.open("scores.npy", "w", force_zip64=True) as f:
            f.write(header)
            zeros = bytes(1 << 20)
            for _ in range(256):
                f.write(zeros)
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(StreamtagError, match="zip bomb"):
        load_result(bomb)
    one_line(streamtag("parse", "bomb.npz", cwd=tmp_path, timeout=60), "refusing the npz", "zip bomb")


def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_npz_member_that_is_not_an_array(tmp_path):
    path = tmp_path / "raw.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("time.npy", _npy(np.zeros(2)))
        zf.writestr("scores", b"just bytes")
    with pytest.raises(StreamtagError, match="'scores' is not an .npy array"):
        load_result(path)


@pytest.mark.parametrize("override, message", [
    ({"scores": np.array([[0.1, np.nan], [0.2, 0.3]], np.float32), "time": np.array([0.0, 0.3])}, "NaN or Inf"),
    ({"scores": np.array([[0.1, np.inf], [0.2, 0.3]], np.float32), "time": np.array([0.0, 0.3])}, "NaN or Inf"),
    ({"time": np.array([0.0, np.nan, 0.6])}, "`time` holds NaN"),
    ({"labels": np.array(["Speech\n0.0\nFake: 1.0"] + list(audioset_labels())[1:])}, "control character"),
    ({"labels": np.array(["Speech\x1b[2J"] + list(audioset_labels())[1:])}, "control character"),
    ({"time": np.array([0, 1, 2], dtype=np.complex64)}, "real numbers"),
])
def test_nan_scores_times_and_forged_labels_are_refused(tmp_path, override, message):
    path = write_npz(tmp_path / "bad.npz", **override)
    one_line(streamtag("parse", path, cwd=tmp_path), "bad.npz", message)
    assert not (tmp_path / "output_dir").exists()


def test_label_file_with_control_characters(tmp_path):
    npz = write_npz(tmp_path / "ok.npz")
    (tmp_path / "labels.txt").write_text("\n".join(["Speech\x1b]0;owned\x07"] + list(audioset_labels())[1:]))
    one_line(streamtag("parse", npz, "--label-file", "labels.txt", cwd=tmp_path), "labels.txt", "control character")
    (tmp_path / "bad.csv").write_text("index,mid,display_name\nzero,/m/x,Speech\n")
    one_line(streamtag("parse", npz, "--label-file", "bad.csv", cwd=tmp_path), "not a valid class_labels_indices")


# ---------------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize("line, message", [
    ("label-file: [a]", "label-file: a list is not a single value"),
    ("output-dir: {a: 1}", "output-dir: a mapping is not a single value"),
    ("top-k: null", "top-k: null is not allowed here"),
    ("smooth-size: null", "smooth-size: null is not allowed here"),
    ("output-dir: null", "output-dir: null is not allowed here"),
    ("top-k: [1, 2]", "top-k: a list is not a single value"),
    ("label-file: true", "label-file: True is not a single value"),
    ("a: &x [1,1,1,1,1,1,1,1,1]\nb: &y [*x,*x,*x,*x,*x,*x,*x,*x,*x]\nc: &z [*y,*y,*y,*y,*y,*y,*y,*y,*y]\n"
     "top-k: [*z,*z,*z,*z,*z,*z,*z,*z,*z]", "unknown option(s) for `parse`: a, b, c"),
    ("1: 2", "option names must be text"),
    ("[[[[[[[[[[", "not valid YAML"),
])
def test_config_values_of_the_wrong_type(tmp_path, line, message):
    (tmp_path / "c.yaml").write_text(line + "\n")
    one_line(streamtag("parse", "x.npz", "--config", "c.yaml", cwd=tmp_path), "c.yaml", message)


def test_config_numbers_as_paths(tmp_path, model, good_wav):
    """`output-dir: 42` is the directory 42; `weights: 12` is the (missing) file 12, each one clear line."""
    (tmp_path / "c.yaml").write_text("output-dir: 42\nweights: 12\n")
    one_line(streamtag("tag", "good.wav", "--model", "cnn6", "--config", "c.yaml", cwd=tmp_path), "12",
             "no such file")
    (tmp_path / "c.yaml").write_text("output-dir: 42\n")
    proc = streamtag("tag", "good.wav", "--config", "c.yaml", *model, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "42" / "good.npz").exists()


# ---------------------------------------------------------------------------------------------- option bounds
@pytest.mark.parametrize("args, message", [
    (["tag", "a.wav", "--sample-duration", "1e9"], "--sample-duration: must be a positive number of seconds up to 60"),
    (["tag", "a.wav", "--hop-duration", "1e305"], "--hop-duration: must be a positive number of seconds up to 3600"),
    (["tag", "a.wav", "--threads", "100000"], "--threads: must be at most"),
    (["tag", "a.wav", "--batch-size", "1000000"], "--batch-size: must be at most 256"),
    (["replay", "a.wav", "--speed", "0"], "--speed: must be a pace above 0"),
    (["replay", "a.wav", "--speed", "fast"], "--speed: 'fast' is not a number"),
    (["replay", "a.wav", "--duration", "1e300"], "--duration: must be a positive number of seconds"),
])
def test_absurd_numbers_are_one_line_errors(tmp_path, args, message):
    proc = streamtag(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert message in proc.stderr.splitlines()[-1], proc.stderr
    if "--speed" in args:
        assert "seconds" not in proc.stderr


def test_threads_in_a_config_are_bounded_too(tmp_path):
    (tmp_path / "c.yaml").write_text("threads: 100000\n")
    one_line(streamtag("tag", "a.wav", "--config", "c.yaml", cwd=tmp_path), "threads: must be at most")


# ---------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("extra, message", [
    (["--save-audio", "adir"], "--save-audio adir: must end in .wav"),
    (["--save-audio", "adir.wav"], "--save-audio adir.wav: is a directory"),
    (["--save-audio", "rec.npz", "--record", "rec"], "--save-audio rec.npz: must end in .wav"),
    (["--save-audio", "out.mp3"], "must end in .wav"),
    (["--save-audio", "good.wav"], "--save-audio good.wav: is also an input of this run"),
    (["--save-audio", "./good.wav"], "is also an input of this run"),
    (["--record", "afile/rec"], "--record afile/rec.npz: cannot write it: a component of the path is a file"),
    (["--record", "weights"], "--record weights.npz: is also an input of this run"),
])
def test_stream_outputs_are_checked_before_the_session(tmp_path, good_wav, cnn6_weights, extra, message):
    (tmp_path / "adir.wav").mkdir()
    (tmp_path / "afile").write_text("x")
    shutil.copy(cnn6_weights, tmp_path / "weights.npz")
    args = ["replay", "good.wav", "--fast", "--no-dashboard", "--model", "cnn6", "--engine", "eager",
            "--weights", "weights.npz" if "weights" in extra else cnn6_weights, *extra]
    line = one_line(streamtag(*args, cwd=tmp_path), message)
    assert "--output-dir" not in line
    assert (tmp_path / "good.wav").read_bytes() == good_wav.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix in (".npz", ".txt")
                if p.name != "weights.npz"]


def test_tag_output_colliding_with_an_input_or_a_directory(tmp_path, model, good_wav):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "good.npz").mkdir()
    proc = streamtag("tag", "good.wav", "--output-dir", "out", *model, cwd=tmp_path)
    one_line(proc, "out/good.npz", "is a directory")
    # an audio file named like its own result: tagging it would overwrite it
    shutil.copy(good_wav, tmp_path / "song.npz")
    proc = streamtag("tag", "song.npz", "--output-dir", ".", *model, cwd=tmp_path)
    one_line(proc, "song.npz", "is also an input of this run")
    # parse's output may not overwrite the label file
    npz = write_npz(tmp_path / "labels.npz")
    (tmp_path / "labels.txt").write_text("\n".join(audioset_labels()) + "\n")
    proc = streamtag("parse", npz, "--label-file", "labels.txt", "--output-dir", ".", cwd=tmp_path)
    one_line(proc, "labels.txt", "is also an input of this run")


def test_failed_tag_and_parse_leave_no_output_dir(tmp_path, model):
    (tmp_path / "bad.wav").write_text("not audio")
    proc = streamtag("tag", "bad.wav", *model, cwd=tmp_path)
    one_line(proc, "bad.wav")
    (tmp_path / "bad.npz").write_text("not a zip")
    one_line(streamtag("parse", "bad.npz", cwd=tmp_path), "bad.npz")
    one_line(streamtag("parse", "bad.npz", "--output-dir", "a/b/c", cwd=tmp_path), "bad.npz")
    assert not (tmp_path / "output_dir").exists() and not (tmp_path / "a").exists()


def test_streamtag_home_under_a_file(tmp_path, model, good_wav):
    """ENOTDIR for STREAMTAG_HOME is named as such, not "free some space"."""
    (tmp_path / "afile").write_text("x")
    env = {"STREAMTAG_HOME": str(tmp_path / "afile" / "home")}
    inference = [m if m != "eager" else "inference" for m in model]
    for args in (["tag", "good.wav", *inference], ["weights", "import", model[3], "--model", "cnn6"]):
        proc = streamtag(*args, cwd=tmp_path, env=env)
        (line,) = errors(proc)
        assert proc.returncode != 0 and "is a file, not a directory" in line and "STREAMTAG_HOME" in line, line
        assert "space" not in line
