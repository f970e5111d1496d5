"""The event detector's state machine on scripted score sequences, and the rules that feed it.

Everything goes through `Detector.push`/`finish`, the code the live pipeline and `events detect` both run.
Scripted streams use W = 2.0 s windows and a 0.5 s hop (round numbers: t_k = 0.5·k, e_k = t_k + 2).
"""

from __future__ import annotations

import numpy as np
import pytest

from streamtag.errors import StreamtagError
from streamtag.events.detector import Collector, Detector, hold_hops
from streamtag.events.rules import Rule, describe_labels, load_rules, ontology, resolve
from streamtag.labels import audioset_labels

LABELS = list(audioset_labels())
W, HOP = 2.0, 0.5


def rule(name="r", classes=(0,), **kw):
    return Rule(name=name, labels=(name,), classes=tuple(classes), **kw)


def run(scores, rules=None, levels=None, duration=None, **kw):
    """Push one score per hop into class 0 (or a 2-D array of class scores); returns (finished, started)."""
    rules = rules or [rule(**kw)]
    out = Collector()
    det = Detector(rules, LABELS, W, HOP, listeners=[out], source="test", model="m")
    scores = np.asarray(scores, dtype=np.float32)
    for k, s in enumerate(scores):
        row = np.zeros(len(LABELS), np.float32)
        if np.ndim(s):
            row[: len(s)] = s
        else:
            row[0] = s
        det.push(k * HOP, row, -20.0 if levels is None else levels[k])
    det.finish(duration if duration is not None else (len(scores) - 1) * HOP + W)
    return out.events, out.started


def spans(events):
    return [(e.start, e.end) for e in events]


def test_hysteresis_on_starts_off_ends():
    # 0.45 stays between off (0.35) and on (0.5): it neither starts nor ends an event
    events, _ = run([0.1, 0.45, 0.6, 0.45, 0.4, 0.45, 0.4, 0.3, 0.1, 0.45, 0.1], hold=0.0)
    assert len(events) == 1
    e = events[0]
    assert e.start == pytest.approx(2 * HOP + W - HOP)  # onset = e_k − hop at k = 2: 2.5
    assert e.end == pytest.approx(7 * HOP)             # offset = t_j of the first hop below off (k = 7): 3.5
    assert e.peak == pytest.approx(0.6) and e.peak_time == pytest.approx(2.5)


def test_onset_is_clamped_at_zero_and_offset_never_before_onset():
    events, _ = run([0.9, 0.9, 0.1, 0.1], hold=0.0)
    (e,) = events
    assert e.start == 1.5  # e_0 − hop = 2.0 − 0.5
    assert e.end == 1.5    # t_2 = 1.0 is before the onset: clamped
    big_hop = Detector([rule(hold=0.0)], LABELS, 0.5, 1.0, listeners=[c := Collector()])
    row = np.zeros(len(LABELS), np.float32)
    row[0] = 0.9
    big_hop.push(0.0, row, 0.0)  # e_0 − hop = 0.5 − 1.0 < 0
    big_hop.finish(0.5)
    assert c.events[0].start == 0.0 and c.events[0].end == 0.5


def test_hold_needs_a_full_run_below_off():
    # hold 1.0 s at 0.5 s hops = 2 hops; a single dip is bridged, two in a row end the event at the first's t
    scores = [0.8, 0.2, 0.8, 0.2, 0.2, 0.1]
    events, _ = run(scores, hold=1.0)
    assert len(events) == 1 and events[0].end == pytest.approx(3 * HOP)
    events, _ = run(scores, hold=0.0)  # n = max(1, 0) = 1: every dip ends it
    assert len(events) == 2
    assert hold_hops(0.9, 0.3) == 3 and hold_hops(0.6, 0.3) == 2 and hold_hops(0.0, 0.3) == 1
    assert hold_hops(0.61, 0.3) == 3


def test_a_hop_at_or_above_off_cancels_the_run():
    events, _ = run([0.8, 0.2, 0.35, 0.2, 0.35, 0.2, 0.2, 0.2], hold=1.0)  # 0.35 == off counts as above
    assert len(events) == 1 and events[0].end == pytest.approx(5 * HOP)


def test_stream_end_while_active_ends_at_the_last_window_or_the_duration():
    events, _ = run([0.1, 0.8, 0.8])
    assert events[0].end == pytest.approx(2 * HOP + W)  # e_last = 3.0
    events, _ = run([0.1, 0.8, 0.8], duration=2.2)  # a padded last window reaches past the audio
    assert events[0].end == pytest.approx(2.2)


def test_min_duration_drops_short_events_and_never_announces_them():
    scores = [0.8, 0.1, 0.1, 0.1, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.1, 0.1]
    events, started = run(scores, hold=0.0, min_duration=1.0)
    # first: onset 1.5, offset t_1 = 0.5 → clamped 1.5 (0 s): dropped; second: onset 3.5, offset t_10 = 5.0
    assert spans(events) == [(3.5, 5.0)]
    assert [e.id for e in started] == [e.id for e in events]  # no start without an end
    events, _ = run(scores, hold=0.0, min_duration=1.6)
    assert events == []


def test_min_level_gates_the_start_only():
    levels = [-80, -80, -40, -80, -80, -80]
    events, _ = run([0.9] * 6, levels=levels, min_level=-50, hold=0.0)
    assert len(events) == 1 and events[0].start == pytest.approx(2 * HOP + W - HOP)
    assert events[0].end == pytest.approx(5 * HOP + W)  # quiet hops keep it active: min_level only gates onset


def test_rule_score_is_the_max_over_its_classes_and_classes_name_the_drivers():
    r = Rule(name="pets", labels=("x",), classes=(0, 1, 2), on=0.5, off=0.3, hold=0.0)
    events, _ = run([[0.6, 0.1, 0.4], [0.1, 0.7, 0.2], [0.1, 0.1, 0.1]], rules=[r])
    (e,) = events
    # the peak window's newest audio is at 2.0 s, past the (clamped) offset 1.5: peak_time is kept inside the event
    assert e.peak == pytest.approx(0.7) and e.peak_time == pytest.approx(min(1 * HOP + W - HOP, e.end))
    assert e.classes == [LABELS[1], LABELS[0], LABELS[2]]  # by peak; each reached off (0.3)
    assert e.label == "pets" and e.source == "test" and e.model == "m"


def test_ids_are_stable_and_unique_and_listeners_see_hops():
    class Hops(Collector):
        def __init__(self):
            super().__init__()
            self.hops = []

        def hop(self, time, level_db, rules):
            self.hops.append((time, level_db, [(h.rule, h.active, h.event_id) for h in rules]))

    rules = [rule("a", (0,), hold=0.0), rule("b b", (1,), hold=0.0)]
    ids = []
    for _ in range(2):
        h = Hops()
        det = Detector(rules, LABELS, W, HOP, listeners=[h], source="s.wav", model="cnn6")
        for k, (a, b) in enumerate([(0.9, 0.0), (0.9, 0.9), (0.0, 0.9), (0.0, 0.0)]):
            row = np.zeros(len(LABELS), np.float32)
            row[:2] = a, b
            det.push(k * HOP, row, -10.0)
        det.finish(4.0)
        ids.append([e.id for e in h.events])
        assert h.hops[1][2][0][1] and h.hops[1][2][1][1] and h.hops[1][2][1][2].endswith("-b-b")
        assert not h.hops[3][2][0][1]
    assert ids[0] == ids[1] and len(set(ids[0])) == 2
    assert ids[0][0].split("-")[1] == "000001500"


def test_many_rules_only_touch_the_ones_that_move():
    rules = [rule(f"r{i}", (i,), hold=0.0) for i in range(len(LABELS))]
    out = Collector()
    det = Detector(rules, LABELS, W, HOP, listeners=[out])
    row = np.zeros(len(LABELS), np.float32)
    row[[5, 300]] = 0.9
    det.push(0.0, row, 0.0)
    det.push(0.5, np.zeros(len(LABELS), np.float32), 0.0)
    assert sorted(e.label for e in out.events) == ["r300", "r5"]


# ---------------------------------------------------------------------------------------------- rules
def test_ontology_expands_nodes_to_model_classes():
    names = [LABELS[i] for i in resolve("Dog", "t")]
    assert names == ["Dog", "Bark", "Yip", "Howl", "Bow-wow", "Growling", "Whimper (dog)"]
    animal = {LABELS[i] for i in resolve("animal", "t")}
    assert {"Cat", "Bark", "Cricket", "Roaring cats (lions, tigers)"} <= animal and "Speech" not in animal
    assert len(ontology().names) == 632


def test_label_list_spec(tmp_path):
    rules = load_rules("Dog, Domestic animals, pets,siren")
    assert [r.name for r in rules] == ["Dog", "Domestic animals, pets", "Siren"]
    assert rules[0].on == 0.5 and rules[0].off == 0.35 and rules[0].hold == 0.6 and rules[0].min_level == -70


def test_yaml_spec_with_unquoted_on_off(tmp_path):
    spec = tmp_path / "rules.yaml"
    spec.write_text("defaults: {on: 0.6, off: 0.3, hold: 1.2, min_duration: 0.5, min_level: -50}\n"
                    "rules:\n"
                    "  - name: dog\n    labels: [Dog]\n    on: 0.4\n"
                    "  - name: alarm\n    labels: [Smoke detector, smoke alarm, Fire alarm, Siren]\n"
                    "    'off': 0.2\n")
    dog, alarm = load_rules(str(spec))
    assert (dog.on, dog.off, dog.hold, dog.min_duration, dog.min_level) == (0.4, 0.3, 1.2, 0.5, -50)
    assert (alarm.on, alarm.off) == (0.6, 0.2)
    assert alarm.labels == ("Smoke detector, smoke alarm", "Fire alarm", "Siren")  # YAML split the first name
    assert {"Smoke detector, smoke alarm", "Fire alarm", "Siren", "Civil defense siren"} <= \
        {LABELS[i] for i in alarm.classes}


@pytest.mark.parametrize("text, message", [
    ("rules:\n  - labels: [Dgo]\n", "unknown label 'Dgo'; did you mean 'Dog'?"),
    ("rules:\n  - labels: [Dog]\n    on: 0.2\n    off: 0.3\n", "need 0 ≤ off ≤ on ≤ 1"),
    ("rules:\n  - labels: [Dog]\n    hold: -1\n", "hold: -1 is negative"),
    ("defaults: {min_duration: -0.5}\nrules:\n  - labels: [Dog]\n", "min_duration: -0.5 is negative"),
    ("rules:\n  - labels: [Dog]\n    treshold: 1\n", "unknown key(s) treshold"),
    ("defaults: {onn: 1}\nrules:\n  - labels: [Dog]\n", "defaults: unknown key(s) onn"),
    ("rule:\n  - labels: [Dog]\n", "expected a mapping with a non-empty `rules:` list"),
    ("rules: [\n  - labels: [Dog\n", "not valid YAML at line"),
    ("rules:\n  - labels: [Dog, Cat]\n", "give the rule a `name`"),
    ("rules:\n  - labels: [Dog]\n  - {name: dog, labels: Cat}\n", "two rules named 'Dog' and 'dog'"),
    ("rules:\n  - labels: [Dog]\n    on: high\n", "on: 'high' is not a number"),
])
def test_bad_yaml_specs_are_one_line(tmp_path, text, message):
    spec = tmp_path / "r.yaml"
    spec.write_text(text)
    with pytest.raises(StreamtagError) as e:
        load_rules(str(spec))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_label_lists_and_missing_files():
    with pytest.raises(StreamtagError, match=r"unknown label 'Siern'; did you mean 'Siren'\?"):
        load_rules("Dog,Siern")
    with pytest.raises(StreamtagError, match="no such file"):
        load_rules("/nonexistent/rules.yaml")


def test_describe_labels_shows_what_a_node_covers():
    rows = {name: (kind, classes) for name, kind, classes in describe_labels("dog")}
    assert rows["Dog"][1][:2] == ["Dog", "Bark"] and rows["Whimper (dog)"] == ("class", ["Whimper (dog)"])
    assert rows["Dog"][0] == "class" and len(rows["Dog"][1]) == 7


# ---------------------------------------------------------------------------------------------- npz level
def test_npz_level_source_and_wall_clock_round_trip_and_old_files_still_load(tmp_path):
    from streamtag.results import TagResult, load_result, save_result

    n = 4
    base = dict(time=np.arange(n) * 0.3, scores=np.zeros((n, 527), np.float32), duration=3.0, sample_rate=32000,
                model="cnn6", sample_duration=2.0, hop_duration=0.3, labels=LABELS)
    save_result(tmp_path / "new.npz", TagResult(**base, level=np.array([-120, -30.5, -6, 0], np.float32),
                                                 source="mic", wall_clock=1.7e9 + 0.25))
    back = load_result(tmp_path / "new.npz")
    assert back.level.dtype == np.float32 and back.level.tolist() == [-120, -30.5, -6, 0]
    assert back.source == "mic" and back.wall_clock == 1.7e9 + 0.25
    save_result(tmp_path / "old.npz", TagResult(**base))
    old = load_result(tmp_path / "old.npz")
    assert old.level is None and old.source == "" and old.wall_clock is None


def test_padded_windows_never_start_an_event_past_the_stream_end():
    # `tag` pads the last windows with zeros: a window starting at 2.5 s of a 3.0 s file ends at 4.5 s, but it added
    # no audio after 3.0 s, so its onset is the stream's end, not e_k − hop = 4.0.
    det = Detector([rule(hold=0.0)], LABELS, W, HOP, listeners=[c := Collector()], duration=3.0)
    row = np.zeros(len(LABELS), np.float32)
    for k in range(6):
        row[0] = 0.9 if k == 5 else 0.1
        det.push(k * HOP, row, -20.0)
    det.finish(3.0)
    (e,) = c.events
    assert e.start == 3.0 and e.end == 3.0 and e.peak_time == 3.0


def test_peak_time_lies_inside_the_event():
    # the peak window (k = 1) has its newest audio at 2.0 s, but the run below off starts at t_2 = 1.0 s
    events, _ = run([0.9, 0.95, 0.1, 0.1, 0.1, 0.1], hold=0.0)
    (e,) = events
    assert e.start <= e.peak_time <= e.end


def test_detect_on_a_result_without_levels(tmp_path):
    from streamtag.events.detector import detect
    from streamtag.results import TagResult

    scores = np.zeros((6, 527), np.float32)
    scores[2:4, 0] = 0.9
    result = TagResult(time=np.arange(6) * 0.3, scores=scores, duration=3.5, sample_rate=32000, model="cnn6",
                       sample_duration=2.0, hop_duration=0.3, labels=LABELS)
    assert result.level is None
    (e,) = detect(result, [rule(hold=0.0)], smooth_size=None)
    assert e.label == "r" and e.peak == pytest.approx(0.9)
