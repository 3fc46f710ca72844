"""Training checkpoints and the run directory (one format for ``ntk pretrain`` and ``ntk finetune``).

Run directory layout::

    RUN_DIR/run.json                      what made the run (kind, options, ntk version): identifies it as ntk's
    RUN_DIR/checkpoints/step-00000100/    one directory per save, complete or absent (written to a temp name,
        config.json, model.safetensors    then renamed): the HF layout, so ``ntk.load_model(dir)`` and every
        trainer_state.pt                  command load it; plus the optimiser/scheduler/RNG/data state
    RUN_DIR/final/                        the final model (config.json + model.safetensors)
    RUN_DIR/best/                         the best model by the monitored metric (when ``save_best``)
    RUN_DIR/metrics.parquet               one row per optimiser step (and eval columns)
    RUN_DIR/training_curves.png

``trainer_state.pt`` holds only tensors and plain Python values and is read with
``torch.load(weights_only=True)``: nothing in a run directory is ever executed.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import CheckpointError, NtkError
from ..model.checkpoint import load_into, load_state_dict, save_model

STATE_FILE = "trainer_state.pt"
RUN_FILE = "run.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# entries ntk writes into a run directory (removed by --force, nothing else is)
RUN_ENTRIES = ("run.json", "checkpoints", "final", "best", "metrics.parquet", "training_curves.png",
               "summary.json")


# -- run directory ---------------------------------------------------------------------------------
def read_run_info(run_dir: Path) -> dict | None:
    p = Path(run_dir) / RUN_FILE
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) and "kind" in d else None


def prepare_run_dir(run_dir: str | os.PathLike, kind: str, resume: bool, force: bool, options: dict,
                    write: bool = True) -> Path | None:
    """Check ``run_dir`` for this run; return the checkpoint to resume from (or None for a fresh start).

    - empty or missing: fresh run.
    - holds an ntk run of the same kind: ``resume`` continues from its latest checkpoint; ``force`` starts over
      (ntk's own entries are removed, other files are left alone); otherwise an error.
    - holds anything else (a foreign directory): refused unless ``force``.
    ``write``: write ``run.json`` (rank 0 only under torchrun).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NtkError(f"{run_dir}: exists and is not a directory")
    entries = [p for p in run_dir.iterdir() if not p.name.startswith(".")] if run_dir.is_dir() else []
    info = read_run_info(run_dir)
    resume_from = None
    if resume:
        if info is None:
            raise NtkError(f"{run_dir}: --resume needs a run directory written by ntk ({RUN_FILE} not found)")
        if info.get("kind") != kind:
            raise NtkError(f"{run_dir}: holds an `ntk {info.get('kind')}` run, not `ntk {kind}`; cannot --resume it")
        resume_from = latest_checkpoint(run_dir)
        if resume_from is None:
            raise NtkError(f"{run_dir}: no complete checkpoint to resume from (checkpoints/step-*/{STATE_FILE})")
    elif entries:
        if not force:
            what = (f"a previous `ntk {info.get('kind')}` run" if info is not None
                    else f"{len(entries)} file(s) not written by ntk (e.g. {entries[0].name})")
            raise NtkError(f"{run_dir}: output directory holds {what}; use --resume to continue it or --force to "
                           "start over" if info is not None else
                           f"{run_dir}: output directory holds {what}; choose another -o or use --force")
        if write:
            for name in RUN_ENTRIES:
                p = run_dir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        record = dict(info or {})
        if not resume or not record:
            record = {"kind": kind, "ntk_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "options": options}
        else:
            record.setdefault("resumed", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "options": options})
        write_json_atomic(run_dir / RUN_FILE, record)
    return resume_from


def write_json_atomic(path: Path, obj) -> None:
    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


# -- checkpoints -----------------------------------------------------------------------------------
def checkpoint_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints (with a trainer state) as (step, path), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE_FILE).is_file() and (p / "config.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: torch.nn.Module, state: dict,
                    keep: int | None = None) -> Path:
    """Write ``checkpoints/step-NNNNNNNN/`` atomically (temp dir + rename); keep the ``keep`` newest."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    from ..io.atomic import temp_dir

    staging = temp_dir(final)
    try:
        inner = save_model(model, staging / "model")
        torch.save(state, inner / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(inner, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if keep:
        for _, old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module) -> dict:
    """Load the weights of checkpoint ``path`` into ``model`` (in place); return its trainer state."""
    path = Path(path)
    load_into(model, load_state_dict(path), str(path))
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors of every kind: the file is not a trainer state we wrote
        raise CheckpointError(f"{path / STATE_FILE}: not a readable trainer state ({str(e).splitlines()[0][:200]})") \
            from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path / STATE_FILE}: not an ntk trainer state")
    return state


# -- RNG states as tensors / plain values (weights_only-safe) --------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    d = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        d["cuda"] = torch.cuda.get_rng_state_all()
    return d


def set_rng_state(d: dict) -> None:
    if "python" in d:
        v = d["python"]
        random.setstate((v[0], tuple(v[1]), v[2]))
    if "numpy" in d:
        n = d["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if "torch" in d:
        torch.set_rng_state(d["torch"])
    if "cuda" in d and torch.cuda.is_available() and len(d["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(d["cuda"])
