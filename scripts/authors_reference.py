"""The authors' PyTorch PANNs tagging the same windows as `streamtag tag`, whole process: the reference that
`scripts/bench_archive.py` compares streamtag with. Runs in its own venv with torch (CPU), never streamtag's.

Nothing of the authors' code is in this repository: pass the path of a checkout of
https://github.com/qiuqiangkong/audioset_tagging_cnn (its `pytorch/models.py` is imported from there; it needs
`torchlibrosa`). Weights: the seeded recipe of tests/fixtures/panns/<arch>.spec.json (speed does not depend on the
values), written once as a real .pth so the run goes through `torch.load` as the authors' inference does.

What one run does, as the authors' `pytorch/inference.py` does for one clip, extended to the seed's windows:
build `Cnn14(32000, 1024, 320, 64, 50, 14000, 527)`, `torch.load` the checkpoint, `librosa.load(path, sr=32000,
mono=True)`, cut the windows every hop (the last ones zero-padded), and score them `--batch-size` at a time under
`torch.no_grad()`; prints one line of timings (JSON) at the end.

    /work/torchbench-venv/bin/python scripts/authors_reference.py AUTHORS_CHECKOUT FILE.wav --batch-size 8
"""

import argparse
import json
import sys
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402


def seeded_arrays(spec_path: str) -> dict[str, np.ndarray]:
    """The seeded-weight recipe of tests/fixtures/panns/*.spec.json (tests/seeded.py's, in numpy alone: this runs
    in a torch venv without streamtag), under the authors' PyTorch names. scripts/gpu_bench.py uses it too."""
    with open(spec_path) as f:
        spec = json.load(f)
    state = {}
    for e in spec["params"]:
        z = np.random.default_rng(e["seed"]).standard_normal(e["shape"])
        if e["kind"] == "abs":
            z = np.abs(z)
        state[e["key"]] = (z * e["scale"] + e["offset"]).astype(np.float32)
    return state


def seeded_pth(spec_path: str, dest: str) -> None:
    import torch

    state = {k: torch.from_numpy(v) for k, v in seeded_arrays(spec_path).items()}
    torch.save({"model": state}, dest)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkout")
    p.add_argument("audio")
    p.add_argument("--arch", default="Cnn14")
    p.add_argument("--checkpoint", required=True, help=".pth; written from --spec first if it does not exist")
    p.add_argument("--spec", help="tests/fixtures/panns/<arch>.spec.json")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--sample-duration", type=float, default=2.0)
    p.add_argument("--hop-duration", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", help="save the scores here (.npy) to compare with streamtag's")
    args = p.parse_args()
    import os

    if not os.path.exists(args.checkpoint):
        seeded_pth(args.spec, args.checkpoint)
        print(json.dumps({"wrote": args.checkpoint}), file=sys.stderr)
    sys.path.insert(0, os.path.join(args.checkout, "pytorch"))
    import librosa
    import torch
    from models import Cnn6, Cnn10, Cnn14  # noqa: F401  (the authors' code, from their checkout)

    if args.threads:
        torch.set_num_threads(args.threads)
    t_import = time.perf_counter()
    model = {"Cnn14": Cnn14, "Cnn10": Cnn10, "Cnn6": Cnn6}[args.arch](
        sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000, classes_num=527)
    checkpoint = torch.load(args.checkpoint, map_location="cpu")
    model.load_state_dict(checkpoint["model"], strict=False)  # the STFT/mel buffers are the model's own
    model.eval()
    t_model = time.perf_counter()
    waveform, _ = librosa.load(args.audio, sr=32000, mono=True)
    win, hop = int(args.sample_duration * 32000), int(args.hop_duration * 32000)
    windows = []
    for start in range(0, len(waveform), hop):
        w = waveform[start:start + win]
        windows.append(np.pad(w, (0, win - len(w))))
    t_audio = time.perf_counter()
    scores = []
    with torch.no_grad():
        for i in range(0, len(windows), args.batch_size):
            batch = torch.from_numpy(np.stack(windows[i:i + args.batch_size]))
            scores.append(model(batch, None)["clipwise_output"].numpy())
    t_end = time.perf_counter()
    if args.out:
        np.save(args.out, np.concatenate(scores))
    print(json.dumps({"windows": len(windows), "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "import_s": round(t_import - T0, 3), "model_s": round(t_model - t_import, 3),
                      "audio_s": round(t_audio - t_model, 3), "score_s": round(t_end - t_audio, 3),
                      "ms_per_window": round((t_end - t_audio) * 1000 / len(windows), 2),
                      "in_process_s": round(t_end - T0, 3)}))


if __name__ == "__main__":
    main()
