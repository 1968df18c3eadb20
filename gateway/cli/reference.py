"""The CLI reference (`docs/cli.md`), generated from the commands' own `--help`.

`python -m gateway.cli.reference > docs/cli.md` writes it; `tests/test_docs.py` fails when the
file and the code disagree, so the reference cannot drift from what `--help` says.
The help is formatted at a fixed width, so the output does not depend on the terminal.

`click` is not imported here: only `gateway/cli/` may import it (tests/test_layering.py).
Each command brings its own context class, which is all this module needs of click.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Final

from gateway.cli import main
from gateway.core.errors import EXIT_RANGES, meaning, tree
from gateway.core.settings import SETTINGS

WIDTH: Final = 100
PROGRAM: Final = "gateway"
REGENERATE: Final = "python -m gateway.cli.reference > docs/cli.md"


def commands() -> list[tuple[str, str]]:
    """Every command and subcommand, depth first by name: (`gateway <path>`, its help)."""
    settings: dict[str, Any] = {
        **main.context_settings,
        "terminal_width": WIDTH,
        "max_content_width": WIDTH,
    }
    stack = [main.context_class(main, info_name=PROGRAM, **settings)]
    found = []
    while stack:
        ctx = stack.pop()
        found.append((ctx.command_path, ctx.get_help()))
        # Only groups have subcommands (the top one loads them on asking, so ask it, not
        # `.commands`); a child context inherits width and help options.
        group: Any = ctx.command
        names = group.list_commands(ctx) if hasattr(group, "list_commands") else []
        for name in sorted(names, reverse=True):
            child = group.get_command(ctx, name)
            if not child.hidden:
                stack.append(
                    main.context_class(child, info_name=name, parent=ctx, **child.context_settings)
                )
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_table() -> str:
    """Every setting of `gateway.toml` with its default and meaning, as a Markdown table.

    Grouped by section in the order sections first appear, as `gateway init` writes them.
    """
    sections = list(dict.fromkeys(s.name.split(".")[0] for s in SETTINGS))
    ordered = sorted(SETTINGS, key=lambda s: sections.index(s.name.split(".")[0]))
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    rows += [f"| `{s.name}` | `{json.dumps(s.default)}` | {_cell(s.doc)} |" for s in ordered]
    return "\n".join(rows) + "\n"


def exit_codes_table() -> str:
    """Every exit code: the ranges, then each error class with its code and meaning, as
    Markdown. The meaning is the first paragraph of the class's docstring."""
    ranges = ["| codes | about |", "|---|---|"]
    ranges += [
        f"| {r.low if r.low == r.high else f'{r.low}-{r.high}'} | {_cell(r.about)} |"
        for r in EXIT_RANGES
    ]
    rows = ["| code | error | meaning |", "|---|---|---|"]
    rows += [f"| {c.exit_code} | `{c.__name__}` | {_cell(meaning(c))} |" for c in tree()]
    return "\n".join(ranges) + "\n\n" + "\n".join(rows) + "\n"


def document() -> str:
    """The text of docs/cli.md."""
    parts = [
        "# Command reference\n\n"
        f"Generated from the commands' own `--help` by `{REGENERATE}`; do not edit by hand.\n"
        "The exit codes are listed at the end, under [Exit codes](#exit-codes), and the settings\n"
        "of `gateway.toml` after them, under [Settings](#settings).\n"
    ]
    for path, text in commands():
        parts.append(f"\n## {path}\n\n```text\n{text}\n```\n")
    parts.append(
        "\n## Exit codes\n\n"
        "`gateway` exits 0 when the command did its work. An error is one line on stderr, "
        "starting `error:`, that says what happened and what to do; its exit status says which "
        "kind of error it was, so that a script can tell them apart. `audit verify` and "
        "`doctor` exit 1 when what they check is not right.\n\n" + exit_codes_table()
    )
    parts.append(
        "\n## Settings\n\n"
        "`gateway init` writes every setting into `gateway.toml` with its default and meaning; "
        "a setting left out takes its default.\n\n" + settings_table()
    )
    return "".join(parts)


if __name__ == "__main__":
    sys.stdout.write(document())
