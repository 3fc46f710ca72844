"""``ntk tracks``: an NTv3 post-trained model's BigWig-track head over a genome -> one float32 BigWig per track.

The same job as ``ntk segment`` (``pipelines/segment.py``: work units, NTv3 window tiling and N handling from
``pipelines/family.py``, streaming writers, ``--shard``/``ntk merge``, ``--resume``, torchrun), run with the
BigWig head for one species instead of the BED-element head. Values are the model's output for the track
(softplus, float32), at the kept centre of each window; positions that are N in the genome get no value.
``run.json`` names the species, the track ids written and the head they come from.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import InputError, NtkError
from .segment import SegmentResult, segment_genome


def parse_tracks(spec: str | Sequence[str] | None) -> list[str] | None:
    """``--tracks``: comma-separated track ids, or a file with one id per line (blank lines and ``#`` comments
    skipped); None = every track of the species."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return list(spec)
    p = Path(spec)
    if p.is_file():
        ids = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            t = line.split("#", 1)[0].strip()
            if t:
                if "\t" in t or " " in t:
                    raise InputError(f"{p}: line {n}: expected one track id per line, got {line.strip()!r}")
                ids.append(t)
        if not ids:
            raise InputError(f"{p}: no track ids in the file")
        return ids
    ids = [t.strip() for t in spec.split(",") if t.strip()]
    if not ids:
        raise NtkError("--tracks: no track ids given")
    return ids


def tracks_genome(fasta: str | os.PathLike, out_dir: str | os.PathLike | None, *, model=None,
                  species: str | None = None, tracks: str | Sequence[str] | None = None,
                  **kwargs) -> SegmentResult:
    """Write ``OUTDIR/<track>.bw`` for the selected ``tracks`` of ``species`` (all by default) + ``run.json``.
    Other keyword arguments as :func:`pipelines.segment.segment_genome` (regions, window, rc_average, device,
    shard, resume, bedgraph=TRACK, ...); ``crop``, ``threshold`` and ``min_length`` do not apply."""
    return segment_genome(fasta, out_dir, model=model, species=species, features=track_ids(tracks), head="bigwig",
                          **kwargs)


def track_ids(spec: str | Sequence[str] | None) -> list[str] | None:
    """``--tracks`` as the track ids to write (:func:`parse_tracks`), each at most once; None = all."""
    ids = parse_tracks(spec)
    if ids is not None and len(set(ids)) != len(ids):
        dup = next(t for t in ids if ids.count(t) > 1)
        raise NtkError(f"--tracks: track {dup!r} given twice")
    return ids
