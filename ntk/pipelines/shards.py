"""Shards: split a run into N deterministic, balanced, contiguous blocks of work, and the manifest of each part.

``--shard I/N`` (1-based, so ``--array=1-N`` with ``--shard $SLURM_ARRAY_TASK_ID/N`` works) makes a command do
only the I-th block of its work and write a *part*: the usual output (same formats) plus a small manifest
(:func:`write_manifest`) that ``ntk merge`` checks before joining the parts.

Blocks are contiguous in the command's own work order (genome order for segment, input order for embed and
score-variants) and balanced by the model's work, never by record count alone, with one rule
(``pipelines/engine.shard_block``: a unit belongs to the shard whose share of the total weight holds the middle of
the unit's weight):

- segment: genome positions, units laid end to end (a window belongs to the shard that holds the first position
  it keeps, so a contig is cut between windows and every shard runs exactly the windows an unsharded run would);
- embed: the chunks of records an unsharded run empties at a record end, weighed by their windows' tokens;
- score-variants: the chunks of records scored together, weighed by their variants (ALT alleles).

The manifest names the shard, the inputs (file name, size and a checksum of their index), the model
(``config.fingerprint()``), the options that shape the output and the ntk version: parts of different runs
never merge.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..errors import InputError
from ..io.atomic import atomic_path

MANIFEST_VERSION = 1
DIR_MANIFEST = "shard.json"  # inside a segment output directory
FILE_MANIFEST_SUFFIX = ".ntk-shard.json"  # beside a file output (OUT.parquet.ntk-shard.json)
INDEX_SUFFIXES = (".fai", ".gzi", ".tbi", ".csi")


# ---------------------------------------------------------------------------------------------------
# input identity and manifests

def file_identity(path: str | os.PathLike) -> dict:
    """Name, size and a checksum of the index of an input file (or of its first MiB when it has none)."""
    p = Path(path)
    h = hashlib.sha256()
    indexes = [Path(str(p) + s) for s in INDEX_SUFFIXES if Path(str(p) + s).is_file()]
    if indexes:
        for ix in indexes:
            h.update(ix.read_bytes())
    else:
        with open(p, "rb") as fh:
            h.update(fh.read(1 << 20))
    return {"name": p.name, "size": p.stat().st_size, "checksum": h.hexdigest()[:16],
            "checksum_of": [ix.name for ix in indexes] or "first MiB"}


def manifest_path(output: str | os.PathLike) -> Path:
    """Where a part's manifest lives: inside an output directory, or beside an output file."""
    p = Path(output)
    return p / DIR_MANIFEST if p.is_dir() else Path(str(p) + FILE_MANIFEST_SUFFIX)


def make_manifest(kind: str, fmt: str, shard: tuple[int, int], inputs: dict[str, str | os.PathLike | None],
                  model_fingerprint: str, options: dict, extra: dict | None = None) -> dict:
    """The manifest of one part. ``kind``: the command; ``fmt``: the output format (segment dir, parquet,
    vcf); ``inputs``: role -> path (None entries are skipped); ``options``: those that shape the output."""
    return {
        "ntk_shard_manifest": MANIFEST_VERSION,
        "kind": kind,
        "format": fmt,
        "shard": {"index": shard[0], "count": shard[1]},
        "inputs": {role: file_identity(p) for role, p in inputs.items() if p is not None and str(p) != "-"},
        "model_fingerprint": model_fingerprint,
        "options": options,
        "ntk_version": __version__,
        **(extra or {}),
    }


def write_manifest(manifest: dict, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(part: str | os.PathLike) -> dict:
    p = Path(part)
    if not p.exists():
        raise InputError(f"{p}: part not found")
    mp = manifest_path(p)
    if not mp.is_file():
        raise InputError(f"{p}: not a shard part of ntk (no manifest {mp.name}; run with --shard I/N)")
    try:
        m = json.loads(mp.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{mp}: unreadable shard manifest ({e})") from None
    if m.get("ntk_shard_manifest") != MANIFEST_VERSION:
        raise InputError(f"{mp}: not an ntk shard manifest (version {m.get('ntk_shard_manifest')!r})")
    return m


IDENTITY = (("kind", "the output of another command"), ("format", "another output format"),
            ("model_fingerprint", "another model"), ("inputs", "other input files"),
            ("options", "other options"), ("ntk_version", "another ntk version"))


def check_parts(parts: Sequence[str | os.PathLike], manifests: Sequence[dict]) -> list[int]:
    """Check that ``parts`` are all N shards of one run; return their order (indices into ``parts``) by shard.
    Raises InputError naming the foreign, duplicated or missing part."""
    if not parts:
        raise InputError("ntk merge: no parts given")
    ref, ref_part = manifests[0], parts[0]
    for part, m in zip(parts[1:], manifests[1:]):
        for key, what in IDENTITY:
            if m.get(key) != ref.get(key):
                detail = _difference(ref.get(key), m.get(key))
                raise InputError(f"{part}: foreign part: comes from {what} than {ref_part} ({key}{detail})")
        if m["shard"]["count"] != ref["shard"]["count"]:
            raise InputError(f"{part}: foreign part: shard {m['shard']['index']}/{m['shard']['count']}, but "
                             f"{ref_part} is shard {ref['shard']['index']}/{ref['shard']['count']}")
    n = ref["shard"]["count"]
    seen: dict[int, int] = {}
    for k, m in enumerate(manifests):
        i = m["shard"]["index"]
        if i in seen:
            raise InputError(f"shard {i}/{n} given twice: {parts[seen[i]]} and {parts[k]}")
        seen[i] = k
    missing = [i for i in range(1, n + 1) if i not in seen]
    if missing:
        listed = ", ".join(f"{i}/{n}" for i in missing)
        raise InputError(f"missing part: shard {listed} not given ({len(parts)} of {n} parts)")
    return [seen[i] for i in range(1, n + 1)]


def _difference(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return f".{k}{_difference(a.get(k), b.get(k))}"
        return ""
    return f": {a!r} vs {b!r}"
