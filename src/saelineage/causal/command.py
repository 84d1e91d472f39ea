"""`saelineage ablate RUN`: the typer command (registered in cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saelineage.errors import SaelineageError


def _pairs(text: Optional[str]) -> Optional[list[tuple[int, int]]]:
    if not text:
        return None
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        a, sep, b = part.replace("->", ":").replace("-", ":").partition(":")
        if not sep or not a.strip().isdigit() or not b.strip().isdigit():
            raise SaelineageError(f"cannot read layer pair '{part}'.", "write layer pairs as '0:1,5:6'.")
        out.append((int(a), int(b)))
    return out


def ablate_command(
    run: Path = typer.Argument(..., help="Run directory (after `saelineage stats`)."),
    measures: Optional[str] = typer.Option(
        None, help="Comma-separated measures to sample edges by: jaccard, sufficiency, necessity, mutual_info, "
                   "pearson, act_cosine, dec_cosine. Default: every measure edges.parquet has."),
    bins: int = typer.Option(10, help="Similarity bins per measure and layer pair."),
    per_bin: int = typer.Option(10, help="Edges drawn per bin (fewer when a bin holds fewer)."),
    seed: int = typer.Option(0, help="Seed of the edge and window draws (same seed, same sample)."),
    binning: str = typer.Option("width", help="'width': equal-width bins from min to max similarity (as the "
                                              "reference); 'quantile': equal-count bins."),
    layer_pairs: Optional[str] = typer.Option(None, help="Only these layer pairs, e.g. '0:1,5:6' (default: all in edges)."),
    windows_per_pair: int = typer.Option(8, help="Windows per downstream feature on which its drop is measured "
                                                 "(drawn among the windows where it is active)."),
    threshold: Optional[float] = typer.Option(None, help="Activation above which a downstream feature counts as "
                                                         "active (default: the run's active threshold, 0)."),
    batch_rows: int = typer.Option(32, help="(feature, window) rows per forward pass: different upstream features "
                                            "are ablated in different rows of one batch."),
    hidden: bool = typer.Option(True, "--hidden/--no-hidden",
                                help="Also project the next layer's SAE error onto the direction of each feature "
                                     "without a successor (lifecycle ending or new+ending)."),
    hidden_windows: int = typer.Option(256, help="Windows per run for the error projections (spread over features)."),
    ending_measure: str = typer.Option("pearson", help="Without analyze's lifecycle column: a feature 'ends' when no "
                                                       "edge to the next layer has this measure ≥ --ending-threshold."),
    ending_threshold: float = typer.Option(0.5, help="See --ending-measure."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write ablations.html (effect vs similarity)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: the device the run was collected on)."),
    force: bool = typer.Option(False, "--force", help="Redo a completed ablate stage."),
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
    from saelineage.causal.stage import AblateConfig, ablate_run

    cfg = AblateConfig(
        measures=[m.strip() for m in measures.split(",") if m.strip()] if measures else None,
        bins=bins, per_bin=per_bin, seed=seed, binning=binning, windows_per_pair=windows_per_pair,
        layer_pairs=_pairs(layer_pairs), threshold=threshold, batch_rows=batch_rows, hidden=hidden,
        hidden_windows=hidden_windows, ending_measure=ending_measure, ending_threshold=ending_threshold, plot=plot)
    if batch_rows < 1 or windows_per_pair < 1:
        raise SaelineageError("--batch-rows and --windows-per-pair must be at least 1.", "pass positive numbers.")
    ablate_run(run, cfg, force=force, device=device)
