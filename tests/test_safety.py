"""Issue 6: weight files are data. Hand-crafted malicious checkpoints and archives are refused with one line, and
their payload provably never runs (it would create a marker file the tests check is absent)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seeded import FIXTURES
from streamtag import checkpoints
from streamtag.errors import StreamtagError
from weightfiles import Server, error_lines, paddlespeech_archive

PACKAGE = Path(checkpoints.__file__).parent


class Payload:
    """Unpickling this runs `os.system(command)`: what a hostile checkpoint would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class EvalPayload:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return eval, (f"open({str(self.path)!r}, 'w').close()",)


def touch(marker: Path) -> str:
    return f"touch {marker}"


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtag", *args], capture_output=True, text=True,
                          env={**os.environ, "STREAMTAG_HOME": str(home)}, timeout=120)


def assert_refused(path: Path, marker: Path, tmp_path: Path, expected: str = "not a plain checkpoint") -> None:
    """Refused in-process and through the CLI, one line, non-zero exit, and the payload never ran."""
    with pytest.raises(StreamtagError, match=expected):
        checkpoints.read_checkpoint(path, "cnn6")
    result = cli("weights", "import", str(path), "--model", "cnn6", home=tmp_path / "home")
    lines = error_lines(result.stderr)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not marker.exists(), "the payload ran"
    assert not list((tmp_path / "home").rglob("*.p*")), "nothing may reach the cache"


def test_pth_zip_whose_data_pkl_calls_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"model": {"fc1.weight": Payload(touch(marker))}}, protocol=2))
        zf.writestr("archive/byteorder", "little")
    assert_refused(path, marker, tmp_path)
    with pytest.raises(StreamtagError, match=r"asks for (posix|os)\.system"):
        checkpoints.read_checkpoint(path, "cnn6")


def test_pth_with_a_payload_posing_as_a_storage_type(tmp_path):
    """A real-looking torch pickle where the storage class in the persistent id is `os.system`."""
    marker = tmp_path / "pwned"
    real = zipfile.ZipFile(FIXTURES / "cnn6_seed0.pth")
    pkl = real.read("cnn6_seed0/data.pkl").replace(b"ctorch\nFloatStorage\n", b"cos\nsystem\n", 1)
    path = tmp_path / "evil2.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cnn6_seed0/data.pkl", pkl)
    assert_refused(path, marker, tmp_path)


def test_pdparams_with_reduce_payloads(tmp_path):
    marker = tmp_path / "pwned"
    for i, payload in enumerate((Payload(touch(marker)), EvalPayload(marker))):
        path = tmp_path / f"evil{i}.pdparams"
        path.write_bytes(pickle.dumps({"fc1.weight": np.zeros(3, np.float32), "fc1.bias": payload}, protocol=4))
        assert_refused(path, marker, tmp_path)


def test_pdparams_with_an_object_array_payload(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "object.pdparams"
    path.write_bytes(pickle.dumps({"fc1.weight": np.array([Payload(touch(marker))], dtype=object)}, protocol=4))
    assert_refused(path, marker, tmp_path)


def test_build_cannot_modify_the_allowed_callables(tmp_path):
    """`BUILD` on an allowed global (set attributes on OrderedDict / numpy.dtype stand-ins) is refused."""
    for module, name in (("collections", "OrderedDict"), ("numpy", "dtype"), ("torch", "FloatStorage")):
        data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"}X\x04\x00\x00\x00evil" + b"K\x01sb."
        path = tmp_path / f"build-{name}.pdparams"
        path.write_bytes(data)
        with pytest.raises(StreamtagError, match="not a plain checkpoint"):
            checkpoints.read_checkpoint(path, "cnn6")


def test_legacy_style_pickle_with_payload(tmp_path):
    """Pre-1.6 torch files open with a pickled magic number; the object pickle after it is still restricted."""
    marker = tmp_path / "pwned"
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
                     + pickle.dumps({"little_endian": True}, protocol=2)
                     + pickle.dumps({"w": Payload(touch(marker))}, protocol=2))
    assert_refused(path, marker, tmp_path)


def _tar_with(tmp_path: Path, extra: list[tarfile.TarInfo], name: str) -> Path:
    """A PaddleSpeech-like archive with `extra` hostile members added (the checkpoint is a small stand-in: the
    archive is refused before any member is read)."""
    stand_in = tmp_path / "cnn6.pdparams"
    stand_in.write_bytes(pickle.dumps({"fc1.bias": np.zeros(512, np.float32)}, protocol=4))
    good = paddlespeech_archive("cnn6", stand_in)
    path = tmp_path / name
    with tarfile.open(fileobj=io.BytesIO(good), mode="r:gz") as src, tarfile.open(path, "w:gz") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
        for info in extra:
            data = b"owned\n" if info.isreg() else None
            if data:
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data) if data else None)
    return path


def _hostile_members(tmp_path: Path) -> dict[str, list[tarfile.TarInfo]]:
    dotdot = tarfile.TarInfo("panns_cnn6/../../escaped.txt")
    absolute = tarfile.TarInfo(str(tmp_path / "absolute.txt"))
    link = tarfile.TarInfo("panns_cnn6/link.pdparams")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("panns_cnn6/hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/passwd"
    device = tarfile.TarInfo("panns_cnn6/dev")
    device.type = tarfile.CHRTYPE
    return {"dotdot": [dotdot], "absolute": [absolute], "symlink": [link], "hardlink": [hard], "device": [device]}


def test_hostile_archives_are_refused_on_import(tmp_path):
    for kind, members in _hostile_members(tmp_path).items():
        path = _tar_with(tmp_path, members, f"{kind}.tar.gz")
        result = cli("weights", "import", str(path), "--model", "cnn6", home=tmp_path / "home")
        lines = error_lines(result.stderr)
        assert result.returncode != 0, kind
        assert len(lines) == 1 and "refusing the archive" in lines[0], result.stderr
    assert not (tmp_path.parent / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "absolute.txt").exists()
    assert not list((tmp_path / "home").rglob("*.p*"))


def test_symlink_posing_as_the_checkpoint_is_refused(tmp_path):
    path = tmp_path / "panns_cnn6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        link = tarfile.TarInfo("panns_cnn6/cnn6.pdparams")
        link.type, link.linkname = tarfile.SYMTYPE, str(FIXTURES / "cnn6_seed0.pth")
        tar.addfile(link)
    with pytest.raises(StreamtagError, match="is a link"):
        checkpoints.extract_member(path, "cnn6.pdparams", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hostile_archive_from_the_registry_leaves_nothing(tmp_path, monkeypatch):
    server = Server()
    monkeypatch.setenv("STREAMTAG_MIRROR", server.url)
    monkeypatch.setenv("STREAMTAG_HOME", str(tmp_path / "home"))
    path = _tar_with(tmp_path, _hostile_members(tmp_path)["dotdot"], "panns_cnn6.tar.gz")
    data = path.read_bytes()
    entry = checkpoints.REGISTRY["cnn6-paddlespeech"]
    monkeypatch.setitem(checkpoints.REGISTRY, entry.name, dataclasses.replace(entry, md5=hashlib.md5(data).hexdigest()))
    server.files["panns_cnn6.tar.gz"] = data
    try:
        with pytest.raises(StreamtagError, match="refusing the archive"):
            checkpoints.load_state("cnn6")
    finally:
        server.close()
    assert not [p for p in (tmp_path / "home").rglob("*") if p.is_file()]


def test_the_package_never_unpickles_user_files():
    """No pickle.load(s), paddle.load, torch.load or np.load(allow_pickle=True) anywhere in streamtag/."""
    unsafe = re.compile(r"\b(pickle\.loads?|paddle\.load|torch\.load|cPickle\.loads?)\s*\(|allow_pickle\s*=\s*True")
    found = [f"{p.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
             for p in PACKAGE.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
             if unsafe.search(line)]
    assert found == []
