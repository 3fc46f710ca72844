"""The reporting protocol (ntk/report.py) and the CLI's rich implementation (ntk/cli/progress.py): library code
reports through a Reporter (silent by default), the CLI shows it on stderr; warnings survive --quiet."""
from __future__ import annotations

import io

from rich.console import Console

from ntk.cli.progress import RichReporter
from ntk.report import NULL, LineReporter, NullReporter, Reporter, default_reporter, from_log, set_default_reporter


def console(buf: io.StringIO) -> Console:
    return Console(file=buf, width=200, force_terminal=False, color_system=None, log_path=False)


def test_null_and_line_reporters_satisfy_the_protocol():
    for r in (NULL, NullReporter(), LineReporter(print), RichReporter(console(io.StringIO()))):
        assert isinstance(r, Reporter)
    assert not isinstance(print, Reporter)
    lines = []
    r = from_log(lines.append)  # a plain callable: lines only
    r.start("x", 10, "bp")
    r.advance(3)
    r.finish()
    r.log("one")
    r.warn("warning: two")
    assert lines == ["one", "warning: two"]
    assert from_log(None) is NULL and from_log(r) is r


def test_rich_reporter_logs_warns_and_keeps_warnings_under_quiet():
    buf = io.StringIO()
    r = RichReporter(console(buf))
    r.log("step 3: loss [1.5]")  # brackets are text, not rich markup
    r.warn("warning: slow")
    out = buf.getvalue()
    assert "step 3: loss [1.5]" in out and "warning: slow" in out
    buf = io.StringIO()
    q = RichReporter(console(buf), quiet=True)
    q.start("train", 5, "steps")
    q.advance(2)
    q.log("hidden")
    q.warn("warning: shown")
    q.finish()
    assert "hidden" not in buf.getvalue() and "warning: shown" in buf.getvalue()


def test_rich_reporter_bar_counts_advances():
    buf = io.StringIO()
    r = RichReporter(console(buf))
    r.start("train", 10, "steps", completed=2, info=True, keep=True)
    r.advance(3, info="loss 0.5")
    r.advance(1)
    task = r._progress.tasks[0]
    assert task.completed == 6 and task.total == 10 and task.fields["info"] == "loss 0.5"
    r.finish()
    assert r._progress is None
    r.advance(1)  # no bar: nothing happens
    assert "6/10 steps" in buf.getvalue()  # a kept bar leaves its last state on the console


def test_default_reporter_is_silent_until_set():
    before = default_reporter()
    try:
        set_default_reporter(None)
        assert default_reporter() is NULL
        lines = []
        set_default_reporter(LineReporter(lines.append))
        default_reporter().log("x")
        assert lines == ["x"]
    finally:
        set_default_reporter(before)
