"""Moved to :mod:`ntk.plan.windows` (below pipelines/ and train/). This re-export keeps imports from branches
written before the move working; it goes once they are merged (tests/test_layers.py keeps train/ off it)."""
from ..plan.windows import *  # noqa: F401,F403
from ..plan.windows import BLEND_MODES, Blender, Window, blend_zone, neighbours, ramp, tile  # noqa: F401
