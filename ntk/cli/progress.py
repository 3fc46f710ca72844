"""Progress bars and log lines on stderr that fit an 80-column terminal.

One look for every command: ``label  ━━━━━━  123,456/816,999 bp  12,345 bp/s  0:00:12  ETA 0:00:55``. Counts
carry thousands separators and the total from the start; the ETA column is there from the start too (``-:--:--``
until the first work is done, then rich's running estimate). The bar takes what the other columns leave, and an
optional trailing ``info`` text (training metrics) is cut with an ellipsis before anything else is: the counts
and the ETA always stay visible. Log lines carry no source paths (``log_path=False``).
:class:`RichReporter` is the CLI's implementation of :class:`ntk.report.Reporter`: the layers below the CLI
report through that protocol and never import rich or this module.
"""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column
from rich.text import Text


def stderr_console() -> Console:
    """Console for logs and progress: stderr, no highlighting, no `file.py:123` at the end of log lines."""
    return Console(stderr=True, highlight=False, log_path=False)


class CountColumn(ProgressColumn):
    """``completed/total unit`` with thousands separators (``completed unit`` while the total is unknown)."""

    def __init__(self, unit: str):
        super().__init__(table_column=Column(no_wrap=True))
        self.unit = unit

    def render(self, task) -> Text:
        done = f"{int(task.completed):,}"
        text = f"{done}/{int(task.total):,} {self.unit}" if task.total is not None else f"{done} {self.unit}"
        return Text(text.rstrip(), style="progress.download")


class RateColumn(ProgressColumn):
    """``12,345 unit/s`` from rich's moving estimate (``- unit/s`` before the second update)."""

    def __init__(self, unit: str):
        super().__init__(table_column=Column(no_wrap=True))
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text(f"- {self.unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.0f} {self.unit}/s" if speed >= 10 else f"{speed:,.2f} {self.unit}/s",
                    style="progress.data.speed")


def progress_bar(label: str, unit: str, console: Console | None = None, *, transient: bool = True,
                 info: bool = False, disable: bool = False) -> Progress:
    """A Progress with label, bar, counts, rate, elapsed time and ETA; ``info=True`` adds a trailing
    ``{task.fields[info]}`` text that is cut first on narrow terminals."""
    columns = [TextColumn(label, table_column=Column(no_wrap=True)),
               BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=4)),
               CountColumn(unit), RateColumn(unit) if unit else None,
               TimeElapsedColumn(table_column=Column(no_wrap=True)),
               TextColumn("ETA", table_column=Column(no_wrap=True)),
               TimeRemainingColumn(table_column=Column(no_wrap=True))]
    if info:
        columns.append(TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis",
                                                                            ratio=2, min_width=0)))
    return Progress(*[c for c in columns if c is not None], console=console or stderr_console(),
                    transient=transient, expand=True, disable=disable, speed_estimate_period=60.0)


class RichReporter:
    """:class:`ntk.report.Reporter` on a rich console (stderr): a :func:`progress_bar`, ``log`` lines with a
    time stamp (``console.log``), ``warn`` lines in yellow, not wrapped. ``quiet``: no bar and no log lines,
    warnings still shown; ``bar=False``: log lines but no bar (e.g. when stderr is not a terminal)."""

    def __init__(self, console: Console | None = None, *, quiet: bool = False, bar: bool = True):
        self.console = console or stderr_console()
        self.quiet, self.bar = quiet, bar
        self._progress: Progress | None = None
        self._task = None

    def start(self, label: str, total: int | None = None, unit: str = "", *, completed: int = 0,
              info: bool = False, keep: bool = False) -> None:
        self.finish()
        if self.quiet or not self.bar:
            return
        self._progress = progress_bar(label, unit, self.console, transient=not keep, info=info)
        fields = {"info": ""} if info else {}
        self._task = self._progress.add_task(label, total=total, completed=completed, **fields)
        self._progress.start()

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self._progress is not None:
            fields = {"info": info} if info is not None else {}
            self._progress.update(self._task, advance=n, **fields)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log(self, msg: str) -> None:
        if not self.quiet:
            self.console.log(Text(msg))

    def warn(self, msg: str) -> None:
        self.console.print(Text(msg, style="yellow"), soft_wrap=True)
