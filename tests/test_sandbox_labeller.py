"""The sandbox's labelling agents: right as often as configured, more often on easy rows, seeded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.sandbox.answers import answer
from pipeline.sandbox.config import SkillConfig
from pipeline.sandbox.labeller import Labeller, Truth, text_of

LABELS = ["positive", "negative", "neutral"]
LINE = "Labels: positive | negative | neutral"
STRICT = "STRICT: answer with exactly one of: positive | negative | neutral, and nothing else."
PERFECT = SkillConfig(easy=1.0, hard=1.0)


def truth(tmp_path: Path, rows: list[tuple[str, str, str]], *, with_case: bool = True) -> Truth:
    path = tmp_path / "truth.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "gold", "case"] if with_case else ["text", "gold"])
        writer.writerows(row if with_case else row[:2] for row in rows)
    return Truth.read(path)


def test_a_perfect_agent_gives_the_gold_label_even_against_the_surface(tmp_path: Path) -> None:
    sarcasm = "Great, it cracked the first time I dropped it"
    labeller = Labeller(0, {"301": PERFECT}, PERFECT, truth(tmp_path, [(sarcasm, "negative", "sarcasm")]))
    assert labeller.answer(301, f"Review: {sarcasm}.\n{LINE}\n\n{STRICT}", 0.0, 1) == "negative"
    # outside the truth the surface reading is right: "great" reads positive
    assert labeller.answer(301, f"Review: a great kettle\n{LINE}\n\n{STRICT}", 0.0, 1) == "positive"
    assert labeller.answer(301, "no label line here", 0.0, 1) is None
    assert answer(301, "no label line here", 0.0, 1, labeller=labeller).startswith("Answer to:")


def test_the_gold_label_is_mapped_onto_the_prompts_label_set(tmp_path: Path) -> None:
    labeller = Labeller(0, {}, PERFECT, truth(tmp_path, [("锅盖漏气", "negative", "plain")]))
    prompt = ("Review: 锅盖漏气，退货\nLabels: 正面 | 负面 | 中性\n\n"
              "STRICT: answer with exactly one of: 正面 | 负面 | 中性, and nothing else.")
    assert labeller.answer("gpt-4o", prompt, 0.0, 1) == "负面"


def share_right(labeller: Labeller, target: str, texts: list[str], gold: str, n: int) -> float:
    right = sum(labeller.answer(target, f"Review: {t}\n{LINE}\n\n{STRICT}", 0.7, n) == gold for t in texts)
    return right / len(texts)


def test_right_as_often_as_configured_and_more_often_on_easy_rows(tmp_path: Path) -> None:
    easy = [f"plain review number {i}" for i in range(1500)]
    hard = [f"sarcastic review number {i}" for i in range(1500)]
    rows = [(t, "negative", "plain") for t in easy] + [(t, "negative", "sarcasm") for t in hard]
    skill = SkillConfig(easy=0.9, hard=0.55)
    labeller = Labeller(3, {"301": skill}, PERFECT, truth(tmp_path, rows))
    assert share_right(labeller, "301", easy, "negative", 1) == pytest.approx(0.9, abs=0.03)
    assert share_right(labeller, "301", hard, "negative", 1) == pytest.approx(0.55, abs=0.04)
    assert share_right(labeller, "302", hard, "negative", 1) == 1.0  # the default skill here is perfect


def test_without_a_case_column_hard_means_the_surface_misleads(tmp_path: Path) -> None:
    rows = [("love it, it broke at once", "negative", ""), ("a sturdy good lamp", "positive", "")]
    found = truth(tmp_path, rows, with_case=False)
    labeller = Labeller(0, {}, SkillConfig(easy=1.0, hard=0.0), found)
    assert labeller.answer(301, f"Review: a sturdy good lamp\n{LINE}\n{STRICT}", 0.0, 1) == "positive"
    assert labeller.answer(301, f"Review: love it, it broke at once\n{LINE}\n{STRICT}", 0.0, 1) != "negative"


def test_votes_are_independent_samples_but_greedy_answers_repeat() -> None:
    labeller = Labeller(0, {}, SkillConfig(easy=0.5, hard=0.5))
    prompt = f"Review: an ordinary kettle, nice handle\n{LINE}\n\n{STRICT}"
    assert len({labeller.answer(301, prompt, 0.0, n) for n in range(1, 20)}) == 1
    assert len({labeller.answer(301, prompt, 0.7, n) for n in range(1, 20)}) > 1
    other_seed = Labeller(1, {}, SkillConfig(easy=0.5, hard=0.5))
    assert [labeller.answer(301, prompt, 0.7, n) for n in range(1, 30)] != \
        [other_seed.answer(301, prompt, 0.7, n) for n in range(1, 30)]


def test_the_longest_known_text_wins(tmp_path: Path) -> None:
    found = truth(tmp_path, [("好评", "positive", "plain"), ("好评个鬼", "negative", "sarcasm")])
    assert found.find("Review: 好评个鬼，坏了") == ("negative", "sarcasm")
    assert found.find("Review: 好评！") == ("positive", "plain")
    assert found.find("nothing known") is None


SCHEMA = {"type": "object", "required": ["sentiment", "stars"],
          "properties": {"sentiment": {"enum": LABELS}, "stars": {"type": "integer"},
                         "aspects": {"type": "array", "items": {"type": "string"}}}}


def test_structured_answers_follow_the_schema_line_and_break_it_now_and_then() -> None:
    labeller = Labeller(0, {}, SkillConfig(easy=1.0, hard=1.0))
    schema_line = "JSON schema: " + json.dumps(SCHEMA)
    answers = [json.loads(labeller.answer(301, f"Review: good tea {i}\n{schema_line}", 0.7, 1) or "")
               for i in range(300)]
    valid = [a for a in answers if a.get("sentiment") in LABELS and isinstance(a.get("stars"), int)]
    assert 0.7 < len(valid) / len(answers) < 0.95  # about one in six is broken
    assert all(a["sentiment"] == "positive" for a in valid)  # right, since this agent never errs
    strict = [json.loads(labeller.answer(301, f"Review: good tea {i}\n{schema_line}\n\nSTRICT: JSON only", 0.7, 1)
                         or "") for i in range(100)]
    assert all(a["sentiment"] in LABELS and isinstance(a["stars"], int) for a in strict)


def test_config_keeps_the_default_skills_it_does_not_override_and_checks_the_truth_file(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from pipeline.sandbox import SandboxConfig

    cfg = SandboxConfig.model_validate({"labellers": {"301": {"easy": 1.0, "hard": 0.5}}})
    assert cfg.labellers["301"] == SkillConfig(easy=1.0, hard=0.5) and cfg.labellers["302"].hard == 0.9
    (tmp_path / "no-gold.csv").write_text("text,label\na,b\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="text and gold"):
        SandboxConfig(label_truth=tmp_path / "no-gold.csv")
    with pytest.raises(ValidationError, match="cannot read"):
        SandboxConfig(label_truth=tmp_path / "missing.csv")


@pytest.mark.parametrize("prompt", [
    "Classify the sentiment of this product review: {text}\n\nLabels: positive | negative | neutral",
    "Classify the sentiment of this review：{text}\nLabels: positive | negative | neutral",  # a full-width colon
    "Classify the sentiment of this review:\n{text}\nLabels: positive | negative | neutral",
    "Product: kettle\nReview: {text}\n\nClassify the text above with exactly one label from this set.\n"
    "Labels: positive | negative | neutral\nAnswer with the label only.",
])
def test_the_review_is_read_wherever_the_prompt_puts_it(tmp_path: Path, prompt: str) -> None:
    sarcasm = "Great, it cracked the first time I dropped it"
    labeller = Labeller(0, {"301": PERFECT}, PERFECT, truth(tmp_path, [(sarcasm, "negative", "sarcasm")]))
    text = prompt.replace("{text}", sarcasm)
    assert sarcasm in text_of(text) and "Labels" not in text_of(text) and "Classify" not in text_of(text)
    assert labeller.answer(301, f"{text}\n\n{STRICT}", 0.0, 1) == "negative"  # the gold, not the surface
