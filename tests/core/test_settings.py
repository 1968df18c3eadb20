"""Settings (SPEC section 8): declared once, rendered into gateway.toml, parsed strictly."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from gateway.adapters.home import load_settings as load
from gateway.core.errors import HomeMissing, SettingsInvalid
from gateway.core.settings import RESTART, SETTINGS, Settings, parse, reloaded, render

PROPERTY = hypothesis_settings(max_examples=200, deadline=None, database=None)
INT_SETTINGS = [s.name for s in SETTINGS if isinstance(s.default, int)]
STR_SETTINGS = [s.name for s in SETTINGS if isinstance(s.default, str)]


def document(**values: object) -> dict[str, Any]:
    """A parsed gateway.toml with gateway.id set, plus `values` given as section__key=value."""
    out: dict[str, Any] = {"gateway": {"id": "GB-ACRO"}}
    for name, value in values.items():
        section, key = name.split("__")
        out.setdefault(section, {})[key] = value
    return out


def with_setting(name: str, value: object) -> dict[str, Any]:
    section, key = name.split(".")
    return document(**{f"{section}__{key}": value})


def test_rendered_file_parses_to_all_defaults() -> None:
    parsed = parse(tomllib.loads(render("GB-ACRO")))
    assert parsed == Settings(gateway_id="GB-ACRO")
    for setting in SETTINGS:
        if setting.name != "gateway.id":
            assert getattr(parsed, setting.name.replace(".", "_")) == setting.default


def test_rendered_file_loads_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(render("US-NCB"), encoding="utf-8")
    assert load(path) == Settings(gateway_id="US-NCB")


def test_every_setting_is_a_field_with_the_same_default_and_back() -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    declared = {s.name.replace(".", "_"): s for s in SETTINGS}
    assert set(fields) == set(declared)
    for name, setting in declared.items():
        field = fields[name]
        if setting.name == "gateway.id":
            # no sensible default: parse() demands it
            assert field.default is dataclasses.MISSING
        else:
            assert field.default == setting.default, name
            assert type(field.default) is type(setting.default), name


def test_setting_names_are_unique_and_section_dot_key() -> None:
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)
    for setting in SETTINGS:
        section, key = setting.name.split(".")
        assert section and key


def test_every_setting_is_documented_in_the_rendered_file() -> None:
    text = render("GB-ACRO")
    for setting in SETTINGS:
        assert setting.doc.strip(), f"{setting.name} has no documentation"
        assert f"# {setting.doc}\n" in text
        assert f"\n{setting.name.split('.')[1]} = " in text


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("daemon.settle_seconds", 2),
        ("daemon.poll_seconds", 30),
        ("daemon.scan_seconds", 60),
        ("daemon.workers", 4),
        ("retry.first_delay_seconds", 30),
        ("retry.max_delay_seconds", 3600),
        ("retry.give_up_after_seconds", 259200),
        ("receipts.overdue_after_seconds", 86400),
        ("serve.listen", ""),
    ],
)
def test_spec_settings_exist_with_the_spec_defaults(name: str, default: object) -> None:
    assert {s.name: s.default for s in SETTINGS}[name] == default


def test_parse_takes_every_setting() -> None:
    values: dict[str, Any] = {n: 7 for n in INT_SETTINGS} | {"serve.listen": "127.0.0.1:2222"}
    data: dict[str, Any] = {"gateway": {"id": "DE-BKA"}}
    for name, value in values.items():
        section, key = name.split(".")
        data.setdefault(section, {})[key] = value
    parsed = parse(data)
    assert parsed.gateway_id == "DE-BKA"
    for name, value in values.items():
        assert getattr(parsed, name.replace(".", "_")) == value


def test_settle_seconds_may_be_zero() -> None:
    assert parse(with_setting("daemon.settle_seconds", 0)).daemon_settle_seconds == 0


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(document(daemon__nap_seconds=1), id="unknown key"),
        pytest.param(document(colour__mode="dark"), id="unknown section"),
        pytest.param({"gateway": {"id": "GB-ACRO", "name": "ACRO"}}, id="unknown gateway key"),
        pytest.param({"gateway": {"id": "GB-ACRO"}, "workers": 4}, id="top-level key"),
        pytest.param({"gateway": "GB-ACRO"}, id="section not a table"),
    ],
)
def test_parse_refuses_unknown_or_misplaced_settings(data: dict[str, object]) -> None:
    with pytest.raises(SettingsInvalid):
        parse(data)


def test_unknown_setting_is_named_with_the_file() -> None:
    with pytest.raises(SettingsInvalid, match=r"home/gateway\.toml: unknown setting 'daemon\.nap'"):
        parse(document(daemon__nap=1), "home/gateway.toml")


@pytest.mark.parametrize("name", INT_SETTINGS)
@pytest.mark.parametrize("value", ["30", True, False, 1.5, 30.0, [30], {"seconds": 30}], ids=repr)
def test_parse_refuses_a_whole_number_setting_of_another_type(name: str, value: object) -> None:
    with pytest.raises(SettingsInvalid, match=re.escape(f"{name} must be a whole number")):
        parse(with_setting(name, value))


@pytest.mark.parametrize("name", STR_SETTINGS)
@pytest.mark.parametrize("value", [2222, True, ["0.0.0.0:2222"]], ids=repr)
def test_parse_refuses_a_text_setting_of_another_type(name: str, value: object) -> None:
    data = with_setting(name, value)
    with pytest.raises(SettingsInvalid, match=re.escape(f"{name} must be a string")):
        parse(data)


@pytest.mark.parametrize("name", INT_SETTINGS)
@pytest.mark.parametrize("value", [0, -1, -(2**40)])
def test_parse_refuses_zero_and_negative_numbers(name: str, value: int) -> None:
    if (
        name in ("daemon.settle_seconds", "keys.overlap_days", "check.daemon")
        or name.startswith("retention.")
    ) and value == 0:
        assert getattr(parse(with_setting(name, value)), name.replace(".", "_")) == 0
    else:
        with pytest.raises(SettingsInvalid, match=re.escape(f"{name} must be a positive number")):
            parse(with_setting(name, value))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="empty file"),
        pytest.param({"gateway": {}}, id="empty section"),
        pytest.param({"daemon": {"workers": 2}}, id="other settings only"),
    ],
)
def test_parse_refuses_a_missing_gateway_id(data: dict[str, object]) -> None:
    with pytest.raises(SettingsInvalid, match=r"gateway\.id is missing"):
        parse(data)


@pytest.mark.parametrize("value", ["", "gb-acro", "GB", "GB-ACRO\n", "GB-ACRO-2"])
def test_parse_refuses_an_invalid_gateway_id(value: str) -> None:
    """Like every other bad setting: SettingsInvalid, naming the file."""
    with pytest.raises(SettingsInvalid, match=r"home/gateway\.toml"):
        parse({"gateway": {"id": value}}, "home/gateway.toml")


def test_load_of_a_missing_file_says_to_run_gateway_init(tmp_path: Path) -> None:
    with pytest.raises(HomeMissing, match="gateway init"):
        load(tmp_path / "gateway.toml")


def test_load_refuses_a_file_that_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[gateway\nid = GB-ACRO\n", encoding="utf-8")
    with pytest.raises(SettingsInvalid, match="not valid TOML"):
        load(path)


def test_load_checks_what_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(render("GB-ACRO") + "\n[extra]\nx = 1\n", encoding="utf-8")
    with pytest.raises(SettingsInvalid, match=r"unknown setting 'extra\.x'"):
        load(path)


SECTIONS = sorted({s.name.split(".")[0] for s in SETTINGS})
KEYS = sorted({s.name.split(".")[1] for s in SETTINGS})
values = st.one_of(
    st.integers(min_value=-5, max_value=10**12),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["GB-ACRO", "US-NCB", "0.0.0.0:2222"]),
    st.lists(st.integers(), max_size=2),
    st.none(),
)
tables = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=6)
documents = st.dictionaries(
    st.sampled_from(SECTIONS) | st.text(max_size=8), tables | values, max_size=5
)


@PROPERTY
@given(documents)
def test_parse_of_any_document_is_settings_or_a_gateway_error(data: dict[str, Any]) -> None:
    """Either every value lands unchanged in its field, or SettingsInvalid says why not."""
    try:
        parsed = parse(data)
    except SettingsInvalid:
        return
    for section, table in data.items():
        for key, value in table.items():
            assert getattr(parsed, f"{section}_{key}") == value
    assert parsed.gateway_id == data["gateway"]["id"]


@PROPERTY
@given(st.sampled_from(INT_SETTINGS), st.integers(min_value=1, max_value=2**63))
def test_any_positive_whole_number_is_taken(name: str, value: int) -> None:
    parsed = parse(with_setting(name, value))
    assert getattr(parsed, name.replace(".", "_")) == value


def test_settings_value_is_frozen() -> None:
    parsed = Settings(gateway_id="GB-ACRO")
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.daemon_workers = 8  # type: ignore[misc]


def test_a_reload_applies_what_can_change_and_keeps_what_needs_a_restart() -> None:
    old = Settings(gateway_id="GB-ACRO")
    new = dataclasses.replace(old, daemon_poll_seconds=5, retry_max_delay_seconds=60,
                              daemon_workers=9, serve_listen="127.0.0.1:2222")  # fmt: skip

    merged, applied, kept = reloaded(old, new)

    assert applied == ["daemon.poll_seconds", "retry.max_delay_seconds"]
    assert kept == ["daemon.workers", "serve.listen"]
    assert merged == dataclasses.replace(old, daemon_poll_seconds=5, retry_max_delay_seconds=60)
    assert reloaded(old, old) == (old, [], [])


def test_the_settings_that_need_a_restart_are_real_settings() -> None:
    assert {s.name for s in SETTINGS} >= RESTART
    assert "gateway.id" in RESTART and "daemon.poll_seconds" not in RESTART
