"""Write the seed corpus tests/fuzz/corpus/<target>/ (committed; rerun only to change the seeds):
small valid files of every format each reader takes, so the fuzzer starts from deep inside each parser."""

from __future__ import annotations

import io
import pickle
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from weightfiles import torch_pickle, write_legacy_torch, write_torch_zip  # noqa: E402


def main() -> None:
    corpus = HERE / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    dirs = {t: corpus / t for t in ("weights", "archive", "npz", "config", "labels", "audio")}
    for d in dirs.values():
        d.mkdir(parents=True)
    state = {"fc1.bias": np.arange(4, dtype=np.float32), "conv.weight": np.ones((2, 3), np.float32)}

    w = dirs["weights"]
    pkl, records = torch_pickle(state, wrap_model=True, transposed=("conv.weight",))
    write_torch_zip(w / "zip.pth", pkl, {k: bytes(v) for k, v in records.items()})
    write_legacy_torch(w / "legacy.pth", state)
    for protocol in (2, 4):
        (w / f"numpy-p{protocol}.pdparams").write_bytes(pickle.dumps(state, protocol=protocol))
    (w / "tuples.pdparams").write_bytes(pickle.dumps({k: (k, v) for k, v in state.items()}, protocol=2))
    try:
        import paddle

        paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(w / "paddle.pdparams"))
    except ImportError:
        pass

    a = dirs["archive"]
    member = pickle.dumps(state, protocol=2)
    for name, mode in (("gz.tar.gz", "w:gz"), ("plain.tar", "w"), ("bz2.tar.bz2", "w:bz2")):
        with tarfile.open(a / name, mode) as tar:
            folder = tarfile.TarInfo("panns_cnn6")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
            info = tarfile.TarInfo("panns_cnn6/cnn6.pdparams")
            info.size = len(member)
            tar.addfile(info, io.BytesIO(member))

    n = dirs["npz"]
    labels = np.array(["Speech", "Dog", "Music"])
    common = dict(time=np.arange(4) * 0.3, scores=np.linspace(0, 1, 12, dtype=np.float32).reshape(4, 3),
                  duration=np.float64(1.5), sample_rate=np.int64(44100), model=np.str_("cnn6"),
                  sample_duration=np.float64(2.0), hop_duration=np.float64(0.3), labels=labels,
                  level=np.full(4, -20.0, np.float32))
    np.savez(n / "result.npz", **common)
    np.savez_compressed(n / "compressed.npz", **common)
    np.savez(n / "seed.npz", time=np.linspace(0, 0.9, 4), scores=common["scores"])

    c = dirs["config"]
    for name in ("parse", "tag"):
        shutil.copy(ROOT / "configs" / f"{name}.yaml", c / f"{name}.yaml")
    (c / "small.yaml").write_text("top-k: 3\nsmooth: false\noutput-dir: out\n")
    (c / "anchors.yaml").write_text("a: &x 5\ntop-k: *x\n")

    lab = dirs["labels"]
    (lab / "labels.txt").write_text("Speech\nDog\nMusic\n")
    (lab / "classes.csv").write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/0bt9lr,"Dog"\n')

    au = dirs["audio"]
    tone = (np.sin(np.arange(800) / 5) * 0.3).astype(np.float32)
    sf.write(au / "pcm16.wav", tone, 8000, subtype="PCM_16")
    sf.write(au / "float.wav", np.stack([tone, -tone], 1), 16000, subtype="FLOAT")
    sf.write(au / "a.flac", tone, 8000)
    sf.write(au / "a.ogg", tone, 8000, format="OGG", subtype="VORBIS")
    sf.write(au / "a.aiff", tone, 8000, format="AIFF", subtype="PCM_16")
    sf.write(au / "a.au", tone, 8000, format="AU", subtype="PCM_16")
    for path in sorted(corpus.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(HERE)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
