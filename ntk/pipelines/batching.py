"""Moved to :mod:`ntk.plan.batching` (below pipelines/ and train/). This re-export keeps imports from branches
written before the move working; it goes once they are merged."""
from ..plan.batching import *  # noqa: F401,F403
from ..plan.batching import auto_token_budget, by_token_budget  # noqa: F401
