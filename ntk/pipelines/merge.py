"""``ntk merge``: join the parts of a sharded run (``--shard I/N``) into exactly what one unsharded run writes.

The kind of output is read from each part's manifest (``pipelines/shards.py``); all N parts of one run must be
given (any order), once each, from the same inputs, model, options and ntk version, else the merge refuses,
naming the missing, duplicated or foreign part. The output is written atomically.

- segment output directories: the parts' BigWig values are read back over the spans each part covers and
  streamed, in shard order, through the same writers as a run (``io.track_outputs.TrackOutputs``): the BigWigs hold
  identical float32 values and ``segments.bed.gz`` is called again over the joined values, so a segment that
  crosses a shard boundary comes out as one call, as in an unsharded run;
- Parquet tables (embed, score-variants ``--table``): rows of the parts in shard order, metadata of part 1;
- VCF (score-variants): the header of part 1 (``##ntkCommand`` without its ``--shard``) and the records of every
  part in shard order; ``.vcf.gz`` is bgzip-compressed and tabix-indexed.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, NtkError
from ..io.atomic import atomic_dir, atomic_path, check_writable_target
from .shards import check_parts, read_manifest

READ_BLOCK = 1 << 20  # positions read back from a part's BigWigs at a time
_SHARD_ARG = re.compile(r"\s--shard(?:=|\s+)\S+")


@dataclass
class MergeResult:
    output: Path
    kind: str
    fmt: str
    parts: int
    rows: int = 0  # VCF records or table rows; positions for segment outputs


def merge_parts(parts: Sequence[str | os.PathLike], output: str | os.PathLike, force: bool = False
                ) -> MergeResult:
    """Merge the ``parts`` of one sharded run into ``output``; see the module docstring."""
    parts = [str(p) for p in parts]
    out = Path(output)
    if any(Path(p).resolve() == out.resolve() for p in parts):
        raise NtkError(f"-o {out}: is one of the parts; write the merged output elsewhere")
    manifests = [read_manifest(p) for p in parts]
    order = check_parts(parts, manifests)
    parts = [parts[k] for k in order]
    manifests = [manifests[k] for k in order]
    fmt = manifests[0]["format"]
    result = MergeResult(out, manifests[0]["kind"], fmt, len(parts))
    if fmt == "segment-dir":
        result.rows = _merge_segment(parts, manifests, out, force)
    elif fmt == "parquet":
        result.rows = _merge_parquet(parts, out, force)
    elif fmt == "vcf":
        result.rows = _merge_vcf(parts, out, force)
    else:
        raise InputError(f"{parts[0]}: unknown part format {fmt!r} in its manifest")
    return result


# ---------------------------------------------------------------------------------------------------
# segment output directories

def _valid_runs(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.diff(np.concatenate(([0], valid.view(np.int8), [0])))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def _merge_segment(parts: list[str], manifests: list[dict], out: Path, force: bool) -> int:
    import pyBigWig

    from ..io.track_outputs import TrackOutputs

    opts = manifests[0]["options"]
    feats = list(opts["features"])
    chrom_sizes = [(c, int(n)) for c, n in manifests[0]["chrom_sizes"]]
    written = 0
    with atomic_dir(out, force=force) as tmp:
        outputs = TrackOutputs(tmp, chrom_sizes, feats, opts["threshold"], opts["min_length"],
                               zoom_levels=opts["zoom_levels"], segments=opts.get("segments", True),
                               merge_gap=opts.get("merge_gap", 0))
        try:
            for part, m in zip(parts, manifests):
                bws = []
                try:
                    for f in feats:
                        path = Path(part) / f"{f}.bw"
                        if not path.is_file():
                            raise InputError(f"{part}: incomplete part: {path.name} is missing")
                        bws.append(pyBigWig.open(str(path)))
                    for chrom, s, e in m["spans"]:
                        for b in range(s, e, READ_BLOCK):
                            be = min(b + READ_BLOCK, e)
                            vals = np.stack([bw.values(chrom, b, be, numpy=True) for bw in bws], axis=1)
                            vals = vals.astype(np.float32)
                            starts, ends = _valid_runs(~np.isnan(vals[:, 0]))
                            for a, z in zip(starts, ends):
                                outputs.add(chrom, b + int(a), vals[a:z])
                                written += int(z - a)
                finally:
                    for bw in bws:
                        bw.close()
            outputs.close()
        except BaseException:
            outputs.abort()
            raise
        (tmp / "run.json").write_text(json.dumps(_merged_run_info(manifests, outputs), indent=2) + "\n")
    return written


def _merged_run_info(manifests: list[dict], outputs) -> dict:
    runs = [m.get("run", {}) for m in manifests]
    info = dict(runs[0])
    info["command"] = _SHARD_ARG.sub("", info.get("command") or "") or None
    info["shard"] = None
    info["merged_from"] = len(manifests)
    for key in ("bp_scored", "n_windows"):
        info[key] = sum(int(r.get(key) or 0) for r in runs)
    info["n_segments"] = outputs.segments.n_segments if outputs.segments is not None else 0
    info["timings_s"] = {k: round(sum(float(r.get("timings_s", {}).get(k, 0.0)) for r in runs), 3)
                         for k in runs[0].get("timings_s", {})}
    return info


# ---------------------------------------------------------------------------------------------------
# Parquet tables

def _merge_parquet(parts: list[str], out: Path, force: bool) -> int:
    import polars as pl

    from ..io.tables import read_parquet_metadata

    check_writable_target(out, force)
    meta = read_parquet_metadata(parts[0])
    lf = pl.scan_parquet(parts)
    with atomic_path(out) as tmp:
        lf.sink_parquet(tmp, metadata=meta or None)
    return pl.scan_parquet(out).select(pl.len()).collect().item()


# ---------------------------------------------------------------------------------------------------
# VCF

def _open_text(path: str):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rt") if magic == b"\x1f\x8b" else open(path, "rt")


def _merge_vcf(parts: list[str], out: Path, force: bool) -> int:
    import pysam

    from ..io.vcf import output_mode

    if str(out) == "-":
        raise NtkError("ntk merge writes a file: give -o OUT.vcf.gz or OUT.vcf")
    compressed = output_mode(str(out)) == "wz"
    check_writable_target(out, force)
    n = 0
    with atomic_path(out, suffix=".vcf.gz" if compressed else ".vcf") as tmp:
        fh = pysam.BGZFile(str(tmp), "wb") if compressed else open(tmp, "wb")
        try:
            for k, part in enumerate(parts):
                with _open_text(part) as src:
                    for line in src:
                        if line.startswith("#"):
                            if k == 0:
                                if line.startswith("##ntkCommand="):
                                    line = _SHARD_ARG.sub("", line.rstrip("\n")) + "\n"
                                fh.write(line.encode())
                            continue
                        fh.write(line.encode())
                        n += 1
        finally:
            fh.close()
        idx = Path(str(out) + ".tbi")
        if compressed:
            tmp_idx = Path(str(tmp) + ".tbi")
            try:
                pysam.tabix_index(str(tmp), preset="vcf", force=True, index=str(tmp_idx))
                shutil.move(tmp_idx, idx)
            except Exception:  # records not sorted by position: no index, as for a direct run
                tmp_idx.unlink(missing_ok=True)
                idx.unlink(missing_ok=True)
    return n
