"""An installable package (issue 15): `python -m build` makes an sdist and a wheel; the wheel installed into a
fresh virtual environment (no editable install, this checkout not on the path) runs `ntk --version`, `ntk models
list` and `ntk segment` with the embedded model, which proves the package data ships. And every dependency in
pyproject.toml is used, every third-party import is declared.

No network: the build runs without isolation (setuptools from this environment), the wheel is installed with
`--no-deps --no-index`, and the fresh environment reaches its dependencies (torch, numpy, ...) through a `.pth`
file naming this environment's site-packages, which adds them after the environment's own packages (so `ntk`
is the wheel's, and this environment's editable-install hook is not run).
"""
from __future__ import annotations

import ast
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# distribution name -> import name, where they differ
IMPORT_NAME = {"pyBigWig": "pyBigWig", "torch-xla": "torch_xla"}
# imported but deliberately not a dependency: imported lazily by one optional code path, with a message
OPTIONAL = {"huggingface_hub": "only `ntk models download` (says how to install it)",
            "matplotlib": "the [plot] extra: ntk plot and training curves (skipped with a message)",
            "torch_xla": "the [tpu] extra: --device xla",
            "tokenizers": "the [chat] extra: ChatNT's English tokenizer (ntk chat says how to install it)",
            "sentencepiece": "ChatNT's tokenizer when the checkpoint has only a SentencePiece model (optional)"}


def _dist_name(requirement: str) -> str:
    for sep in "<>=!~[ ;":
        requirement = requirement.split(sep)[0]
    return requirement.strip()


def _imports() -> set[str]:
    names = set()
    for path in (ROOT / "ntk").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_dependency_is_used_and_every_import_declared():
    deps = {_dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
    imported = _imports()
    modules = {IMPORT_NAME.get(d, d.lower().replace("-", "_")): d for d in deps}
    unused = [d for m, d in modules.items() if m not in imported]
    assert not unused, f"declared in pyproject.toml but never imported by ntk: {unused}"
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("ntk", "__future__")}
    undeclared = sorted(third_party - set(modules) - set(OPTIONAL))
    assert not undeclared, f"imported by ntk but not declared in pyproject.toml: {undeclared}"
    extras = {_dist_name(r) for reqs in PYPROJECT["project"]["optional-dependencies"].values() for r in reqs}
    for m in ("matplotlib", "torch_xla"):
        assert any(IMPORT_NAME.get(e, e.lower().replace("-", "_")) == m for e in extras), m


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """sdist + wheel built from a copy of the project (the checkout stays clean), as `python -m build` does:
    the sdist first, then the wheel from the unpacked sdist."""
    pytest.importorskip("build", reason="python -m build needs the 'build' package (pip install -e .[dev])")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "ntk", src / "ntk", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return out


def test_build_makes_wheel_and_sdist_with_the_embedded_model(dist):
    import tarfile

    wheels, sdists = list(dist.glob("ntk-*.whl")), list(dist.glob("ntk-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    for f in ("ntk/models/ntk-yeast-tiny/config.json", "ntk/models/ntk-yeast-tiny/model.safetensors",
              "ntk/cli/main.py", "ntk/report.py", "ntk/cli/progress.py", "ntk/plan/windows.py"):
        assert f in names, f
    assert not any(n.startswith("tests/") for n in names)
    meta = zipfile.ZipFile(wheels[0]).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "Requires-Dist: torch" in meta and "Requires-Dist: pyfaidx" not in meta and "Requires-Dist: pybedtools" not in meta
    with tarfile.open(sdists[0]) as t:
        assert any(n.endswith("ntk/models/ntk-yeast-tiny/model.safetensors") for n in t.getnames())


def test_wheel_installs_into_a_fresh_venv_and_runs(dist, tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # no checkout on the path
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=env)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True, env=env).stdout.strip())
    wheel = next(dist.glob("ntk-*.whl"))
    p = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (purelib / "ntk" / "models" / "ntk-yeast-tiny" / "model.safetensors").is_file()
    # then this environment's packages (torch, numpy, ...), after the venv's own: no download needed (written
    # after the install, so pip never sees this environment's editable ntk)
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    (purelib / "zz_ntk_test_deps.pth").write_text("\n".join(sorted(p for p in ours if Path(p).is_dir())) + "\n")
    env.update(OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    work = tmp_path / "work"
    work.mkdir()

    def run(*args):
        r = subprocess.run([str(a) for a in args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{args}: {r.stderr[-2000:]}"
        return r

    where = run(py, "-c", "import ntk, ntk.cli.main; print(ntk.__file__)").stdout.strip()
    assert Path(where).is_relative_to(venv), f"ntk imported from {where}, not from the installed wheel"
    assert not Path(where).is_relative_to(ROOT)
    ntk_bin = venv / "bin" / "ntk"
    assert run(ntk_bin, "--version").stdout.strip() == f"ntk {PYPROJECT['project']['version']}"
    listing = run(ntk_bin, "models", "list").stdout
    assert "ntk-yeast-tiny (default)" in listing and "InstaDeepAI/segment_nt_multi_species" in listing
    rng = __import__("numpy").random.default_rng(0)
    (work / "g.fa").write_text(">c1\n" + "".join(rng.choice(list("ACGT"), 3000)) + "\n")
    run(ntk_bin, "segment", work / "g.fa", "-o", work / "seg", "-q")
    got = sorted(f.name for f in (work / "seg").iterdir())
    assert "segments.bed.gz" in got and "exon.bw" in got and "run.json" in got
