"""scripts/function_sizes.py (the function-size tables of ARCHITECTURE.md): lines, parameters, Typer commands."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "function_sizes.py"
_spec = importlib.util.spec_from_file_location("function_sizes", SCRIPT)
fs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("function_sizes", fs)  # dataclasses look their module up there
_spec.loader.exec_module(fs)

SOURCE = '''\
import typer
app = typer.Typer()


def small(a, b=1, *args, c, **kw):
    return a


class K:
    def method(self, x, y):
        def inner(z):
            return z
        return inner(x)

    @classmethod
    def make(cls, *, n):
        return cls()


def register(app):
    @app.command("x")
    def cmd(a, b, c, d, e, f, g, h, i, j, k, l, m):
        return 1
    return cmd
'''


def test_functions_lines_params_and_commands():
    got = {f.name: f for f in fs.functions("ntk/cli/x.py", SOURCE)}
    assert set(got) == {"small", "K.method", "K.method.<locals>.inner", "K.make", "register",
                        "register.<locals>.cmd"}
    assert (got["small"].line, got["small"].lines, got["small"].params) == (5, 2, 5)  # a, b, *args, c, **kw
    assert got["K.method"].params == 2 and got["K.method"].lines == 4  # self not counted, nested body included
    assert got["K.method.<locals>.inner"].params == 1  # a nested function's first argument is not 'self'
    assert got["K.make"].params == 1  # cls not counted
    assert got["register.<locals>.cmd"].params == 13 and got["register.<locals>.cmd"].command
    assert not got["register"].command and got["register"].lines == 5


def test_summary_counts_and_thresholds():
    funcs = fs.functions("ntk/cli/x.py", SOURCE) + fs.functions("ntk/io/y.py", "def f(a):\n" + "    a\n" * 70)
    table = fs.summary_table(funcs, long=60, very_long=90, params=12)
    rows = {r.split(" | ")[0].strip("| "): r.split(" | ") for r in table.splitlines()[2:]}
    assert rows["ntk/cli"][1:6] == ["6", "0", "0", "1", "0"]  # one >12-parameter function, a Typer command
    assert rows["ntk"][1:6] == ["7", "1", "0", "1", "0"]  # f: 71 lines
    assert rows["ntk/pipelines"][1] == "0"


def test_runs_on_the_package_and_a_git_revision():
    out = subprocess.run([sys.executable, str(SCRIPT), "--summary-only"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert "| ntk/pipelines |" in out and "| ntk/cli |" in out and "| ntk |" in out
    bad = subprocess.run([sys.executable, str(SCRIPT), "--rev", "no-such-revision"], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.startswith("function_sizes: error: git:")
