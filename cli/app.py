"""The Typer app. Each command lives in its own module and registers itself here."""

from __future__ import annotations

import importlib
import sys
import warnings

import click
import typer

from capaug.augment.errors import CapaugError

from .common import err_console

try:  # recent typer vendors its own copy of click
    from typer._click import exceptions as _vendored
except ImportError:
    _vendored = click.exceptions
USAGE_ERRORS = (click.exceptions.ClickException, _vendored.ClickException)
ABORTS = (click.exceptions.Abort, typer.Abort)

app = typer.Typer(
    name="capaug",
    help="Minority-class synthesis for long-tailed image data: CM diffusion, balanced synthesis, downstream check.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, each with `register(app)`.
COMMANDS = ["recipes_cmd", "train_cmd", "inspect_cmd", "data_cmd", "synthesize_cmd", "downstream_cmd", "evaluate_cmd", "analyze_cmd", "run_cmd", "quickstart_cmd"]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"capaug {version('capaug')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass  # no docstring: the app's help stays the one given to typer.Typer

for _name in COMMANDS:
    importlib.import_module(f"{__package__}.{_name}").register(app)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one red line and exit code 2, never a traceback; warnings one yellow line."""
    warnings.showwarning = _warning_line
    try:
        rc = app(args=argv, standalone_mode=False)
    except CapaugError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ABORTS:
        err_console.print("[bold red]aborted[/]")
        sys.exit(130)
    except USAGE_ERRORS as e:
        e.show()
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]; rerun the same command to resume where supported")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
