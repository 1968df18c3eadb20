"""`gateway`: a thin shell over the library. One module per command group.

Errors become one `error:` line here and nowhere else; `--debug` shows the traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click

from gateway import logs
from gateway.app import Gateway, actor
from gateway.errors import GatewayError
from gateway.home import Home

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """What the group's options chose, handed to each command."""

    def __init__(self, home: Home, debug: bool) -> None:
        self.home = home
        self.debug = debug

    @contextmanager
    def gateway(self, as_actor: str | None = None) -> Iterator[Gateway]:
        """The gateway of the chosen home, acting as the OS user unless told; closed afterwards."""
        with Gateway(self.home, as_actor or actor()) as gw:
            yield gw


def fail(message: str) -> NoReturn:
    """Stop with one `error:` line and exit status 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


class Group(click.Group):
    """A group whose commands' errors are reported as one line, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning every error into one line on stderr."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as err:
            state = ctx.find_object(State)
            if state is not None and state.debug:
                raise
            if isinstance(err, GatewayError):
                fail(str(err))
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


def emit(rows: Any, as_json: bool, text: Callable[[], str]) -> None:
    """Print `rows` as JSON with --json, else the human text."""
    click.echo(json.dumps(rows, indent=2, ensure_ascii=False) if as_json else text())


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


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
      gateway --home /srv/gateway status
    """
    os.umask(0o077)  # keys, ledger, spool and sealed files: for the gateway's user alone
    logs.setup(debug, log_format)
    ctx.obj = State(Home.locate(home), debug)


def _register() -> None:
    from gateway.cli import (
        audit_cmd,
        cancel_cmd,
        demo_cmd,
        doctor_cmd,
        init_cmd,
        keys_cmd,
        ledger_cmd,
        partner_cmd,
        retry_cmd,
        run_cmd,
        send_cmd,
        serve_cmd,
        status_cmd,
    )

    for module in (init_cmd, keys_cmd, partner_cmd, send_cmd, run_cmd, status_cmd, ledger_cmd,
                   retry_cmd, cancel_cmd, serve_cmd, audit_cmd, doctor_cmd, demo_cmd):  # fmt: skip
        main.add_command(module.command)


_register()
