"""Regimes as data, sidecars and duty standings: the pure rules of core/regimes.py and
core/duties.py."""

from __future__ import annotations

import contextlib
import tomllib
from datetime import date
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.duties import Declared, misrouted, parse_sidecar, standing
from gateway.core.errors import InputRefused, RegimesInvalid
from gateway.core.regimes import add_months, last_day_to_notify, merge, parse

SHIPPED = tomllib.loads(resources.files("gateway.core").joinpath("regimes.toml").read_text())


def test_the_shipped_regimes_parse_with_their_clocks() -> None:
    regimes = parse(SHIPPED, "shipped")

    assert list(regimes) == ["EUFRA-2020-s1", "EUFRA-2020-s5", "CoE-1959-Art22",
                             "ECE-1957-Art18", "MOU-TEMPLATE"]  # fmt: skip
    s1, s5, art22, art18 = (regimes[r] for r in list(regimes)[:4])
    assert (s1.kinds, s1.notify_within_days) == (("conviction",), 28)
    assert (s5.kinds, s5.answer_within_working_days) == (("request", "response"), 20)
    assert (art22.kinds, art22.batch_every_months) == (("conviction",), 12)
    assert art18.kinds == ("extradition",) and art18.notify_within_days is None
    assert all(r.citation and r.note for r in regimes.values()), "each says where it comes from"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"regime": [{"id": "X", "title": "t", "citation": "c", "kinds": ["conviction"], "days": 3}]},
         "home: regime 1 (X): unknown fields ['days']"),
        ({"regime": [{"id": "X", "title": "t", "citation": "c", "kinds": ["parcel"]}]},
         "home: regime 1 (X): `kinds` must list some of conviction, extradition, request, response"),
        ({"regime": [{"id": "X", "title": "t", "citation": "c", "kinds": ["request"],
                      "answer_within_working_days": "20"}]},
         "home: regime 1 (X): `answer_within_working_days` must be a whole number from 1 to 3660"),
        ({"regime": [{"id": "a b", "title": "t", "citation": "c", "kinds": ["request"]}]},
         "home: regime 1: id 'a b' must be 1-64 letters"),
        ({"regime": [{"id": "X", "title": "", "citation": "c", "kinds": ["request"]}]},
         "home: regime 1: `title` must be a non-empty string"),
        ({"regimes": []}, "home: unknown top-level keys ['regimes']"),
    ],
)  # fmt: skip
def test_a_bad_regime_is_refused_naming_the_entry(doc: dict[str, object], message: str) -> None:
    with pytest.raises(RegimesInvalid) as refused:
        parse(doc, "home")
    assert str(refused.value).startswith(message)


def test_an_own_regime_may_not_take_a_shipped_id() -> None:
    own = parse({"regime": [SHIPPED["regime"][0]]}, "/h/regimes.toml")
    with pytest.raises(RegimesInvalid) as refused:
        merge(parse(SHIPPED, "shipped"), own)
    assert str(refused.value) == (
        "/h/regimes.toml: EUFRA-2020-s1 is a shipped regime: give your own regime an id of its own"
    )


def test_the_notification_period_begins_with_the_day_of_recording() -> None:
    assert last_day_to_notify(date(2027, 5, 3), 28) == date(2027, 5, 30)
    assert add_months(date(2027, 1, 31), 1) == date(2027, 2, 28)
    assert add_months(date(2026, 12, 6), 12) == date(2027, 12, 6)


def test_standing() -> None:
    due, soon = "2027-05-30T23:59:59.999Z", "2027-06-02T00:00:00.000Z"
    assert standing(due, None, "2027-05-01T00:00:00.000Z", "2027-05-04T00:00:00.000Z") == "open"
    assert standing(due, None, "2027-05-30T00:00:00.000Z", soon) == "due-soon"
    assert standing(due, None, "2027-05-31T00:00:00.000Z", soon) == "late"
    assert standing(due, "2027-05-30T23:00:00.000Z", "2027-07-01T00:00:00.000Z", soon) == "met"
    assert standing(due, "2027-05-31T00:00:00.000Z", "2027-07-01T00:00:00.000Z", soon) == "met-late"
    assert standing(None, None, "2027-07-01T00:00:00.000Z", soon) == "open"


def test_routing_checks_only_declared_nationalities() -> None:
    assert misrouted("US-NCB", ["US"], []) is None
    assert misrouted("US-NCB", ["US", "CA"], ["CA"]) is None
    problem = misrouted("US-NCB", ["US"], ["FR"])
    assert problem is not None and problem.exit_code == 45


def test_a_full_sidecar_is_read() -> None:
    declared = parse_sidecar(
        b'{"reference": "R", "regime": "EUFRA-2020-s1", "recorded_on": "2027-05-28",'
        b' "nationalities": ["FR", "IE"], "marking": "OFFICIAL",'
        b' "in_reply_to": "FR-CJN-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M",'
        b' "supersedes": "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M"}'
    )
    assert declared == Declared("R", "EUFRA-2020-s1", "OFFICIAL", "FR-CJN-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M",
                                "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M", "2027-05-28", ("FR", "IE"))  # fmt: skip
    assert Declared.of(declared.plain()) == declared


@given(st.binary(max_size=300))
def test_any_bytes_give_a_declaration_or_a_refusal(data: bytes) -> None:
    with contextlib.suppress(InputRefused):
        parse_sidecar(data)
