"""``ntk`` entry point: registers every subcommand and turns user errors into one line on stderr."""
from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Annotated

import typer
from rich.markup import escape

from .. import __version__
from ..errors import Interrupted, NtkError
from ..io.atomic import is_closed_pipe
from ..report import set_default_reporter
from .common import console, reporter

app = typer.Typer(
    name="ntk",
    help="Run Nucleotide Transformer and SegmentNT DNA models over whole genomes: embed, segment, score variants, "
    "pretrain, finetune.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
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
    set_default_reporter(reporter())  # io/ code without a reporter argument logs on the CLI's console


def _register() -> None:
    from . import chat, embed, finetune, merge, models, plot, pretrain, score_variants, segment, tracks

    for mod in (segment, tracks, embed, score_variants, pretrain, finetune, merge, plot, chat):
        mod.register(app)
    app.add_typer(models.app, name="models", help="List presets and local models, inspect a checkpoint.")


_register()


_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _install_signal_handlers() -> dict:
    """SIGTERM (what SLURM and `kill` send), SIGINT (Ctrl-C) and SIGHUP raise :class:`Interrupted` in the main
    thread, so that temporary outputs are removed on the way out (``--resume`` state is kept); a second signal
    during that cleanup exits at once (the next run on the same output removes what is left). A SIGINT that the
    process inherited as ignored (background jobs, nohup) stays ignored."""
    def second(signum, frame):
        os._exit(128 + signum)

    def first(signum, frame):
        for name in _STOP_SIGNALS:
            s = getattr(signal, name, None)
            if s is not None and signal.getsignal(s) is first:
                signal.signal(s, second)
        raise Interrupted(signum)

    old = {}
    for name in _STOP_SIGNALS:
        s = getattr(signal, name, None)
        if s is None or signal.getsignal(s) is signal.SIG_IGN:
            continue
        old[s] = signal.signal(s, first)
    return old


def _error(message: str, code: int) -> None:
    console.print(f"[bold red]ntk: error:[/bold red] {escape(message)}", soft_wrap=True)  # no markup in messages
    _drop_stdout()
    sys.exit(code)


def _drop_stdout() -> None:
    """Leave stdout so that flushing it at exit cannot fail again (full disk, closed pipe) with a second message."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def cli():
    """The click command tree of `ntk` with ntk's help (metavars, panels, 80-column layout; see cli/help.py)."""
    from .help import polish

    root = typer.main.get_command(app)
    polish(root)
    return root


def main() -> None:
    previous = _install_signal_handlers()
    try:
        # the command runs here rather than through typer's own main(), which turns Ctrl-C into a silent exit
        # code and a closed stdout into exit 1: every exit rule of ntk is in this function
        command = cli()
        command._main_shell_completion({}, "ntk", None)  # _NTK_COMPLETE=...: answer the shell and exit
        with command.make_context("ntk", sys.argv[1:]) as ctx:
            command.invoke(ctx)
    except NtkError as e:
        signum = getattr(e, "signum", None)  # training stopped by a signal after saving a checkpoint
        _error(str(e), 128 + signum if signum else 2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _error("stopped by SIGINT", 130)
    except Interrupted as e:
        _error(f"stopped by {_signal_name(e.signum)}: temporary outputs removed (with --resume, finished chunks are "
               "kept: start the same command again to continue)", 128 + e.signum)
    except KeyboardInterrupt:
        _error("stopped by SIGINT", 130)
    except BrokenPipeError:
        _closed_pipe()
    except Exception as e:  # usage errors from click (typer may vendor its own copy of click)
        if is_closed_pipe(e):  # polars/pysam writers
            _closed_pipe()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # any output: the disk is full
            _error(f"{e.filename + ': ' if e.filename else ''}{e.strerror} (no output was written)", 2)
        if _is_click(e, "ClickException"):
            e.show()
            sys.exit(e.exit_code)
        if _is_click(e, "Exit"):
            sys.exit(e.exit_code)
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _closed_pipe() -> None:
    """Downstream closed the pipe (e.g. `| head`): not an error for a shell pipeline."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


def _is_click(exc: BaseException, name: str) -> bool:
    return any(c.__name__ == name and "click" in c.__module__ for c in type(exc).__mro__)


if __name__ == "__main__":
    main()
