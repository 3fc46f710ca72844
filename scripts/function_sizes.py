#!/usr/bin/env python
"""Function sizes of the ntk package (ast-based): long functions and functions with many parameters.

Prints, as markdown, for ``ntk/pipelines``, ``ntk/cli`` and the whole package:
- a summary table (functions, over ``--long`` lines, over ``--very-long`` lines, over ``--params`` parameters,
  the longest function and the one with most parameters);
- the functions over ``--long`` lines and those over ``--params`` parameters, largest first.

A function's size is its lines from ``def`` (decorators excluded) to its last line, docstring and comments
included; nested functions count in their parent and are also listed on their own. Parameters are all declared
ones (positional, keyword-only, ``*args``, ``**kwargs``) except a method's ``self``/``cls``. Typer commands
(``@app.command``/``@app.callback``) take one parameter per CLI option by design: they are marked, and counted
apart in the summary.

``--rev REV`` reads the files of a git revision instead of the working tree (nothing is checked out), so one
run can compare before and after::

    python scripts/function_sizes.py                  # working tree
    python scripts/function_sizes.py --rev 4e3e2a2    # the tree of commit 4e3e2a2
    python scripts/function_sizes.py --summary-only   # the summary table alone

Used for the "Function sizes" tables in ARCHITECTURE.md (issue #16: no job entry point over ~60 lines, no function
with more than ~12 parameters outside options dataclasses, no function over ~90 lines in pipelines/ or cli/).
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCOPES = ("ntk/pipelines", "ntk/cli", "ntk")


@dataclass(frozen=True)
class Func:
    path: str  # relative to the repository root
    name: str  # qualified: Class.method, outer.<locals>.inner
    line: int
    lines: int
    params: int
    command: bool = False  # a Typer command/callback: one parameter per CLI option, by design


def _sources(rev: str | None, package: str = "ntk") -> dict[str, str]:
    """path -> source text of every ``.py`` file under ``package`` (working tree, or git revision ``rev``)."""
    if rev is None:
        return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
                for p in sorted((ROOT / package).rglob("*.py"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, package], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout for n in sorted(names) if n.endswith(".py")}


def _count_params(fn: ast.FunctionDef | ast.AsyncFunctionDef, in_class: bool) -> int:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args)]
    n = len(names) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    if in_class and names and names[0] in ("self", "cls"):
        n -= 1
    return n


def _is_command(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated with ``@app.command(...)`` / ``@app.callback(...)`` (any Typer app object)."""
    for d in fn.decorator_list:
        call = d.func if isinstance(d, ast.Call) else d
        if isinstance(call, ast.Attribute) and call.attr in ("command", "callback"):
            return True
    return False


def functions(path: str, source: str) -> list[Func]:
    """Every function and method of one file (nested ones included)."""
    out: list[Func] = []

    def visit(node: ast.AST, prefix: str, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out.append(Func(path, name, child.lineno, child.end_lineno - child.lineno + 1,
                                _count_params(child, in_class), _is_command(child)))
                visit(child, name + ".<locals>.", False)
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".", True)
            else:
                visit(child, prefix, in_class)

    visit(ast.parse(source, filename=path), "", False)
    return out


def in_scope(f: Func, scope: str) -> bool:
    return f.path == scope + ".py" or f.path.startswith(scope.rstrip("/") + "/")


def summary_table(funcs: list[Func], long: int, very_long: int, params: int) -> str:
    rows = [f"| scope | functions | > {long} lines | > {very_long} lines | > {params} parameters | of them not Typer "
            "commands | longest | most parameters |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for scope in SCOPES:
        fs = [f for f in funcs if in_scope(f, scope)]
        if not fs:
            rows.append(f"| {scope} | 0 | 0 | 0 | 0 | 0 | - | - |")
            continue
        big = max(fs, key=lambda f: f.lines)
        many = max(fs, key=lambda f: f.params)
        rows.append(f"| {scope} | {len(fs)} | {sum(f.lines > long for f in fs)} | "
                    f"{sum(f.lines > very_long for f in fs)} | {sum(f.params > params for f in fs)} | "
                    f"{sum(f.params > params and not f.command for f in fs)} | "
                    f"`{Path(big.path).name}:{big.name}` ({big.lines}) | "
                    f"`{Path(many.path).name}:{many.name}` ({many.params}) |")
    return "\n".join(rows)


def listing(funcs: list[Func], key: str, threshold: int, title: str) -> str:
    fs = sorted((f for f in funcs if getattr(f, key) > threshold), key=lambda f: (-getattr(f, key), f.path, f.line))
    lines = [f"#### {title} ({len(fs)})", ""]
    if not fs:
        return "\n".join(lines + ["none", ""])
    lines += ["| function | file:line | lines | parameters |", "|---|---|---:|---:|"]
    lines += [f"| `{f.name}`{' (Typer command)' if f.command else ''} | {f.path}:{f.line} | {f.lines} | {f.params} |"
              for f in fs]
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", help="git revision to read instead of the working tree (e.g. main, HEAD~3)")
    ap.add_argument("--long", type=int, default=60, help="list functions over this many lines (default 60)")
    ap.add_argument("--very-long", type=int, default=90, help="second line-count threshold (default 90)")
    ap.add_argument("--params", type=int, default=12, help="list functions over this many parameters (default 12)")
    ap.add_argument("--summary-only", action="store_true", help="print the summary table only")
    args = ap.parse_args(argv)

    try:
        sources = _sources(args.rev)
    except subprocess.CalledProcessError as e:
        print(f"function_sizes: error: git: {e.stderr.strip()}", file=sys.stderr)
        return 2
    funcs = [f for path, src in sources.items() for f in functions(path, src)]
    what = f"git revision {args.rev}" if args.rev else "working tree"
    print(f"### Function sizes ({what}; thresholds: {args.long}/{args.very_long} lines, {args.params} parameters)")
    print()
    print(summary_table(funcs, args.long, args.very_long, args.params))
    print()
    if args.summary_only:
        return 0
    for scope in SCOPES[:2]:
        fs = [f for f in funcs if in_scope(f, scope)]
        print(f"### {scope}")
        print()
        print(listing(fs, "lines", args.long, f"over {args.long} lines"))
        print(listing(fs, "params", args.params, f"over {args.params} parameters"))
    rest = [f for f in funcs if not any(in_scope(f, s) for s in SCOPES[:2])]
    print("### rest of ntk (model, io, train, top level)")
    print()
    print(listing(rest, "lines", args.very_long, f"over {args.very_long} lines"))
    print(listing(rest, "params", args.params, f"over {args.params} parameters"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
