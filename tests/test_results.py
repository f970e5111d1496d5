"""results.py: the npz schema, the seed's smoothing/top-k, and byte parity of `parse` with the seed's parse_result.py."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import seed_reference
from streamtag.cli import main
from streamtag.errors import StreamtagError
from streamtag.labels import audioset_labels
from streamtag.results import (Smoother, TagResult, format_txt_block, get_writer, load_result, save_result, smooth,
                               top_k)

LABELS = list(audioset_labels())


def make_result(n=23, seed=0, ties=True) -> TagResult:
    rng = np.random.default_rng(seed)
    scores = rng.random((n, 527), dtype=np.float32) ** 4
    if ties:  # exact ties among the top scores: the order must follow the seed's argsort, not ours
        scores[:, [3, 77, 200, 401]] = np.float32(0.99)
        scores[::2, 10] = np.float32(0.99)
    hop = 9600
    return TagResult(time=np.arange(n, dtype=np.int64) * hop / 32000, scores=scores, duration=n * 0.3 + 0.05,
                     sample_rate=44100, model="cnn6", sample_duration=2.0, hop_duration=0.3, labels=LABELS)


@pytest.fixture
def seed_label_file(tmp_path):
    path = tmp_path / "audioset_labels.txt"
    path.write_text("".join(f"{x}\n" for x in LABELS), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- npz
def test_save_load_round_trip_needs_no_pickle(tmp_path):
    result = make_result()
    path = save_result(tmp_path / "r.npz", result)
    with np.load(path, allow_pickle=False) as npz:  # every array is plain
        assert set(npz.files) == {"time", "scores", "duration", "sample_rate", "model", "sample_duration",
                                  "hop_duration", "labels"}
        assert npz["labels"].dtype.kind == "U" and npz["time"].dtype == np.float64
        assert npz["scores"].dtype == np.float32
    back = load_result(path)
    np.testing.assert_array_equal(back.scores, result.scores)
    np.testing.assert_array_equal(back.time, result.time)
    assert (back.duration, back.sample_rate, back.model, back.sample_duration, back.hop_duration) == \
        (result.duration, 44100, "cnn6", 2.0, 0.3)
    assert back.labels == LABELS
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]  # no temp file left


def test_seed_npz_loads(tmp_path):
    """The seed's own npz holds only `time` (t/T) and `scores`."""
    path = tmp_path / "audioset_tagging_sr_44100.npz"
    np.savez(path, time=np.arange(0, 1, 0.25), scores=np.zeros((4, 527), np.float32))
    result = load_result(path)
    assert np.isnan(result.duration) and result.labels == [] and result.model == ""
    np.testing.assert_array_equal(result.times("ratio"), [0, 0.25, 0.5, 0.75])


def test_object_array_npz_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.npz"
    np.savez(evil, time=np.zeros(1), scores=np.array([[Payload()]], dtype=object))
    with pytest.raises(StreamtagError, match="object .*array"):
        load_result(evil)
    assert not marker.exists()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "streamtag", "parse", str(evil), "--output-dir", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "evil.npz" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not list(out.glob("*"))


@pytest.mark.parametrize("content, message", [
    (b"", "not an .npz"), (b"hello, not a zip", "not an .npz"), (b"PK\x03\x04broken", "not an .npz"),
])
def test_bad_npz_files(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(StreamtagError, match=message):
        load_result(path)


def test_npz_without_scores(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, time=np.zeros(3), logits=np.zeros((3, 527)))
    with pytest.raises(StreamtagError, match="no `scores` array"):
        load_result(path)


# ---------------------------------------------------------------------------------------------- seed math
def test_smooth_equals_literal_loop_and_seed():
    scores = np.random.default_rng(1).random((40, 527), dtype=np.float32)
    for size in (1, 2, 5, 7, 60):
        got = smooth(scores, size)
        literal = np.stack([scores[max(0, i - size + 1):i + 1].astype(np.float64).mean(axis=0)
                            for i in range(len(scores))])
        np.testing.assert_allclose(got, literal, atol=1e-6, rtol=0)
        seed = scores.copy()
        seed_reference.smooth(seed, size)
        np.testing.assert_array_equal(got, seed)  # bit for bit, so printed scores are identical
    assert smooth(scores, 5) is not scores and not np.shares_memory(smooth(scores, 5), scores)


def test_smoother_matches_smooth():
    scores = np.random.default_rng(2).random((300, 527), dtype=np.float32)
    for size in (1, 5, 13):
        smoother = Smoother(size)
        pushed = np.stack([smoother.push(row) for row in scores])
        np.testing.assert_allclose(pushed, smooth(scores, size), atol=1e-6, rtol=0)


def test_top_k_follows_seed_order_on_ties():
    row = np.zeros(527, np.float32)
    row[[5, 9, 400]] = 0.5
    row[100] = 0.9
    label_map = dict(enumerate(LABELS))
    expected = seed_reference.generate_topk_label(6, label_map, row)
    assert "".join(f"{label}: {score}\n" for label, score in top_k(row, 6, LABELS)) == expected
    assert top_k(row, 1, LABELS) == [(LABELS[100], float(np.float32(0.9)))]


def test_literal_txt_block():
    assert format_txt_block(0.0, [("Cat", np.float32(0.9144676923751831)), ("Animal", 0.5)]) == \
        "0.0\nCat: 0.9144676923751831\nAnimal: 0.5\n\n"


def test_parse_writes_exact_expected_txt(tmp_path):
    scores = np.zeros((2, 527), np.float32)
    scores[0, [0, 137, 500]] = [0.75, 0.5, 0.25]
    scores[1, [0, 137, 500]] = [0.25, 0.75, 0.125]
    save_result(tmp_path / "hand.npz", TagResult(np.array([0.0, 0.3]), scores, 2.3, 32000, "cnn6", 2.0, 0.3,
                                                 LABELS))
    assert main(["parse", str(tmp_path / "hand.npz"), "--output-dir", str(tmp_path), "--top-k", "3"]) == 0
    # smoothed over 5: step 1 is the mean of steps 0 and 1
    assert (tmp_path / "hand.txt").read_bytes() == (
        "0.0\nSpeech: 0.75\nMusic: 0.5\nSilence: 0.25\n\n"
        "0.3\nMusic: 0.625\nSpeech: 0.5\nSilence: 0.1875\n\n").encode()
    assert main(["parse", str(tmp_path / "hand.npz"), "--output-dir", str(tmp_path), "--top-k", "2",
                 "--no-smooth", "--time-format", "ratio"]) == 0
    assert (tmp_path / "hand.txt").read_text() == (
        "0.0\nSpeech: 0.75\nMusic: 0.5\n\n"
        f"{0.3 / 2.3}\nMusic: 0.75\nSpeech: 0.25\n\n")


@pytest.mark.parametrize("smoothing", [True, False])
@pytest.mark.parametrize("k", [1, 10, 527])
def test_parse_is_byte_identical_to_seed(tmp_path, seed_label_file, smoothing, k):
    npz = save_result(tmp_path / "clip.npz", make_result(seed=k))
    seed_txt = seed_reference.parse_result(str(npz), top_k=k, smooth_on=smoothing, smooth_size=5,
                                           label_file=str(seed_label_file), output_dir=str(tmp_path / "seed"))
    args = ["parse", str(npz), "--output-dir", str(tmp_path / "ours"), "--top-k", str(k)]
    args += ["--smooth"] if smoothing else ["--no-smooth"]
    assert main(args) == 0
    ours = (tmp_path / "ours" / "clip.txt").read_bytes()
    assert ours == Path(seed_txt).read_bytes()
    assert ours.count(b"\n\n") == 23
    # the seed's one-label-per-line file is accepted as --label-file and gives the same text
    assert main(args + ["--label-file", str(seed_label_file)]) == 0
    assert (tmp_path / "ours" / "clip.txt").read_bytes() == ours


def test_jsonl_and_csv(tmp_path):
    npz = save_result(tmp_path / "clip.npz", make_result(n=4, ties=False))
    txt = get_writer("txt").render(load_result(npz), top_k=3, smooth_size=2)
    assert main(["parse", str(npz), "--output-dir", str(tmp_path), "--top-k", "3", "--smooth-size", "2",
                 "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in (tmp_path / "clip.jsonl").read_text().splitlines()]
    assert len(records) == 4 and records[1]["time"] == 0.3
    blocks = [b.splitlines() for b in txt.strip("\n").split("\n\n")]
    for record, block in zip(records, blocks):
        assert block == [repr(record["time"])] + [f"{lab}: {s!r}" for lab, s in zip(record["labels"],
                                                                                      record["scores"])]
    assert main(["parse", str(npz), "--output-dir", str(tmp_path), "--top-k", "3", "--smooth-size", "2",
                 "--format", "csv"]) == 0
    with open(tmp_path / "clip.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["time", "rank", "label", "score"] and len(rows) == 1 + 4 * 3
    assert rows[4][:3] == ["0.3", "1", records[1]["labels"][0]] and float(rows[4][3]) == records[1]["scores"][0]


def test_label_count_mismatch_is_an_error(tmp_path, capsys):
    npz = save_result(tmp_path / "clip.npz", make_result(n=2))
    short = tmp_path / "labels.txt"
    short.write_text("a\nb\n")
    assert main(["parse", str(npz), "--output-dir", str(tmp_path), "--label-file", str(short)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "527 scores per step" in err and "2 labels" in err
    assert not (tmp_path / "clip.txt").exists()


def test_shipped_labels_are_audioset_in_index_order():
    path = Path(__file__).resolve().parent.parent / "streamtag" / "assets" / "class_labels_indices.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(527))
    assert LABELS == [r["display_name"] for r in rows]
    assert LABELS[:3] == ["Speech", "Male speech, man speaking", "Female speech, woman speaking"]
    assert LABELS[137] == "Music" and LABELS[-1] == "Field recording"
