"""``--resume``: a journal of finished work units, so that a killed run (SIGKILL, preemption, out of time) started
again redoes only the units it had not finished.

A run with ``--resume`` keeps its results, one fixed-size *chunk* of work at a time, in a hidden directory beside
its output (``.OUTDIR.ntk-partial/``): ``journal.json`` (what the run is: inputs, model, options, chunk size) and
one ``chunk-NNNNNNNN.npz`` per finished chunk, each written to a temporary name and renamed, so a chunk file is
either complete or absent whatever moment the process dies. Started again with ``--resume``, the run checks that
the journal describes the same run (refuses otherwise), skips the finished chunks, computes the others, then
writes the final outputs from all chunks in order and removes the partial directory.

A chunk holds the kept values of its windows as contiguous pieces ``(chrom, start, values[n, F])``; the final
outputs are built from exactly these values, so a resumed run writes what an uninterrupted one writes.

Commands whose work units are chunks of records (``embed``: its token-bounded chunks of records;
``score-variants``: its scoring chunks of records) keep whole units instead: :meth:`Journal.save` stores the
arrays of unit ``k`` (``chunk-k.npz``, which marks the unit done), optionally after pieces of it written as
they come (``part-k-j.npz``, so that a long unit never has to be held in memory); :meth:`Journal.load` reads
them back.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_path, clean_leftovers

JOURNAL = "journal.json"
CHUNK_BP = 1 << 22  # positions per chunk (4 Mbp: ~4 min of SegmentNT on one GPU, a few MB of float32 per feature)


def partial_dir(output: str | os.PathLike) -> Path:
    """The hidden directory that holds the partial state of the run writing ``output``."""
    p = Path(output)
    return p.parent / f".{p.name}.ntk-partial"


class Journal:
    """Finished chunks of one run. ``identity`` describes the run; a journal of another run is refused."""

    def __init__(self, directory: str | os.PathLike, identity: dict, chunk_bp: int = CHUNK_BP, unit: str = "bp"):
        self.dir = Path(directory)
        self.chunk_bp = int(chunk_bp)  # the size of a unit, in ``unit`` (bp, tokens, records)
        # compared as stored: JSON has no tuples (score-variants' --chr-map pairs), so compare the JSON round trip
        self.identity = json.loads(json.dumps({**identity, f"chunk_{unit}": self.chunk_bp}))
        self.computed = 0
        journal = self.dir / JOURNAL
        if journal.is_file():
            try:
                old = json.loads(journal.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise InputError(f"{journal}: unreadable resume journal ({e}); delete {self.dir} to start over") \
                    from None
            if old != self.identity:
                key = next((k for k in sorted(set(old) | set(self.identity)) if old.get(k) != self.identity.get(k)),
                           "?")
                raise InputError(f"--resume: the partial run in {self.dir} was started with a different {key} "
                                 f"(another model, input or options); delete {self.dir} or run without --resume")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(journal) as tmp:
                tmp.write_text(json.dumps(self.identity, indent=2, sort_keys=True) + "\n")
        clean_leftovers(self.dir)  # half-written chunks of a run that was killed (owner process gone)
        self.done = {int(f.name[6:14]) for f in self.dir.glob("chunk-*.npz")}
        self.reused = len(self.done)
        self._cur: int | None = None
        self._pieces: list[tuple[str, int, np.ndarray]] = []

    def chunk_of(self, gpos: int) -> int:
        return gpos // self.chunk_bp

    def is_done(self, gpos: int) -> bool:
        return self.chunk_of(gpos) in self.done

    def _path(self, k: int) -> Path:
        return self.dir / f"chunk-{k:08d}.npz"

    # -- writing ---------------------------------------------------------------------------------
    def add(self, gpos: int, chrom: str, start: int, values: np.ndarray) -> None:
        """Kept values of one window whose first kept position is ``gpos``; windows arrive in order, so a chunk
        is complete (and committed) when the first window of a later chunk arrives."""
        k = self.chunk_of(gpos)
        if k != self._cur:
            self.commit()
            self._cur = k
        self._pieces.append((chrom, start, np.ascontiguousarray(values, dtype=np.float32)))

    def commit(self) -> None:
        if self._cur is None:
            return
        pieces, k = self._pieces, self._cur
        self._pieces, self._cur = [], None
        with atomic_path(self._path(k), suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, chroms=np.array([c for c, _, _ in pieces]),
                         starts=np.array([s for _, s, _ in pieces], dtype=np.int64),
                         lengths=np.array([v.shape[0] for _, _, v in pieces], dtype=np.int64),
                         values=np.concatenate([v for _, _, v in pieces]))
        self.done.add(k)
        self.computed += 1

    # -- reading back ----------------------------------------------------------------------------
    def replay(self, add: Callable[[str, int, np.ndarray], None]) -> None:
        """Every stored piece, in order, to ``add(chrom, start, values)``."""
        for k in sorted(self.done):
            with np.load(self._path(k)) as z:
                values = z["values"]
                offs = np.concatenate(([0], np.cumsum(z["lengths"])))
                for c, s, a, b in zip(z["chroms"], z["starts"], offs[:-1], offs[1:]):
                    add(str(c), int(s), values[a:b])

    # -- whole work units (chunks of records) ---------------------------------------------------
    def has(self, k: int) -> bool:
        return k in self.done

    def _part_path(self, k: int, part: int) -> Path:
        return self.dir / f"part-{k:08d}-{part:06d}.npz"

    def save(self, k: int, arrays: dict[str, np.ndarray], part: int | None = None) -> None:
        """Store ``arrays`` (no pickled objects) for unit ``k``, atomically. With ``part``, a piece of the unit
        (not yet done); without, the unit's final record, which marks it done."""
        path = self._path(k) if part is None else self._part_path(k, part)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        if part is None:
            self.done.add(k)
            self.computed += 1

    def load(self, k: int, part: int | None = None) -> dict[str, np.ndarray]:
        path = self._path(k) if part is None else self._part_path(k, part)
        with np.load(path) as z:
            return {name: z[name] for name in z.files}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
