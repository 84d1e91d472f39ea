"""Prompt graphs: the features active on one token, and the run's kept edges among them, as arrays.

`prompt_graph` is a pure function of the per-layer codes at one token and a context (the run's
features, and where its edges come from). One selection therefore serves the browser's and the
notebook's live prompts (edges from the query cache, `prompt.CacheContext`), the `saelineage prompt`
command (codes from the run's model) and analyze's graphs of sampled corpus tokens (codes read
from the store), both with edges from edges.parquet (`GraphContext`), and tests without a model.

A feature is kept when its activation is > 0 and ≥ rel × its maximum over the corpus (the
reference work, arXiv:2410.08869, used 0.1); with max_nodes, the strongest by relative activation.
Links are the run's kept edges between kept features, valued by one measure; nodes carry their
global community. Features are rows of the context's feature columns throughout: the "L_F" string
ids exist only in the node-link JSON written from a graph (`lineage.export.prompt_nodelink`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from rich.table import Table

from saelineage import contract
from saelineage.errors import SaelineageError
from saelineage.feature_table import explanations, feature_rows, read_features
from saelineage.run import RunDir, read_parquet

KEY = np.int64(1) << 32
"""(layer, feature) → one int64 key, the order nodes are listed in."""

Codes = dict[int, tuple[np.ndarray, np.ndarray]]
"""Codes at one token: {layer: (feature ids int [k], activations float [k])}."""


class FeatureGraph(Protocol):
    """What `prompt_graph` reads: feature columns [N] and the kept edges among some features.

    layer, feature: int64 [N]; act_max: float64 [N]; community: int64 [N] (−1: none); explanation:
    object [N] or None; rows: (layer [K], feature [K]) → row [K] (−1: absent); measures: what
    `edges_among(nodes, measure)` values edges by. `edges_among` gets rows [M] and returns the edges
    with both ends among them as (source rows int64 [E], target rows int64 [E], values float64 [E])."""

    # read-only (properties), so that implementations may narrow the types (explanation = None)
    @property
    def layer(self) -> np.ndarray: ...
    @property
    def feature(self) -> np.ndarray: ...
    @property
    def act_max(self) -> np.ndarray: ...
    @property
    def community(self) -> np.ndarray: ...
    @property
    def explanation(self) -> np.ndarray | None: ...
    @property
    def rows(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]: ...
    @property
    def measures(self) -> Collection[str]: ...

    def edges_among(self, nodes: np.ndarray, measure: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass
class GraphContext:
    """A run's feature columns (aligned with features.parquet rows) and its edges table.

    layer, feature: int64 [N]; act_max: float64 [N]; community: int64 [N] (−1: none); explanation:
    object [N] or None; edges: the columns of edges.parquet as arrays [E]."""

    layer: np.ndarray
    feature: np.ndarray
    act_max: np.ndarray
    community: np.ndarray
    explanation: np.ndarray | None
    edges: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.rows = feature_rows(self.layer, self.feature)
        self.measures = tuple(self.edges)
        self.src = self.rows(self.edges["src_layer"], self.edges["src"])
        self.dst = self.rows(self.edges["dst_layer"], self.edges["dst"])
        self.by_src = np.argsort(self.src, kind="stable")  # CSR over source rows; unknown (−1) sort first
        self.src_ptr = np.searchsorted(self.src[self.by_src], np.arange(len(self.layer) + 1))

    def edges_among(self, nodes: np.ndarray, measure: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Edges with both ends in `nodes` (rows [M]), in the edges table's order (prompt_graphs.json keeps it)."""
        a, b = self.src_ptr[nodes], self.src_ptr[np.asarray(nodes) + 1]
        n = b - a
        pos = np.repeat(a - np.cumsum(n) + n, n) + np.arange(int(n.sum()))  # the ranges [a, b), concatenated
        e = np.sort(self.by_src[pos])
        e = e[np.isin(self.dst[e], nodes)]
        return self.src[e], self.dst[e], np.asarray(self.edges[measure], np.float64)[e]


@dataclass
class PromptGraph:
    """Features active on one token (nodes, in (layer, feature) order) and the kept edges among them.

    rows: int64 [N] rows of the context's features; layer, feature: int64 [N]; activation: float64 [N];
    rel_activation: float64 [N] (activation / corpus max; inf where the max is ≤ 0); community: int64 [N]
    (−1: none); explanation: object [N] or None; src, dst: int64 [E] node positions (0..N-1); value:
    float64 [E] (the measure; NaN where it is undefined). measure, rel, min_value: how it was chosen;
    truncated: max_nodes left features out."""

    rows: np.ndarray
    layer: np.ndarray
    feature: np.ndarray
    activation: np.ndarray
    rel_activation: np.ndarray
    community: np.ndarray
    explanation: np.ndarray | None
    src: np.ndarray
    dst: np.ndarray
    value: np.ndarray
    measure: str
    rel: float
    min_value: float | None
    truncated: bool


def prompt_graph(
    codes: Codes,
    ctx: FeatureGraph,
    *,
    rel: float = 0.1,
    measure: str = "jaccard",
    min_value: float | None = None,
    max_nodes: int | None = None,
) -> PromptGraph:
    """The graph of the features active at one token (`codes`: {layer: (feature ids [k], activations [k])}).

    Nodes: features with activation > 0 and ≥ rel × their corpus max (with max_nodes, the strongest by
    relative activation, then activation); links: the context's edges among them, ≥ min_value if given."""
    if measure not in ctx.measures:
        raise SaelineageError(f"edges.parquet has no column {measure!r}.", "choose a measure of the edges table.")
    parts = [(np.full(len(f), int(l), np.int64), np.asarray(f, np.int64), v) for l, (f, v) in sorted(codes.items())]
    layer = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    fid = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    acts = np.concatenate([np.asarray(p[2], np.float64) for p in parts]) if parts else np.zeros(0)
    rows = ctx.rows(layer, fid)
    known = rows >= 0
    mx = np.where(known, ctx.act_max[np.where(known, rows, 0)], 0.0) if len(ctx.act_max) else np.zeros(len(rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        relv = np.where(mx > 0, acts / mx, np.inf)
    keep = (acts > 0) & known & ((mx <= 0) | (acts >= rel * mx))
    keys, acts, rows, relv = layer[keep] * KEY + fid[keep], acts[keep], rows[keep], relv[keep]
    truncated = max_nodes is not None and len(keys) > max_nodes
    if truncated:
        top = np.lexsort((keys, -acts, -relv))[:max_nodes]
        keys, acts, rows, relv = keys[top], acts[top], rows[top], relv[top]
    o = np.argsort(keys)
    keys, acts, rows, relv = keys[o], acts[o], rows[o], relv[o]
    u, w, v = ctx.edges_among(rows, measure)
    if min_value is not None:
        with np.errstate(invalid="ignore"):
            ok = v >= min_value
        u, w, v = u[ok], w[ok], v[ok]
    by_row = np.argsort(rows)  # node position of a row: rows are unique, but in key order, not row order
    at = by_row[np.searchsorted(rows[by_row], u)], by_row[np.searchsorted(rows[by_row], w)]
    expl = ctx.explanation
    return PromptGraph(
        rows=rows,
        layer=keys // KEY,
        feature=keys % KEY,
        activation=acts,
        rel_activation=relv,
        community=np.asarray(ctx.community, np.int64)[rows],
        explanation=None if expl is None else expl[rows],
        src=at[0].astype(np.int64),
        dst=at[1].astype(np.int64),
        value=v,
        measure=measure,
        rel=rel,
        min_value=min_value,
        truncated=bool(truncated),
    )


def codes_at(codes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], position: int) -> Codes:
    """Row `position` of CSR codes {layer: (indptr [T+1], feature ids, values)} as {layer: (features, values)}."""
    out = {}
    for l, (indptr, indices, values) in codes.items():
        lo, hi = int(indptr[position]), int(indptr[position + 1])
        out[l] = (np.asarray(indices[lo:hi], np.int64), np.asarray(values[lo:hi], np.float64))
    return out


def load_context(run: RunDir) -> GraphContext:
    """GraphContext of an analysed run (communities from analyze; imported explanations if any)."""
    run.require("stats")
    feats = read_features(run, columns=["act_max", "community"])
    comm = (
        np.asarray(feats.column("community").fill_null(-1).to_numpy(), np.int64)
        if "community" in feats.column_names
        else np.full(feats.num_rows, -1, np.int64)
    )
    edges = read_parquet(run.file(contract.EDGES))
    return GraphContext(
        feats.column("layer").to_numpy().astype(np.int64),
        feats.column("feature").to_numpy().astype(np.int64),
        feats.column("act_max").to_numpy().astype(np.float64),
        comm,
        explanations(run, feats),
        {c: edges.column(c).to_numpy(zero_copy_only=False) for c in edges.column_names},
    )


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def summary_table(graph: PromptGraph, token: str | None = None, position: int | None = None, top: int = 5) -> Table:
    """Terminal summary: per layer, kept features, links out, communities, and the strongest
    features (id, activation relative to the corpus max, community), two to a line so that no
    item is ever split and the table reads whole at 80 columns."""
    from rich import box

    title = f"features on token {token!r} (position {position}), activation ≥ {graph.rel:g} × max"
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("layer", "feats", "links", "comms"):
        t.add_column(c, justify="right", no_wrap=True)
    t.add_column("strongest: feature rel.act community", no_wrap=True)
    out_links: np.ndarray | list[int] = (
        np.bincount(graph.layer[graph.src], minlength=int(graph.layer.max()) + 1) if len(graph.layer) else []
    )
    for layer in np.unique(graph.layer).tolist():
        mine = np.flatnonzero(graph.layer == layer)
        mine = mine[np.argsort(-graph.rel_activation[mine], kind="stable")]  # inf (no corpus max) first
        comm = graph.community[mine]
        items = [
            f"{graph.feature[i]} {_fmt(_finite(graph.rel_activation[i]))} c{_fmt(_community(graph.community[i]))}"
            for i in mine[:top].tolist()
        ]
        strongest = "\n".join(", ".join(items[k : k + 2]) for k in range(0, len(items), 2))
        t.add_row(
            str(layer), str(len(mine)), str(int(out_links[layer])), str(len(set(comm[comm >= 0].tolist()))), strongest
        )
    t.caption = f"{len(graph.rows)} features, {len(graph.src)} links to later layers ({graph.measure})"
    return t


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _community(c: int) -> int | None:
    return int(c) if c >= 0 else None
