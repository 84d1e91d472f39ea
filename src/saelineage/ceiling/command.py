"""`saelineage ceiling RUN --saes FOLDER`: the typer command, generated from `CeilingConfig`."""

from __future__ import annotations

from pathlib import Path

import typer

from saelineage.ceiling.config import CeilingConfig
from saelineage.config import with_config


@with_config(CeilingConfig)
def ceiling_command(
    run: Path = typer.Argument(..., help="Run directory with a complete collect stage."),
    force: bool = typer.Option(False, "--force", help="Measure again even when complete."),
    cfg: CeilingConfig = CeilingConfig(),
) -> None:
    """Seed ceiling: how many of the run's features a second training of the same layers reproduces.

    Encodes the run's first windows with a second SAE set (e.g. another seed) and matches every
    feature to its best same-layer partner; `analyze` then shows each layer's lifecycle beside its
    ceiling and labels ending features without a partner as unstable.
    """
    from saelineage.ceiling.stage import run_ceiling
    from saelineage.progress import console

    r = run_ceiling(run, cfg, force=force)
    if not r.skipped:
        console.print(
            f"[green]ceiling complete[/]: layers {sorted(r.summary['rates'])} -> {r.outputs['seed_ceiling.parquet']}"
        )
