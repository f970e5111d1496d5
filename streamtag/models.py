"""PANNs CNN14 / CNN10 / CNN6 as Paddle layers, with the log-mel front end inside.

Faithful ports of the authors' PyTorch models (qiuqiangkong/audioset_tagging_cnn,
`pytorch/models.py`: Cnn14, Cnn10, Cnn6) in eval mode: the same log-mel features,
the same pooling, and `clipwise = sigmoid(fc_audioset(relu(fc1(pooled))))`.
Layer names follow PaddleSpeech's `paddlespeech/cls/models/panns/panns.py`
(`bn0`, `conv_block1.conv1`, ..., `fc1`, `fc_audioset`) so its `.pdparams` load
without renaming; `torch_to_paddle` renames the authors' `.pth` state dicts.

The models are inference-only (dropout and SpecAugment are training-time and are
left out) and keep the forward free of Python-side shape logic so that
`paddle.jit.to_static` with `InputSpec([None, None], "float32")` can export them.
"""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.audio.features import LogMelSpectrogram

from .archs import (  # noqa: F401  (re-exported: the numbers live where importing them needs no Paddle)
    ARCH_SPECS, ARCHS, EMBEDDING_DIM, F_MAX, F_MIN, HOP_LENGTH, N_FFT, N_MELS, NUM_CLASSES, SAMPLE_RATE,
    min_samples,
)
from .errors import StreamtagError


def _check_arch(arch: str) -> str:
    if arch not in ARCH_SPECS:
        raise StreamtagError(f"unknown model {arch!r}; choose one of {', '.join(ARCHS)}")
    return arch


class ConvBlock(nn.Layer):
    """Two 3x3 conv + BN + ReLU, then avg-pool (CNN14/CNN10)."""

    def __init__(self, in_channels: int, out_channels: int, pool: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2D(in_channels, out_channels, 3, padding=1, bias_attr=False)
        self.conv2 = nn.Conv2D(out_channels, out_channels, 3, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(out_channels, epsilon=1e-5)
        self.bn2 = nn.BatchNorm2D(out_channels, epsilon=1e-5)
        self.pool = pool

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        if self.pool > 1:
            x = F.avg_pool2d(x, kernel_size=self.pool)
        return x


class ConvBlock5x5(nn.Layer):
    """One 5x5 conv + BN + ReLU, then avg-pool (CNN6)."""

    def __init__(self, in_channels: int, out_channels: int, pool: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2D(in_channels, out_channels, 5, padding=2, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(out_channels, epsilon=1e-5)
        self.pool = pool

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.pool > 1:
            x = F.avg_pool2d(x, kernel_size=self.pool)
        return x


def _computed_not_saved(layer: nn.Layer) -> None:
    """Re-register the layer's buffers (hann window, mel filterbank) as non-persistable:
    they are computed, not trained, so they stay out of the state dict and no checkpoint
    has to supply them. `paddle.jit.save` still bakes them into the exported program."""
    for sublayer in [layer, *layer.sublayers()]:
        for name, buffer in list(sublayer.named_buffers(include_sublayers=False)):
            sublayer.register_buffer(name, buffer, persistable=False)


def front_end() -> LogMelSpectrogram:
    """The PANNs log-mel front end on its own: waveform [B, N] at 32 kHz → dB [B, 64 mel, frames], one frame every
    HOP_LENGTH samples (centred). The models compute their input with it; `plot` draws what the model saw with it."""
    layer = LogMelSpectrogram(
        sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=N_FFT,
        window="hann", power=2.0, center=True, pad_mode="reflect", n_mels=N_MELS,
        f_min=F_MIN, f_max=F_MAX, htk=False, norm="slaney",
        ref_value=1.0, amin=1e-10, top_db=None,
    )
    _computed_not_saved(layer)
    return layer


class PANNs(nn.Layer):
    """One PANNs CNN: waveform [B, N] float32 at 32 kHz -> (clipwise [B, 527], embedding [B, D])."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        spec = ARCH_SPECS[_check_arch(arch)]
        self.arch = arch
        self.min_samples = min_samples(arch)
        self.log_mel = front_end()
        self.bn0 = nn.BatchNorm2D(N_MELS, epsilon=1e-5)
        block = ConvBlock if spec.kernel_size == 3 else ConvBlock5x5
        in_channels = 1
        self.blocks = []
        for i, (out_channels, pool) in enumerate(zip(spec.channels, spec.pools), start=1):
            layer = block(in_channels, out_channels, pool)
            self.add_sublayer(f"conv_block{i}", layer)
            self.blocks.append(layer)
            in_channels = out_channels
        dim = EMBEDDING_DIM[arch]
        self.fc1 = nn.Linear(in_channels, dim)
        self.fc_audioset = nn.Linear(dim, NUM_CLASSES)
        self.eval()

    def features(self, waveform: paddle.Tensor) -> paddle.Tensor:
        """Log-mel in dB, PANNs layout [B, 1, frames, mel] (no short-clip padding: for inspection)."""
        x = self.log_mel(waveform)  # [B, mel, frames]
        return x.transpose([0, 2, 1]).unsqueeze(1)

    def pad_short(self, waveform: paddle.Tensor) -> paddle.Tensor:
        """Zero-pad clips shorter than `min_samples` at the end (as the PaddleAudio example
        pads short files); longer clips pass unchanged. Done with tensor ops, not
        Python `if`s on shapes, so the exported static graph does the same."""
        # (F.pad on a 2-D input crashes Paddle Inference's oneDNN path; concat does not.)
        zeros = paddle.zeros_like(waveform[:, :1]).expand([-1, self.min_samples])
        padded = paddle.concat([waveform, zeros], axis=1)
        length = paddle.maximum(paddle.shape(waveform)[1], paddle.full([], self.min_samples, "int64"))
        return paddle.slice(padded, axes=[1], starts=[0], ends=[length])

    def forward(self, waveform: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        x = self.log_mel(self.pad_short(waveform)).unsqueeze(-1)  # [B, mel, frames, 1]: BN runs over mel bins
        x = self.bn0(x)
        x = x.transpose([0, 3, 2, 1])  # [B, 1, frames, mel]
        for block in self.blocks:
            x = block(x)
        x = x.mean(axis=3)  # over frequency
        x = x.max(axis=2) + x.mean(axis=2)  # over time
        embedding = F.relu(self.fc1(x))
        clipwise = F.sigmoid(self.fc_audioset(embedding))
        return clipwise, embedding


def build_model(arch: str) -> PANNs:
    """A model in eval mode with untrained weights; fill it with `load_weights`."""
    return PANNs(arch)


def param_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Paddle state-dict keys and shapes a checkpoint for `arch` must supply, in
    state-dict order, without building the model (cheap, for verifying files)."""
    spec = ARCH_SPECS[_check_arch(arch)]
    shapes: dict[str, tuple[int, ...]] = {}

    def batch_norm(name: str, n: int) -> None:
        for suffix in ("weight", "bias", "_mean", "_variance"):
            shapes[f"{name}.{suffix}"] = (n,)

    batch_norm("bn0", N_MELS)
    in_channels = 1
    k = spec.kernel_size
    for i, out_channels in enumerate(spec.channels, start=1):
        name = f"conv_block{i}"
        shapes[f"{name}.conv1.weight"] = (out_channels, in_channels, k, k)
        if k == 3:
            shapes[f"{name}.conv2.weight"] = (out_channels, out_channels, k, k)
        batch_norm(f"{name}.bn1", out_channels)
        if k == 3:
            batch_norm(f"{name}.bn2", out_channels)
        in_channels = out_channels
    dim = EMBEDDING_DIM[arch]
    shapes["fc1.weight"] = (in_channels, dim)
    shapes["fc1.bias"] = (dim,)
    shapes["fc_audioset.weight"] = (dim, NUM_CLASSES)
    shapes["fc_audioset.bias"] = (NUM_CLASSES,)
    return shapes


# The authors' checkpoints carry their torchlibrosa front end; ours is computed.
_TORCH_FRONT_END = ("spectrogram_extractor.", "logmel_extractor.")


def torch_to_paddle(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename an authors' PyTorch PANNs state dict to our Paddle names.

    Drops the front-end tensors and BatchNorm `num_batches_tracked`, renames
    `running_mean/var` to `_mean/_variance`, and transposes Linear weights
    ([out, in] in PyTorch, [in, out] in Paddle). Unknown keys pass through
    unchanged so that strict verification can report them.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.startswith("module."):  # saved from DataParallel
            key = key[len("module."):]
        if key.startswith(_TORCH_FRONT_END) or key.endswith("num_batches_tracked"):
            continue
        value = np.asarray(value)
        if key.endswith(".running_mean"):
            key = key[: -len("running_mean")] + "_mean"
        elif key.endswith(".running_var"):
            key = key[: -len("running_var")] + "_variance"
        elif key.startswith(("fc1.", "fc_audioset.")) and key.endswith(".weight") and value.ndim == 2:
            value = value.T
        out[key] = np.ascontiguousarray(value)
    return out


def check_state(arch: str, state: dict[str, np.ndarray]) -> list[str]:
    """Problems (missing, unexpected, mis-shaped tensors) of `state` for `arch`; empty if it fits."""
    expected = param_shapes(arch)
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k} has shape {tuple(np.shape(v))}, expected {expected[k]}"
        for k, v in state.items()
        if k in expected and tuple(np.shape(v)) != expected[k]
    ]
    return problems


def load_weights(model: PANNs, state: dict[str, np.ndarray]) -> PANNs:
    """Copy a Paddle-named state (see `param_shapes`) into `model`, strictly."""
    problems = check_state(model.arch, state)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise StreamtagError(f"weights do not fit {model.arch}: {shown}")
    params = model.state_dict()
    for key, value in state.items():
        params[key].set_value(np.asarray(value, dtype=np.float32))
    model.eval()
    return model
