"""The machinery that segment, embed and score-variants share: shards, the resume journal, the overlap of reading,
model and writing, run.json and the part manifest. Each job supplies only what is its own: its work units and their
weight, how a batch is encoded, the forward pass, and how results are written.

1. **Work units and shards** (:func:`shard_block`, :func:`shard_span`): a job's work is a deterministic sequence
   of units in its own order (segment: genome positions, units laid end to end; embed: the token-bounded chunks of
   records its batcher empties at a record end; score-variants: chunks of records), each with a weight (bp, tokens,
   ALT alleles). ``--shard I/N`` takes a contiguous block of units, balanced by weight, with one rule: a unit
   belongs to the shard whose share of the total weight holds the middle of the unit's own weight. Units are cut
   only where an unsharded run is cut, so a shard runs exactly the batches an unsharded run would, and the merged
   parts are identical to one run.
2. **The resume journal** (:func:`open_journal`, the journal itself in ``pipelines/resume.py``): finished units
   are kept beside the output under the run's identity (inputs, model fingerprint, options, shard); a run started
   again with ``--resume`` skips them.
3. **Overlap** (:func:`overlap`): a reader thread prepares items (reads inputs, tokenizes, encodes batches), the
   calling thread runs the model on each, and a writer thread writes the results, in order, with bounded queues
   between them so that memory stays flat. A failure in any of the three stops the other two and re-raises in
   the caller. :func:`background` (the reader alone) is also what ``train/`` prefetches batches with
   (``ntk/plan/threads.py``).
4. **Records of the run** (:func:`write_run_json`, :func:`write_part_manifest`): ``run.json`` and, for a shard,
   the manifest that ``ntk merge`` checks.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import NtkError
from ..plan.threads import Writer, background
from .resume import Journal, partial_dir
from .shards import make_manifest, write_manifest

__all__ = ["shard_block", "shard_span", "open_journal", "overlap", "written_behind", "background", "write_run_json",
           "write_part_manifest", "open_model"]


# ---------------------------------------------------------------------------------------------------
# 1. shards

def shard_block(weights: Sequence[float] | np.ndarray, shard: tuple[int, int]) -> tuple[int, int]:
    """Unit range ``[lo, hi)`` of shard ``I/N`` over units with the given work ``weights``: unit k goes to the
    shard whose share of the total work holds the middle of the unit's own work, so blocks are contiguous, cover
    every unit exactly once and differ in work by at most one unit. All units weigh nothing: split by count."""
    i, n = shard
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        return 0, 0
    total = float(w.sum())
    if total <= 0:
        return (i - 1) * w.size // n, i * w.size // n
    mid = np.cumsum(w) - w / 2.0
    owner = np.minimum((mid * n / total).astype(np.int64), n - 1)  # 0-based shard of each unit
    return int(np.searchsorted(owner, i - 1, side="left")), int(np.searchsorted(owner, i - 1, side="right"))


def shard_span(total: int, shard: tuple[int, int]) -> tuple[int, int]:
    """:func:`shard_block` for ``total`` units of weight 1 each (genome positions laid end to end), without
    building them: ``[lo, hi)``. Segment: a batch belongs to the shard that holds its first kept position."""
    i, n = shard
    if total <= 0:
        return 0, 0

    def first(j: int) -> int:  # first unit k with floor((k + 1/2) n / total) >= j
        return min(total, max(0, -(-(2 * j * total - n) // (2 * n))))
    return first(i - 1), first(i) if i < n else total


# ---------------------------------------------------------------------------------------------------
# 2. the resume journal

def open_journal(kind: str, fmt: str, output: str | os.PathLike, shard: tuple[int, int] | None,
                 inputs: dict, fingerprint: str, options: dict, chunk: int, unit: str = "bp") -> Journal:
    """The journal of finished units kept beside ``output`` (``.OUTPUT.ntk-partial/``) for a run identified by its
    kind, format, shard, inputs, model fingerprint and options (the shard manifest without the ntk version); a
    journal left by a run with another identity is refused."""
    ident = make_manifest(kind, fmt, shard or (1, 1), inputs, fingerprint, options)
    ident.pop("ntk_version")
    return Journal(partial_dir(output), ident, chunk, unit=unit)


# ---------------------------------------------------------------------------------------------------
# 3. reading / model / writing overlap

def overlap(items: Iterable, work: Callable, write: Callable, read_ahead: int = 3, write_behind: int = 4) -> float:
    """Iterate ``items`` in a reader thread (``read_ahead`` items ahead), run ``work(item)`` in the calling thread
    and ``write(result)`` in a writer thread (at most ``write_behind`` results waiting), in order; ``write(None)``
    once at the end. Returns the seconds spent in ``work``. A failure anywhere stops the others, drops what is
    queued and re-raises here."""
    stop = threading.Event()
    reader = background(items, read_ahead, stop)
    busy = 0.0

    def results():
        nonlocal busy
        for item in reader:
            t = time.perf_counter()
            result = work(item)
            busy += time.perf_counter() - t
            yield result

    try:
        written_behind(results(), write, write_behind, stop)
    finally:
        reader.close(timeout=10.0)  # the reader stops; its inputs are the caller's again (e.g. to close them)
    return busy


def written_behind(results: Iterable, write: Callable, maxsize: int = 4, stop: threading.Event | None = None) -> None:
    """``write(result)`` for each of ``results`` (computed in the calling thread) in a writer thread, in order,
    at most ``maxsize`` waiting; ``write(None)`` once at the end. A failure of either side stops the other and
    re-raises here."""
    stop = stop if stop is not None else threading.Event()
    writer = Writer(write, maxsize, stop)
    try:
        for result in results:
            writer.submit(result)
        writer.submit(None)
    except BaseException:
        stop.set()  # the writer drops what is queued
        writer.join(check=False)
        raise
    writer.join()


# ---------------------------------------------------------------------------------------------------
# 4. records of the run

def write_run_json(directory: Path, info: dict) -> None:
    (directory / "run.json").write_text(json.dumps(info, indent=2) + "\n")


def write_part_manifest(kind: str, fmt: str, shard: tuple[int, int], inputs: dict, fingerprint: str, options: dict,
                        extra: dict, path: str | os.PathLike) -> None:
    """The manifest of one part, which ``ntk merge`` checks before joining the parts (``pipelines/shards.py``)."""
    write_manifest(make_manifest(kind, fmt, shard, inputs, fingerprint, options, extra), path)


# ---------------------------------------------------------------------------------------------------
# the model

def open_model(model, device: str = "auto", precision: str = "auto", threads: int | None = None,
               task: str | None = None, window: int | None = None, compile: str = "off"):
    """``(model, precision)`` for a job: ``model`` is a loaded model (used as it is, on its device and dtype), a
    checkpoint directory, a preset name, or None (the embedded default), loaded on ``device`` in ``precision``
    (``auto``: :func:`ntk.model.runtime.choose_precision` for ``task``: segment, embed or score, which also names
    the job whose rules a ``window`` is checked against from config.json before any weights load). ``threads`` sets torch's CPU
    threads. ``compile`` (``--compile``: off, on, cudagraphs) is checked against the device before any weights
    load (:func:`ntk.model.compiled.check_compile`); the job compiles its own forward. ``fp8``: bf16 with the
    trunk's linear layers in float8 (:func:`ntk.model.fp8.to_fp8`)."""
    import torch

    from ..model import load_model
    from ..model.checkpoint import check_window_before_loading
    from ..model.compiled import check_compile
    from ..model.runtime import Precision, choose_precision, resolve_device, set_threads

    set_threads(threads)
    if isinstance(model, torch.nn.Module):
        from ..model.fp8 import is_fp8
        check_compile(compile, next(model.parameters()).device)
        return model.eval(), Precision(model.dtype, "given model", fp8=is_fp8(model))
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise NtkError(f"model: expected a checkpoint directory, a preset name or a loaded model, not "
                       f"{type(model).__name__}")
    prec = choose_precision(precision, resolve_device(device), task=task)
    check_compile(compile, resolve_device(device))
    check_window_before_loading(model, window, task or "")
    m = load_model(model, device=resolve_device(device), dtype=prec.dtype).eval()
    if prec.fp8:  # --precision fp8: the trunk's linear layers in float8 (ntk/model/fp8.py)
        from ..model.fp8 import to_fp8
        to_fp8(m)
    return m, prec
