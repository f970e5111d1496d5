"""The notification keys of an events rule: `cooldown` (seconds ≥ 0) and `notify` (true/false), per rule or in
`defaults`, checked like the other keys (one line, the fix)."""

from __future__ import annotations

import pytest

from streamtag.errors import StreamtagError
from streamtag.events.rules import load_rules


def test_cooldown_and_notify_per_rule_and_in_defaults(tmp_path):
    spec = tmp_path / "rules.yaml"
    spec.write_text("defaults: {cooldown: 30}\n"
                    "rules:\n"
                    "  - labels: [Dog]\n"
                    "  - {labels: [Speech], notify: false, cooldown: 0}\n")
    dog, speech = load_rules(str(spec))
    assert (dog.cooldown, dog.notify) == (30.0, True)
    assert (speech.cooldown, speech.notify) == (0.0, False)
    (cat,) = load_rules("Cat")
    assert (cat.cooldown, cat.notify) == (0.0, True)


@pytest.mark.parametrize("rule, says", [("{labels: [Dog], notify: maybe}", "notify: 'maybe' is not true or false"),
                                        ("{labels: [Dog], cooldown: -1}", "cooldown: -1 is negative"),
                                        ("{labels: [Dog], cooldown: soon}", "cooldown: 'soon' is not a number")])
def test_bad_notification_keys_are_one_line(tmp_path, rule, says):
    spec = tmp_path / "rules.yaml"
    spec.write_text(f"rules:\n  - {rule}\n")
    with pytest.raises(StreamtagError) as e:
        load_rules(str(spec))
    assert says in str(e.value) and "\n" not in str(e.value)
