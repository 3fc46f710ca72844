"""`ntk score-variants` (placeholder until issue #5 lands)."""
from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("score-variants", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                 help="(not built yet: issue #5)")
    def _cmd(ctx: typer.Context):
        not_built("score-variants", "issue #5")
