"""`ntk embed` (placeholder until issue #4 lands)."""
from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("embed", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                 help="(not built yet: issue #4)")
    def _cmd(ctx: typer.Context):
        not_built("embed", "issue #4")
