"""Progress lines fit 80 columns with totals, thousands separators and an ETA from the start (issue 15)."""
import io

from rich.console import Console

from ntk.cli.progress import progress_bar, stderr_console


def render(progress, width=80) -> list[str]:
    buf = io.StringIO()
    progress.live.console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    progress.console.print(progress.make_tasks_table(progress.tasks))
    return [ln for ln in buf.getvalue().splitlines() if ln.strip()]


def test_genome_scale_counts_rate_and_eta_at_80_columns():
    p = progress_bar("segment", "bp")
    t = p.add_task("segment", total=3_100_000_000)
    (line,) = render(p)
    assert "0/3,100,000,000 bp" in line and "ETA" in line and "-:--:--" in line and len(line) <= 80  # from the start
    p.update(t, completed=1_234_567)
    (line,) = render(p)
    assert "1,234,567/3,100,000,000 bp" in line and len(line) <= 80


def test_training_bar_keeps_steps_and_eta_when_the_metrics_do_not_fit():
    p = progress_bar("train", "steps", info=True, transient=False)
    p.add_task("train", total=100_000, completed=12_345,
               info="loss 7.1234  accuracy 0.1234  123,456 tok/s  lr 1.00e-04  and more and more")
    (line,) = render(p)
    assert "12,345/100,000 steps" in line and "ETA" in line and len(line) <= 80
    assert "loss 7.1" in line  # the metrics come after, cut with an ellipsis when too long


def test_log_lines_carry_no_source_path():
    c = stderr_console()
    buf = io.StringIO()
    c.file = buf
    c.log("hello")
    assert ".py:" not in buf.getvalue()
