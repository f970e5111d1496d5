"""What is watched: event rules from a YAML file or a label list, expanded through the AudioSet ontology.

A rule names AudioSet classes or ontology nodes; a node stands for every model class at or below it (`Dog` → Dog,
Bark, Yip, Howl, Bow-wow, Growling, Whimper (dog)), so users can write what they mean without knowing which of the
527 outputs exist. Everything a user can get wrong here (a misspelt name, on < off, a negative duration, an unknown
key, a file that is not YAML) is one StreamtagError line with the fix, raised before any audio or model is touched.

The ontology (`assets/ontology.json`, Google, CC BY-SA 4.0, see assets/ONTOLOGY-NOTICE.md) is shipped unchanged.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from streamtag.errors import StreamtagError
from streamtag.labels import audioset_labels, canonical, parse_label_list, suggestion

DEFAULTS: dict[str, float] = {"on": 0.5, "off": 0.35, "hold": 0.6, "min_duration": 0.0, "min_level": -70.0,
                               "cooldown": 0.0}
SWITCHES: dict[str, bool] = {"notify": True}  # true/false keys: whether MQTT, webhooks and commands hear of it
RULE_KEYS = ("name", "labels", *DEFAULTS, *SWITCHES)
SPEC_HINT = "see docs/events.md"
NAMES_HINT = "use an AudioSet class or ontology name (`streamtag labels QUERY` lists them)"


@dataclass(frozen=True)
class Rule:
    """One watched thing: `classes` are model output indices (the expanded `labels`), thresholds in score units,
    durations in seconds, `min_level` in dBFS. `cooldown` and `notify` only concern notifications (streamtag/notify):
    after a notified event of this rule ends, events starting within `cooldown` seconds are not notified, and
    `notify: false` keeps every event of the rule off MQTT, webhooks and commands; the events are still logged."""

    name: str
    labels: tuple[str, ...]
    classes: tuple[int, ...]
    on: float = DEFAULTS["on"]
    off: float = DEFAULTS["off"]
    hold: float = DEFAULTS["hold"]
    min_duration: float = DEFAULTS["min_duration"]
    min_level: float = DEFAULTS["min_level"]
    cooldown: float = DEFAULTS["cooldown"]
    notify: bool = SWITCHES["notify"]


# ---------------------------------------------------------------------------------------------- the ontology
@dataclass(frozen=True)
class Node:
    id: str
    name: str
    children: tuple[str, ...]


class Ontology:
    """AudioSet ontology nodes by name, and each node's descendants among the model's classes."""

    def __init__(self, nodes: Sequence[Node], class_ids: Sequence[str]):
        self.nodes = {n.id: n for n in nodes}
        self.by_name = {canonical(n.name): n for n in nodes}
        self.class_index = {mid: i for i, mid in enumerate(class_ids)}
        self.names = [n.name for n in nodes]

    def find(self, name: str) -> Node | None:
        return self.by_name.get(canonical(name))

    def expand(self, node: Node) -> tuple[int, ...]:
        """Model class indices of `node` and everything below it, in output order (the ontology is a DAG: a node
        reached twice counts once)."""
        seen: set[str] = set()
        stack = [node.id]
        while stack:
            nid = stack.pop()
            if nid in seen or nid not in self.nodes:
                continue
            seen.add(nid)
            stack.extend(self.nodes[nid].children)
        return tuple(sorted(self.class_index[nid] for nid in seen if nid in self.class_index))


@functools.lru_cache(maxsize=1)
def ontology() -> Ontology:
    """The shipped ontology, against the shipped class list (AudioSet mids in output order)."""
    import csv

    root = resources.files("streamtag").joinpath("assets")
    raw = json.loads(root.joinpath("ontology.json").read_text(encoding="utf-8"))
    nodes = [Node(d["id"], d["name"], tuple(d.get("child_ids", ()))) for d in raw]
    rows = csv.DictReader(root.joinpath("class_labels_indices.csv").read_text(encoding="utf-8").splitlines())
    mids = [r["mid"] for r in sorted(rows, key=lambda r: int(r["index"]))]
    return Ontology(nodes, mids)


def resolve(name: str, where: str) -> tuple[int, ...]:
    """The model classes a class or ontology node name stands for; a misspelt name is a one-line error."""
    onto = ontology()
    node = onto.find(name)
    if node is None:
        raise StreamtagError(f"{where}: unknown label {name!r}; {suggestion(name, onto.names)}{NAMES_HINT}")
    classes = onto.expand(node)
    if not classes:
        raise StreamtagError(f"{where}: {node.name!r} has no model class at or below it in the ontology; "
                             "pick a narrower name (`streamtag labels QUERY` shows what each name covers)")
    return classes


# ---------------------------------------------------------------------------------------------- specs
def load_rules(spec: str, labels: Sequence[str] | None = None) -> list[Rule]:
    """Rules from `spec`: a YAML file (a path that exists or ends in .yaml/.yml) or comma-separated labels, one rule
    per label with the default thresholds."""
    labels = list(labels or audioset_labels())
    text = str(spec).strip()
    if not text:
        raise StreamtagError(f"--events: empty; give a YAML file or comma-separated labels ({SPEC_HINT})")
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") or os.path.exists(path):
        return _rules_from_yaml(path, labels)
    onto = ontology()
    names = onto.names  # a label list may use any class or node name, commas inside names included
    rules = []
    for i in parse_label_list(text, names, "--events", hint=NAMES_HINT):
        rules.append(_make_rule({"name": names[i], "labels": [names[i]]}, {**DEFAULTS, **SWITCHES}, "--events", labels))
    return _checked_unique(rules, "--events")


def _rules_from_yaml(path: Path, labels: Sequence[str]) -> list[Rule]:
    import yaml

    where = f"--events {path}"
    from streamtag.paths import read_input_text

    text = read_input_text(path, "rules file", "give a YAML rules file or comma-separated labels", 1 << 20)
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise StreamtagError(f"{where}: YAML nested too deeply; {SPEC_HINT} for the format") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise StreamtagError(f"{where}: not valid YAML{at}; {SPEC_HINT} for the format") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data["rules"]:
        raise StreamtagError(f"{where}: expected a mapping with a non-empty `rules:` list; {SPEC_HINT}")
    unknown = sorted(str(k) for k in data if k not in ("defaults", "rules"))
    if unknown:
        raise StreamtagError(f"{where}: unknown key(s) {', '.join(unknown)}; the top level has `defaults` and `rules`")
    defaults: dict[str, Any] = {**DEFAULTS, **SWITCHES}
    if data.get("defaults") is not None:
        given = _keys(data["defaults"], f"{where}: defaults")
        bad = sorted(k for k in given if k not in defaults)
        if bad:
            raise StreamtagError(f"{where}: defaults: unknown key(s) {', '.join(bad)}; "
                                 f"known: {', '.join(defaults)}")
        defaults.update(given)
    rules = [_make_rule(_keys(item, f"{where}: rule {n}"), defaults, f"{where}: rule {n}", labels)
             for n, item in enumerate(data["rules"], 1)]
    return _checked_unique(rules, where)


def _keys(item: Any, where: str) -> dict[str, Any]:
    """A mapping with `on`/`off` keys whichever way PyYAML read them (unquoted `on:` is the boolean True)."""
    if not isinstance(item, dict):
        raise StreamtagError(f"{where}: expected a mapping of keys, got {type(item).__name__}; {SPEC_HINT}")
    out = {}
    for key, value in item.items():
        if key is True:
            key = "on"
        elif key is False:
            key = "off"
        out[str(key).replace("-", "_")] = value
    return out


def _make_rule(item: dict[str, Any], defaults: dict[str, Any], where: str, labels: Sequence[str]) -> Rule:
    bad = sorted(k for k in item if k not in RULE_KEYS)
    if bad:
        raise StreamtagError(f"{where}: unknown key(s) {', '.join(bad)}; known: {', '.join(RULE_KEYS)}")
    names = item.get("labels")
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise StreamtagError(f"{where}: `labels` must be a non-empty list of AudioSet names")
    name = item.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise StreamtagError(f"{where}: `name` must be a non-empty string")
    if name is not None and "rule" in where:
        where = f"{where} ({name})"
    # YAML's flow lists split "Smoke detector, smoke alarm" at its comma: names are matched over consecutive
    # items exactly as over a comma-separated list (the longest run that names a class or node wins).
    onto = ontology()
    found = [onto.names[i] for i in parse_label_list(", ".join(n.strip() for n in names), onto.names, where,
                                                     hint=NAMES_HINT)]
    if name is None:
        if len(found) != 1:
            raise StreamtagError(f"{where}: give the rule a `name` (a rule with several labels needs one)")
        name = found[0]
    classes: set[int] = set()
    for label in found:
        classes.update(resolve(label, where))
    if max(classes) >= len(labels):
        raise StreamtagError(f"{where}: the model has {len(labels)} outputs, fewer than the AudioSet classes named")
    values: dict[str, Any] = {}
    for key, default in defaults.items():
        value = item.get(key, default)
        if key in SWITCHES:
            if not isinstance(value, bool):
                raise StreamtagError(f"{where}: {key}: {value!r} is not true or false")
            values[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise StreamtagError(f"{where}: {key}: {value!r} is not a number")
        values[key] = float(value)
    for key in ("hold", "min_duration", "cooldown"):
        if values[key] < 0:
            raise StreamtagError(f"{where}: {key}: {values[key]:g} is negative; durations are seconds ≥ 0")
    if not 0 <= values["off"] <= values["on"] <= 1:
        raise StreamtagError(f"{where}: on {values['on']:g} / off {values['off']:g}: need 0 ≤ off ≤ on ≤ 1 "
                             "(on starts an event, off ends it)")
    return Rule(name=name.strip(), labels=tuple(found), classes=tuple(sorted(classes)), **values)


def _checked_unique(rules: list[Rule], where: str) -> list[Rule]:
    seen: dict[str, str] = {}
    for rule in rules:
        key = slug(rule.name)
        if key in seen:
            raise StreamtagError(f"{where}: two rules named {seen[key]!r} and {rule.name!r}; give each rule its "
                                 "own `name`")
        seen[key] = rule.name
    return rules


def slug(name: str) -> str:
    """A rule name as it appears in event ids and clip file names: lower case, runs of other characters → '-'."""
    out = "".join(c if c.isalnum() else "-" for c in name.casefold())
    return "-".join(p for p in out.split("-") if p) or "rule"


# ---------------------------------------------------------------------------------------------- `streamtag labels`
def describe_labels(query: str | None, labels: Sequence[str] | None = None) -> list[tuple[str, str, list[str]]]:
    """(name, "class"/"node", the classes it expands to) for every class and ontology node whose name contains
    `query` (case-insensitive; all when None), in ontology order."""
    labels = list(labels or audioset_labels())
    onto = ontology()
    q = canonical(query) if query else ""
    rows = []
    for node in onto.nodes.values():
        if q and q not in canonical(node.name):
            continue
        classes = [labels[i] for i in onto.expand(node)]
        kind = "class" if node.id in onto.class_index else "node"
        rows.append((node.name, kind, classes))
    return rows
