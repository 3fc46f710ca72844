"""Blending of neighbouring windows (plan/windows.Blender): the ramp formula, exactness where one window
covers a position, the hard cut of ``none``, and streaming order."""
from __future__ import annotations

import numpy as np
import pytest

from ntk.plan.windows import Blender, Window, blend_zone, ramp, tile


def run(wins, values, mode):
    b = Blender(mode)
    out = []
    for w, v in zip(wins, values):
        out += b.push(w, v, w.start)
    out += b.flush()
    return out


def test_single_window_and_unrelated_windows_are_exact():
    w = Window("c", 0, 240, 0, 240)
    v = np.random.default_rng(0).random((240, 3)).astype(np.float32)
    [(got_w, kept, payload)] = run([w], [v], "linear")
    assert got_w == w and payload == 0
    assert np.array_equal(kept, v)
    # windows on different contigs / runs are never blended
    a, b = Window("c", 0, 240, 0, 240), Window("d", 0, 240, 0, 240)
    out = run([a, b], [v, v + 1], "cosine")
    assert np.array_equal(out[0][1], v) and np.array_equal(out[1][1], v + 1)


@pytest.mark.parametrize("mode", ["linear", "cosine"])
def test_ramp_across_the_overlap_and_continuity(mode):
    L, W, crop = 1000, 240, 30
    wins = tile(0, L, W, crop, unit=24)
    truth = np.linspace(0.0, 1.0, L)
    values = [truth[w.start:w.end] + 0.1 * i for i, w in enumerate(wins)]  # each window off by its own offset
    out = run(wins, values, mode)
    assert [o[0] for o in out] == wins and [o[2] for o in out] == [w.start for w in wins]
    got = np.concatenate([k for _, k, _ in out])
    assert got.shape == (L,)
    for i, (a, b) in enumerate(zip(wins, wins[1:])):
        m, h = blend_zone(a, b)
        assert h > 0 and a.start <= m - h and m + h <= a.end and b.start <= m - h
        t = ramp(h, mode)
        want = (1 - t) * (truth[m - h:m + h] + 0.1 * i) + t * (truth[m - h:m + h] + 0.1 * (i + 1))
        np.testing.assert_allclose(got[m - h:m + h], want, atol=1e-6)
    # no step larger than the trend plus the offset spread over the zone (a hard cut jumps by 0.1)
    assert np.abs(np.diff(got)).max() < 0.1 / 20
    cut = np.concatenate([k for _, k, _ in run(wins, values, "none")])
    assert np.abs(np.diff(cut)).max() == pytest.approx(0.1 + 1 / (L - 1), abs=1e-6)
    for i, w in enumerate(wins):  # none = the kept parts unchanged
        np.testing.assert_array_equal(cut[w.keep_start:w.keep_end], values[i][w.keep_start - w.start:w.keep_end - w.start])


def test_ramp_weights():
    for mode in ("linear", "cosine"):
        t = ramp(5, mode)
        assert t.shape == (10,) and (np.diff(t) > 0).all() and 0 < t[0] < 0.5 < t[-1] < 1
        np.testing.assert_allclose(t + t[::-1], 1.0, atol=1e-6)  # symmetric: the two weights sum to 1
    with pytest.raises(ValueError, match="blend mode"):
        ramp(3, "spline")
