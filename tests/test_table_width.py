"""The lifecycle table (printed by `analyze` and the demo) reads whole at 80 columns: no cell cut
short with "…", no interval split into fragments."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from rich.console import Console

from saelineage.lineage.lifecycle import layer_table, lifecycle_rich_table

WIDTH = 80
LAYERS = list(range(12))
D_SAE = 16_384  # the widest counts a demo-sized run prints ("16,384"; five-digit new / ending counts)


def _lifecycle(ceiling: bool) -> pa.Table:
    """lifecycle.parquet as `layer_table` writes it for a demo-sized run: 12 layers, bootstrap
    intervals (asymmetric: replicates drawn around a shifted median), and a seed ceiling."""
    rng = np.random.default_rng(0)
    n = len(LAYERS) * D_SAE
    layer = np.repeat(LAYERS, D_SAE)
    feature = np.tile(np.arange(D_SAE), len(LAYERS))
    features = pa.table({"layer": layer, "feature": feature, "n_active": (rng.random(n) > 0.07).astype(np.int64)})
    links = pa.table(
        {
            "layer": layer,
            "feature": feature,
            "best_pred_jaccard": rng.random(n) ** 1.5,
            "best_succ_jaccard": rng.random(n) ** 1.5,
        }
    )
    replicates = {
        l: {k: rng.normal(0.4, 0.01, 200) + rng.exponential(0.01, 200) for k in ("new", "ending")} for l in LAYERS
    }
    seed = pa.table({"layer": layer, "feature": feature, "best_jaccard": rng.random(n) ** 0.3}) if ceiling else None
    return layer_table(features, links, LAYERS, "jaccard", 0.3, sweep=(0.3,), replicates=replicates, ceiling=seed)


def _render(table: pa.Table) -> str:
    console = Console(width=WIDTH, record=True, color_system=None)
    console.print(lifecycle_rich_table(table))
    return console.export_text()


@pytest.mark.parametrize("ceiling", [False, True], ids=["reference shares", "with ceiling"])
def test_lifecycle_table_is_whole_at_80_columns(ceiling):
    life = _lifecycle(ceiling)
    text = _render(life)
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    assert "…" not in text
    lines = [line.split() for line in text.splitlines()]
    tokens = {tok for line in lines for tok in line}
    rows = [r for r in life.to_pylist() if r["chosen"]]
    assert sum(r["share_new_lo"] is not None for r in rows) == len(LAYERS) - 1  # intervals were computed
    for r in rows:
        for k in ("new", "ending"):
            if r[f"n_{k}"] is None:
                continue
            # count and share side by side on one line, the interval whole on the next
            assert any(f"{r[f'n_{k}']:,}" in line and f"{100 * r[f'share_{k}']:.1f}%" in line for line in lines)
            lo, hi = r[f"share_{k}_lo"], r[f"share_{k}_hi"]
            assert f"{100 * lo:.1f}–{100 * hi:.1f}" in tokens
        if ceiling:
            assert f"{100 * r['seed_ceiling']:.1f}%" in tokens
    headers = {c.header for c in lifecycle_rich_table(life).columns}
    assert ("ceiling" in headers) is ceiling and ("new †" in headers) is not ceiling


@pytest.mark.parametrize(
    "first_hook", ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "encoder.a_name_that_is_no_known_hook"]
)
def test_sae_metrics_table_reads_whole_at_80_columns(first_hook):
    """`train`'s held-out table: 12 TransformerLens hooks of 16k-latent SAEs keep every number whole,
    whether the hooks share one kind (a layer column), mix kinds, or include an unknown name."""
    from saelineage.saes.evaluate import metrics_table

    rows = [
        dict(hook=f"blocks.{l}.hook_resid_pre", d_sae=D_SAE, k=64, fvu=0.1234, train_fvu=0.1111, l0=63.9,
             dead_fraction=0.0123, ce_clean=3.2101, ce_with_sae=3.4567, ce_increase=0.2466)
        for l in LAYERS
    ]  # fmt: skip
    rows[0]["hook"] = first_hook
    console = Console(width=WIDTH, record=True)
    console.print(metrics_table(rows))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= WIDTH and "…" not in text
    numbers = ["16384", "64", "0.123", "0.111", "63.9", "1.2", "3.210", "3.457", "+0.247"]
    rows_shown = [line for line in text.splitlines() if "16384" in line]
    assert len(rows_shown) == len(LAYERS)
    assert all(line.split()[-len(numbers) :] == numbers for line in rows_shown)


def test_prompt_summary_reads_whole_at_80_columns():
    """`saelineage prompt`'s table on a demo-sized graph (12 layers × 16 features, five-digit ids
    and communities): every "feature rel.act community" item stands whole on one line, and each
    layer's counts are the graph's."""
    from saelineage.query.prompt_graph import PromptGraph, summary_table

    rng = np.random.default_rng(1)
    layer = np.repeat(np.arange(12), 16)
    n = len(layer)
    src = rng.integers(0, n - 16, 300)
    dst = np.minimum(src + 16, n - 1)
    graph = PromptGraph(
        rows=np.arange(n), layer=layer, feature=rng.integers(10_000, 16_384, n), activation=rng.random(n),
        rel_activation=rng.random(n), community=rng.integers(-1, 99_999, n), explanation=None, src=src, dst=dst,
        value=rng.random(len(src)), measure="jaccard", rel=0.1, min_value=None, truncated=False,
    )  # fmt: skip
    console = Console(width=WIDTH, record=True)
    console.print(summary_table(graph, " tired", 10))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= WIDTH and "…" not in text
    body = " ".join(text.split())
    for l in range(12):
        assert f" {l} 16 {int((layer[src] == l).sum())} " in f" {body} "
    for i in range(n):
        order = np.flatnonzero(layer == layer[i])
        top = order[np.argsort(-graph.rel_activation[order], kind="stable")][:5]
        if i in top:
            c = f"c{graph.community[i]}" if graph.community[i] >= 0 else "c-"
            item = f"{graph.feature[i]} {graph.rel_activation[i]:.2f} {c}"
            assert any(item in line for line in text.splitlines()), item
