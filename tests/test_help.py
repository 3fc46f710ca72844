"""Every command's help reads at 80 columns (issue 15), found by walking the Typer app: commands added later are
covered without touching this file.

For each command: `--help` and `-h` give the same text; no line is wider than 80 columns; every visible option's
help starts in a column that leaves it at least 30 characters per line; no metavar is a Python type name (no
`<str>`, `<bool>`, `list[str]`, `{genome}`); paragraphs are re-flowed; every leaf command shows 2-4 examples that
start with `ntk` (or feed it through a pipe) and fit the width. Shell completion answers.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest

from ntk.cli.help import PYTHON_TYPE_NAMES, option_label, walk
from ntk.cli.main import cli

WIDTH = 80
MIN_HELP = 30

ROOT = cli()
COMMANDS = [path for path, _ in walk(ROOT) if not getattr(_, "hidden", False)]


def render(monkeypatch, args) -> str:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    monkeypatch.delenv("LINES", raising=False)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            cli().main(args=list(args), prog_name="ntk", standalone_mode=False)
        except Exception as e:  # click's Exit(0) after printing the help
            if type(e).__name__ != "Exit" or getattr(e, "exit_code", 0) != 0:
                raise
    return buf.getvalue()


def command(path):
    cmd = ROOT
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def test_the_walk_finds_every_command():
    names = {" ".join(p) for p in COMMANDS}
    assert {"segment", "embed", "score-variants", "pretrain", "predict", "merge", "plot", "finetune classify",
            "finetune regress", "finetune segment", "models list", "models info"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "ntk")
def test_help_at_80_columns(monkeypatch, path):
    text = render(monkeypatch, [*path, "--help"])
    assert text == render(monkeypatch, [*path, "-h"]), "-h and --help differ"
    lines = text.splitlines()
    assert lines[0].startswith("Usage: ntk")
    too_wide = [line for line in lines if len(line) > WIDTH]
    assert not too_wide, f"lines wider than {WIDTH}: {too_wide}"
    # no Python type names as metavars, anywhere (usage line included)
    for bad in (r"<(str|int|float|bool|path|list\[[a-z]+\])>", r"\blist\[(str|int|float)\]", r"\{[a-z_]+\}"):
        assert not re.search(bad, text), f"{bad!r} in:\n{text}"
    cmd = command(path)
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        mv = (p.metavar or "").strip().lower().rstrip(".")
        assert mv not in PYTHON_TYPE_NAMES, f"{p.name}: metavar {p.metavar!r}"
        if getattr(p, "is_flag", False):
            assert not p.metavar, f"flag {p.name} shows a metavar {p.metavar!r}"
        label = option_label(p)
        help_text = " ".join((p.help or "").split())
        if not help_text:
            continue
        # the row of this option in its panel: '│ ' + label
        i = next((k for k, line in enumerate(lines) if line.startswith("│ " + label)
                  and not line[2 + len(label):3 + len(label)].strip()), None)
        assert i is not None, f"{label!r} not in the help"
        first = help_text.split()[0]
        line = lines[i]
        at = line.find(first, line.find(label) + len(label))
        if at < 0:  # the label has a line of its own: the help starts on the next one
            line = lines[i + 1]
            at = line.find(first)
        assert at >= 0, f"{label}: help {first!r} not found near the option"
        room = len(line.rstrip()) - 1 - at if line.rstrip().endswith("│") else WIDTH - 2 - at
        assert room >= MIN_HELP, f"{label}: only {room} columns for its help:\n{line}"


def examples(text: str) -> list[str]:
    """Example command lines of a help text: the indented lines after 'Examples:' (continuations joined)."""
    out, on = [], False
    for line in text.splitlines():
        if line.strip() == "Examples:":
            on = True
            continue
        if on:
            if not line.strip() or line.startswith("╭"):
                break
            if out and out[-1].endswith("\\"):
                out[-1] = out[-1][:-1].rstrip() + " " + line.strip()
            else:
                out.append(line.strip())
    return out


LEAVES = [p for p in COMMANDS if not hasattr(command(p), "commands")]


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: " ".join(p))
def test_every_command_has_copy_pasteable_examples(monkeypatch, path):
    text = render(monkeypatch, [*path, "--help"])
    ex = examples(text)
    assert 2 <= len(ex) <= 4, f"ntk {' '.join(path)}: {len(ex)} examples"
    for e in ex:
        assert re.match(rf"^(\S+=\S+ )*ntk {' '.join(path)}\b", e) or f"| ntk {' '.join(path)}" in e, e


def test_help_paragraphs_are_reflowed(monkeypatch):
    """Single line breaks of the source text are joined: the paragraph fills the width."""
    text = render(monkeypatch, ["segment", "--help"])
    para = text.split("\n\n")[2].splitlines()  # 'Writes OUTDIR/...'
    assert len(para) >= 3 and all(len(line) >= WIDTH - 15 for line in para[:-1]), para


def test_flags_and_version(monkeypatch):
    text = render(monkeypatch, ["--help"])
    assert "--version" in text and "<bool>" not in text and "-h, --help" in text
    assert "--install-completion" in text


def test_shell_completion():
    env = {**os.environ, "_NTK_COMPLETE": "complete_bash", "COMP_WORDS": "ntk segment --thr", "COMP_CWORD": "2"}
    p = subprocess.run([sys.executable, "-c", "from ntk.cli.main import main; main()"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "--threshold" in p.stdout.split() and "--threads" in p.stdout.split()
    env.update(COMP_WORDS="ntk sco", COMP_CWORD="1")
    p = subprocess.run([sys.executable, "-c", "from ntk.cli.main import main; main()"], env=env,
                       capture_output=True, text=True)
    assert p.stdout.split() == ["score-variants"]
