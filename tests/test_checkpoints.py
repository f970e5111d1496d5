"""Checkpoints: the safe .pdparams/.pth readers on real layouts, strict verification, and the fetch/cache path
against a real HTTP server on 127.0.0.1 (no network needed)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seeded import FIXTURES, seeded_state, torch_seeded_state, write_seeded_pdparams
from streamtag import checkpoints, models
from streamtag.cli import main
from streamtag.errors import StreamtagError
from weightfiles import (Server, error_lines, paddlespeech_archive, torch_pickle, write_legacy_torch,
                         write_torch_zip)


# ---------------------------------------------------------------------------------------------- readers
def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("arch", ["cnn6", "cnn10"])
def test_fixture_pth_reads_to_the_seeded_state(arch):
    state = checkpoints.read_checkpoint(FIXTURES / f"{arch}_seed0.pth", arch)
    assert_same_state(state, seeded_state(arch))
    assert all(v.dtype == np.float32 for v in state.values())
    assert not any(k.startswith(("spectrogram_extractor", "logmel_extractor")) for k in state)


def test_pdparams_of_arrays_and_of_tensors(tmp_path):
    import paddle

    arrays = write_seeded_pdparams("cnn6", tmp_path / "arrays.pdparams")
    tensors = tmp_path / "tensors.pdparams"
    paddle.save({k: paddle.to_tensor(np.array(v)) for k, v in seeded_state("cnn6").items()}, str(tensors))
    nested = tmp_path / "nested.pdparams"  # a non-state-dict object: tensors pickled as tuple((name, array))
    model = models.build_model("cnn6")
    models.load_weights(model, seeded_state("cnn6"))
    paddle.save({"model": model.state_dict(), "epoch": 3}, str(nested))
    for path in (arrays, tensors, nested):
        assert_same_state(checkpoints.read_checkpoint(path, "cnn6"), seeded_state("cnn6"))


def test_pdparams_and_state_dict_only_pth_give_identical_outputs(tmp_path):
    import paddle

    pdparams = write_seeded_pdparams("cnn6", tmp_path / "seeded.pdparams")
    pkl, records = torch_pickle(torch_seeded_state("cnn6"), transposed=("fc1.weight",))
    pth = write_torch_zip(tmp_path / "seeded.pth", pkl, records, folder="seeded")
    from_pd = checkpoints.read_checkpoint(pdparams, "cnn6")
    from_pth = checkpoints.read_checkpoint(pth, "cnn6")
    assert_same_state(from_pd, from_pth)

    wave = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 64000)).astype(np.float32) * 0.1)
    outputs = []
    for state in (from_pd, from_pth):
        model = models.load_weights(models.build_model("cnn6"), state)
        with paddle.no_grad():
            clipwise, embedding = model(wave)
        outputs.append((clipwise.numpy(), embedding.numpy()))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    assert outputs[0][0].shape == (2, 527)


def test_pth_with_shared_storage_offsets_and_model_wrapper(tmp_path):
    pkl, records = torch_pickle(torch_seeded_state("cnn6"), wrap_model=True, shared_storage=True,
                                transposed=("fc_audioset.weight",))
    path = write_torch_zip(tmp_path / "shared.pth", pkl, records, folder="Cnn6_mAP=0.343")
    assert_same_state(checkpoints.read_checkpoint(path, "cnn6"), seeded_state("cnn6"))


def test_legacy_torch_format(tmp_path):
    path = write_legacy_torch(tmp_path / "legacy.pth", torch_seeded_state("cnn6"))
    assert_same_state(checkpoints.read_checkpoint(path, "cnn6"), seeded_state("cnn6"))


def test_load_state_with_weights_path_returns_its_sha256():
    path = FIXTURES / "cnn6_seed0.pth"
    state, digest = checkpoints.load_state("cnn6", str(path))
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_same_state(state, seeded_state("cnn6"))


def test_wrong_arch_names_the_arch_the_file_looks_like(tmp_path):
    with pytest.raises(StreamtagError, match=r"looks like a cnn6 checkpoint, not cnn14; pass --model cnn6"):
        checkpoints.read_checkpoint(FIXTURES / "cnn6_seed0.pth", "cnn14")
    with pytest.raises(StreamtagError, match=r"looks like a cnn10 checkpoint, not cnn6"):
        checkpoints.read_checkpoint(FIXTURES / "cnn10_seed0.pth", "cnn6")


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    state = torch_seeded_state("cnn6")
    del state["conv_block2.conv1.weight"]
    state["fc1.bias"] = state["fc1.bias"][:100]
    pkl, records = torch_pickle(state)
    path = write_torch_zip(tmp_path / "broken.pth", pkl, records)
    with pytest.raises(StreamtagError) as info:
        checkpoints.read_checkpoint(path, "cnn6")
    message = str(info.value)
    assert "not a cnn6 checkpoint" in message and "conv_block2.conv1.weight is missing" in message
    assert "fc1.bias has shape (100,), expected (512,)" in message and "\n" not in message


def test_nan_weights_are_refused(tmp_path):
    state = torch_seeded_state("cnn6")
    state["fc1.bias"][3] = np.nan
    pkl, records = torch_pickle(state)
    with pytest.raises(StreamtagError, match="NaN"):
        checkpoints.read_checkpoint(write_torch_zip(tmp_path / "nan.pth", pkl, records), "cnn6")


def test_storage_too_short_is_refused(tmp_path):
    pkl, records = torch_pickle(torch_seeded_state("cnn6"))
    records["3"] = records["3"][:10]
    with pytest.raises(StreamtagError, match="not a plain checkpoint.*shorter"):
        checkpoints.read_checkpoint(write_torch_zip(tmp_path / "short.pth", pkl, records), "cnn6")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtag", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_bad_weights_via_cli_give_one_line(tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((FIXTURES / "cnn6_seed0.pth").read_bytes()[:300_000])
    random = tmp_path / "random.pdparams"
    random.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated_pd = tmp_path / "truncated.pdparams"
    truncated_pd.write_bytes(write_seeded_pdparams("cnn6", tmp_path / "ok.pdparams").read_bytes()[:5000])
    cases = [(truncated, "cnn6", "truncated"), (random, "cnn6", "not a .pdparams or .pth"),
             (truncated_pd, "cnn6", "truncated"),
             (FIXTURES / "cnn6_seed0.pth", "cnn14", "looks like a cnn6 checkpoint"),
             (tmp_path / "missing.pth", "cnn6", "no such file")]
    env = {"STREAMTAG_HOME": str(tmp_path / "home")}
    for path, arch, expected in cases:
        result = _cli("weights", "import", str(path), "--model", arch, env=env)
        lines = error_lines(result.stderr)
        assert result.returncode != 0, path
        assert "Traceback" not in result.stderr
        assert len(lines) == 1 and lines[0].startswith("streamtag: error: ") and expected in lines[0], result.stderr
    assert not list((tmp_path / "home").rglob("*.p*")), "nothing may reach the cache"


def test_bad_weights_for_a_model_command_give_one_line(tmp_path):
    """`--weights PATH` on a command that runs a model: the same one-line errors, nothing written."""
    import soundfile

    wav = tmp_path / "noise.wav"
    soundfile.write(wav, np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1, 32000)
    random = tmp_path / "random.pth"
    random.write_bytes(np.random.default_rng(1).bytes(2048))
    env = {"STREAMTAG_HOME": str(tmp_path / "home")}
    for weights, arch, expected in ((random, "cnn6", "not a .pdparams or .pth"),
                                    (FIXTURES / "cnn6_seed0.pth", "cnn14", "looks like a cnn6 checkpoint")):
        result = _cli("tag", str(wav), "--model", arch, "--weights", str(weights), "--engine", "eager",
                      "--output-dir", str(tmp_path / "out"), env=env)
        lines = error_lines(result.stderr)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "out" / "noise.npz").exists()


# ---------------------------------------------------------------------------------------------- fetch / cache
@pytest.fixture
def server(monkeypatch, tmp_path):
    srv = Server()
    monkeypatch.setenv("STREAMTAG_MIRROR", srv.url)
    monkeypatch.setenv("STREAMTAG_HOME", str(tmp_path / "home"))
    yield srv
    srv.close()


@pytest.fixture
def cnn6_archive(tmp_path, monkeypatch):
    """A PaddleSpeech-like panns_cnn6.tar.gz of the seeded CNN6, its md5 patched into the registry."""
    archive = paddlespeech_archive("cnn6", write_seeded_pdparams("cnn6", tmp_path / "cnn6.pdparams"))
    entry = checkpoints.REGISTRY["cnn6-paddlespeech"]
    monkeypatch.setitem(checkpoints.REGISTRY, entry.name,
                        dataclasses.replace(entry, md5=hashlib.md5(archive).hexdigest()))
    return archive


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "home").rglob("*") if p.is_file())


def test_fetch_shows_progress_verifies_md5_and_caches(server, cnn6_archive, tmp_path, capsys):
    server.files["panns_cnn6.tar.gz"] = cnn6_archive
    assert main(["weights", "fetch", "cnn6"]) == 0
    out, err = capsys.readouterr()
    cached = tmp_path / "home" / "weights" / "cnn6-paddlespeech.pdparams"
    assert out.strip() == str(cached)
    assert "panns_cnn6.tar.gz" in err and "100%" not in out
    assert re.search(r"[\d.]+/[\d.]+ [kM]B", err) and re.search(r"[\d.]+ [kM]B/s", err)  # bytes and speed
    assert cache_files(tmp_path) == [cached, cached.with_name(cached.name + ".sha256")]
    state, digest = checkpoints.load_state("cnn6")
    assert_same_state(state, seeded_state("cnn6"))
    assert digest == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert server.requests == ["panns_cnn6.tar.gz"]  # the second use came from the cache
    assert main(["weights", "fetch", "cnn6-paddlespeech"]) == 0  # already cached and verified: no download
    assert server.requests == ["panns_cnn6.tar.gz"]

    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "cnn6-paddlespeech" in listing and "cnn14-authors" in listing


def test_first_use_fetches_the_default(server, cnn6_archive, tmp_path):
    server.files["panns_cnn6.tar.gz"] = cnn6_archive
    state, _ = checkpoints.load_state("cnn6")
    assert_same_state(state, seeded_state("cnn6"))
    assert server.requests == ["panns_cnn6.tar.gz"]


def test_wrong_md5_leaves_nothing(server, cnn6_archive, tmp_path, capsys):
    server.files["panns_cnn6.tar.gz"] = cnn6_archive[:-1] + b"\0"
    assert main(["weights", "fetch", "cnn6-paddlespeech"]) == 1
    err = capsys.readouterr().err
    assert "md5" in err and "does not match" in err
    assert cache_files(tmp_path) == []


def test_interrupted_transfer_leaves_nothing(server, cnn6_archive, tmp_path, capsys):
    server.files["panns_cnn6.tar.gz"] = cnn6_archive
    server.cut.add("panns_cnn6.tar.gz")
    with pytest.raises(StreamtagError) as info:
        checkpoints.load_state("cnn6")
    assert "could not download" in str(info.value) and "panns_cnn6.tar.gz" in str(info.value)
    assert cache_files(tmp_path) == []


def test_corrupt_cached_file_is_reported_and_fetched_again(server, cnn6_archive, tmp_path, capsys):
    server.files["panns_cnn6.tar.gz"] = cnn6_archive
    checkpoints.load_state("cnn6")
    cached = tmp_path / "home" / "weights" / "cnn6-paddlespeech.pdparams"
    data = bytearray(cached.read_bytes())
    data[-100] ^= 0xFF  # flip bits inside a tensor: the structure still parses, the sha256 does not match
    cached.write_bytes(bytes(data))
    capsys.readouterr()
    state, _ = checkpoints.load_state("cnn6")
    assert "failed verification" in capsys.readouterr().err
    assert_same_state(state, seeded_state("cnn6"))
    assert server.requests == ["panns_cnn6.tar.gz", "panns_cnn6.tar.gz"]


def test_authors_pth_fetch_is_verified_by_md5_and_structure(server, tmp_path, monkeypatch):
    data = (FIXTURES / "cnn6_seed0.pth").read_bytes()
    server.files["Cnn6_mAP=0.343.pth"] = data
    server.files["Cnn10_mAP=0.380.pth"] = data  # wrong arch upstream, md5 as if published for it
    for name in ("cnn6-authors", "cnn10-authors"):
        entry = checkpoints.REGISTRY[name]
        assert len(entry.md5) == 32  # Zenodo's published md5
        monkeypatch.setitem(checkpoints.REGISTRY, name, dataclasses.replace(entry, md5=hashlib.md5(data).hexdigest()))
    path = checkpoints.fetch(checkpoints.REGISTRY["cnn6-authors"])
    assert_same_state(checkpoints.read_checkpoint(path, "cnn6"), seeded_state("cnn6"))
    with pytest.raises(StreamtagError, match="looks like a cnn6 checkpoint"):
        checkpoints.fetch(checkpoints.REGISTRY["cnn10-authors"])
    assert [p.name for p in cache_files(tmp_path)] == ["cnn6-authors.pth", "cnn6-authors.pth.sha256"]


def test_unwritable_cache_is_one_line(monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.write_text("a file where the cache folder should be")
    monkeypatch.setenv("STREAMTAG_HOME", str(home))
    with pytest.raises(StreamtagError, match="cannot write to the weights cache.*STREAMTAG_HOME"):
        checkpoints.import_checkpoint(FIXTURES / "cnn6_seed0.pth", "cnn6")


def test_offline_is_one_line_exit_2_naming_url_and_import(monkeypatch, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("STREAMTAG_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("STREAMTAG_HOME", str(tmp_path / "home"))
    assert main(["weights", "fetch", "cnn14"]) == 2
    err_lines = error_lines(capsys.readouterr().err)
    assert len(err_lines) == 1 and err_lines[0].startswith("streamtag: error: ")  # nothing else: ONE line
    line = err_lines[0]
    assert f"http://127.0.0.1:{port}/panns_cnn14.tar.gz" in line and "refused" in line.lower()
    assert "streamtag weights import PATH --model cnn14" in line
    with pytest.raises(StreamtagError) as info:
        checkpoints.load_state("cnn10")
    assert info.value.exit_code == 2
    assert cache_files(tmp_path) == []


def test_import_then_offline_use(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("STREAMTAG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STREAMTAG_MIRROR", "http://127.0.0.1:9")  # any fetch would fail
    archive = tmp_path / "panns_cnn6.tar.gz"
    archive.write_bytes(paddlespeech_archive("cnn6", write_seeded_pdparams("cnn6", tmp_path / "w.pdparams")))
    assert main(["weights", "import", str(archive), "--model", "cnn6"]) == 0
    assert "cnn6-paddlespeech" in capsys.readouterr().out
    state, _ = checkpoints.load_state("cnn6")
    assert_same_state(state, seeded_state("cnn6"))

    assert main(["weights", "import", str(FIXTURES / "cnn10_seed0.pth"), "--model", "cnn10"]) == 0
    state, _ = checkpoints.load_state("cnn10")  # found under the authors' entry, no download attempted
    assert_same_state(state, seeded_state("cnn10"))


def test_registry_entries():
    assert checkpoints.ARCHS == models.ARCHS
    assert {c.arch for c in checkpoints.REGISTRY.values()} == set(models.ARCHS)
    for arch in models.ARCHS:
        default = checkpoints.default_checkpoint(arch)
        assert default.source == "PaddleSpeech" and default.member == f"{arch}.pdparams" and len(default.md5) == 32
        assert checkpoints.find_checkpoint(arch) is default
    assert checkpoints.REGISTRY["cnn14-authors"].url == \
        "https://zenodo.org/record/3987831/files/Cnn14_mAP=0.431.pth?download=1"
    assert checkpoints.REGISTRY["cnn14-authors"].md5 == "541141fa2ee191a88f24a3219fff024e"
    with pytest.raises(StreamtagError, match="no checkpoint named"):
        checkpoints.find_checkpoint("cnn99")
