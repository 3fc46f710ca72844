"""The README's code blocks run as written, and its examples agree with `ntk COMMAND --help` (issue 15).

Convention (also stated in the README, section "About the examples in this README"):

- Fenced blocks tagged ```python or ```bash are **run** by this test, in order, each in a fresh process, in one
  temporary working directory that holds `data/` and `tests/data/` (links to the repository's, so
  `data/sample/...` and the golden tiny models under `tests/data/golden/` work) and with `ntk` on the PATH
  running this checkout. Models: the embedded default (no `-m`) or a golden tiny model, so no network and no
  released checkpoint is needed. bash blocks run with `bash -e -u` (no pipefail: `| head` is fine).
- Blocks tagged ```console, or whose fence line is directly preceded by a line `<!-- not-tested -->`, are
  **shown, not run**: they need real checkpoints, genomes or clusters (e.g. `-m segment-nt`, `hg38.fa`, NTv3 and
  ChatNT examples). Every other fence tag (text, json, ...) is not run either.
- Every example in a command's `--help` ("Examples:") must also appear in the README, as one command line of a
  fenced block (continuation lines joined, a trailing `# comment` ignored): README and `--help` cannot drift.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_help import LEAVES, examples, render

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP_MARK = "<!-- not-tested -->"


def fenced_blocks(text: str) -> list[tuple[str, str, bool, int]]:
    """(language, code, skipped by the marker, line number) of every fenced block."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        prev = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        out.append((m.group(1), "\n".join(lines[i + 1:j]), prev == SKIP_MARK, i + 1))
        i = j + 1
    return out


BLOCKS = fenced_blocks(README.read_text())
RUN = [(lang, code, line) for lang, code, skip, line in BLOCKS if lang in ("python", "bash") and not skip]


def test_the_readme_has_runnable_blocks():
    langs = {lang for lang, _, _ in RUN}
    assert {"python", "bash"} <= langs, "the README should show runnable Python and shell examples"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    (d / "data").symlink_to(ROOT / "data")
    (d / "tests").mkdir()
    (d / "tests" / "data").symlink_to(ROOT / "tests" / "data")  # the golden tiny models (e.g. the ChatNT example)
    bin_dir = d / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "ntk"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ntk.cli.main "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return d, env


@pytest.mark.parametrize("block", RUN, ids=lambda b: f"{b[0]}-line{b[2]}")
def test_readme_block_runs(block, workdir):
    lang, code, line = block
    d, env = workdir
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-e", "-u", "-c", code]
    p = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"README.md line {line} ({lang}) failed:\n{code}\n--- stderr:\n{p.stderr[-3000:]}"


def readme_commands() -> set[str]:
    """Every command line of every fenced block, continuation lines joined, comments and prompts stripped."""
    cmds = set()
    for _, code, _, _ in BLOCKS:
        joined = re.sub(r"\\\n\s*", " ", code)
        for ln in joined.splitlines():
            ln = re.sub(r"\s{2,}#.*$", "", ln.strip()).removeprefix("$ ")
            if ln and not ln.startswith("#"):
                cmds.add(" ".join(ln.split()))
    return cmds


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: " ".join(p))
def test_help_examples_are_in_the_readme(monkeypatch, path):
    cmds = readme_commands()
    for ex in examples(render(monkeypatch, [*path, "--help"])):
        assert " ".join(ex.split()) in cmds, f"`ntk {' '.join(path)} --help` example not in README.md:\n{ex}"


def test_commands_table_lists_every_command():
    text = README.read_text()
    table = text[text.index("## Commands"):]
    table = table[:table.index("\n\n", table.index("| command"))]
    for path in LEAVES:
        top = path[0]
        if top in ("models", "finetune"):
            assert f"`ntk {top}" in table, top
        else:
            assert f"`ntk {top}`" in table, f"ntk {top} missing from the Commands table"
