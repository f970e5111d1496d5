"""GPU per-window cost of PANNs CNN14/CNN10/CNN6 (the authors' architecture, in PyTorch) on whatever GPU is here.

Why PyTorch and not streamtag's Paddle engine: the GPU machines this project is lent have PyTorch installed but no
Paddle, and cannot reach a package index; paddlepaddle-gpu with its CUDA libraries is over a gigabyte, far more than
can be carried there. streamtag's port equals the authors' PyTorch model to ~1e-5 (tests/test_models.py), so the
same graph's cost on the same card is the figure the Ray sizing table needs. Nothing here is imported by streamtag.

Checks first, then times:
- fp32 on the GPU against the reference outputs of the authors' code (tests/fixtures/panns/reference.npz, seeded
  weights built from the recipe in <arch>.spec.json) — the same reference streamtag's eager model matches;
- fp16 / bf16 (autocast) against fp32: max |Δ| of the 527 scores;
- ms per window and windows/s for batch sizes 1..256, fp32 / TF32 / fp16 / bf16, 2 s windows, CUDA graphs off;
- optionally torch.compile (--compile) and TensorRT via ONNX Runtime if its TensorRT provider is present.

    python3 scripts/gpu_bench.py --json $OUT/gpu_bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from authors_reference import seeded_arrays  # scripts/ is on sys.path when this runs as a script

SR, N_FFT, HOP, N_MELS, F_MIN, F_MAX = 32000, 1024, 320, 64, 50.0, 14000.0
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "panns"
WIDTHS = {"cnn14": (64, 128, 256, 512, 1024, 2048), "cnn10": (64, 128, 256, 512), "cnn6": (64, 128, 256, 512)}


# ------------------------------------------------------------------------------------------- front end (librosa)
def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    mels = f / f_sp
    logstep, min_log_mel = math.log(6.4) / 27.0, min_log_hz / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep, min_log_mel = math.log(6.4) / 27.0, min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def slaney_mel_matrix() -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm='slaney'): [n_mels, n_fft//2+1]."""
    fft_freqs = np.linspace(0, SR / 2, N_FFT // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2: N_MELS + 2] - mel_f[:N_MELS]))[:, None]
    return weights.astype(np.float32)


class LogMel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True))
        self.register_buffer("mel", torch.from_numpy(slaney_mel_matrix()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N] -> [B, 1, T, 64]
        spec = torch.stft(x.float(), N_FFT, HOP, N_FFT, self.window, center=True, pad_mode="reflect",
                          return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2                      # [B, 513, T]
        mel = torch.matmul(self.mel, power)                          # [B, 64, T]
        return (10.0 * torch.log10(torch.clamp(mel, min=1e-10))).transpose(1, 2)[:, None]


# ------------------------------------------------------------------------------------------- the authors' CNNs
class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, double: bool) -> None:
        super().__init__()
        k, p = (3, 1) if double else (5, 2)
        self.conv1 = nn.Conv2d(cin, cout, k, padding=p, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.double = double
        if double:
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.double:
            x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool)


class Panns(nn.Module):
    def __init__(self, arch: str) -> None:
        super().__init__()
        widths = WIDTHS[arch]
        self.front = LogMel()
        self.bn0 = nn.BatchNorm2d(N_MELS)
        cins = (1,) + widths[:-1]
        for i, (cin, cout) in enumerate(zip(cins, widths), 1):
            self.add_module(f"conv_block{i}", ConvBlock(cin, cout, double=arch != "cnn6"))
        self.blocks = len(widths)
        self.fc1 = nn.Linear(widths[-1], widths[-1])
        self.fc_audioset = nn.Linear(widths[-1], 527)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.front(wave)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(1, self.blocks + 1):
            pool = (1, 1) if i == self.blocks and self.blocks == 6 else (2, 2)
            x = getattr(self, f"conv_block{i}")(x, pool)
        x = torch.mean(x, dim=3)
        x = torch.amax(x, dim=2) + torch.mean(x, dim=2)
        emb = F.relu(self.fc1(x))
        return torch.sigmoid(self.fc_audioset(emb)), emb


def seeded_model(arch: str) -> Panns:
    state = {k: torch.from_numpy(v) for k, v in seeded_arrays(str(FIXTURES / f"{arch}.spec.json")).items()}
    model = Panns(arch)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("front.") and "num_batches" not in k]
    if missing or unexpected:
        raise SystemExit(f"{arch}: state mismatch, missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


# ------------------------------------------------------------------------------------------- measuring
def check(arch: str, model: Panns, device: str) -> dict:
    ref = np.load(FIXTURES / "reference.npz")
    out = {}
    wave = torch.from_numpy(ref["waveform"][None]).to(device)
    with torch.no_grad():
        logmel = model.front(wave)[0, 0].float().cpu().numpy()
        out["logmel_max_abs_db"] = float(np.abs(logmel - ref["logmel/full"]).max())
        for name, x in (("full", wave), ("win2s", wave[:, :64000])):
            clip, emb = model(x)
            out[f"{name}_clipwise_max_abs"] = float(np.abs(clip[0].cpu().numpy() - ref[f"{arch}/{name}/clipwise"]).max())
            e_ref = ref[f"{arch}/{name}/embedding"]
            out[f"{name}_embedding_rel"] = float(np.abs(emb[0].cpu().numpy() - e_ref).max() / np.abs(e_ref).max())
        batch = torch.from_numpy(np.random.default_rng(1).standard_normal((8, 64000)).astype(np.float32) * 0.1)
        batch = batch.to(device)
        fp32 = model(batch)[0].float()
        for dtype in ("fp16", "bf16"):
            with torch.autocast("cuda", dtype=torch.float16 if dtype == "fp16" else torch.bfloat16):
                low = model(batch)[0].float()
            out[f"{dtype}_vs_fp32_max_abs"] = float((low - fp32).abs().max())
    return out


def time_it(fn, x: torch.Tensor, seconds: float) -> float:
    """Median ms per call after warm-up (CUDA synchronised)."""
    for _ in range(3):
        fn(x)
    torch.cuda.synchronize()
    times, spent = [], 0.0
    while spent < seconds or len(times) < 5:
        t0 = time.perf_counter()
        fn(x)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if len(times) >= 200:
            break
    return float(np.median(times) * 1000)


def bench(arch: str, model: Panns, batches: list[int], seconds: float, compile_: bool) -> list[dict]:
    rows = []
    variants = [("fp32", None, False), ("tf32", None, True), ("fp16", torch.float16, True),
                ("bf16", torch.bfloat16, True)]
    if compile_:  # compiling costs about a minute per shape and precision: fp16 only
        variants = variants[2:3]
    for name, dtype, tf32 in variants:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        m = model.to(memory_format=torch.channels_last)
        if compile_:
            m = torch.compile(m)

        def fn(x: torch.Tensor) -> None:
            with torch.no_grad():
                if dtype is None:
                    m(x)
                else:
                    with torch.autocast("cuda", dtype=dtype):
                        m(x)

        for b in batches:
            x = torch.randn(b, 64000, device="cuda") * 0.1
            try:
                ms = time_it(fn, x, seconds)
            except torch.OutOfMemoryError:
                break
            rows.append({"arch": arch, "precision": name, "batch": b, "ms_per_call": round(ms, 3),
                         "ms_per_window": round(ms / b, 4), "windows_per_s": round(b * 1000 / ms, 1)})
            print(f"{arch:6} {name:5} batch {b:4}: {ms:8.3f} ms/call {ms / b:8.4f} ms/window "
                  f"{b * 1000 / ms:9.1f} windows/s", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="cnn14,cnn10,cnn6")
    ap.add_argument("--batches", default="1,4,16,64,256")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per (arch, precision, batch)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    device = "cuda"
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
              "window_seconds": 2.0, "checks": {}, "rows": []}
    print(json.dumps({k: report[k] for k in ("gpu", "torch", "cuda", "cudnn")}), flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    for arch in args.archs.split(","):
        model = seeded_model(arch).to(device)
        report["checks"][arch] = check(arch, model, device)
        print(arch, json.dumps(report["checks"][arch]), flush=True)
        report["rows"] += bench(arch, model, batches, args.seconds, compile_=False)
        if args.compile and arch == "cnn14":
            rows = bench(arch, seeded_model(arch).to(device), [1, 64], args.seconds, compile_=True)
            report["rows"] += [dict(r, compiled=True) for r in rows]
        del model
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
