"""Rewrites applied to a model before it is exported: the same function, computed in a way oneDNN runs faster.

models.py is the faithful port of the authors' layers, and `--engine eager` runs it as it is. The exported graph
that the predictor runs is made from it by three rewrites that change only floating-point rounding (scores move by
~1e-6; the engine is tested against eager within 1e-4 and against the authors' reference outputs within 1e-5):

* **BatchNorm folded into the conv before it** (`fold_batch_norms`): conv → BN is one conv with scaled weights and a
  bias. Paddle Inference's own folding pass does the same at every predictor creation (3-4 s for CNN14 on two
  cores), and oneDNN's bf16 path runs at half speed with a BN between convs.
* **The last block's convs as one matrix product** (`GemmConv`): after five 2×2 poolings CNN14's block 6 sees a
  6 × 2 map with 1024 and 2048 channels (226 MB of weights). oneDNN's direct convolution runs it at a third of the
  CPU's peak and does not reuse weights across the images of a batch (measured: 14.4 ms per window at batch 1,
  16.8 ms at batch 8, of CNN14's ~54). As im2col + one GEMM over batch × positions, the weights are read once per
  batch: 6.5 ms per window at batch 8 on the 2-core EPYC.
* **Power spectrum as re² + im²** (`PowerSpectrogram`): paddle.audio computes `pow(abs(stft), 2)`, a hypot and a
  generic pow per bin, 3.5 ms per window of CNN14's budget on this CPU; two multiplies and an add are 0.3 ms.

Measured with `ONEDNN_VERBOSE=1` and the predictor's profiler on the 2-vCPU AMD EPYC (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

# A conv whose input map has at most this many positions per image runs as a GEMM (CNN14 block 6: 6 x 2 = 12 for a
# 2 s window; CNN14 block 5, 12 x 4, and everything before it are at oneDNN's peak as direct convolutions).
GEMM_MAX_FREQUENCY_BINS = 2


def fold_batch_norms(model: nn.Layer) -> int:
    """Fold each eval-mode BatchNorm that follows a conv (PANNs blocks: `convN` then `bnN`) into that conv.

    Returns how many were folded."""
    folded = 0
    for layer in model.sublayers(include_self=True):
        index = 1
        while isinstance(getattr(layer, f"conv{index}", None), nn.Conv2D):
            conv, bn = getattr(layer, f"conv{index}"), getattr(layer, f"bn{index}", None)
            if isinstance(bn, nn.BatchNorm2D):
                scale = bn.weight.numpy() / np.sqrt(bn._variance.numpy() + bn._epsilon)
                bias = bn.bias.numpy() - bn._mean.numpy() * scale
                if conv.bias is not None:
                    bias = bias + conv.bias.numpy() * scale
                else:
                    conv.bias = conv.create_parameter([len(scale)], is_bias=True)
                conv.weight.set_value((conv.weight.numpy() * scale[:, None, None, None]).astype(np.float32))
                conv.bias.set_value(bias.astype(np.float32))
                setattr(layer, f"bn{index}", nn.Identity())
                folded += 1
            index += 1
    return folded


class GemmConv(nn.Layer):
    """A stride-1, same-padded Conv2D (BatchNorm folded in) as im2col + one matrix product over batch × positions.

    Input and output are NCHW like the conv it replaces. The weight is stored as [Cin·kh·kw, Cout], the order
    `F.unfold` lays out its columns in."""

    def __init__(self, conv: nn.Conv2D) -> None:
        super().__init__()
        weight = conv.weight.numpy()  # [Cout, Cin, kh, kw]
        self.out_channels, _, kh, kw = weight.shape
        self.kernel = [kh, kw]
        self.padding = [kh // 2, kw // 2]
        matrix = np.ascontiguousarray(weight.reshape(self.out_channels, -1).T)
        self.weight = self.create_parameter(list(matrix.shape))
        self.weight.set_value(matrix)
        self.bias = self.create_parameter([self.out_channels], is_bias=True)
        bias = conv.bias.numpy() if conv.bias is not None else np.zeros(self.out_channels, np.float32)
        self.bias.set_value(bias.astype(np.float32))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        width = x.shape[3]  # frequency bins: fixed by the model (64 mel / 32), unlike batch and time
        columns = F.unfold(x, self.kernel, paddings=self.padding)  # [B, Cin·kh·kw, H·W]
        rows = columns.transpose([0, 2, 1]).reshape([-1, self.weight.shape[0]])  # [B·H·W, Cin·kh·kw]
        y = paddle.matmul(rows, self.weight) + self.bias  # [B·H·W, Cout]: one GEMM, the weights read once
        y = y.reshape([paddle.shape(x)[0], -1, self.out_channels])  # [B, H·W, Cout]
        return y.transpose([0, 2, 1]).reshape([0, self.out_channels, -1, width])


class PowerSpectrogram(nn.Layer):
    """paddle.audio's Spectrogram (power 2) with |z|² as re·re + im·im instead of pow(abs(z), 2)."""

    def __init__(self, spectrogram: nn.Layer) -> None:
        super().__init__()
        if spectrogram.power != 2.0:
            raise ValueError(f"PowerSpectrogram computes power 2, not {spectrogram.power}")
        self.spectrogram = spectrogram  # kept as a sublayer: its window buffer is what the export bakes in

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        z = self.spectrogram._stft(x)  # the same framing, window, centring and padding
        re, im = paddle.real(z), paddle.imag(z)
        return re * re + im * im


def optimise_for_export(model: Any, gemm_max_bins: int = GEMM_MAX_FREQUENCY_BINS) -> dict[str, int]:
    """Apply the rewrites above to a PANNs model (in place, eval mode); returns how many of each were made.
    `gemm_max_bins=0` leaves every conv a conv (scripts/profile_graph.py measures what the GEMM block is worth)."""
    counts = {"batch_norms_folded": fold_batch_norms(model), "gemm_convs": 0, "power_spectrograms": 0}
    mel = model.log_mel._melspectrogram
    if getattr(mel._spectrogram, "power", None) == 2.0:
        mel._spectrogram = PowerSpectrogram(mel._spectrogram)
        counts["power_spectrograms"] += 1
    # The frequency axis halves at every pooling: 64 mel bins → 2 after five. Blocks that see that few bins (and
    # carry the most channels) are the ones oneDNN's direct convolution runs poorly.
    bins = 64
    for block in model.blocks:
        if bins <= gemm_max_bins:
            index = 1
            while isinstance(getattr(block, f"conv{index}", None), nn.Conv2D):
                conv = getattr(block, f"conv{index}")
                if conv._stride == [1, 1] and conv._dilation == [1, 1] and conv._groups == 1:
                    setattr(block, f"conv{index}", GemmConv(conv))
                    counts["gemm_convs"] += 1
                index += 1
        bins //= block.pool
    return counts
