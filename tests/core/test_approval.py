"""Four-eyes rules: which kinds wait for approval, and who counts as another operator."""

from __future__ import annotations

import re

import pytest

from gateway.core.approval import check_second, needs_approval, parse_kinds, person
from gateway.core.errors import SameOperator, UsageError


def test_kinds_are_parsed_checked_and_kept_in_one_order() -> None:
    assert parse_kinds(()) is None
    assert parse_kinds(("request", "conviction,request")) == "conviction,request"
    assert parse_kinds(("conviction", "all")) == "all"
    with pytest.raises(UsageError, match="--needs-approval notice: not a kind"):
        parse_kinds(("notice",))


@pytest.mark.parametrize(
    ("approval", "kind", "waits"),
    [(None, "conviction", False), ("", "conviction", False), ("all", "response", True),
     ("conviction,request", "request", True), ("conviction,request", "response", False)],
)  # fmt: skip
def test_needs_approval(approval: str | None, kind: str, waits: bool) -> None:
    assert needs_approval(approval, kind) is waits


def test_the_person_behind_sudo_is_the_sudo_user() -> None:
    assert person("alice") == "alice"
    assert person("gateway (sudo by alice)") == "alice"
    assert person("uid:1234") == "uid:1234"


@pytest.mark.parametrize(
    ("submitter", "approver"),
    [("alice", "alice"), ("alice", "gateway (sudo by alice)"),
     ("gateway (sudo by alice)", "alice"), ("gateway (sudo by alice)", "root (sudo by alice)")],
)  # fmt: skip
def test_the_same_person_is_refused(submitter: str, approver: str) -> None:
    with pytest.raises(SameOperator, match=re.escape(f"was sent by {submitter}; ")):
        check_second("GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M", submitter, approver)


@pytest.mark.parametrize(
    ("submitter", "approver"),
    [("alice", "bob"), ("gateway", "gateway (sudo by bob)"), ("gateway (sudo by alice)", "bob")],
)  # fmt: skip
def test_another_person_may_decide(submitter: str, approver: str) -> None:
    check_second("GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M", submitter, approver)
