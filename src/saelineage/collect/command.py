"""`saelineage collect RUN`: the typer command, generated from `CollectConfig` (registered by saelineage.cli)."""

from __future__ import annotations

from pathlib import Path

import typer

from saelineage.collect.config import CollectConfig
from saelineage.config import with_config


@with_config(CollectConfig)
def collect_command(
    run: Path = typer.Argument(..., help="Run directory to create (or resume)."),
    force: bool = typer.Option(False, "--force", help="Discard an existing run in RUN and start again."),
    cfg: CollectConfig = CollectConfig(),
) -> None:
    """Run the model over a corpus once and store every layer's sparse SAE codes."""
    from saelineage.collect.stage import run_collect
    from saelineage.progress import console

    r = run_collect(run, cfg, force=force).run
    m = r.load()
    console.print(f"[green]collect complete[/]: {m.n_tokens:,} tokens, layers {m.layers}, run {r.path}")
