"""Communities of features across layers: weighted Leiden on the kept edges (docs/design.md §4).

Nodes are the live features; an undirected edge joins two features when the chosen measure
of their kept edge is ≥ τ_c (default jaccard ≥ 0.1), weighted by that measure. The graph is
built with array operations from edges.parquet (the reference code for arXiv:2410.08869 looped in Python over 6.6
billion matrix entries). Leiden runs with a fixed seed, so the partition is the same on
every run; communities are numbered by size (0 = largest), ties by their first member, so
ids are stable too. Live features without any edge are singletons and are not given to
Leiden at all (an isolated node never changes the quality).

Two implementations of the same algorithm (both by V. Traag), chosen with `backend`:
- "igraph" (default): igraph's C `community_leiden`, seeded through a private
  random.Random; modularity (with resolution γ, i.e. the RB configuration model) and CPM.
- "leidenalg": `leidenalg.find_partition` (ModularityVertexPartition /
  RBConfigurationVertexPartition / CPMVertexPartition), as the reference used. Measured
  here it is 4-20x slower on graphs with thousands of small communities (its node moves
  scan the communities), so it is the option, not the default.
"""

from __future__ import annotations

import random

import igraph as ig
import numpy as np
import pyarrow as pa

from saelineage.errors import SaelineageError
from saelineage.feature_table import feature_rows

QUALITIES = ("modularity", "rb", "cpm")
BACKENDS = ("igraph", "leidenalg")


def check_options(quality: str, backend: str) -> None:
    if quality not in QUALITIES:
        raise SaelineageError(
            f"unknown community quality function {quality!r}.", f"choose one of {', '.join(QUALITIES)}."
        )
    if backend not in BACKENDS:
        raise SaelineageError(f"unknown Leiden backend {backend!r}.", f"choose one of {', '.join(BACKENDS)}.")


def _leidenalg(
    g: ig.Graph, w: list[float] | None, quality: str, resolution: float, seed: int, n_iterations: int
) -> tuple[list[int], float]:
    import leidenalg as la

    if quality == "cpm":
        cls, kw = la.CPMVertexPartition, {"resolution_parameter": resolution}
    elif quality == "modularity" and resolution == 1.0:
        cls, kw = la.ModularityVertexPartition, {}
    else:  # modularity with γ ≠ 1 is the RB configuration model with that γ
        cls, kw = la.RBConfigurationVertexPartition, {"resolution_parameter": resolution}
    part = la.find_partition(g, cls, weights=w, seed=seed, n_iterations=n_iterations, **kw)
    return list(part.membership), float(part.quality())


def _igraph(
    g: ig.Graph, w: list[float] | None, quality: str, resolution: float, seed: int, n_iterations: int
) -> tuple[list[int], float]:
    # igraph draws from a process-wide generator: give it a private seeded one, then restore
    ig.set_random_number_generator(random.Random(seed))
    try:
        c = g.community_leiden(
            objective_function="CPM" if quality == "cpm" else "modularity",
            weights=w,
            resolution=resolution,
            n_iterations=n_iterations,
        )
    finally:
        ig.set_random_number_generator(random)
    return list(c.membership), float(c.quality) if c.quality is not None else float("nan")


def leiden(
    f_layer: np.ndarray,
    f_id: np.ndarray,
    live: np.ndarray,
    e: dict[str, np.ndarray],
    measure: str = "jaccard",
    threshold: float = 0.1,
    quality: str = "modularity",
    resolution: float = 1.0,
    seed: int = 42,
    n_iterations: int = -1,
    backend: str = "igraph",
) -> tuple[np.ndarray, dict]:
    """Community id per features row (int64 [N], −1 for dead features) and graph facts.

    f_layer, f_id: int [N] features rows; live: bool [N]; e: edges.parquet columns as arrays.
    Edges with a non-finite or ≤ 0 weight are left out (Leiden needs non-negative weights;
    a negative Pearson is not "similar"). n_iterations=-1 iterates until stable.
    """
    check_options(quality, backend)
    if measure not in e:
        raise SaelineageError(f"edges.parquet has no column {measure!r}.", "choose a measure of the edges table.")
    rows = feature_rows(f_layer, f_id)
    w = np.asarray(e[measure], np.float64)
    keep = np.isfinite(w) & (w >= threshold) & (w > 0)
    u, v = rows(e["src_layer"][keep], e["src"][keep]), rows(e["dst_layer"][keep], e["dst"][keep])
    ok = (u >= 0) & (v >= 0)
    ok[ok] &= live[u[ok]] & live[v[ok]]
    u, v, w = u[ok], v[ok], w[keep][ok]
    # Leiden sees only features with an edge; the others are singletons
    nodes, inv = np.unique(np.concatenate([u, v]), return_inverse=True)
    g = ig.Graph(n=len(nodes), edges=inv.reshape(2, -1).T if len(u) else [], directed=False)
    wl = w.tolist() if len(w) else None
    fn = _igraph if backend == "igraph" else _leidenalg
    member, quality_value = (
        fn(g, wl, quality, float(resolution), int(seed), int(n_iterations)) if len(nodes) else ([], float("nan"))
    )
    n_live = int(live.sum())
    full = np.full(len(f_layer), -1, np.int64)
    full[nodes] = np.asarray(member, np.int64)
    lone = np.nonzero(live & (full < 0))[0]
    full[lone] = (max(member) + 1 if member else 0) + np.arange(len(lone))
    member_live = full[live]
    # stable numbering: by size (descending), ties by the first member's row
    sizes = np.bincount(member_live, minlength=int(member_live.max()) + 1 if n_live else 0)
    first = np.full(len(sizes), len(f_layer), np.int64)
    np.minimum.at(first, member_live, np.nonzero(live)[0])
    order = np.lexsort((first, -sizes))
    new_id = np.empty(len(order), np.int64)
    new_id[order] = np.arange(len(order))
    out = np.full(len(f_layer), -1, np.int64)
    out[live] = new_id[member_live]
    info = {
        "nodes": n_live,
        "edges": int(len(u)),
        "communities": int(len(sizes)),
        "backend": backend,
        "quality": quality_value,
        "modularity": float(g.modularity(member, weights=wl)) if len(u) else 0.0,
    }
    return out, info


def community_table(
    f_layer: np.ndarray,
    community: np.ndarray,
    ex_rows: np.ndarray,
    ex_tokens: np.ndarray,
    vocab: list[str] | None,
    top: int = 5,
) -> pa.Table:
    """communities.parquet: community, size, n_layers, layer_min, layer_max, layers, layer_sizes,
    top_tokens, top_token_ids, top_token_counts.

    ex_rows: features row of each example used, ex_tokens: its token id (int64 [E]); top tokens
    are the most frequent tokens among the members' top activating examples.
    """
    live = community >= 0
    n_c = int(community.max()) + 1 if live.any() else 0
    sizes = np.bincount(community[live], minlength=n_c)
    lay = f_layer[live]
    com = community[live]
    pairs, cnt = (
        np.unique(np.stack([com, lay], axis=1), axis=0, return_counts=True)
        if live.any()
        else (np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    )
    starts = np.searchsorted(pairs[:, 0], np.arange(n_c + 1))
    # top tokens: (community, token) counts, most frequent first, ties by token id
    ok = (ex_rows >= 0) & (ex_tokens >= 0)
    ok[ok] &= community[ex_rows[ok]] >= 0
    tk = np.stack([community[ex_rows[ok]], ex_tokens[ok]], axis=1)
    tpairs, tcnt = (
        np.unique(tk, axis=0, return_counts=True) if len(tk) else (np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    )
    order = np.lexsort((tpairs[:, 1], -tcnt, tpairs[:, 0])) if len(tpairs) else np.zeros(0, np.int64)
    tpairs, tcnt = tpairs[order], tcnt[order]
    tstart = np.searchsorted(tpairs[:, 0], np.arange(n_c + 1))
    rank = np.arange(len(tpairs)) - tstart[tpairs[:, 0]] if len(tpairs) else np.zeros(0, np.int64)
    sel = rank < top
    tpairs, tcnt = tpairs[sel], tcnt[sel]
    toff = np.searchsorted(tpairs[:, 0], np.arange(n_c + 1)).astype(np.int32)
    strings = np.array(vocab, dtype=object) if vocab is not None else None
    tids = tpairs[:, 1]
    if strings is not None:
        inside = (tids >= 0) & (tids < len(strings))
        texts = np.where(
            inside,
            strings[np.clip(tids, 0, max(len(strings) - 1, 0))] if len(strings) else "",
            tids.astype(str).astype(object),
        )
    else:
        texts = tids.astype(str).astype(object)
    loff = starts.astype(np.int32)
    # (community, layer) pairs are sorted, so a community's first/last pair hold its layer range
    ls_min = pairs[starts[:-1], 1] if n_c else np.zeros(0, np.int64)
    ls_max = pairs[starts[1:] - 1, 1] if n_c else np.zeros(0, np.int64)

    def lst(off, values, typ):
        return pa.ListArray.from_arrays(pa.array(off, pa.int32()), pa.array(values, typ))

    return pa.table(
        {
            "community": pa.array(np.arange(n_c), pa.int64()),
            "size": pa.array(sizes, pa.int64()),
            "n_layers": pa.array(np.diff(starts), pa.int64()),
            "layer_min": pa.array(ls_min, pa.int64()),
            "layer_max": pa.array(ls_max, pa.int64()),
            "layers": lst(loff, pairs[:, 1], pa.int64()),
            "layer_sizes": lst(loff, cnt, pa.int64()),
            "top_tokens": lst(toff, list(texts), pa.string()),
            "top_token_ids": lst(toff, tids, pa.int64()),
            "top_token_counts": lst(toff, tcnt, pa.int64()),
        }
    )
