"""Label parsing: a table of messy real-world answers, then properties over generated ones."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.labels import (
    LabelConfig,
    LabelSpec,
    label_instruction,
    parse_label,
    parse_structured,
    strict_reprompt,
)
from pipeline.labels.parse import normalize

SENTIMENT = LabelSpec(
    labels=("positive", "negative", "neutral"),
    synonyms={
        "pos": "positive",
        "neg": "negative",
        "正面": "positive",
        "积极": "positive",
        "负面": "negative",
        "消极": "negative",
        "中性": "neutral",
    },
    abstain="unsure",
)
TOPICS = LabelSpec(
    labels=("price", "quality", "shipping", "service"),
    synonyms={"价格": "price", "质量": "quality", "物流": "shipping", "客服": "service"},
    multi_label=True,
    abstain="none",
)

P, N, U = ("positive",), ("negative",), ("neutral",)

SINGLE_CASES = [
    # plain, case, whitespace, width
    ("positive", P),
    ("Negative", N),
    ("  NEUTRAL \n", U),
    ("ＰＯＳＩＴＩＶＥ", P),
    ("ｎｅｇａｔｉｖｅ！", N),
    # quotes and markdown
    ('"positive"', P),
    ("'negative'", N),
    ("“neutral”", U),
    ("‘positive’", P),
    ("「正面」", P),
    ("『负面』", N),
    ("`neutral`", U),
    ("**Positive**", P),
    ("*negative*", N),
    ("_neutral_", U),
    ("**Sentiment:** Negative", N),
    # trailing punctuation, including full-width
    ("Positive.", P),
    ("negative!!!", N),
    ("正面。", P),
    ("负面！", N),
    ("中性；", U),
    ("positive 👍", P),
    # prefixes
    ("Label: positive", P),
    ("label - negative", N),
    ("LABEL=neutral", U),
    ("Answer: Negative", N),
    ("Sentiment: positive", P),
    ("The sentiment is negative.", N),
    ("标签：正面", P),
    ("类别: 中性", U),
    ("情感倾向为负面", N),
    ("答案是积极", P),
    ("Let me think.\nThe reviewer hates the battery.\nFinal answer: negative", N),
    ("Label:\nneutral", U),
    # label then explanation
    ("Positive. The reviewer loves it.", P),
    ("Negative - the lid leaks and the display died.", N),
    ("Neutral, the review mentions both pros and cons.", U),
    ("Positive\nNegative aspects are minor.", P),
    ("正面，用户对音质很满意。", P),
    ("负面。用户说锅底总是糊，和描述不符。", N),
    ("Answer: Positive (the user loves it)", P),
    ("- positive", P),
    ("1. negative", N),
    # JSON
    ('{"label": "positive"}', P),
    ('```json\n{"sentiment": "Negative", "confidence": 0.9}\n```', N),
    ('Here you go: {"Label": "中性"}', U),
    ("{'label': 'negative'}", N),
    # synonyms
    ("pos", P),
    ("NEG.", N),
    ("消极", N),
    # mentioned once in the first line
    ("I think this review is negative overall.", N),
    ("这条评论是正面的", P),
    ("Overall the tone is clearly positive; the user would buy again.", P),
    # negations
    ("Not positive.", None),
    ("The review is not positive, it is negative.", N),
    ("It isn't really positive, more like neutral.", U),
    ("不是正面，是负面", N),
    ("它并不正面", None),
    ("非常正面", P),  # 非常 means "very", not a negation
    ("neither positive nor negative", None),
    ("The review is positive. Nothing negative.", P),
    # whole words only for Latin labels
    ("non-negative", None),
    ("Positively glowing!", None),
    ("positive-ish", None),
    # ambiguous or empty
    ("positive or negative", None),
    ("positive/negative", None),
    ("Positive and negative", None),
    ("正面和负面都有", None),
    ("Positive\nNegative", None),
    ("It has both positive and negative points.", None),
    ("", None),
    ("   \n ", None),
    ("I cannot classify this.", None),
    ("{}", None),
    # abstain
    ("unsure", ("unsure",)),
    ("Label: UNSURE.", ("unsure",)),
    ("positive or unsure", None),
]


@pytest.mark.parametrize(("response", "expected"), SINGLE_CASES)
def test_single_label_table(response: str, expected: tuple[str, ...] | None) -> None:
    assert parse_label(response, SENTIMENT) == expected


MULTI_CASES = [
    ("price, quality", ("price", "quality")),
    ("Quality and price", ("price", "quality")),
    ("价格、质量", ("price", "quality")),
    ("物流/service", ("shipping", "service")),
    ("Labels: shipping | quality", ("quality", "shipping")),
    ("price\nquality\n", ("price", "quality")),
    ("- price\n- service", ("price", "service")),
    ("Categories:\n- price\n- quality", ("price", "quality")),
    ('{"labels": ["service", "price"]}', ("price", "service")),
    ("quality, quality, QUALITY", ("quality",)),
    ("quality. The reviewer also complains about price.", ("quality",)),
    ("The review talks about shipping and service.", ("shipping", "service")),
    ("none", ("none",)),
    ("None, price", ("price",)),
    ("nothing relevant", None),
]


@pytest.mark.parametrize(("response", "expected"), MULTI_CASES)
def test_multi_label_table(response: str, expected: tuple[str, ...] | None) -> None:
    assert parse_label(response, TOPICS) == expected


def test_alias_containing_a_separator_matches_whole() -> None:
    spec = LabelSpec(labels=("yes", "no"), abstain="n/a")
    assert parse_label("N/A.", spec) == ("n/a",)


# --- properties --------------------------------------------------------------------------------

QUOTE_PAIRS = ['""', "''", "``", "“”", "‘’", "「」", "『』", "**", "__", "()", "  "]
TRAILING = ["", ".", "!", "?", ":", ";", "。", "，", "！", "？", "：", "；", "、", "...", " 🙂"]
PREFIXES = ["", "Label: ", "label - ", "Answer: ", "Sentiment: ", "标签：", "类别: ", "答案是"]


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@st.composite
def wrapped(draw: st.DrawFn, alias_to_label: dict[str, str], trailing: bool = True) -> tuple[str, str]:
    """An alias dressed up in random case, width, quotes, punctuation and prefix."""
    alias = draw(st.sampled_from(sorted(alias_to_label)))
    flips = draw(st.lists(st.booleans(), min_size=len(alias), max_size=len(alias)))
    text = "".join(c.upper() if f else c for c, f in zip(alias, flips, strict=True))
    if draw(st.booleans()):
        text = _full_width(text)
    pair = draw(st.sampled_from(QUOTE_PAIRS))
    text = pair[0] + text + pair[1] + (draw(st.sampled_from(TRAILING)) if trailing else "")
    pad = st.text(alphabet=" \t\n", max_size=3)
    return draw(pad) + draw(st.sampled_from(PREFIXES)) + text + draw(pad), alias_to_label[alias]


SENTIMENT_ALIASES = {**{lab: lab for lab in SENTIMENT.labels}, **SENTIMENT.synonyms}


@given(wrapped(SENTIMENT_ALIASES))
def test_wrapped_label_always_parses(case: tuple[str, str]) -> None:
    response, label = case
    assert parse_label(response, SENTIMENT) == (label,)


EXPLANATION = st.lists(
    st.sampled_from(["the", "reviewer", "loves", "it", "but", "price", "positive", "负面", "很"]),
    min_size=1,
    max_size=8,
).map(" ".join)


# No trailing punctuation here: "neutral; positive" really is two answers.
@given(wrapped(SENTIMENT_ALIASES, trailing=False), EXPLANATION)
def test_label_then_explanation_keeps_the_leading_label(case: tuple[str, str], explanation: str) -> None:
    response, label = case
    answer = f"{response.rstrip()}. {explanation.capitalize()}."
    assert parse_label(answer, SENTIMENT) == (label,)


@given(st.sampled_from(SENTIMENT.labels), st.sampled_from(["not ", "Not really ", "isn't "]))
def test_negated_label_alone_does_not_parse(label: str, negation: str) -> None:
    assert parse_label(f"It {negation}{label}.", SENTIMENT) is None


@given(st.text(max_size=80))
def test_any_text_yields_only_known_labels(text: str) -> None:
    allowed = {*SENTIMENT.labels, SENTIMENT.abstain}
    result = parse_label(text, SENTIMENT)
    assert result is None or (len(result) == 1 and result[0] in allowed)
    multi = parse_label(text, TOPICS)
    assert multi is None or set(multi) <= {*TOPICS.labels, TOPICS.abstain}


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="正负面积消极中性"), max_size=60))
def test_text_without_any_alias_does_not_parse(text: str) -> None:
    folded = normalize(text)  # NFKC too: "ｐｏｓ" is an alias once its width is folded
    if not any(alias in folded for alias in [*SENTIMENT_ALIASES, "unsure"]):
        assert parse_label(text, SENTIMENT) is None


@given(
    st.lists(st.sampled_from(TOPICS.labels), min_size=1, unique=True),
    st.sampled_from([", ", "、", " / ", " | ", " and ", "\n", ",", "|"]),
    st.booleans(),
)
def test_multi_label_lists_come_back_in_spec_order(labels: list[str], sep: str, upper: bool) -> None:
    response = sep.join(lab.upper() if upper else lab for lab in labels)
    expected = tuple(lab for lab in TOPICS.labels if lab in labels)
    assert parse_label(response, TOPICS) == expected


# --- prompts -----------------------------------------------------------------------------------


def test_label_instruction_has_a_labels_line() -> None:
    lines = label_instruction(SENTIMENT).splitlines()
    assert "Labels: positive | negative | neutral" in lines
    assert any("unsure" in line for line in lines)


def test_strict_reprompt_appends_a_strict_line() -> None:
    prompt = "Review: great tea\nLabels: positive | negative | neutral\n"
    out = strict_reprompt(prompt, SENTIMENT)
    assert out.startswith(prompt.rstrip())
    last = out.splitlines()[-1]
    assert last.startswith("STRICT:")
    assert "positive | negative | neutral" in last


# --- structured answers ------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "required": ["sentiment", "stars"],
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative"]},
        "stars": {"type": "integer"},
        "topics": {"type": ["array", "null"]},
    },
}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ('```json\n{"sentiment": "Positive", "stars": 5}\n```', {"sentiment": "positive", "stars": 5, "topics": None}),
        (
            'Sure! {"sentiment": "negative", "stars": 1, "topics": null} Hope it helps.',
            {"sentiment": "negative", "stars": 1, "topics": None},
        ),
        ('{"sentiment": "meh", "stars": 3}', None),  # not in enum
        ('{"sentiment": "negative", "stars": true}', None),  # bool is not an integer
        ('{"sentiment": "negative", "stars": "1"}', None),
        ('{"sentiment": "negative"}', None),  # missing required
        ('{"sentiment": "negative", "stars": 2, "topics": "price"}', None),
        ("positive, 5 stars", None),
    ],
)
def test_parse_structured(response: str, expected: dict[str, object] | None) -> None:
    assert parse_structured(response, SCHEMA) == expected


# --- job config --------------------------------------------------------------------------------


def test_config_to_spec_and_template() -> None:
    cfg = LabelConfig.model_validate(
        {
            "set": ["positive", "negative"],
            "synonyms": {"正面": "positive"},
            "abstain": "unsure",
            "votes": 3,
            "instruction": "Review of {product}: {text}\n{labels}",
        }
    )
    assert cfg.to_spec() == LabelSpec(("positive", "negative"), {"正面": "positive"}, False, "unsure")
    assert cfg.prompt_template() == "Review of {product}: {text}\nLabels: positive | negative"
    default = LabelConfig(set=["a{", "b"]).prompt_template("review")
    assert default.startswith("{review}\n\n") and "Labels: a{{ | b" in default


@pytest.mark.parametrize(
    "table",
    [
        {"set": ["positive"]},
        {"set": ["positive", "Positive"]},
        {"set": ["a", "b"], "synonyms": {"c": "d"}},
        {"set": ["a", "b"], "abstain": "A"},
        {"set": ["a", "b"], "votes": 0},
        {"set": ["a", "b"], "max_reasks": -1},
        {"set": ["a", "b"], "colour": "red"},
    ],
)
def test_config_rejects(table: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LabelConfig.model_validate(table)
