"""The PANNs architectures' numbers — rates, front end, widths, pools — without Paddle.

models.py builds the layers from these; the engine checks window lengths with them on a warm start, where no
Paddle layer is built and `import paddle` (2 s) is avoided. Part of the export cache key with models.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import StreamtagError

SAMPLE_RATE = 32000
ARCHS = ("cnn14", "cnn10", "cnn6")
EMBEDDING_DIM = {"cnn14": 2048, "cnn10": 512, "cnn6": 512}
NUM_CLASSES = 527

# Front end, as the PANNs authors configure torchlibrosa for the 32 kHz models.
N_FFT = 1024
HOP_LENGTH = 320
N_MELS = 64
F_MIN = 50.0
F_MAX = 14000.0


@dataclass(frozen=True)
class ArchSpec:
    """What distinguishes the three archs: block type, channel widths, time/freq pooling."""

    kernel_size: int  # 3: ConvBlock (two 3x3 convs), 5: ConvBlock5x5 (one 5x5 conv)
    channels: tuple[int, ...]
    pools: tuple[int, ...]  # square avg-pool kernel after each block (1 = none)


ARCH_SPECS = {
    "cnn14": ArchSpec(3, (64, 128, 256, 512, 1024, 2048), (2, 2, 2, 2, 2, 1)),
    "cnn10": ArchSpec(3, (64, 128, 256, 512), (2, 2, 2, 2)),
    "cnn6": ArchSpec(5, (64, 128, 256, 512), (2, 2, 2, 2)),
}


def min_samples(arch: str) -> int:
    """Shortest waveform the arch accepts: reflect padding needs > n_fft/2 samples,
    and the pooling must leave at least one frame in time."""
    if arch not in ARCH_SPECS:
        raise StreamtagError(f"unknown model {arch!r}; choose one of {', '.join(ARCHS)}")
    frames = int(np.prod(ARCH_SPECS[arch].pools))
    return max(N_FFT // 2 + 1, (frames - 1) * HOP_LENGTH)
