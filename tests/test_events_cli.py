"""Events end to end, as a user runs them: `tag` → `events detect`, `labels`, and the one-line errors.

Seeded CNN6 weights give arbitrary but deterministic scores; on tone bursts over silence its "Female singing" output
rises from ~0.04 (silence) to ~0.76 (tone), which is what these tests detect.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import streamtag_cmd

from streamtag.results import load_result

SR = 32000
RULE = "Female singing"
BURSTS = ((3.0, 6.0), (10.0, 11.0), (14.0, 18.0))  # seconds of tone; silence elsewhere


def make_bursts(path: Path, seconds: float = 20.0, rate: int = SR, bursts=BURSTS) -> Path:
    """440 Hz tone bursts with a little noise (the noise is what the seeded model reacts to) over digital silence
    (16-bit PCM)."""
    t = np.arange(int(seconds * rate)) / rate
    x = np.zeros_like(t)
    rng = np.random.default_rng(0)
    for a, b in bursts:
        m = (t >= a) & (t < b)
        x[m] = 0.4 * np.sin(2 * np.pi * 440 * t[m]) + 0.05 * rng.standard_normal(m.sum())
    sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
    return path


def run(args, env, timeout=180):
    return subprocess.run(streamtag_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory, cnn6_weights, cli_env):
    d = tmp_path_factory.mktemp("tagged")
    wav = make_bursts(d / "bursts.wav")
    done = run(["tag", wav, "--model", "cnn6", "--weights", cnn6_weights, "--output-dir", d], cli_env)
    assert done.returncode == 0, done.stderr
    return d / "bursts.npz"


def test_tag_stores_each_windows_level(tagged):
    result = load_result(tagged)
    assert result.level is not None and result.level.dtype == np.float32 and len(result.level) == len(result.time)
    silent = result.level[result.time + 2.0 <= BURSTS[0][0]]  # windows that end before the first tone
    assert len(silent) and (silent == -120.0).all()
    assert -15 < result.level.max() < -5  # 0.4 sine + noise ≈ −10 dBFS
    assert result.source.endswith("bursts.wav")


def test_events_detect_formats(tagged, cli_env):
    done = run(["events", "detect", tagged, "--events", RULE, "--format", "jsonl"], cli_env)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(events) == 2  # the long bursts; the 1 s one stays under on = 0.5
    assert list(events[0]) == ["id", "label", "start", "end", "peak", "peak_time", "classes", "source", "model",
                               "wall_start", "wall_end", "clip"]
    first, second = events
    assert BURSTS[0][0] <= first["start"] < first["end"] <= BURSTS[0][1] + 2.0
    assert BURSTS[2][0] <= second["start"] < second["end"] <= BURSTS[2][1] + 2.0
    assert first["label"] == RULE and first["classes"] == [RULE] and first["model"] == "cnn6"
    assert 0.5 <= first["peak"] <= 1 and first["start"] <= first["peak_time"] <= first["end"] + 2.0
    assert first["wall_start"] is None and first["id"] != second["id"]

    table = run(["events", "detect", tagged, "--events", RULE], cli_env)
    assert table.returncode == 0 and table.stdout.count(RULE) == 4  # label + classes columns, two rows
    assert all(len(line) <= 120 for line in table.stdout.splitlines())
    rows = list(csv.DictReader(io.StringIO(run(["events", "detect", tagged, "--events", RULE, "--format", "csv"],
                                               cli_env).stdout)))
    assert [r["id"] for r in rows] == [e["id"] for e in events] and float(rows[0]["start"]) == first["start"]


def test_events_detect_with_a_yaml_rule_and_min_level(tagged, tmp_path, cli_env):
    spec = tmp_path / "r.yaml"
    spec.write_text(f"defaults: {{on: 0.2, off: 0.1}}\nrules:\n  - labels: [{RULE}]\n"
                    "  - {name: loud, labels: [Female singing], on: 0.2, off: 0.1, min_level: -5}\n")
    done = run(["events", "detect", tagged, "--events", spec, "--format", "jsonl", "--no-smooth"], cli_env)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["label"] for e in events] == [RULE] * 3  # all three bursts at on 0.2; `loud` never passes −5 dBFS


@pytest.mark.parametrize("spec, message", [
    ("Femal singing", "unknown label 'Femal singing'; did you mean 'Female singing'?"),
    ("rules:\n  - {labels: [Dog], on: 0.2, off: 0.4}\n", "need 0 ≤ off ≤ on ≤ 1"),
    ("rules:\n  - {labels: [Dog], hold: -0.5}\n", "hold: -0.5 is negative"),
    ("rules:\n  - {labels: [Dog], min_duration: -1}\n", "min_duration: -1 is negative"),
    ("rules: [[[\n", "not valid YAML"),
    (b"\xff\xfe\x00rules", "is not UTF-8 text"),
])
def test_bad_rules_are_one_line(tagged, tmp_path, cli_env, spec, message):
    if isinstance(spec, bytes) or "\n" in spec:
        path = tmp_path / "bad.yaml"
        path.write_bytes(spec if isinstance(spec, bytes) else spec.encode())
        spec = str(path)
    done = run(["events", "detect", tagged, "--events", spec], cli_env)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("streamtag: error: ") and message in done.stderr


def test_labels_lists_classes_and_what_nodes_expand_to(cli_env):
    done = run(["labels", "dog"], cli_env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Dog  (class + 6 below): Dog; Bark; Yip; Howl; Bow-wow; Growling; Whimper (dog)" in done.stdout
    done = run(["labels", "Domestic animals"], cli_env, timeout=60)
    assert "Domestic animals, pets  (class + 12 below)" in done.stdout
    done = run(["labels", "zzzz"], cli_env, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
