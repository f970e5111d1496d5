"""The Paddle PANNs ports against the PyTorch reference fixtures, plus the model API contract."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import paddle
import pytest

from seeded import FIXTURES, seeded_state, torch_seeded_state
from streamtag.errors import StreamtagError
from streamtag.models import (
    ARCHS,
    EMBEDDING_DIM,
    SAMPLE_RATE,
    build_model,
    load_weights,
    min_samples,
    param_shapes,
    torch_to_paddle,
)

ARCH_PARAMS = [pytest.param(a, marks=pytest.mark.slow) if a == "cnn14" else a for a in ARCHS]


@functools.lru_cache(maxsize=None)
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def waveform(name: str) -> np.ndarray:
    full = reference()["waveform"]
    return {"full": full, "win2s": full[: 2 * SAMPLE_RATE]}[name]


@functools.lru_cache(maxsize=None)
def seeded_model(arch: str):
    return load_weights(build_model(arch), seeded_state(arch))


def run(model, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with paddle.no_grad():
        clipwise, embedding = model(paddle.to_tensor(batch, dtype="float32"))
    return clipwise.numpy(), embedding.numpy()


@pytest.mark.parametrize("name", ["full", "win2s"])
def test_log_mel_matches_reference(name):
    model = seeded_model("cnn6")
    with paddle.no_grad():
        ours = model.features(paddle.to_tensor(waveform(name)[None])).numpy()[0, 0]
    ref = reference()[f"logmel/{name}"]
    assert ours.shape == ref.shape  # frames x 64
    assert np.abs(ours - ref).max() <= 1e-2


@pytest.mark.parametrize("name", ["full", "win2s"])
@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_outputs_match_reference(arch, name):
    clipwise, embedding = run(seeded_model(arch), waveform(name)[None])
    ref_clipwise = reference()[f"{arch}/{name}/clipwise"]
    ref_embedding = reference()[f"{arch}/{name}/embedding"]
    assert clipwise.shape == (1, 527)
    assert embedding.shape == (1, EMBEDDING_DIM[arch])
    assert np.abs(clipwise[0] - ref_clipwise).max() <= 1e-4
    assert np.abs(embedding[0] - ref_embedding).max() / np.abs(ref_embedding).max() <= 1e-4


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_batch_equals_singles(arch):
    model = seeded_model(arch)
    full = waveform("full")
    pair = np.stack([full[: 2 * SAMPLE_RATE], full[-2 * SAMPLE_RATE :]])
    batched_clip, batched_emb = run(model, pair)
    for i in range(2):
        clip, emb = run(model, pair[i : i + 1])
        np.testing.assert_allclose(batched_clip[i], clip[0], atol=1e-5)
        np.testing.assert_allclose(batched_emb[i], emb[0], rtol=1e-4, atol=1e-5 * np.abs(emb).max())


@pytest.mark.parametrize("arch", ARCHS)
def test_param_shapes_is_the_state_dict(arch):
    state = build_model(arch).state_dict()
    # The front end's window and mel filterbank are computed, never loaded.
    assert not [k for k in state if k.startswith("log_mel")]
    assert list(param_shapes(arch).items()) == [(k, tuple(v.shape)) for k, v in state.items()]


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_to_paddle_gives_exactly_param_shapes(arch):
    torch_state = torch_seeded_state(arch)
    # What the authors' checkpoints carry besides the trained tensors.
    torch_state["spectrogram_extractor.stft.conv_real.weight"] = np.zeros((513, 1, 1024), np.float32)
    torch_state["logmel_extractor.melW"] = np.zeros((513, 64), np.float32)
    torch_state["bn0.num_batches_tracked"] = np.array(0, np.int64)
    converted = torch_to_paddle(torch_state)
    assert {k: v.shape for k, v in converted.items()} == param_shapes(arch)
    np.testing.assert_array_equal(converted["fc1.weight"], torch_state["fc1.weight"].T)
    np.testing.assert_array_equal(converted["bn0._variance"], torch_state["bn0.running_var"])


def test_load_weights_is_strict():
    model = build_model("cnn6")
    state = seeded_state("cnn6")
    missing = {k: v for k, v in state.items() if k != "fc1.bias"}
    with pytest.raises(StreamtagError, match="cnn6.*missing fc1.bias"):
        load_weights(model, missing)
    misshaped = dict(state, **{"fc1.weight": state["fc1.weight"].T[:10]})
    with pytest.raises(StreamtagError, match="fc1.weight has shape"):
        load_weights(model, misshaped)
    with pytest.raises(StreamtagError, match="cnn14"):
        load_weights(build_model("cnn14"), state)


def test_unknown_arch_is_a_user_error():
    with pytest.raises(StreamtagError, match="cnn6"):
        build_model("cnn12")


def test_short_input_is_zero_padded_to_the_minimum():
    model = seeded_model("cnn6")
    short = waveform("win2s")[None, :1000]
    padded = np.pad(short, [(0, 0), (0, min_samples("cnn6") - 1000)])
    np.testing.assert_array_equal(run(model, short)[0], run(model, padded)[0])


def test_exports_to_a_static_graph(tmp_path: Path):
    """The engine runs the model through paddle.jit.save + Paddle Inference: the forward must trace."""
    model = seeded_model("cnn6")
    static = paddle.jit.to_static(
        model, input_spec=[paddle.static.InputSpec([None, None], "float32")], full_graph=True
    )
    paddle.jit.save(static, str(tmp_path / "cnn6"))
    loaded = paddle.jit.load(str(tmp_path / "cnn6"))
    for batch in (waveform("win2s")[None], np.stack([waveform("full")] * 2)):
        expected = run(model, batch)
        got = [t.numpy() for t in loaded(paddle.to_tensor(batch))]
        np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
