"""The error tree: every class tells the operator what to do and has its own exit code,
in the documented range of what it is about; transient and permanent codes do not mix."""

from __future__ import annotations

import inspect
import itertools

import pytest

from gateway.core import errors
from gateway.core.errors import EXIT_RANGES, TRANSIENT_CODES, GatewayError, Transient

CLASSES = errors.tree()

#: Classes that have no code of their own and share their parent's, on purpose: never
#: raised themselves, they only group their subclasses.
SHARES_PARENTS_CODE = {errors.Permanent}

#: The range each class belongs in, by what it is about (the first code of the range).
#: A new class must be placed here, and in `EXIT_RANGES` if it opens a new range.
RANGE_OF = {
    "GatewayError": 1,
    "Permanent": 1,
    "UsageError": 2,
    "HomeError": 10,
    "HomeMissing": 10,
    "HomeExists": 10,
    "HomeLocked": 10,
    "SettingsInvalid": 10,
    "AgentUnavailable": 10,
    "RegimesInvalid": 10,
    "RestoreRefused": 10,
    "PartnerError": 20,
    "UnknownPartner": 20,
    "PartnerDisabled": 20,
    "KeyProblem": 20,
    "HostKeyMismatch": 20,
    "CryptoFailed": 20,
    "NoSuchPackage": 30,
    "IllegalTransition": 30,
    "LedgerUnavailable": 30,
    "LedgerDamaged": 30,
    "SpoolDamaged": 30,
    "RemoteConflict": 30,
    "BackupDamaged": 30,
    "SameOperator": 30,
    "InputRefused": 40,
    "Rejected": 40,
    "NoLegalBasis": 40,
    "Misrouted": 40,
    "Transient": 50,
    "TransferFailed": 50,
    "Timeout": 50,
    "LedgerBusy": 50,
    "HostTrouble": 50,
}


def _name(cls: type) -> str:
    return cls.__name__


def test_the_tree_holds_every_error_class_of_the_module() -> None:
    defined = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, GatewayError) and cls.__module__ == errors.__name__
    }
    assert set(CLASSES) == defined
    assert CLASSES[0] is GatewayError


@pytest.mark.parametrize("cls", CLASSES, ids=_name)
def test_every_class_tells_the_operator_what_it_means(cls: type[GatewayError]) -> None:
    assert "__doc__" in vars(cls) and cls.__doc__, f"{cls.__name__} has no docstring"
    meaning = errors.meaning(cls)
    assert len(meaning) >= 40, f"{cls.__name__}: say what the condition is and what to do"
    assert "\n" not in meaning and "|" not in meaning, "it is one cell of a Markdown table"


@pytest.mark.parametrize("cls", CLASSES, ids=_name)
def test_every_class_has_its_own_code_or_shares_its_parents_on_purpose(
    cls: type[GatewayError],
) -> None:
    assert isinstance(cls.exit_code, int)
    if cls in SHARES_PARENTS_CODE:
        assert "exit_code" not in vars(cls), f"{cls.__name__} was meant to share its parent's"
        assert cls.exit_code == cls.__mro__[1].exit_code
    else:
        assert "exit_code" in vars(cls), f"{cls.__name__} needs an exit_code of its own"


def test_exit_codes_are_unique() -> None:
    owners: dict[int, list[str]] = {}
    for cls in CLASSES:
        if cls not in SHARES_PARENTS_CODE:
            owners.setdefault(cls.exit_code, []).append(cls.__name__)
    shared = {code: names for code, names in owners.items() if len(names) > 1}
    assert not shared, f"exit codes used by more than one class: {shared}"


def test_the_ranges_are_ordered_and_apart() -> None:
    for before, after in itertools.pairwise(EXIT_RANGES):
        assert before.low <= before.high < after.low
    assert EXIT_RANGES[0].low == 1, "1 stays the general code"
    assert (2, 2) in [(r.low, r.high) for r in EXIT_RANGES], "usage errors exit 2, as click's do"
    assert all(r.high < 64 for r in EXIT_RANGES), "clear of 64-78 (sysexits) and 126 and above"


@pytest.mark.parametrize("cls", CLASSES, ids=_name)
def test_every_code_is_in_its_documented_range(cls: type[GatewayError]) -> None:
    assert cls.__name__ in RANGE_OF, f"place {cls.__name__} in a range in RANGE_OF"
    [documented] = [r for r in EXIT_RANGES if r.low == RANGE_OF[cls.__name__]]
    assert documented.low <= cls.exit_code <= documented.high, (
        f"{cls.__name__}'s code {cls.exit_code} is outside {documented.low}-{documented.high} "
        f"({documented.about})"
    )


@pytest.mark.parametrize("cls", CLASSES, ids=_name)
def test_transient_and_permanent_codes_do_not_mix(cls: type[GatewayError]) -> None:
    """A script may retry on 50-59 and only there: those are the errors that pass."""
    transient = issubclass(cls, Transient)
    assert (cls.exit_code in TRANSIENT_CODES) == transient, cls.__name__
    if cls is not GatewayError:
        assert issubclass(cls, Transient) != issubclass(cls, errors.Permanent), cls.__name__


def test_families_stay_in_their_range() -> None:
    for family in (errors.HomeError, errors.PartnerError, Transient):
        [documented] = [r for r in EXIT_RANGES if r.low <= family.exit_code <= r.high]
        for cls in CLASSES:
            if issubclass(cls, family):
                assert documented.low <= cls.exit_code <= documented.high, cls.__name__


def test_the_meaning_is_the_docstrings_first_paragraph() -> None:
    class Example(errors.Permanent):
        """What happened,
        and what to do.

        Notes for developers, not for the table.
        """

    assert errors.meaning(Example) == "What happened, and what to do."
    assert Example not in errors.tree(), "a class made elsewhere is not in the table"
