"""Issue 12 item 2: reading a weight file or archive does work bounded by the file's size.

A few hundred bytes may not expand to exponential structures, copies or allocations: shared references stay
shared, copies are charged to a budget, every declared size is checked against the bytes really there. Each case
runs through the CLI with a timeout (a hang fails) and must give one line. No timing is asserted; the report's
figures come from scripts/bench_safeload.py.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seeded import FIXTURES, torch_seeded_state
from streamtag import checkpoints
from streamtag.errors import StreamtagError
from weightfiles import error_lines, write_legacy_torch


def exponential_pickle() -> bytes:
    """The issue's file: lists that each hold the previous list twice (2⁴⁰ paths through 40 objects)."""
    a: list = []
    for _ in range(40):
        a = [a, a]
    return pickle.dumps({"fc1.weight": a}, protocol=2)


def copy_bomb_pickle(string_bytes: int = 1 << 20, calls: int = 10_000) -> bytes:
    """`_codecs.encode` of one memoised 1 MB string, called 10 000 times: 80 kB of opcodes asking for 10 GB."""
    out = b"\x80\x02c_codecs\nencode\nq\x00"
    out += b"X" + struct.pack("<I", string_bytes) + b"a" * string_bytes + b"q\x01"
    out += b"X\x06\x00\x00\x00latin1q\x02](" + b"h\x00h\x01h\x02\x86R" * calls + b"e."
    return out


def deep_pickle(depth: int = 100_000) -> bytes:
    """Lists nested 100 000 deep (each APPENDed into the one below): RecursionError bait."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def cli(*args, home: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtag", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "STREAMTAG_HOME": str(home)}, timeout=timeout)


def assert_refused(path: Path, tmp_path: Path, *words: str) -> None:
    with pytest.raises(StreamtagError) as info:
        checkpoints.read_checkpoint(path, "cnn6")
    for word in words:
        assert word in str(info.value), str(info.value)
    proc = cli("weights", "import", path, "--model", "cnn6", home=tmp_path / "home")
    lines = error_lines(proc.stderr)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
    assert not list((tmp_path / "home").rglob("*.p*"))


def wide_pickle(width: int = 1000, depth: int = 5) -> bytes:
    """Shallow but exponential: each level is a list of 1000 references to the level below (10¹⁵ paths, 15 kB)."""
    a: list = [np.zeros(1, np.float32)]
    for _ in range(depth):
        a = [a] * width
    return pickle.dumps({"fc1.weight": a}, protocol=2)


def test_exponential_pickle_is_refused(tmp_path):
    data = exponential_pickle()
    assert len(data) < 400
    path = tmp_path / "evil.pdparams"
    path.write_bytes(data)
    assert_refused(path, tmp_path, "not a plain checkpoint", "nested deeper than 16 levels")


def test_wide_exponential_pickle_is_read_as_shared_references(tmp_path):
    """Within the nesting limit, shared references stay shared (each object visited once): the structure check
    then refuses it in a moment instead of walking 10¹⁵ paths."""
    path = tmp_path / "wide.pdparams"
    path.write_bytes(wide_pickle())
    assert path.stat().st_size < 20_000
    assert_refused(path, tmp_path, "not a .pdparams or .pth checkpoint", "no tensors")


def test_exponential_pickle_inside_a_torch_zip(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", wide_pickle())
    assert_refused(path, tmp_path, "no tensors")


def test_copy_bomb_is_charged_and_refused(tmp_path):
    path = tmp_path / "copies.pdparams"
    path.write_bytes(copy_bomb_pickle())
    assert_refused(path, tmp_path, "not a plain checkpoint", "more data than the file holds")


def test_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "deep.pdparams"
    path.write_bytes(deep_pickle())
    assert_refused(path, tmp_path, "not a plain checkpoint", "nested deeper than")


def test_cyclic_structure_is_refused(tmp_path):
    path = tmp_path / "cycle.pdparams"
    path.write_bytes(b"\x80\x02]q\x00h\x00a.")  # a list that contains itself
    assert_refused(path, tmp_path, "nested deeper than")


def test_torch_zip_whose_storage_is_a_zip_bomb(tmp_path):
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        zf.writestr("archive/data/0", bytes(64 << 20))
    assert path.stat().st_size < 1 << 20
    assert_refused(path, tmp_path, "zip bomb")


def test_torch_zip_with_overlapping_members(tmp_path):
    """The "overlapping zip bomb": central directory entries that all point at one local file."""
    good = FIXTURES / "cnn6_seed0.pth"
    with zipfile.ZipFile(good) as zf:
        infos = zf.infolist()
    biggest = max(infos, key=lambda i: i.compress_size)
    raw = bytearray(good.read_bytes())
    # Point the second-biggest member's central-directory entry at the biggest's local header.
    second = sorted(infos, key=lambda i: i.compress_size)[-2]
    for at in _central_entries(raw):
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46:at + 46 + name_len].decode() == second.filename:
            struct.pack_into("<I", raw, at + 20, biggest.compress_size)  # compressed size
            struct.pack_into("<I", raw, at + 24, biggest.file_size)      # uncompressed size
            struct.pack_into("<I", raw, at + 42, biggest.header_offset)
    path = tmp_path / "overlap.pth"
    path.write_bytes(bytes(raw))
    assert_refused(path, tmp_path)


def _central_entries(raw: bytearray):
    at = raw.find(b"PK\x01\x02")
    while at != -1:
        yield at
        at = raw.find(b"PK\x01\x02", at + 4)


def test_legacy_storage_declaring_more_than_the_file(tmp_path):
    path = write_legacy_torch(tmp_path / "ok.pth", {"fc1.bias": np.zeros(512, np.float32)})
    raw = bytearray(path.read_bytes())
    at = len(raw) - 512 * 4 - 8
    assert struct.unpack_from("<q", raw, at)[0] == 512
    struct.pack_into("<q", raw, at, 1 << 40)
    path.write_bytes(bytes(raw))
    assert_refused(path, tmp_path, "declares more bytes than the file holds")


def test_tar_bomb_is_refused_while_streaming(tmp_path):
    """A PaddleSpeech-like .tar.gz whose member inflates 64 MB of zeros from ~64 kB: refused by the ratio cap,
    and nothing is left where the member would have gone."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("panns_cnn6/cnn6.pdparams")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    path = tmp_path / "panns_cnn6.tar.gz"
    path.write_bytes(buf.getvalue())
    assert path.stat().st_size < 1 << 20
    with pytest.raises(StreamtagError, match="unpacks to more than 100×"):
        checkpoints.extract_member(path, "cnn6.pdparams", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    proc = cli("weights", "import", path, "--model", "cnn6", home=tmp_path / "home")
    lines = error_lines(proc.stderr)
    assert proc.returncode != 0 and len(lines) == 1 and "refusing the archive" in lines[0], proc.stderr


def test_tar_with_a_pax_header_declaring_gigabytes(tmp_path):
    """A pax header's size is read into memory by tarfile: the stream limit stops it too."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 32 << 20
    raw = header.tobuf(format=tarfile.USTAR_FORMAT) + bytes(header.size)
    import gzip

    path = tmp_path / "pax.tar.gz"
    path.write_bytes(gzip.compress(raw + bytes(1024)))
    with pytest.raises(StreamtagError, match="refusing the archive|broken or truncated"):
        checkpoints.extract_member(path, "cnn6.pdparams", tmp_path / "out")


# ---------------------------------------------------------------------------------------------- real legacy file
def test_real_torch_legacy_checkpoint_equals_the_zip_one():
    """`cnn6_seed0_legacy.pth` was saved by torch 2.13 with `_use_new_zipfile_serialization=False` from the same
    tensors as `cnn6_seed0.pth`: both read to the same state, bit for bit, and score the same."""
    legacy = checkpoints.read_checkpoint(FIXTURES / "cnn6_seed0_legacy.pth", "cnn6")
    zipped = checkpoints.read_checkpoint(FIXTURES / "cnn6_seed0.pth", "cnn6")
    assert legacy.keys() == zipped.keys()
    for key in zipped:
        np.testing.assert_array_equal(legacy[key], zipped[key], err_msg=key)
    seeded = torch_seeded_state("cnn6")
    assert np.array_equal(legacy["fc1.weight"], seeded["fc1.weight"].T)

    from streamtag.engine import load_scorer

    x = np.random.default_rng(0).standard_normal((2, 64000)).astype(np.float32) * 0.1
    scores = [load_scorer("cnn6", str(FIXTURES / name), "cpu", "eager", 1).score(x)
              for name in ("cnn6_seed0_legacy.pth", "cnn6_seed0.pth")]
    np.testing.assert_array_equal(scores[0], scores[1])
