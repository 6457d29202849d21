"""The Typer app. Each command lives in its own module and registers itself here."""

from __future__ import annotations

import importlib
import sys

import click
import typer

from capaug.augment.errors import CapaugError

from .common import err_console

app = typer.Typer(
    name="capaug",
    help="Minority-class synthesis for long-tailed image data: CM diffusion, balanced synthesis, downstream check.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, each with `register(app)`.
COMMANDS = ["recipes_cmd"]

for _name in COMMANDS:
    importlib.import_module(f"{__package__}.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one red line and exit code 2, never a traceback."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except CapaugError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        err_console.print("[bold red]aborted[/]")
        sys.exit(130)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]; rerun the same command to resume where supported")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
