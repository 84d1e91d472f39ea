"""`saelineage stats RUN`: the typer command, generated from `StatsConfig` (registered by saelineage.cli)."""

from __future__ import annotations

from pathlib import Path

import typer

from saelineage.config import with_config
from saelineage.stats.config import StatsConfig


@with_config(StatsConfig)
def stats_command(
    run: Path = typer.Argument(..., help="Run directory with a complete collect stage."),
    force: bool = typer.Option(False, "--force", help="Recompute even when stats are complete."),
    cfg: StatsConfig = StatsConfig(),
) -> None:
    """Co-activation statistics of every layer pair in one pass; writes edges.parquet.

    For each pair of layers (l, l+s), s <= SPAN, counts how often every pair of features
    fires together and derives jaccard, sufficiency P(j|i), necessity P(i|j), mutual
    information, pearson, activation cosine, Wilson lower bounds and decoder cosine. Keeps
    the informative pairs as edges and, per feature, its best predecessor and successor.
    """
    from saelineage.progress import console
    from saelineage.stats.stage import run_stats

    r = run_stats(run, cfg, force=force)
    if r.skipped:  # run_stats said so
        return
    s = r.summary
    console.print(
        f"[green]stats complete[/]: {s['n_tokens']:,} tokens, {s['pairs']} layer pairs, {s['edges']:,} edges, "
        f"{s['passes']} pass(es), {s['increments'] / max(r.seconds, 1e-9) / 1e6:,.0f}M co-active pairs/s, "
        f"{r.seconds:.1f}s -> {r.outputs['edges.parquet']}"
    )
    if not s["dec_cosine"]:
        console.print("note: some layers have no SAE decoder weights; dec_cosine is NaN for their pairs.")
