"""`gateway`: a thin shell over the library. One module per command group.

Errors become one `error:` line and their class's exit code here and nowhere else;
`--debug` shows the traceback.
Each command lives in `gateway/cli/NAME_cmd.py` as `command` and is imported only when it
runs or a help text lists it, so `status` does not pay for the daemon's imports.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, NoReturn, TypeVar

import click

from gateway.adapters import logs
from gateway.adapters.home import Home
from gateway.app.gateway import Gateway, actor
from gateway.core.clock import Clock
from gateway.core.errors import GatewayError
from gateway.core.model import Progress

F = TypeVar("F", bound=Callable[..., Any])

#: Every command of `gateway`, each defined as `command` in `gateway/cli/NAME_cmd.py`.
#: Loaded on use: importing all of them up front took 0.45 s of every run, most of it
#: paramiko (0.13 s), which only the daemon and the transports need (python -X importtime).
COMMANDS: Final = ("approve", "audit", "backup", "cancel", "check", "demo", "doctor", "init",
                   "keys", "ledger", "metrics", "partner", "regimes", "reject", "report",
                   "restore", "retry", "run", "send", "serve", "status")  # fmt: skip


class State:
    """What the group's options chose, handed to each command."""

    def __init__(self, home: Home, debug: bool, clock: Clock | None = None) -> None:
        self.home = home
        self.debug = debug
        self.clock = clock

    @contextmanager
    def gateway(self, as_actor: str | None = None) -> Iterator[Gateway]:
        """The gateway of the chosen home, acting as the OS user unless told; closed afterwards."""
        with Gateway(self.home, as_actor or actor(), self.clock) as gw:
            yield gw


def fail(message: str, exit_code: int = GatewayError.exit_code) -> NoReturn:
    """Stop with one `error:` line and `exit_code` (1, the general one, unless told)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(exit_code)


class Group(click.Group):
    """A group whose commands are imported when used, and whose errors are reported as one
    line, in one place."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command's name, sorted as click sorts them, without importing any."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The named command, its module imported now; None for a name that is no command."""
        if cmd_name not in COMMANDS:
            return None
        command: click.Command = importlib.import_module(f"gateway.cli.{cmd_name}_cmd").command
        return command

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning every error into one line on stderr and an exit code:
        a `GatewayError` its class's (`docs/cli.md`, Exit codes), anything else 1."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as err:
            state = ctx.find_object(State)
            if state is not None and state.debug:
                raise
            if isinstance(err, GatewayError):
                fail(str(err), err.exit_code)
            if isinstance(err, OSError):
                where = f" ({err.filename})" if err.filename else ""
                fail(
                    f"{err.strerror or err}{where}: check the path, its permissions and free disk space"
                )
            fail(
                f"unexpected {type(err).__name__}; nothing secret is shown: rerun with --debug and report it"
            )


def with_gateway(func: F) -> F:
    """Give a command the `Gateway` of the chosen home as its first argument."""

    @click.pass_obj
    @functools.wraps(func)
    def wrapper(obj: State, *args: Any, **kwargs: Any) -> Any:
        with obj.gateway() as gw:
            return func(gw, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


#: Transfers smaller than this show no bar: over before it would be read.
BAR_FROM: Final = 8 * 1024 * 1024


def progress() -> Progress | None:
    """Progress bars on stderr when it is a terminal (click's); None otherwise, so a
    command run by a script or a service writes nothing extra."""
    if not sys.stderr.isatty():
        return None

    @contextmanager
    def bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
        if total < BAR_FROM:
            yield lambda _: None
            return
        with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=False,
                               show_percent=True, show_eta=True) as shown:  # fmt: skip
            yield shown.update

    return bar


def emit(rows: Any, as_json: bool, text: Callable[[], str]) -> None:
    """Print `rows` as JSON with --json, else the human text."""
    click.echo(json.dumps(rows, indent=2, ensure_ascii=False) if as_json else text())


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def _reason(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A reason with words in it: an empty one would leave the audit trail without a why."""
    if not value.strip():
        raise click.BadParameter("must say why (it is recorded in the audit trail), not be empty")
    return value.strip()


reason_option = click.option(
    "--reason", required=True, callback=_reason, help="Why: recorded in the audit trail."
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home", metavar="DIR", help="Gateway home (default: $GATEWAY_HOME, else the current folder)."
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="Log lines on stderr as text or JSON.",
)
@click.version_option(package_name="exchange-gateway")
@click.pass_context
def main(ctx: click.Context, home: str | None, debug: bool, log_format: str) -> None:
    """Secure file-drop gateway for international criminal-records exchange.

    \b
    Example:
      gateway --home /var/lib/gateway status
    """
    os.umask(0o077)  # keys, ledger, spool and sealed files: for the gateway's user alone
    logs.setup(debug, log_format)
    # A caller running the commands in-process (the tests) may hand in the clock they read
    # as click's `obj`; from a shell it is None and the gateway reads the system's.
    ctx.obj = State(Home.locate(home), debug, clock=ctx.obj)
