"""`saelineage stats RUN`: the typer command (registered by saelineage.cli)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from saelineage.errors import SaelineageError

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5GiB', '1000000' -> bytes (powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise SaelineageError(f"cannot read the memory size '{text}'.", "write e.g. 8G, 512M or a number of bytes.")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index((m.group(2) or "_").lower()))


def _keep(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SaelineageError(f"cannot read --keep '{item}'.", "write MEASURE=VALUE, e.g. --keep pearson=0.5.")
    return out


def stats_command(
    run: Path = typer.Argument(..., help="Run directory with a complete collect stage."),
    span: int = typer.Option(1, help="Pair each layer with the next SPAN layers (1 = adjacent only)."),
    threshold: float = typer.Option(0.0, help="Absolute activation threshold: active means a > THRESHOLD."),
    relative_threshold: Optional[float] = typer.Option(
        None, help="Active means a > R * (feature's max activation), e.g. 0.2 as in the paper. Overrides --threshold."),
    include_bos: bool = typer.Option(False, "--include-bos", help="Count BOS positions (position 0) as tokens."),
    min_support: int = typer.Option(5, help="An edge needs at least this many co-active tokens."),
    top_k: int = typer.Option(16, help="Keep the top-K partners of each feature under each measure."),
    keep: list[str] = typer.Option(
        [], help="Also keep pairs with MEASURE >= VALUE (repeatable, e.g. --keep pearson=0.5). "
        "Default: sufficiency=0.99 and necessity=0.99; --no-keep disables it."),
    no_keep: bool = typer.Option(False, "--no-keep", help="Keep top-K partners only (no threshold edges)."),
    primary: str = typer.Option(
        "jaccard,sufficiency,necessity,pearson",
        help="Measures whose top-K partners are kept (comma list, or 'all' to add mutual_info and act_cosine)."),
    memory_limit: Optional[str] = typer.Option(
        None, help="Memory for accumulators and buffers, e.g. 8G (default: 70% of available RAM)."),
    workers: int = typer.Option(2, help="Threads for the compiled kernels."),
    force: bool = typer.Option(False, "--force", help="Recompute even when stats are complete."),
) -> None:
    """Co-activation statistics of every layer pair in one pass; writes edges.parquet.

    For each pair of layers (l, l+s), s <= SPAN, counts how often every pair of features
    fires together and derives jaccard, sufficiency P(j|i), necessity P(i|j), mutual
    information, pearson, activation cosine, Wilson lower bounds and decoder cosine. Keeps
    the informative pairs as edges and, per feature, its best predecessor and successor.
    """
    from saelineage.progress import console
    from saelineage.stats.stage import compute_stats

    from saelineage.stats.measures import MEASURES

    keep_thr = {} if no_keep else (_keep(keep) if keep else None)
    prim = MEASURES if primary.strip() == "all" else tuple(m.strip() for m in primary.split(",") if m.strip())
    s = compute_stats(run, span=span, threshold=threshold, relative_threshold=relative_threshold,
                      include_bos=include_bos, min_support=min_support, top_k=top_k, keep_thresholds=keep_thr,
                      memory_limit=None if memory_limit is None else parse_size(memory_limit), workers=workers,
                      force=force, primary=prim)
    if s.skipped:
        console.print(f"stats: {s.run} is complete; skipping (use --force to redo).")
        return
    console.print(f"[green]stats complete[/]: {s.n_tokens:,} tokens, {s.pairs} layer pairs, {s.edges:,} edges, "
                  f"{s.passes} pass(es), {s.increments / max(s.seconds, 1e-9) / 1e6:,.0f}M co-active pairs/s, "
                  f"{s.seconds:.1f}s -> {s.run / 'edges.parquet'}")
    if not s.dec_cosine:
        console.print("note: some layers have no SAE decoder weights; dec_cosine is NaN for their pairs.")
