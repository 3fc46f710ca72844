"""`ntk merge` (placeholder until issue #10 lands)."""
from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("merge", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                 help="(not built yet: issue #10)")
    def _cmd(ctx: typer.Context):
        not_built("merge", "issue #10")
