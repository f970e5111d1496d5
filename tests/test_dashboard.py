"""The dashboard: `render` as a pure function of a snapshot, the label filter, and the real screen in tmux."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import streamtag_cmd, tmux_screen
from rich.console import Console

from streamtag.dashboard import (BAR_CELLS, SPARK_CELLS, DashboardView, bar, label_mask, parse_label_list, render,
                                 sparkline)
from streamtag.errors import StreamtagError
from streamtag.labels import audioset_labels
from streamtag.stream.pipeline import HopResult, PipelineState

LABELS = tuple(audioset_labels())
SPARKS = "▁▂▃▄▅▆▇█"
ROW = re.compile(r"^│  (?P<label>\S.*?)\s+(?P<spark>[ ▁▂▃▄▅▆▇█]{%d})  (?P<score>[01]\.\d{3})  "
                 r"(?P<bar>█*[▏▎▍▌▋▊▉]?)\s*│$" % SPARK_CELLS)


def draw(state, view, width=80):
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    console.print(render(state, view))
    return console.export_text()


def view(**kw):
    defaults = dict(title="live · 0: pulse", engine="cnn6 · paddle-inference oneDNN · cpu ×2", hop_duration=0.3,
                    top_k=5, labels=LABELS)
    return DashboardView(**{**defaults, **kw})


def state_with_scores(smoothed):
    result = HopResult(index=41, time=12.3, scores=smoothed * 0.5, smoothed=smoothed, inference_ms=23.4,
                       delay_ms=27.0)
    return PipelineState(audio_seconds=14.3, wall_seconds=14.5, hops=40, skipped=2, overflows=1, overruns=0,
                         last_ms=23.4, mean_ms=21.0, delay_ms=27.0, level_db=-23.5, peak_db=-6.2, result=result)


def scores_for(**named):
    row = np.zeros(len(LABELS), np.float32)
    for name, value in named.items():
        row[LABELS.index(name.replace("_", " "))] = value
    return row


def test_render_shows_top_k_level_and_timing_within_80_columns():
    row = scores_for(Speech=0.91, Music=0.42, Dog=0.3, Bark=0.2, Cat=0.1, Vehicle=0.05)
    text = draw(state_with_scores(row), view())
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    shown = [next(label for label in ("Speech", "Music", "Dog", "Bark", "Cat", "Vehicle") if f" {label} " in line)
             for line in lines if any(f" {label} " in line for label in ("Speech", "Music", "Dog", "Bark", "Cat",
                                                                          "Vehicle"))]
    assert shown == ["Speech", "Music", "Dog", "Bark", "Cat"]  # top 5, highest first; Vehicle is 6th
    assert "0.910" in text and "█" in text
    assert "-23.5 dBFS" in text and "peak   -6.2" in text
    assert "last  23.4 ms" in text and "mean  21.0 ms" in text and "delay 27 ms" in text
    assert "skipped 2" in text and "overflows 1" in text and "every 0.3 s" in text
    assert "cnn6 · paddle-inference oneDNN · cpu ×2" in text
    assert "00:14.5" in text


def history_state(seconds=30.0, hop=0.3):
    """A snapshot whose history holds the last 20 s of a session: Speech rising, Music steady, the level falling."""
    from streamtag.stream.pipeline import HISTORY_SECONDS

    results = []
    for k in range(int(seconds / hop)):
        t = k * hop
        row = scores_for(Speech=min(1.0, t / seconds), Music=0.5)
        results.append(HopResult(index=k, time=t, scores=row, smoothed=row, inference_ms=20.0, delay_ms=25.0,
                                 level_db=-10.0 - 50.0 * t / seconds))
    history = tuple(r for r in results if r.time > results[-1].time - HISTORY_SECONDS - hop)
    return PipelineState(audio_seconds=seconds, wall_seconds=seconds, hops=len(results), level_db=-60.0,
                         peak_db=-10.0, result=results[-1], history=history)


def test_sparkline_bins_the_last_seconds_into_cells():
    assert sparkline([], [], 0.0) == " " * SPARK_CELLS
    # one window at the end: only the newest cell is drawn, the time before it is blank
    assert sparkline([10.0], [1.0], 10.0) == " " * (SPARK_CELLS - 1) + "█"
    # 0.3 s hops over 20 s: each 1 s cell shows the highest of its windows, 0 → ▁, 1 → █
    times = [i * 0.3 for i in range(67)]
    line = sparkline(times, [t / times[-1] for t in times], times[-1])
    assert len(line) == SPARK_CELLS and line[0] == "▁" and line[-1] == "█" and list(line) == sorted(line)
    # hops longer than a cell: the cells between windows repeat the last value instead of going blank
    assert sparkline([0.0, 4.0, 8.0], [0.0, 0.5, 1.0], 8.0, cells=10, seconds=10.0) == "  ▁▁▁▁▅▅▅▅█"[1:]
    assert sparkline([0.0], [2.0], 0.0, cells=2, seconds=2.0) == " █"  # values are clipped to 0…1


def test_render_shows_sparklines_at_80_columns_and_drops_them_first_when_narrower():
    state = history_state()
    text = draw(state, view(top_k=2))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = {m["label"]: m for m in map(ROW.match, lines) if m}
    assert set(rows) == {"Speech", "Music"}, text
    assert rows["Speech"]["spark"][-1] == "█" and rows["Speech"]["spark"][0] == "▃"  # rose from 1/3 over the 20 s
    assert set(rows["Music"]["spark"]) == {"▅"}
    level = next(line for line in lines if line.startswith("│ level "))
    assert level.rstrip(" │")[-SPARK_CELLS:] == "".join(sorted(level.rstrip(" │")[-SPARK_CELLS:], reverse=True))
    assert "last 20 s" in text
    narrow = draw(state, view(top_k=2), width=70)
    assert max(len(line) for line in narrow.splitlines()) <= 70
    assert not any(c in narrow for c in SPARKS[:-1]) and "last 20 s" not in narrow  # (█ is the bars, too)
    assert " Speech " in narrow and "peak  -10.0 dBFS" in narrow


def test_render_is_pure_and_waits_for_the_first_window():
    empty = PipelineState()
    assert draw(empty, view()) == draw(empty, view())
    assert "waiting for a window" in draw(empty, view())
    narrow = draw(state_with_scores(scores_for(Speech=0.5)), view(), width=60)
    assert max(len(line) for line in narrow.splitlines()) <= 60


def test_the_filter_decides_what_the_table_shows():
    row = scores_for(Speech=0.9, Music=0.8, Dog=0.3)
    mask = label_mask(LABELS, ignore="Speech")
    text = draw(state_with_scores(row), view(mask=mask, top_k=2))
    assert " Speech " not in text and " Music " in text and " Dog " in text
    only = draw(state_with_scores(row), view(mask=label_mask(LABELS, only="dog"), top_k=3))
    assert " Dog " in only and " Music " not in only


def test_label_lists_accept_labels_with_commas_and_suggest_fixes():
    assert parse_label_list("Domestic animals, pets,Cat", LABELS, "--only") == \
        [LABELS.index("Domestic animals, pets"), LABELS.index("Cat")]
    assert parse_label_list(" speech ,  inside,small room", LABELS, "--only") == \
        [LABELS.index("Speech"), LABELS.index("Inside, small room")]
    with pytest.raises(StreamtagError, match=r"unknown label 'Guitr'; did you mean 'Guitar'\?"):
        label_mask(LABELS, only="Dog,Guitr")
    with pytest.raises(StreamtagError, match="leave no label"):
        label_mask(LABELS, only="Dog", ignore="Dog")
    assert label_mask(LABELS) is None


def test_bar_resolution():
    assert bar(0.0, 4) == "    " and bar(1.0, 4) == "████" and bar(0.5, 4) == "██  "
    assert bar(1 / 32, 4) == "▏   " and bar(2.0, 4) == "████"


# ---------------------------------------------------------------------------------------------- a real terminal
def test_dashboard_in_a_real_terminal(tmp_path, cnn6_weights, cli_env):
    """tmux gives the CLI an 80×30 terminal; capture-pane reads what a user would see while it runs."""
    from test_stream import make_wav

    wav = make_wav(tmp_path / "a.wav", 30.0, rate=32000, channels=1)
    cmd = streamtag_cmd("replay", wav, "--model", "cnn6", "--weights", cnn6_weights, "--top-k", "5",
                        "--duration", "12")
    def drawn(screen: str) -> bool:
        """A whole frame past the third hop: capture-pane can land while rich is still painting one, so the
        panel's bottom border must be there too."""
        hops = re.search(r"│ hops +(\d+) ", screen)
        return hops is not None and int(hops.group(1)) >= 3 and "╰" in screen

    screen = tmux_screen(cmd, cli_env, drawn, timeout=90)
    lines = screen.splitlines()
    assert "streamtag · replay · a.wav" in screen, screen
    assert any(line.startswith("│ level ") and "dBFS" in line and "peak" in line for line in lines), screen
    assert any(line.startswith("│ infer ") and " ms · mean " in line for line in lines), screen
    rows = [ROW.match(line) for line in lines if ROW.match(line)]
    assert len(rows) == 5, screen  # the top-5 rows: label, score, a bar as long as the score
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for row, score in zip(rows, scores):
        assert abs(len(row["bar"]) - score * BAR_CELLS) <= 1
        assert row["spark"].rstrip()[-1] in SPARKS  # each shown label's recent history, newest at the right
    level = next(line for line in lines if line.startswith("│ level "))
    assert level.rstrip(" │")[-1] in SPARKS, screen  # and the level's
    assert all(len(line) <= 80 for line in lines)
