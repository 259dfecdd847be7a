"""The error tree: one classification for both services, each class's action and exit code, the
README's exit-code table, and redaction of any piece of a key a server echoes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import (
    Action,
    AgentNotFound,
    APIError,
    BudgetExceeded,
    ConfigError,
    ConnectionLost,
    InsufficientBalance,
    Interrupted,
    InvalidApiKey,
    InvalidParameters,
    JobBusy,
    KeyQuotaUsedUp,
    MalformedResponse,
    NoChannel,
    NoSuchApi,
    PreflightRefused,
    RateLimited,
    RequestRejected,
    ServerError,
    Terminated,
    Timeout,
    UpstreamSaturated,
    WriteError,
    classify,
    error_for,
    exit_code_for,
    redact,
    request_id_in,
    stated_quota,
)
from pipeline.outcome import EXIT_MEANINGS, ExitCode

from .helpers import ROOT


@pytest.mark.parametrize(("status", "code", "expected"), [
    # the contract's codes, MOMO's and the relays', win over the status
    (401, "INVALID_API_KEY", InvalidApiKey),
    (200, "RATE_LIMIT", RateLimited),
    (403, "insufficient_user_quota", InsufficientBalance),
    (429, "pre_consume_token_quota_failed", InsufficientBalance),
    (503, "model_not_found", AgentNotFound),
    (400, "context_length_exceeded", InvalidParameters),
    (200, "invalid_token", InvalidApiKey),
    # a code that is a number (LiteLLM: "code": "400") or missing: the status decides
    (400, "400", InvalidParameters),
    (429, "429", RateLimited),
    (401, "401", InvalidApiKey),
    (402, None, InsufficientBalance),
    (404, "", AgentNotFound),
    (422, "422", InvalidParameters),
    (413, None, InvalidParameters),
    # an unknown 4xx fails its row; 5xx and error bodies with 200 are transient
    (409, "conflict", RequestRejected),
    (409, None, RequestRejected),
    (418, "teapot", RequestRejected),
    (500, "INTERNAL_ERROR", ServerError),
    (502, None, ServerError),
    (200, "INTERNAL_ERROR", ServerError),
    (None, "SERVER_ERROR", ServerError),
])
def test_one_table_for_both_services(status: int | None, code: str | None, expected: type[APIError]) -> None:
    assert classify(status, code) is expected


@pytest.mark.parametrize(("cls", "action", "exit_code"), [
    (InvalidApiKey, Action.STOP_NOW, ExitCode.TERMINAL),
    (AgentNotFound, Action.STOP_NOW, ExitCode.TERMINAL),
    (NoSuchApi, Action.STOP_NOW, ExitCode.UNREACHABLE),
    (InsufficientBalance, Action.STOP_SOFT, ExitCode.INSUFFICIENT_BALANCE),
    (BudgetExceeded, Action.STOP_SOFT, ExitCode.BUDGET),
    (InvalidParameters, Action.FAIL_ROW, ExitCode.TERMINAL),
    (RequestRejected, Action.FAIL_ROW, ExitCode.TERMINAL),
    (RateLimited, Action.RETRY, ExitCode.UNREACHABLE),
    (ServerError, Action.RETRY, ExitCode.UNREACHABLE),
    (Timeout, Action.RETRY, ExitCode.UNREACHABLE),
    (ConnectionLost, Action.RETRY, ExitCode.UNREACHABLE),
    (MalformedResponse, Action.RETRY, ExitCode.UNREACHABLE),
    (ConfigError, Action.STOP_NOW, ExitCode.BAD_INPUT),
    (WriteError, Action.STOP_SOFT, ExitCode.WRITE),
    (JobBusy, Action.STOP_NOW, ExitCode.BUSY),
    (PreflightRefused, Action.STOP_NOW, ExitCode.REFUSED),
    (Interrupted, Action.STOP_SOFT, ExitCode.INTERRUPTED),
    (Terminated, Action.STOP_SOFT, ExitCode.TERMINATED),
])
def test_each_class_carries_its_action_and_exit_code(cls: type, action: Action, exit_code: ExitCode) -> None:
    assert cls.action is action and cls.exit_code is exit_code


def test_a_stopping_error_exits_with_its_own_code() -> None:
    """A run stopped by an error exits with that error class's code (``RunReport`` has the code)."""
    expected = {InsufficientBalance: 3, BudgetExceeded: 4, WriteError: 9, NoSuchApi: 6, InvalidApiKey: 5,
                AgentNotFound: 5, Interrupted: 130, Terminated: 143}
    for cls, code in expected.items():
        assert exit_code_for(cls.code) == cls.exit_code == code
    assert exit_code_for("SOMETHING_ELSE") == exit_code_for(None) == ExitCode.TERMINAL
    assert exit_code_for("API_ERROR") == ExitCode.TERMINAL  # the most general class with the code


def test_a_stop_that_crossed_a_process_keeps_its_text_and_its_facts() -> None:
    err = error_for("INSUFFICIENT_BALANCE", "INSUFFICIENT_BALANCE HTTP 402: top up")
    assert str(err) == "INSUFFICIENT_BALANCE HTTP 402: top up" and err.code == "INSUFFICIENT_BALANCE"
    assert err.exit_code == ExitCode.INSUFFICIENT_BALANCE and err.action is Action.STOP_SOFT
    other = error_for("NOT_A_CLASS", "why")
    assert other.code == "NOT_A_CLASS" and other.exit_code == ExitCode.TERMINAL


@pytest.mark.parametrize(("cls", "charged"), [
    (ConnectionLost, True), (Timeout, True), (MalformedResponse, True),  # no whole answer came
    (ServerError, False), (RateLimited, False), (InsufficientBalance, False), (InvalidParameters, False),
    (RequestRejected, False), (InvalidApiKey, False),  # an error answer is not charged
    (WriteError, True), (BudgetExceeded, True), (ConfigError, True),  # not the server's word
])
def test_whether_a_failed_call_may_have_been_charged(cls: type, charged: bool) -> None:
    assert cls.may_have_been_charged is charged


def test_error_codes_are_the_contracts_and_a_bad_request_is_final() -> None:
    err = InvalidParameters("too long", status=400, server_code="context_length_exceeded")
    assert err.code == "INVALID_PARAMETERS" and err.final
    assert "context_length_exceeded" in str(err) and "HTTP 400" in str(err)
    assert RequestRejected("busy", status=409).code == "HTTP_409"
    assert not RequestRejected("busy", status=409).final  # a rerun tries it again
    assert not any(cls.final for cls in (RateLimited, ServerError, InsufficientBalance, InvalidApiKey))
    assert InvalidParameters("x", server_code="INVALID_PARAMETERS").server_code is None  # not repeated


def test_readme_exit_code_table_is_the_code() -> None:
    """The README quotes :data:`EXIT_MEANINGS`, row for row."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)
    assert {int(code): meaning for code, meaning in rows} == {int(k): v for k, v in EXIT_MEANINGS.items()}
    assert set(EXIT_MEANINGS) == set(ExitCode)


KEY = "sk-Zq81vR0aLmN3pXy7TbW2"


@pytest.mark.parametrize("echoed", [
    KEY,
    KEY.removeprefix("sk-"),  # the key without its prefix
    KEY[3:14],  # any 8+ characters of it
    f"{KEY[5:13]}",
])
def test_any_piece_of_the_key_is_masked(echoed: str) -> None:
    text = redact(f"invalid token {echoed} for this request", KEY)
    assert echoed not in text and "***" in text
    assert text.startswith("invalid token ") and text.endswith(" for this request")


def test_short_pieces_and_other_text_stay() -> None:
    assert redact("error at sk-Zq81 line 7", KEY) == "error at sk-Zq81 line 7"  # 7 characters: too short to mask
    assert redact("plain words", KEY, None, "") == "plain words"


KEY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


@given(st.text(KEY_CHARS, min_size=8, max_size=40), st.text(max_size=30), st.text(max_size=30),
       st.integers(0, 40), st.integers(8, 40))
def test_no_8_characters_of_a_key_survive(key: str, before: str, after: str, start: int, length: int) -> None:
    piece = key[start:start + length]
    if len(piece) < 8:
        return
    text = redact(before + piece + after, key)
    assert not any(key[i:i + 8] in text for i in range(len(key) - 7))


# -- what new-api / one-api relays say in words (texts from their source) --------------------------
@pytest.mark.parametrize(("status", "code", "message", "expected"), [
    # new-api's model/token.go (older) and forks: every call of a spent key, as 401
    (401, "", "[sk-ab***yz] 该令牌额度已用尽 (request id: 20251201101010123456789abcdefgh)", KeyQuotaUsedUp),
    (403, "pre_consume_token_quota_failed", "[sk-ab***yz] 该令牌额度已用尽", KeyQuotaUsedUp),
    # new-api's distributor (code model_not_found) and one-api's (no code)
    (503, "model_not_found", "分组 default 下模型 gpt-9 无可用渠道（distributor） (request id: 1)", NoChannel),
    (503, None, "当前分组 vip 下对于模型 gpt-9 无可用渠道 (request id: 2025)", NoChannel),
    # one-api's controller/relay.go rewrites any upstream 429
    (429, "", "当前分组上游负载已饱和，请稍后再试 (request id: 2025)", UpstreamSaturated),
    # new-api's middleware/model-rate-limit.go: a rate limit, both counters
    (429, "", "您已达到请求数限制：1分钟内最多请求60次", RateLimited),
    (429, "", "您已达到总请求数限制：1分钟内最多请求60次，包括失败次数，请检查您的请求是否正确", RateLimited),
    # insufficient_quota with a 429 is a rate; elsewhere it is money
    (429, "insufficient_quota", "You exceeded your current quota", RateLimited),
    (402, "insufficient_quota", "You exceeded your current quota", InsufficientBalance),
    # a 401 that says nothing more is a bad key
    (401, "", "无效的令牌 (request id: 2025)", InvalidApiKey),
])
def test_a_relays_words_decide_where_its_code_does_not(status: int, code: str | None, message: str,
                                                       expected: type[APIError]) -> None:
    assert classify(status, code, message) is expected


def test_what_a_relays_words_mean_for_a_job() -> None:
    assert KeyQuotaUsedUp.exit_code == ExitCode.INSUFFICIENT_BALANCE and KeyQuotaUsedUp.action is Action.STOP_SOFT
    assert NoChannel.exit_code == ExitCode.TERMINAL and NoChannel.action is Action.STOP_NOW
    assert UpstreamSaturated.action is Action.RETRY and UpstreamSaturated.busy and RateLimited.busy
    assert not issubclass(UpstreamSaturated, RateLimited)  # the limiter never hears of it
    assert stated_quota("您已达到请求数限制：1分钟内最多请求60次 (request id: 9)") == (60, 1.0, False)
    assert stated_quota("您已达到总请求数限制：2分钟内最多请求150次，包括失败次数") == (150, 2.0, True)
    assert stated_quota("请求过于频繁") is None
    assert request_id_in("无效的令牌 (request id: 20251201abc)") == "20251201abc"
    assert request_id_in("no id here") is None
    assert RateLimited("您已达到请求数限制：1分钟内最多请求60次").stated == (60, 1.0, False)
