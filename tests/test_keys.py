"""Request keys (``pipeline.keys``, ``pipeline.plan.make_keyer`` and the plan's key column), with hypothesis.

A key must stay the same when nothing about the request changes (row order, other columns, other
rows, the delivery format) and change with everything that changes the request: the prompt as
sent, the service, its address, the agent or model, temperature, max_tokens, the call's slot in
its row (vote, re-ask), the n-th repeat when dedup is off, and a label job's settings.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.config import Job
from pipeline.keys import KEY, OCC, Keyer, repeat_key
from pipeline.plan import make_keyer, prepare

texts = st.text(min_size=1, max_size=40)
temperatures = st.one_of(st.none(), st.floats(0, 2, allow_nan=False))
tokens = st.one_of(st.none(), st.integers(1, 100_000))
keyers = st.builds(Keyer, service=st.sampled_from(["momo", "openai"]), endpoint=texts, target=texts,
                   temperature=temperatures, max_tokens=tokens, task=st.one_of(st.just(""), texts))


# -- Keyer on its own --------------------------------------------------------------------------------
@given(keyer=keyers, prompt=texts)
def test_a_key_depends_only_on_what_it_covers(keyer: Keyer, prompt: str) -> None:
    twin = Keyer(keyer.service, keyer.endpoint, keyer.target, keyer.temperature, keyer.max_tokens, keyer.task)
    assert twin.row(prompt) == keyer.row(prompt)
    assert twin.request(prompt, 0.5, vote=2, reask=1) == keyer.request(prompt, 0.5, vote=2, reask=1)
    assert len(keyer.row(prompt)) == 32 and int(keyer.row(prompt), 16) >= 0


@given(keyer=keyers, prompt=texts, data=st.data())
def test_every_field_of_the_keyer_changes_the_row_key(keyer: Keyer, prompt: str, data: st.DataObject) -> None:
    changes: dict[str, Any] = {
        "service": "openai" if keyer.service == "momo" else "momo",
        "endpoint": data.draw(texts.filter(lambda v: v != keyer.endpoint)),
        "target": data.draw(texts.filter(lambda v: v != keyer.target)),
        "temperature": data.draw(temperatures.filter(lambda v: v != keyer.temperature)),
        "max_tokens": data.draw(tokens.filter(lambda v: v != keyer.max_tokens)),
        "task": data.draw(st.one_of(st.just(""), texts).filter(lambda v: v != keyer.task)),
    }
    for name, value in changes.items():
        assert replace(keyer, **{name: value}).row(prompt) != keyer.row(prompt), name


@given(keyer=keyers, prompt=texts, other=texts)
def test_the_prompt_as_sent_changes_the_key(keyer: Keyer, prompt: str, other: str) -> None:
    assume(other != prompt)
    assert keyer.row(other) != keyer.row(prompt)
    assert keyer.row(prompt + " ") != keyer.row(prompt)  # whitespace is part of what is sent


@given(keyer=keyers, prompt=texts, temperature=temperatures, vote=st.integers(0, 5), reask=st.integers(0, 3),
       occurrence=st.integers(0, 5))
def test_each_call_slot_and_each_repeat_has_a_key_of_its_own(keyer: Keyer, prompt: str, temperature: float | None,
                                                             vote: int, reask: int, occurrence: int) -> None:
    key = keyer.request(prompt, temperature, vote=vote, reask=reask, occurrence=occurrence)
    assert keyer.request(prompt, temperature, vote=vote + 1, reask=reask, occurrence=occurrence) != key
    assert keyer.request(prompt, temperature, vote=vote, reask=reask + 1, occurrence=occurrence) != key
    assert keyer.request(prompt, temperature, vote=vote, reask=reask, occurrence=occurrence + 1) != key
    assert keyer.request(prompt, 1.5 if temperature != 1.5 else 0.5, vote=vote, reask=reask,
                         occurrence=occurrence) != key
    # the n-th repeat's key derives from the first's: the same whichever way it is computed
    first = keyer.request(prompt, temperature, vote=vote, reask=reask)
    assert repeat_key(first, occurrence) == key and repeat_key(first, 0) == first


# -- make_keyer: the job's fields -------------------------------------------------------------------
def _job(tmp: Path, **provider: Any) -> Job:
    table = {"kind": "momo", "agent_id": 159, "max_tokens": 300, **provider}
    return Job.from_dict({"input": {"path": str(tmp / "in.parquet")}, "prompt": {"template": "{q}"},
                          "provider": table, "output": {"path": str(tmp / "out.parquet")}})


def test_every_job_field_that_changes_the_request_changes_the_key(tmp_path: Path) -> None:
    base = make_keyer(_job(tmp_path), "http://momo.example").row("hello")
    relay = {"kind": "openai", "model": "gpt-4o-mini", "agent_id": None}
    variants = {
        "agent": make_keyer(_job(tmp_path, agent_id=160), "http://momo.example"),
        "service": make_keyer(_job(tmp_path, **relay), "http://momo.example"),
        "temperature": make_keyer(_job(tmp_path, temperature=0.7), "http://momo.example"),
        "max_tokens": make_keyer(_job(tmp_path, max_tokens=301), "http://momo.example"),
        "endpoint": make_keyer(_job(tmp_path), "http://other.example"),
        "target override": make_keyer(_job(tmp_path), "http://momo.example", target="161"),
    }
    keys = {name: keyer.row("hello") for name, keyer in variants.items()}
    assert all(key != base for key in keys.values()), keys
    assert len(set(keys.values())) == len(keys)
    relay_a = make_keyer(_job(tmp_path, **relay), "http://relay.example").row("hello")
    relay_b = make_keyer(_job(tmp_path, **{**relay, "model": "gpt-4o"}), "http://relay.example").row("hello")
    assert relay_a != relay_b


def test_what_does_not_change_the_request_does_not_change_the_key(tmp_path: Path) -> None:
    base = make_keyer(_job(tmp_path), "http://momo.example").row("hello")
    assert make_keyer(_job(tmp_path), "http://momo.example/").row("hello") == base  # a trailing slash
    assert make_keyer(_job(tmp_path, stream=True), "http://momo.example").row("hello") == base  # delivery only
    assert make_keyer(_job(tmp_path, timeout=5.0), "http://momo.example").row("hello") == base


def test_a_label_jobs_settings_change_the_key(tmp_path: Path) -> None:
    plain = _job(tmp_path)
    three = plain.with_overrides(label={"set": ["yes", "no"], "votes": 3})
    five = plain.with_overrides(label={"set": ["yes", "no"], "votes": 5})
    keys = {make_keyer(job, "e").row("hello") for job in (plain, three, five)}
    assert len(keys) == 3
    reordered = plain.with_overrides(label={"votes": 3, "set": ["yes", "no"]})
    assert make_keyer(reordered, "e").row("hello") == make_keyer(three, "e").row("hello")  # canonical JSON


# -- the plan's key column ---------------------------------------------------------------------------
rows = st.lists(st.tuples(st.text(min_size=1, max_size=12).filter(str.strip), st.integers(-2**62, 2**62)), min_size=1,
                max_size=25)


def _plan_keys(tmp: Path, data: list[tuple[str, int]], *, dedup: bool = True,
               template: str = "Q: {q}") -> pl.DataFrame:
    frame = pl.DataFrame({"q": [q for q, _ in data], "other": [o for _, o in data]},
                         schema={"q": pl.String, "other": pl.Int64})
    frame.write_parquet(tmp / "in.parquet")
    job = Job.from_dict({"input": {"path": str(tmp / "in.parquet")}, "prompt": {"template": template},
                         "provider": {"kind": "momo", "agent_id": 159, "max_tokens": 300},
                         "reuse": {"dedup": dedup}, "output": {"path": str(tmp / "out.parquet")}})
    plan = prepare(job, endpoint="http://momo.example")
    return pl.DataFrame({"q": frame["q"], KEY: plan.read_keys()[KEY], OCC: plan.read_keys()[OCC]})


def _key_of(keys: pl.DataFrame) -> dict[str, str]:
    out: dict[str, str] = {}
    for q, key in keys.select("q", KEY).iter_rows():
        assert out.setdefault(q, key) == key  # dedup on: one key per prompt
    return out


@settings(max_examples=30)
@given(data=rows, perm=st.randoms(use_true_random=False),
       others=st.lists(st.integers(-2**62, 2**62), min_size=25, max_size=25))
def test_a_rows_key_is_stable_under_row_order_and_unrelated_edits(
        data: list[tuple[str, int]], perm: Any, others: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = _key_of(_plan_keys(Path(tmp), data))
        shuffled = list(data)
        perm.shuffle(shuffled)
        assert _key_of(_plan_keys(Path(tmp), shuffled)) == base
        edited = [(q, o) for (q, _), o in zip(data, others, strict=False)]  # another column's values
        assert _key_of(_plan_keys(Path(tmp), edited)) == base
        fewer = _key_of(_plan_keys(Path(tmp), data[1:] + [("a prompt added elsewhere", 0)]))
        assert all(fewer[q] == base[q] for q, _ in data[1:])  # other rows removed or added


@settings(max_examples=20)
@given(data=rows)
def test_a_rows_key_changes_with_its_prompt(data: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = _key_of(_plan_keys(Path(tmp), data))
        changed = _key_of(_plan_keys(Path(tmp), data, template="Question: {q}"))
        assert set(base.values()).isdisjoint(changed.values())
        new = data[0][0] + "!"
        assume(new not in base)
        after = _key_of(_plan_keys(Path(tmp), [(new, 0), *data[1:]]))
        assert after[new] not in base.values()


@settings(max_examples=20)
@given(data=rows, perm=st.randoms(use_true_random=False))
def test_with_dedup_off_the_nth_repeat_has_its_own_key_whatever_the_order(
        data: list[tuple[str, int]], perm: Any) -> None:
    repeated = data + data[:3]  # some prompts asked more than once
    with tempfile.TemporaryDirectory() as tmp:
        keys = _plan_keys(Path(tmp), repeated, dedup=False)
        assert keys[KEY].n_unique() == keys.height  # every row is its own request
        on = _key_of(_plan_keys(Path(tmp), repeated))
        # each prompt's first occurrence has the key a dedup run gives it; the n-th derives from it
        for q, key, n in keys.iter_rows():
            assert key == repeat_key(on[q], n)
        shuffled = list(repeated)
        perm.shuffle(shuffled)
        assert set(_plan_keys(Path(tmp), shuffled, dedup=False)[KEY]) == set(keys[KEY])
