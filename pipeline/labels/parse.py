"""Turn a model's free-text answer into canonical labels. Pure functions, no I/O.

Rules, applied in this order by `parse_label`:

1. **JSON first.** If the answer holds a JSON object (bare or in a code fence) with a key such
   as ``label``, ``labels``, ``answer``, ``sentiment``, ``category`` or ``标签``/``类别``, only
   that value is parsed (a list value is read as a multi-label answer).
2. **Normalise.** NFKC (full-width letters and punctuation become ASCII), casefold, drop
   markdown emphasis and backticks, and turn quotes (' " ` “ ” ‘ ’ 「 」 『 』 « ») into spaces.
   Apostrophes inside words ("isn't") are kept so negations survive. Labels and synonyms are
   normalised the same way, so matching is case-, width- and quote-insensitive.
3. **Prefix.** The first line that starts with a prefix such as ``Label:``, ``label - ``,
   ``Answer:``, ``Sentiment is``, ``标签：``, ``类别:`` or ``情感倾向为`` marks where the answer
   starts (so "Some reasoning...\\nFinal answer: negative" is read from the prefix).
   Otherwise the answer starts at the beginning of the text.
4. **Leading labels.** The answer is cut into items at ``,`` ``、`` ``/`` ``|`` ``;`` ``&``
   newlines, `` and `` / `` or `` and 和/或/与/以及. An item counts if it is *exactly* a label
   (after trimming bullets, brackets and punctuation such as 。，！？：；、). The first item, and
   an item joined to a label by a conjunction (and, or, /, |, &, 、, 和, 或 …), also counts if it
   merely *starts* with a label: "Positive. The reviewer loves it." → positive, while
   "正面和负面都有" names two labels. After a comma, semicolon or newline a non-exact item is
   taken as explanation. The first item that is not exact ends the list.
5. **Fallback scan.** If no leading label was found, the first line of the answer is scanned for
   label mentions, skipping negated ones ("not positive", "isn't really positive", "不是正面",
   "并不正面"; but "非常正面" is *very* positive, not a negation).

Matching: Latin labels match whole words only, and a hyphen joins words, so "negative" is *not*
found in "non-negative" and "positive" is *not* found in "positively" or "positive-ish"
(inflections count only when a job lists them as synonyms). CJK labels match as substrings,
since Chinese text has no spaces. The longest alias wins where several overlap.

Result: single-label mode returns a 1-tuple, or None when nothing parses or two different
labels were given as alternatives ("positive or negative"). Multi-label mode returns the
distinct labels in the spec's order. The abstain answer is returned as ``(abstain,)`` when it is
the only answer; in multi-label mode it is dropped if real labels were also given.

Structured answers (a JSON object per answer) are read by :mod:`.schema`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

__all__ = ["LabelSpec", "label_instruction", "normalize", "parse_label", "strict_reprompt"]


@dataclass(frozen=True)
class LabelSpec:
    """The label set a job asks for, and how to read answers against it.

    ``synonyms`` maps an alias (any case or width) to a canonical label or to ``abstain``.
    """

    labels: tuple[str, ...]
    synonyms: Mapping[str, str] = field(default_factory=dict, hash=False)
    multi_label: bool = False
    abstain: str | None = None

    @cached_property
    def _aliases(self) -> dict[str, str]:
        """Normalised alias → canonical label, covering labels, abstain and synonyms."""
        table = {normalize(alias): target for alias, target in self.synonyms.items()}
        table.update({normalize(label): label for label in self.labels})
        if self.abstain is not None:
            table[normalize(self.abstain)] = self.abstain
        table.pop("", None)  # an alias that normalises to nothing would match everywhere
        return table

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        """One alternation of every alias, longest first, with word boundaries for Latin."""
        alts = [_bounded(alias) for alias in sorted(self._aliases, key=len, reverse=True)]
        return re.compile("|".join(alts) or r"(?!)")


_WORD = r"a-z0-9_\u00c0-\u024f"  # Latin letters and digits (casefolded); CJK is left out
_QUOTES = '"`“”„‟「」『』«»‹›〝〞〟﹁﹂﹃﹄'
# Underscores count as emphasis unless they sit between Latin letters ("not_sure").
_EMPHASIS = re.compile(r"\*+|~~|(?<![a-z0-9])_+|_+(?![a-z0-9])")
_STRAY_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")
_PREFIX = re.compile(
    r"^[\W_]*(?:(?:the|my|final|predicted|overall)\s+)*"
    r"(?:labels?|answer|sentiment|category|categories|class|classification|tags?"
    r"|标签|类别|分类|答案|情感倾向|情感|结果|判断)"
    r"\s*(?:[:=\-–—]+|\bis\b|为|是)\s*",
)
_SEPARATORS = re.compile(r"([,、/|;&\n]|\s+(?:and/or|and|or)\s+|以及|或者|和|或|与)")
_LOOSE = {",", ";", ""}  # after these (and newlines) a new clause may start; the rest join labels
_TRIM = " \t.,!?:;。，！？：；、…~()[]{}<>-–—#>•·'"
_BULLET = re.compile(r"^(?:[-*•·>#]+|\d+[.)])\s+")
_PARENS = re.compile(r"\([^)]*\)|\[[^\]]*\]")
# A negator directly before the mention, or with one word between ("not really positive").
_NEGATORS = "not|no|nothing|never|neither|nor|hardly|barely"
_NEG_LATIN = re.compile(rf"(?:\b(?:{_NEGATORS})|n't)\s+(?:[a-z]+\s+)?$")
_NEG_CJK = re.compile(r"(?:不|没有?|并非|无|非)[太很算是够大]?\s*$")  # 非常 (very) does not match
_JSON_KEYS = (
    "label",
    "labels",
    "answer",
    "sentiment",
    "category",
    "categories",
    "class",
    "标签",
    "类别",
    "分类",
    "答案",
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def normalize(text: str) -> str:
    """Fold width, case, quotes and markdown so that answers and aliases compare equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.replace("‘", "'").replace("’", "'")
    text = _EMPHASIS.sub("", text)
    text = _STRAY_APOSTROPHE.sub(" ", text)
    return text.translate({ord(q): " " for q in _QUOTES}).strip()


def _bounded(alias: str) -> str:
    """Regex for an alias: Latin ends must sit on word boundaries; CJK ends need none."""
    pattern = re.escape(alias)
    if re.match(f"[{_WORD}]", alias):
        pattern = rf"(?<![{_WORD}-]){pattern}"
    if re.search(f"[{_WORD}]$", alias):
        pattern = rf"{pattern}(?![{_WORD}-])"
    return pattern


def parse_label(response: str, spec: LabelSpec) -> tuple[str, ...] | None:
    """Canonical label(s) in ``response``, or None if it does not parse (see module rules)."""
    from_json = _json_value(response)
    if from_json is not None:
        response = from_json
    answer = _answer_region(normalize(response))
    found = _leading_labels(answer, spec) or _scan_first_line(answer, spec)
    return _decide(found, spec)


def _json_value(response: str) -> str | None:
    """The label value of a JSON answer as plain text, or None if there is no such value."""
    for obj in _json_objects(response):
        keys = {str(k).casefold(): v for k, v in obj.items()}
        for key in _JSON_KEYS:
            value = keys.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return "\n".join(value)
    return None


def _json_objects(response: str) -> Iterator[dict[str, Any]]:
    """The first JSON object of each fenced code block, then of the whole response."""
    for candidate in [*_FENCE.findall(response), response]:
        obj = _first_json_object(candidate)
        if obj is not None:
            yield obj


def _first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object embedded anywhere in ``text``."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _answer_region(text: str) -> str:
    """Text from the first "Label:"-style prefix on, or the whole text if there is none."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = _PREFIX.match(line)
        if match:
            return "\n".join([line[match.end() :], *lines[i + 1 :]]).strip()
    return text


def _clean_item(item: str) -> str:
    """An answer item without bullets, bracketed asides and surrounding punctuation."""
    item = _BULLET.sub("", item.strip()).strip(_TRIM)
    # Trim first, so an answer wrapped in brackets "(neutral)" is kept and only asides go.
    return _PARENS.sub(" ", item).strip(_TRIM).strip()


def _leading_labels(answer: str, spec: LabelSpec) -> list[str]:
    """Labels listed at the start of the answer (rule 4)."""
    aliases = spec._aliases
    whole = _clean_item(answer)
    if whole in aliases:  # lets aliases that contain separators ("n/a") match whole
        return [aliases[whole]]
    found: list[str] = []
    parts = _SEPARATORS.split(answer)  # items at even indexes, separators between them
    for i in range(0, len(parts), 2):
        item = _clean_item(parts[i])
        if not item:
            continue
        if item in aliases:
            found.append(aliases[item])
            continue
        joined = i > 0 and parts[i - 1].strip() not in _LOOSE
        match = spec._pattern.match(item) if joined or not found else None
        if match:
            found.append(aliases[match.group()])
        break
    return found


def _scan_first_line(answer: str, spec: LabelSpec) -> list[str]:
    """Non-negated label mentions on the first non-empty line (rule 5)."""
    line = next((ln for ln in answer.splitlines() if ln.strip()), "")
    return [spec._aliases[m.group()] for m in spec._pattern.finditer(line) if not _negated(line[: m.start()])]


def _negated(before: str) -> bool:
    """Whether the text just before a mention negates it."""
    return bool(_NEG_LATIN.search(before) or _NEG_CJK.search(before))


def _decide(found: list[str], spec: LabelSpec) -> tuple[str, ...] | None:
    """Apply the single/multi-label and abstain rules to the labels found."""
    distinct = list(dict.fromkeys(found))
    if spec.multi_label:
        real = tuple(label for label in spec.labels if label in distinct)
        if real:
            return real
        return (spec.abstain,) if spec.abstain is not None and spec.abstain in distinct else None
    return (distinct[0],) if len(distinct) == 1 else None


def label_instruction(spec: LabelSpec) -> str:
    """Default instruction lines for a labelling prompt, including a ``Labels: a | b`` line."""
    choice = "every label that applies (one or more)" if spec.multi_label else "exactly one label"
    lines = [
        f"Classify the text above with {choice} from this set.",
        f"Labels: {' | '.join(spec.labels)}",
    ]
    if spec.abstain:
        lines.append(f"If none applies or you cannot tell, answer: {spec.abstain}")
    joiner = ", separated by commas" if spec.multi_label else ""
    lines.append(f"Answer with the label{'s' if spec.multi_label else ''} only{joiner}.")
    return "\n".join(lines)


def strict_reprompt(prompt: str, spec: LabelSpec) -> str:
    """The re-ask prompt after an unparseable answer: the prompt plus a ``STRICT:`` line."""
    options = " | ".join([*spec.labels, *([spec.abstain] if spec.abstain else [])])
    if spec.multi_label:
        rule = f"answer with one or more of: {options}, separated by commas, and nothing else."
    else:
        rule = f"answer with exactly one of: {options}, and nothing else."
    return f"{prompt.rstrip()}\n\nSTRICT: {rule}"
