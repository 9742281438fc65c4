"""The ``mmseqrec`` command line: thin wiring only; each stage's commands live in their own module."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ..errors import MmseqrecError


class _Group(TyperGroup):
    """Every command's :class:`MmseqrecError` becomes one ``error: ...`` line on stderr and exit code 2, also
    when the app is invoked in-process (``typer.testing.CliRunner``), not only through :func:`main`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MmseqrecError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
    name="mmseqrec",
    help=(
        "Multimodal sequential recommendation enhanced by multimodal LLMs.\n\n"
        "Pipeline: prepare -> enrich -> embed -> train -> evaluate -> recommend. "
        "Every stage reads and writes files, so each can be re-run on its own."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(emoji=False, stderr=True)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"mmseqrec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version,
                                 is_eager=True),
) -> None:
    """Multimodal sequential recommendation enhanced by multimodal LLMs."""

# Explicit table of command modules (no auto-discovery). Each module exposes ``register(app)``.
_COMMAND_MODULES = ("data", "enrich", "embed", "train", "evaluate", "experiment", "serve", "llmrec")


def _register_all() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # stage not built yet
            raise
        mod.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user-facing errors become one clear line and exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except MmseqrecError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
