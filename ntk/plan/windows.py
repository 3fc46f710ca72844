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

**Blending** (:func:`blend_zone`, :func:`blend_pair`, :class:`Blender`): a kept part says which window *owns* a
position (shards, resume chunks and outputs are cut by it), but the value written there is, near the boundary
``m`` between neighbouring windows ``a`` and ``b``, a weighted mean of both windows' predictions: over
``[m - h, m + h)`` (``h`` = half their overlap, at most half of either kept part) the weight of ``b`` rises
from ~0 to ~1 (``linear``: ``t``; ``cosine``: ``(1 - cos(pi t)) / 2``, ``t`` = (x - (m - h) + 0.5) / 2h) and
that of ``a`` falls by as much. Neighbouring windows of a 6-mer model see different tokenization frames and
context and disagree; cutting hard at ``m`` shows that disagreement as a step, blending spreads it over the
overlap. A position covered by one window only (a run of one window, the run ends) keeps that window's value
exactly. ``none`` cuts at ``m`` (the older behaviour).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BLEND_MODES = ("linear", "cosine", "none")


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


def neighbours(a: Window, b: Window) -> bool:
    """``b`` directly follows ``a`` in the same run (their kept parts touch and the windows overlap)."""
    return a.chrom == b.chrom and a.keep_end == b.keep_start and b.start < a.end


def blend_zone(a: Window, b: Window) -> tuple[int, int]:
    """``(m, h)``: positions ``[m - h, m + h)`` around the boundary ``m`` of neighbours ``a``, ``b`` are blended."""
    m = a.keep_end
    h = min(m - b.start, a.end - m, (a.keep_end - a.keep_start) // 2, (b.keep_end - b.keep_start) // 2)
    return m, max(h, 0)


def ramp(h: int, mode: str = "linear") -> np.ndarray:
    """Weights of the second window over a zone of ``2h`` positions (float32, rising from ~0 to ~1)."""
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode {mode!r}: expected one of {', '.join(BLEND_MODES)}")
    t = (np.arange(2 * h, dtype=np.float64) + 0.5) / max(2 * h, 1)
    if mode == "cosine":
        t = 0.5 - 0.5 * np.cos(np.pi * t)
    elif mode == "none":
        t = (t > 0.5).astype(np.float64)
    return t.astype(np.float32)


def blend_pair(a: Window, va: np.ndarray, b: Window, vb: np.ndarray, mode: str = "linear"
               ) -> tuple[int, np.ndarray]:
    """Blended values over the zone of neighbours ``a``/``b`` (``va``/``vb``: values of the whole windows,
    positions on axis 0): ``(zone start, values[2h, ...])``."""
    m, h = blend_zone(a, b)
    lo = m - h
    x = va[lo - a.start: m + h - a.start]
    y = vb[lo - b.start: m + h - b.start]
    w = ramp(h, mode).reshape((-1,) + (1,) * (x.ndim - 1))
    return lo, (x + w * (y - x)).astype(np.result_type(x.dtype, np.float32), copy=False)


class Blender:
    """Streams windows in order and returns their kept parts with blended edges.

    ``push(window, values, payload)`` (``values``: the whole window's values, positions on axis 0) returns the
    windows now final, as ``(window, kept_values, payload)``, one window behind (a window is final once its
    successor is known); ``flush()`` returns the last one. Windows that are not :func:`neighbours` are not
    blended. With ``mode="none"`` every window is final at once (the kept part unchanged).
    """

    def __init__(self, mode: str = "linear"):
        ramp(1, mode)  # validates the mode
        self.mode = mode
        self._prev: tuple[Window, np.ndarray, Any, np.ndarray] | None = None  # window, values, payload, kept

    def push(self, window: Window, values: np.ndarray, payload: Any = None) -> list[tuple[Window, np.ndarray, Any]]:
        kept = np.array(values[window.keep_start - window.start: window.keep_end - window.start])
        if self.mode == "none":
            return [(window, kept, payload)]
        out = []
        if self._prev is not None:
            pw, pv, pp, pk = self._prev
            if neighbours(pw, window):
                lo, zone = blend_pair(pw, pv, window, values, self.mode)
                m = pw.keep_end
                pk[lo - pw.keep_start:] = zone[:m - lo]
                kept[:zone.shape[0] - (m - lo)] = zone[m - lo:]
            out.append((pw, pk, pp))
        self._prev = (window, values, payload, kept)
        return out

    def flush(self) -> list[tuple[Window, np.ndarray, Any]]:
        if self._prev is None:
            return []
        pw, _, pp, pk = self._prev
        self._prev = None
        return [(pw, pk, pp)]
