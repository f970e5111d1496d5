"""Issue 12 item 1: a normal (non-editable) install carries everything it needs.

The shipped defaults live in `streamtag/configs/` (package data); the repository's `configs/` is the documented copy
and must stay byte-identical. The slow test builds a wheel, installs it into a fresh venv outside the repository
and runs `--help`, `tag` and `parse` there with the default options, comparing with this (editable) install.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seeded import FIXTURES

ROOT = Path(__file__).resolve().parent.parent
REPO_CONFIGS = ROOT / "configs"
SHIPPED_CONFIGS = ROOT / "streamtag" / "configs"
SAMPLE = ROOT / "samples" / "sample.wav"


def test_repo_configs_equal_the_shipped_ones():
    repo = {p.name: p.read_text() for p in REPO_CONFIGS.glob("*.yaml")}
    shipped = {p.name: p.read_text() for p in SHIPPED_CONFIGS.glob("*.yaml")}
    how = ("configs/ (the documented copy) and streamtag/configs/ (what the package ships) must be identical: "
           "edit configs/<command>.yaml and run `make sync-configs` (= cp configs/*.yaml streamtag/configs/); "
           "if you edited streamtag/configs/ instead, copy it back with `cp streamtag/configs/*.yaml configs/`")
    assert repo.keys() == shipped.keys(), f"{how}\nonly in configs/: {sorted(repo.keys() - shipped.keys())}; " \
                                          f"only in streamtag/configs/: {sorted(shipped.keys() - repo.keys())}"
    for name in sorted(repo):
        if repo[name] != shipped[name]:
            diff = "".join(difflib.unified_diff(repo[name].splitlines(True), shipped[name].splitlines(True),
                                                f"configs/{name}", f"streamtag/configs/{name}"))
            pytest.fail(f"{how}\n{diff}", pytrace=False)


def test_version_option():
    from streamtag import __version__

    out = subprocess.run([sys.executable, "-m", "streamtag", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"streamtag {__version__}"


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _source_copy(dest: Path) -> Path:
    """The files git would ship (tracked + untracked-not-ignored), so the build never writes into the worktree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_matches_the_editable_install(tmp_path):
    # Build a wheel from a copy of the sources (pip's cache and local wheel dirs are reused as configured).
    src = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src], tmp_path, dict(os.environ))
    (wheel,) = dist.glob("streamtag-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("streamtag/configs/tag.yaml", "streamtag/configs/parse.yaml", "streamtag/configs/live.yaml",
                   "streamtag/assets/class_labels_indices.csv"):
        assert needed in names, f"{needed} missing from the wheel"

    # A fresh venv outside the repository, with the CPU extra (Paddle from the pip cache / local wheels).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    vpy = env_dir / "bin" / "python"
    _run([vpy, "-m", "pip", "install", "-q", f"{wheel}[cpu]"], tmp_path, dict(os.environ), timeout=600)

    weights = FIXTURES / "cnn6_seed0.pth"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    outputs = {}
    for name, py, exe in (("wheel", vpy, [env_dir / "bin" / "streamtag"]),
                          ("editable", sys.executable, [sys.executable, "-m", "streamtag"])):
        work = tmp_path / f"run-{name}"
        work.mkdir()
        shutil.copy(SAMPLE, work / "sample.wav")
        env = {**clean_env, "STREAMTAG_HOME": str(tmp_path / f"home-{name}")}
        where = _run([py, "-c", "import streamtag; print(streamtag.__file__)"], work, env).stdout.strip()
        assert (str(env_dir) in where) == (name == "wheel"), where
        helps = [_run([*exe, *cmd, "--help"], work, env).stdout for cmd in ([], ["tag"], ["parse"])]
        tag = _run([*exe, "tag", "sample.wav", "--model", "cnn6", "--weights", weights], work, env)
        parse = _run([*exe, "parse", "output_dir/sample.npz"], work, env)
        outputs[name] = (helps, work, tag.stdout, parse.stdout)

    wheel_helps, wheel_dir, _, _ = outputs["wheel"]
    edit_helps, edit_dir, _, _ = outputs["editable"]
    assert wheel_helps == edit_helps
    assert "(default: 2.0)" in wheel_helps[1] and "(default: ./output_dir)" in wheel_helps[1]
    with np.load(wheel_dir / "output_dir/sample.npz") as a, np.load(edit_dir / "output_dir/sample.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert (wheel_dir / "output_dir/sample.txt").read_bytes() == (edit_dir / "output_dir/sample.txt").read_bytes()
