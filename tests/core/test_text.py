"""Partner text shown on a terminal or in a text log: control characters escaped."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.text import shown


def test_escapes_what_can_rewrite_a_terminal_or_forge_a_line() -> None:
    assert shown("ok\x1b[2J\nforged line\r\u202eevil\u2028") == (
        "ok\\x1b[2J\\x0aforged line\\x0d\\u202eevil\\u2028"
    )


def test_keeps_ordinary_text_as_it_is() -> None:
    text = "Österreich, São Paulo, 東京 — «réf. 42/2026» ✓"
    assert shown(text) == text


@given(st.text())
def test_never_leaves_a_control_format_or_line_separator_character(text: str) -> None:
    assert not [c for c in shown(text) if unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp", "Cs"}]
