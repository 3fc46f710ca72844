"""The layer rules of ntk, checked on every module's imports (``ast``; lazy imports inside functions count too).

Layers, lowest first (a layer may import the ones listed for it, never one above):

==============  =================================================================================
``errors``,     import nothing from ntk (``report``: the reporting protocol, ntk/report.py)
``report``
``plan``        windows and batches (pure numbers): errors only
``model``       pure torch: errors, report, model; never io/, plan/, train/, pipelines/, cli/
``io``          files: errors, report, io; never model/ (nor anything above)
``train``       errors, report, model, io, plan, train
``pipelines``   errors, report, model, io, plan, train, pipelines (see below); never cli/
``cli``         anything
==============  =================================================================================

Inside pipelines/, a *job* module (one command's pipeline) never imports another job: what two jobs share lives
in a shared module (:data:`SHARED`: the engine, job options, model families, shards, resume journal, torchrun
helpers, merging of parts, the sequence-head runner; they import no job themselves) or below pipelines/.
:data:`JOB_PARTS` lists the jobs written as several modules (a part may import its own job's modules). ``rich``
and ``typer`` (the terminal) are imported only by cli/. The package root ``ntk`` (``__version__``, the public
API) may be imported from anywhere.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ntk"

LAYERS = ("errors", "report", "plan", "model", "io", "train", "pipelines", "cli")
ALLOWED = {
    "errors": set(),
    "report": set(),
    "plan": {"errors"},
    "model": {"errors", "report"},
    "io": {"errors", "report"},
    "train": {"errors", "report", "model", "io", "plan"},
    "pipelines": {"errors", "report", "model", "io", "plan", "train"},
    "cli": set(LAYERS),
}
# pipelines/ modules that are not one command's job: any pipeline may import them
SHARED = {"engine", "options", "family", "shards", "resume", "distributed", "merge", "sequence_outputs"}
# jobs written as several modules: each part may import the others (one job, one family of modules)
JOB_PARTS = [{"segment", "tracks"}, {"score_variants", "score_variants_ntv3"}, {"finetune", "finetune_segment"}]
TERMINAL = ("rich", "typer", "click")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in the file; ``from X import y`` gives ``X.y`` when ``y`` is a
    module of the package, else ``X``."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                rel = Path(*sub.split(".")[1:]) if sub.startswith(root.name + ".") else None
                is_module = rel is not None and ((root / rel).with_suffix(".py").is_file() or (root / rel).is_dir())
                out.append((node.lineno, sub if is_module else target))
    return out


def layer_of(dotted: str, root: Path) -> str | None:
    """``errors``, ``model``, ... for a module of the package; None for the package root and anything outside."""
    parts = dotted.split(".")
    if parts[0] != root.name or len(parts) < 2:
        return None
    return parts[1]


def violations(root: Path = ROOT) -> list[str]:
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        mine = layer_of(me, root)
        if mine is None or mine not in ALLOWED:  # the package root, the embedded-model data package
            continue
        for line, target in dict.fromkeys(imports(path, root)):
            where = f"{path.relative_to(root.parent)}:{line}: {me} imports {target}"
            if target.split(".")[0] in TERMINAL and mine != "cli":
                found.append(f"{where} (the terminal belongs to cli/; report through ntk.report)")
                continue
            theirs = layer_of(target, root)
            if theirs is None or theirs == mine and mine != "pipelines":
                continue
            if theirs != mine:
                if theirs not in ALLOWED[mine]:
                    found.append(f"{where} ({mine}/ may not import {theirs}/)")
                continue
            # pipelines -> pipelines: a job imports shared modules and its own parts only
            a, b = me.split(".")[2:3], target.split(".")[2:3]
            if not a or not b or a == b or b[0] in SHARED:  # shared modules import shared modules only
                continue
            if any(a[0] in part and b[0] in part for part in JOB_PARTS):
                continue
            found.append(f"{where} (a pipeline imports a sibling job: move what they share to a shared module)")
    return found


def test_every_module_keeps_to_its_layer():
    assert violations() == []


def test_the_checker_finds_each_kind_of_leak(tmp_path):
    """A synthetic package with one bad import of each kind: every one is reported, the good ones are not."""
    pkg = tmp_path / "ntk"
    files = {
        "__init__.py": "from .model import x\n",
        "errors.py": "",
        "report.py": "",
        "model/__init__.py": "",
        "model/nt.py": "from ..errors import NtkError\ndef f():\n    from ..pipelines import segment\n",
        "model/cfg.py": "import ntk.io.fasta\n",
        "io/__init__.py": "",
        "io/fasta.py": "from ..report import NULL\nfrom rich.console import Console\n",
        "io/tables.py": "from ntk.model import nt\n",
        "plan/__init__.py": "",
        "plan/windows.py": "from ..train import loop\n",
        "train/__init__.py": "",
        "train/loop.py": "from ..plan.windows import tile\nfrom ..pipelines.windows import tile\n",
        "pipelines/__init__.py": "",
        "pipelines/engine.py": "from . import segment\n",
        "pipelines/segment.py": "from .engine import run\nfrom ..cli.common import console\n",
        "pipelines/tracks.py": "from .segment import run\n",
        "pipelines/embed.py": "from .score_variants import f\nfrom . import segment\n",
        "pipelines/score_variants.py": "from .family import g\nfrom .. import __version__\n",
        "cli/__init__.py": "",
        "cli/main.py": "from ..pipelines import segment\nimport rich\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    got = violations(pkg)
    bad = sorted(v.split(":")[0] + ":" + v.split(":")[1] for v in got)
    assert bad == sorted(["ntk/model/nt.py:3", "ntk/model/cfg.py:1", "ntk/io/fasta.py:2", "ntk/io/tables.py:1",
                          "ntk/plan/windows.py:1", "ntk/train/loop.py:2", "ntk/pipelines/segment.py:2",
                          "ntk/pipelines/engine.py:1",
                          "ntk/pipelines/embed.py:1", "ntk/pipelines/embed.py:2"]), "\n".join(got)
    assert any("sibling job" in v for v in got) and any("terminal" in v for v in got)
