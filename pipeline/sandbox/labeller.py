"""The sandbox's labelling agents: wrong on purpose, in a controlled and seeded way.

A labelling target (MOMO agents 301 and 302, every relay model) reads the ``Labels: a | b | c``
line of its prompt, or a ``JSON schema: {...}`` line, and answers with a label (in the loose
styles real models use) or a JSON object. The text it labels is the rest of the prompt, with the
instruction lines taken out but what follows the colon of ``Classify ...: <text>`` kept.

* **What is right.** For a text found in the truth table (``label_truth``: a CSV with ``text``
  and ``gold`` columns, optionally ``case``; the prompt only has to contain the text), its gold
  label. Otherwise, for a sentiment label set, the surface reading (sentiment keywords); for any
  other set, a fixed pick per text.
* **Easy or hard.** A truth row is hard when its ``case`` is given and is not ``plain``; without a
  ``case`` column, when the surface reading is not the gold label. Rows outside the truth are easy.
* **How often right.** Each call is right with the target's probability for the row's difficulty
  (:class:`~.config.SkillConfig`, ``labellers``), drawn from a hash of (seed, target, prompt, n).
  At temperature 0 there is one draw per prompt (a greedy answer), at temperature > 0 one per call
  (n counts how often the key sent this prompt), so votes are independent samples. A wrong answer
  is one of the other labels, picked by the same hash.

Without a ``STRICT:`` line one answer in 12 is unusable ("Hard to tell..."), and one structured
answer in 6 breaks the schema (a missing field, a number as text, a value outside an enum), so a
client's re-asks have work to do; a ``STRICT:`` re-ask is always well-formed.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .answers import stable_hash
from .config import SkillConfig

__all__ = ["Labeller", "Truth"]

_LABELS_LINE = re.compile(r"^\s*Labels?\s*:\s*(.+)$", re.M | re.I)
_SCHEMA_LINE = re.compile(r"^\s*JSON schema\s*:\s*(\{.*\})\s*$", re.M | re.I)
_STRICT_LINE = re.compile(r"^\s*STRICT:.*?one (?:or more )?of:\s*(.+?),? (?:separated|and nothing)", re.M)
# lines that only instruct (and name the labels or the schema): never part of the text
_INSTRUCTION = ("STRICT:", "Answer with", "If none", "JSON schema", "Reply with")
# an instruction that may carry the text after its colon: "Classify this review: <text>"
_LEAD_IN = re.compile(r"^\s*Classify\b[^:：\n]*(?:[:：]\s*(.*))?$", re.I)
_POSITIVE = ("good", "great", "love", "excellent", "perfect", "happy", "recommend", "amazing", "nice",
             "好评", "满意", "喜欢", "不错", "推荐", "好用", "很好", "棒", "👍", "值得")
_NEGATIVE = ("bad", "broke", "terrible", "awful", "refund", "return", "disappoint", "poor", "worst", "waste",
             "差评", "失望", "避雷", "不灵", "退货", "坏", "太差", "垃圾", "不好", "后悔")
_SENTIMENT = {"positive": 1, "正面": 1, "pos": 1, "negative": -1, "负面": -1, "neg": -1,
              "neutral": 0, "中性": 0, "mixed": 0}


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


@dataclass(frozen=True, slots=True)
class Truth:
    """Gold labels by text, read from a CSV (``text``, ``gold``, optional ``case``)."""

    rows: tuple[tuple[str, str, str | None], ...]  # folded text, gold, case; longest text first

    @classmethod
    def read(cls, path: Path) -> Truth:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"text", "gold"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: label_truth needs the columns text and gold (missing {sorted(missing)})")
            rows = [(_fold(r["text"]), r["gold"].strip(), (r.get("case") or "").strip() or None)
                    for r in reader if r["text"] and r["gold"]]
        return cls(tuple(sorted(rows, key=lambda r: -len(r[0]))))

    def find(self, text: str) -> tuple[str, str | None] | None:
        """(gold, case) of the longest truth text that ``text`` contains, if any."""
        folded = _fold(text)
        for known, gold, case in self.rows:
            if known in folded:
                return gold, case
        return None


class Labeller:
    """Answers label prompts for one sandbox; see the module rules."""

    def __init__(self, seed: int, skills: Mapping[str, SkillConfig], default: SkillConfig,
                 truth: Truth | None = None) -> None:
        self.seed = seed
        self.skills = dict(skills)
        self.default = default
        self.truth = truth

    def answer(self, target: object, prompt: str, temperature: float, n: int) -> str | None:
        """The reply of ``target``, or None when the prompt asks for no label (then it is prose)."""
        draw = n if temperature > 0 else 0
        schema = _schema_of(prompt)
        if schema is not None:
            return self._structured(target, prompt, schema, draw)
        labels = label_set(prompt)
        if not labels:
            return None
        label = self.choose(target, prompt, labels, draw)
        if "STRICT:" in prompt:
            return label
        return styled(label, stable_hash("style", prompt, draw) % 12)

    def choose(self, target: object, prompt: str, labels: list[str], draw: int) -> str:
        """The label this call gives: right with the target's probability for the row."""
        right, hard = self._right(prompt, labels)
        skill = self.skills.get(str(target), self.default)
        p = skill.hard if hard else skill.easy
        if stable_hash("right", self.seed, target, prompt, draw) / 2.0**64 < p:
            return right
        others = [x for x in labels if x != right] or labels
        return others[stable_hash("wrong", self.seed, target, prompt, draw) % len(others)]

    def _right(self, prompt: str, labels: list[str]) -> tuple[str, bool]:
        """The right label for this prompt's text, and whether the row is hard."""
        text = text_of(prompt)
        surface = _surface(text, labels)
        found = self.truth.find(text) if self.truth is not None else None
        if found is None:
            return surface, False
        gold, case = found
        right = _matching(gold, labels) or surface
        hard = case not in (None, "plain") if case is not None else right != surface
        return right, hard

    def _structured(self, target: object, prompt: str, schema: dict[str, Any], draw: int) -> str:
        props = schema.get("properties") or {}
        mood = 0
        obj: dict[str, Any] = {}
        for name, prop in props.items():  # enums first: the stars follow the sentiment chosen
            if isinstance(prop, dict) and isinstance(prop.get("enum"), list) and prop["enum"]:
                obj[name] = self.choose(target, prompt, [str(m) for m in prop["enum"]], draw)
                mood = _SENTIMENT.get(obj[name].casefold(), mood)
        obj = {name: obj[name] if name in obj else _value(text_of(prompt), name, prop, mood)
               for name, prop in props.items() if isinstance(prop, dict)}
        if "STRICT:" not in prompt:
            obj = _maybe_broken(obj, props, stable_hash("break", prompt, draw) % 6)
        return json.dumps(obj, ensure_ascii=False)


def _value(text: str, name: str, prop: Mapping[str, Any], mood: int) -> Any:
    """A plausible value for a non-enum field, the same for every call about this text."""
    kind = prop.get("type")
    if isinstance(kind, list):  # ["boolean", "null"]: a value of the real type
        kind = next((k for k in kind if k != "null"), None)
    h = stable_hash("field", text, name)
    if kind == "integer":  # a 1-5 rating that agrees with the sentiment
        return {1: 4 + h % 2, 0: 3, -1: 1 + h % 2}[mood]
    if kind == "number":
        return round(0.5 + (h % 50) / 100, 2)
    if kind == "boolean":
        return bool(h % 2)
    if kind == "array":
        return ["price", "quality", "delivery"][: 1 + h % 3]
    return ["value for money", "build quality", "comfort", "taste", "battery"][h % 5]


def label_set(prompt: str) -> list[str]:
    """The labels a prompt offers (a STRICT line first, then the Labels line)."""
    match = _STRICT_LINE.search(prompt) or _LABELS_LINE.search(prompt)
    if not match:
        return []
    return [label.strip() for label in match.group(1).split("|") if label.strip()]


def text_of(prompt: str) -> str:
    """The prompt without its instruction lines (which name every label), wherever the text is:
    on a line of its own, in a ``Review: ...`` line, or after the colon of a ``Classify ...:``
    line (as a user writes it: ``Classify the sentiment of this product review: {text}``)."""
    keep = []
    for line in prompt.splitlines():
        if _LABELS_LINE.match(line) or line.lstrip().startswith(_INSTRUCTION):
            continue
        lead_in = _LEAD_IN.match(line)
        if lead_in is not None:
            line = lead_in.group(1) or ""
        keep.append(line)
    return "\n".join(keep).strip()


def _schema_of(prompt: str) -> dict[str, Any] | None:
    match = _SCHEMA_LINE.search(prompt)
    if not match:
        return None
    try:
        schema = json.loads(match.group(1))
    except ValueError:
        return None
    return schema if isinstance(schema, dict) else None


def _matching(gold: str, labels: list[str]) -> str | None:
    """The label of the set that means ``gold`` (itself, or the same polarity on a sentiment scale)."""
    for label in labels:
        if label.casefold() == gold.casefold():
            return label
    polarity = _SENTIMENT.get(gold.casefold())
    return next((label for label in labels if _SENTIMENT.get(label.casefold()) == polarity), None) \
        if polarity is not None else None


def _surface(text: str, labels: list[str]) -> str:
    """What the sentiment words on the surface say, on a sentiment scale; else a fixed pick."""
    folded = text.casefold()
    score = sum(w in folded for w in _POSITIVE) - sum(w in folded for w in _NEGATIVE)
    polarity = (score > 0) - (score < 0)
    for label in labels:
        if _SENTIMENT.get(label.casefold()) == polarity:
            return label
    return labels[stable_hash("label", folded) % len(labels)]


def _maybe_broken(obj: dict[str, Any], props: Mapping[str, Any], how: int) -> dict[str, Any]:
    """One answer in six breaks the schema, in one of three ways."""
    if how != 0 or not obj:
        return obj
    broken = dict(obj)
    names = list(obj)
    kind = stable_hash("how", json.dumps(obj, sort_keys=True, ensure_ascii=False)) % 3
    numeric = [k for k in names if props[k].get("type") in ("integer", "number")]
    enums = [k for k in names if isinstance(props[k].get("enum"), list)]
    if kind == 0 and numeric:
        broken[numeric[0]] = "high"  # a number as text
    elif kind == 1 and enums:
        broken[enums[0]] = "unclear"  # outside the enum
    else:
        broken.pop(names[0])  # a field left out
    return broken


def styled(label: str, style: int) -> str:
    """``label`` in one of 12 answer styles; style 11 is unusable on purpose."""
    if style <= 3:
        return label
    if style <= 5:
        return f"Label: {label.capitalize()}"
    if style == 6:
        return f"**{label}**"
    if style == 7:
        return json.dumps({"label": label}, ensure_ascii=False)
    if style <= 9:
        return f"{label.capitalize()}. The text reads that way overall."
    if style == 10:
        return f"I would say {label}."
    return "Hard to tell from such a short text."  # unparseable: exercises the client's re-ask

