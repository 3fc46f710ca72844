"""Tiling long sequences into overlapping model windows; only the central part of each window is kept.

One implementation for every job (segment, embed, ...). Coordinates are 0-based half-open.

For a run ``[s, e)`` and window length ``W`` (a multiple of ``unit``):
- runs shorter than ``unit`` get no window;
- runs no longer than ``W`` get one window of the largest multiple of ``unit`` that fits, plus, when that
  leaves a tail, a second one shifted back to end at ``e`` (windows are never padded);
- longer runs get windows every ``W - 2*crop`` nt, the last one shifted back to end at ``e``.
Each position of the run is kept from exactly one window: the boundary between neighbouring windows is the
middle of their overlap, so every kept position lies at least ``crop`` nt (or half the overlap) inside its
window, except at the two run ends, which only one window can cover.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    chrom: str
    start: int  # window start (absolute)
    end: int  # window end (absolute, exclusive)
    keep_start: int  # kept part (absolute)
    keep_end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def tile(start: int, end: int, window: int, crop: int, unit: int = 1, chrom: str = "") -> list[Window]:
    if window <= 0 or window % unit:
        raise ValueError(f"window {window} must be a positive multiple of {unit}")
    if not 0 <= 2 * crop < window:
        raise ValueError(f"crop {crop} must be >= 0 and less than half the window ({window})")
    L = end - start
    if L < unit:
        return []
    W = min(window, (L // unit) * unit)
    if W < L and W < window:
        starts = [start, end - W]
    else:
        step = max(W - 2 * crop, unit) if W == window else W
        starts = list(range(start, end - W, step)) if L > W else [start]
        if starts[-1] + W < end:
            starts.append(end - W)
    bounds = [start]
    for a, b in zip(starts, starts[1:]):
        bounds.append((b + a + W) // 2)  # middle of the overlap of windows a and b
    bounds.append(end)
    return [Window(chrom, p, p + W, bounds[i], bounds[i + 1]) for i, p in enumerate(starts)
            if bounds[i + 1] > bounds[i]]


def tile_runs(chrom: str, runs: list[tuple[int, int]], window: int, crop: int, unit: int = 1) -> Iterator[Window]:
    for s, e in runs:
        yield from tile(s, e, window, crop, unit, chrom)
