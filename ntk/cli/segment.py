"""`ntk segment` (placeholder until issue #3 lands)."""
from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("segment", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                 help="(not built yet: issue #3)")
    def _cmd(ctx: typer.Context):
        not_built("segment", "issue #3")
