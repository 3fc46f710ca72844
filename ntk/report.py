"""How a long job tells the user what it is doing: one small protocol, a no-op by default.

Library code (pipelines/, train/, io/) reports through a :class:`Reporter` handed to it and never prints itself:
``start`` opens a progress bar of ``total`` ``unit``, ``advance`` moves it (with an optional trailing
``info`` text, e.g. training metrics), ``finish`` closes it, ``log`` writes one informational line and
``warn`` one warning line (the caller writes the whole line, ``warning: ...`` included; warnings are meant to
be shown also when progress and logs are off). The default, :data:`NULL`, does nothing, so the Python API is
silent unless a caller passes a reporter (or a plain callable for lines, see :func:`from_log`).

Code built deep inside others and without a reporter argument (io/: e.g. ``IndexedFasta`` saying that it
decompresses a plain-gzip FASTA) reports to the process-wide :func:`default_reporter`: :data:`NULL` until the
CLI sets its rich one (:func:`set_default_reporter`, in the root command).

The rich implementation (bar and log lines on stderr) lives in the CLI layer: ``ntk.cli.progress.RichReporter``.
Imports nothing from ntk.
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable


@runtime_checkable
class Reporter(Protocol):
    def start(self, label: str, total: int | None = None, unit: str = "", *, completed: int = 0,
              info: bool = False, keep: bool = False) -> None:
        """Open a progress bar: ``total`` (None: unknown) ``unit`` of work, ``completed`` already done;
        ``info``: a trailing text set by :meth:`advance`; ``keep``: the bar stays on screen after :meth:`finish`."""

    def advance(self, n: int = 1, info: str | None = None) -> None:
        """``n`` more units of work done (``info``: new trailing text)."""

    def finish(self) -> None:
        """Close the bar (a no-op when none is open)."""

    def log(self, msg: str) -> None:
        """One informational line."""

    def warn(self, msg: str) -> None:
        """One warning line (the whole line: callers write ``warning: ...`` themselves)."""


class NullReporter:
    """Reports nothing (the default of every pipeline)."""

    def start(self, label: str, total: int | None = None, unit: str = "", *, completed: int = 0,
              info: bool = False, keep: bool = False) -> None:
        pass

    def advance(self, n: int = 1, info: str | None = None) -> None:
        pass

    def finish(self) -> None:
        pass

    def log(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass


NULL: Reporter = NullReporter()


class LineReporter(NullReporter):
    """Lines (logs and warnings) to a callable such as ``print`` or ``list.append``; no progress bar."""

    def __init__(self, write: Callable[[str], object]):
        self.write = write

    def log(self, msg: str) -> None:
        self.write(msg)

    def warn(self, msg: str) -> None:
        self.write(msg)


def from_log(log: Reporter | Callable[[str], object] | None) -> Reporter:
    """A reporter from what callers pass: a Reporter, a callable taking one line, or None (:data:`NULL`)."""
    if log is None:
        return NULL
    if isinstance(log, Reporter):
        return log
    return LineReporter(log)


_default: Reporter = NULL


def default_reporter() -> Reporter:
    """The process-wide reporter for code that takes none (see the module docstring)."""
    return _default


def set_default_reporter(reporter: Reporter | None) -> None:
    global _default
    _default = reporter if reporter is not None else NULL
