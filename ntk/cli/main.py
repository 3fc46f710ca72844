"""``ntk`` entry point: registers every subcommand and turns user errors into one line on stderr."""
from __future__ import annotations

import errno
import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from .. import __version__
from ..errors import NtkError
from .common import console

app = typer.Typer(
    name="ntk",
    help="Run Nucleotide Transformer and SegmentNT DNA models over whole genomes: embed, segment, score variants, "
    "pretrain, finetune.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool):
    if value:
        print(f"ntk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                          help="Print the version and exit")] = None):
    pass


def _register() -> None:
    from . import chat, embed, finetune, merge, models, plot, pretrain, score_variants, segment

    for mod in (segment, embed, score_variants, pretrain, finetune, merge, plot, chat):
        mod.register(app)
    app.add_typer(models.app, name="models", help="List presets and local models, inspect a checkpoint.")


_register()


def main() -> None:
    try:
        app(standalone_mode=False)
    except NtkError as e:
        console.print(f"[bold red]ntk: error:[/bold red] {escape(str(e))}", soft_wrap=True)  # no markup in messages
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        _closed_pipe()
    except Exception as e:  # usage errors from click (typer may vendor its own copy of click)
        if isinstance(e, OSError) and (e.errno == errno.EPIPE or "Broken pipe" in str(e)):  # polars/pysam writers
            _closed_pipe()
        if _is_click(e, "ClickException"):
            e.show()
            sys.exit(e.exit_code)
        if _is_click(e, "Exit"):
            sys.exit(e.exit_code)
        raise


def _closed_pipe() -> None:
    """Downstream closed the pipe (e.g. `| head`): not an error for a shell pipeline."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


def _is_click(exc: BaseException, name: str) -> bool:
    return any(c.__name__ == name and "click" in c.__module__ for c in type(exc).__mro__)


if __name__ == "__main__":
    main()
