"""Reading the regimes: the shipped reference file, then the home's own `regimes.toml`."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from gateway.core.errors import RegimesInvalid
from gateway.core.regimes import Regime, merge, parse

SHIPPED = "regimes.toml"


def load(own: Path) -> dict[str, Regime]:
    """Every regime in force: the shipped ones and, if the file exists, the home's own."""
    shipped = resources.files("gateway.core").joinpath(SHIPPED)
    regimes = parse(tomllib.loads(shipped.read_text(encoding="utf-8")), "the shipped regimes")
    try:
        text = own.read_text(encoding="utf-8")
    except FileNotFoundError:
        return regimes
    except (OSError, UnicodeDecodeError) as err:
        raise RegimesInvalid(
            f"{own} cannot be read ({err}): fix its permissions or content"
        ) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RegimesInvalid(f"{own} is not valid TOML ({err}): fix the file") from None
    return merge(regimes, parse(doc, str(own)))
