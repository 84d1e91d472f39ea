"""`saelineage ablate RUN`: the typer command, generated from `AblateConfig` (registered in cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from saelineage.causal.config import AblateConfig
from saelineage.config import with_config


@with_config(AblateConfig)
def ablate_command(
    run: Path = typer.Argument(..., help="Run directory (after `saelineage stats`)."),
    force: bool = typer.Option(False, "--force", help="Redo a completed ablate stage."),
    cfg: AblateConfig = AblateConfig(),
) -> None:
    """Check edges causally: ablate upstream features, measure the drop of their downstream partners.

    For edges sampled per measure and layer pair in similarity bins, the upstream feature i at
    hook l is removed from the residual stream (x' = x - a_i·W_dec[i]: the SAE reconstruction
    without i plus the unchanged SAE error), the model runs on to the downstream hook, and the
    downstream feature j is re-encoded on the tokens where it was active in the clean run.
    Writes ablations.parquet (one row per sampled measure and pair: mean/median/relative drop,
    token count), ablations.html, and prints the Spearman correlation between similarity and
    effect per measure and layer pair. With --hidden, features that end at a layer get the
    share of their write found in the next SAE's error (error_projection.parquet).
    """
    from saelineage.causal.stage import run_ablate

    run_ablate(run, cfg, force=force)
