"""Splits (specialisation): a parent i (layer l) whose children (layer m) each imply it and
rarely fire together (docs/design.md §4).

1. Candidate children of i: kept edges with necessity(i→c) ≥ τ_s (c fires only when i does),
   sufficiency(i→c) < τ_s (c is narrower than i: a plain copy of i is not a split) and
   n_co ≥ min_support; at most `max_children` per parent, largest n_co first.
2. First validation pass: co-activation counts of every pair of candidate children, giving
   their Jaccard; children are chosen greedily (largest first) so that every chosen pair has
   Jaccard ≤ τ_x. A parent with ≥ 2 chosen children is a split candidate.
3. Second validation pass: exact share of i's tokens on which any chosen child fires
   (`coverage`) and the share of tokens with any child on which exactly one fires
   (`exclusivity`); splits with coverage < min_coverage are dropped.

With the evidence test (the default) the candidate floor replaces τ_s in step 1, and a child is
eligible in step 2 only when it is significant on its own: P(i | c) > P(i | ¬c) at the false
discovery rate (Benjamini–Hochberg over every candidate child) with the lower bound of P(i | c)
≥ min_prob. Coverage and exclusivity carry exact bounds, and the coverage's lower bound must
reach min_coverage.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from saelineage.lineage import evidence
from saelineage.lineage.gates import child_counts, pairs_in_groups, ranked_groups


def split_candidates(
    e: dict[str, np.ndarray], tau: float, min_support: int, max_children: int = 16, copy: float | None = None
) -> dict[str, np.ndarray]:
    """Candidate children grouped by parent: {l, i, m, c, er, gid} int64 [R] (groups of ≥ 2, sorted).

    Children need necessity ≥ tau and sufficiency < copy (default tau): a child covering its whole
    parent is a copy, not a part."""
    ok = (
        (e["n_co"] >= min_support)
        & (child_counts(e) >= min_support)
        & (e["necessity"] >= tau)
        & (e["sufficiency"] < (tau if copy is None else copy))
    )
    rows = np.nonzero(ok)[0]
    order, gid = ranked_groups(
        [e["src_layer"][rows], e["src"][rows], e["dst_layer"][rows]],
        [e["n_co"][rows].astype(np.float64), -e["dst"][rows].astype(np.float64)],
        max_children,
    )
    rows = rows[order]
    sizes = np.bincount(gid) if len(gid) else np.zeros(0, np.int64)
    keep = sizes[gid] >= 2 if len(gid) else np.zeros(0, bool)
    rows, gid = rows[keep], gid[keep]
    gid = np.unique(gid, return_inverse=True)[1].astype(np.int64) if len(gid) else gid
    return {
        "l": e["src_layer"][rows],
        "i": e["src"][rows],
        "m": e["dst_layer"][rows],
        "c": e["dst"][rows],
        "er": rows,
        "gid": gid,
    }


def child_pair_requests(cand: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Positions (p1, p2) of every candidate-child pair within a parent, and the within-layer pairs
    {m: [P, 2] (c1 < c2)} to count."""
    p1, p2 = pairs_in_groups(cand["gid"])
    req: dict[int, np.ndarray] = {}
    for m in np.unique(cand["m"][p1]).tolist():
        sel = cand["m"][p1] == m
        a, b = cand["c"][p1[sel]], cand["c"][p2[sel]]
        req[int(m)] = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    return p1, p2, req


def child_evidence(
    e: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    n_tokens: int,
    n_active: dict[int, np.ndarray],
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Per candidate child: P(parent | child) bounds, p-value and q-value (the family: all rows)."""
    ev = evidence.implication_evidence(
        n_tokens, _parent_counts(cand, n_active), child_counts(e)[cand["er"]], e["n_co"][cand["er"]], confidence
    )
    ev["q_value"] = evidence.bh_qvalues(ev["p_value"])
    return ev


def eligible_children(
    e: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    n_tokens: int,
    n_active: dict[int, np.ndarray],
    fdr: float,
    min_prob: float,
    confidence: float = 0.95,
) -> np.ndarray:
    """Candidate children the evidence test accepts, bool [R]: q ≤ fdr and the lower bound of
    P(parent | child) ≥ min_prob — `child_evidence` thresholded, without inverting the Beta (the
    bootstrap's inner loop)."""
    n_parent = _parent_counts(cand, n_active)
    n_child, n_co = child_counts(e)[cand["er"]], e["n_co"][cand["er"]]
    p = evidence.greater_pvalue(n_co, n_child, n_parent - n_co, n_tokens - n_child)
    return (evidence.bh_qvalues(p) <= fdr) & evidence.lower_bound_reaches(n_co, n_child, min_prob, confidence)


def _parent_counts(cand: dict[str, np.ndarray], n_active: dict[int, np.ndarray]) -> np.ndarray:
    """The parent's active count of every candidate row."""
    n_parent = np.zeros(len(cand["c"]), np.int64)
    for l in np.unique(cand["l"]).tolist():
        sel = cand["l"] == l
        n_parent[sel] = n_active[int(l)][cand["i"][sel]]
    return n_parent


def child_pair_jaccard(
    cand: dict[str, np.ndarray],
    p1: np.ndarray,
    p2: np.ndarray,
    pairs: dict[int, np.ndarray],
    counts,
    d_sae: dict[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Jaccard and co-active count of candidate-child pairs (p1[k], p2[k]), float [K] and int [K], from
    the counts of the within-layer `pairs` requested ({m: [P, 2] sorted unique (lo, hi)})."""
    if len(p1) == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    m = cand["m"][p1]
    a, b = cand["c"][p1], cand["c"][p2]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    n12, n1, n2 = (np.zeros(len(p1), np.int64) for _ in range(3))
    for layer in np.unique(m).tolist():
        sel = m == layer
        keys = pairs[layer][:, 0] * d_sae[layer] + pairs[layer][:, 1]
        n12[sel] = counts.pairs[layer][np.searchsorted(keys, lo[sel] * d_sae[layer] + hi[sel])]
        n1[sel], n2[sel] = counts.n_active[layer][a[sel]], counts.n_active[layer][b[sel]]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n1 + n2 - n12 > 0, n12 / (n1 + n2 - n12), np.nan), n12


@numba.njit(cache=True)
def _greedy(starts, sizes, conf_off, conflict, eligible, chosen):
    """Per group, in row order (largest first), keep an eligible row if it conflicts with no kept row."""
    for g in range(len(starts)):
        s, k, off = starts[g], sizes[g], conf_off[g]
        for r in range(k):
            ok = eligible[s + r]
            for q in range(r):
                if chosen[s + q] and conflict[off + q * k + r]:
                    ok = False
                    break
            chosen[s + r] = ok


def choose_children(
    cand: dict[str, np.ndarray],
    p1: np.ndarray,
    p2: np.ndarray,
    pair_jaccard: np.ndarray,
    tau_x: float,
    eligible: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy choice of mutually exclusive children per parent (module doc, step 2).

    pair_jaccard: float [len(p1)] Jaccard of candidate children p1[k], p2[k]; eligible: bool [R]
    (default all) — rows that may be chosen.
    Returns (chosen bool [R], group max pair Jaccard among chosen float [G]).
    """
    gid = cand["gid"]
    n_g = int(gid.max()) + 1 if len(gid) else 0
    starts = np.searchsorted(gid, np.arange(n_g))
    sizes = np.bincount(gid, minlength=n_g)
    conf_off = np.zeros(n_g, np.int64)
    if n_g > 1:
        conf_off[1:] = np.cumsum(sizes**2)[:-1]
    conflict = np.zeros(int((sizes**2).sum()), np.bool_)
    g = gid[p1]
    local1, local2 = p1 - starts[g], p2 - starts[g]
    conflict[conf_off[g] + local1 * sizes[g] + local2] = ~(pair_jaccard <= tau_x)  # NaN counts as a conflict
    chosen = np.zeros(len(gid), np.bool_)
    ok = np.ones(len(gid), np.bool_) if eligible is None else np.ascontiguousarray(eligible, np.bool_)
    _greedy(starts.astype(np.int64), sizes.astype(np.int64), conf_off, conflict, ok, chosen)
    both = chosen[p1] & chosen[p2]
    max_j = np.zeros(n_g)
    np.maximum.at(max_j, g[both], pair_jaccard[both])
    return chosen, max_j


def split_groups(cand: dict[str, np.ndarray], chosen: np.ndarray) -> dict[tuple[int, int], tuple]:
    """Group requests for the second pass: {(l, m): (anchor [G], ptr [G+1], members [K], group ids [G])}."""
    gid = cand["gid"][chosen]
    n_ch = np.bincount(gid, minlength=int(cand["gid"].max()) + 1 if len(cand["gid"]) else 0)
    ok_g = np.nonzero(n_ch >= 2)[0]
    out = {}
    rows = np.nonzero(chosen)[0]
    rows = rows[np.isin(cand["gid"][rows], ok_g)]
    for l, m in sorted(set(zip(cand["l"][rows].tolist(), cand["m"][rows].tolist()))):
        r = rows[(cand["l"][rows] == l) & (cand["m"][rows] == m)]
        groups, first, counts = np.unique(cand["gid"][r], return_index=True, return_counts=True)
        ptr = np.zeros(len(groups) + 1, np.int64)
        np.cumsum(counts, out=ptr[1:])
        out[(int(l), int(m))] = (cand["i"][r[first]], ptr, cand["c"][r], groups, r)
    return out


SPLIT_SCHEMA = pa.schema(
    [
        ("layer", pa.int64()),
        ("feature", pa.int64()),
        ("child_layer", pa.int64()),
        ("children", pa.list_(pa.int64())),
        ("n_children", pa.int64()),
        ("children_n_co", pa.list_(pa.int64())),
        ("children_necessity", pa.list_(pa.float64())),
        ("n_parent", pa.int64()),
        ("n_any_child", pa.int64()),
        ("coverage", pa.float64()),
        ("exclusivity", pa.float64()),
        ("max_pair_jaccard", pa.float64()),
        ("children_necessity_lo", pa.list_(pa.float64())),
        ("children_q_value", pa.list_(pa.float64())),
        ("coverage_lo", pa.float64()),
        ("coverage_hi", pa.float64()),
        ("exclusivity_lo", pa.float64()),
        ("exclusivity_hi", pa.float64()),
    ]
)
"""splits.parquet: one row per split; the children_* lists align with `children`."""


def splits_table(
    e: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    groups: dict,
    group_counts: dict,
    n_active: dict[int, np.ndarray],
    max_pair: np.ndarray,
    min_coverage: float,
    child_ev: dict[str, np.ndarray] | None = None,
    test: str = "evidence",
    confidence: float = 0.95,
) -> pa.Table:
    """splits.parquet rows: parent (layer, feature), child_layer, children, their scores and bounds.

    child_ev: `child_evidence` of the candidate rows (NaN bounds/q-values without it). With the
    evidence test a split needs coverage's lower bound ≥ min_coverage, otherwise coverage itself."""
    cols: dict[str, list] = {f.name: [] for f in SPLIT_SCHEMA}
    nan = np.full(len(cand["c"]), np.nan)
    ev_lo = nan if child_ev is None else child_ev["necessity_lo"]
    ev_q = nan if child_ev is None else child_ev["q_value"]
    for (l, m), (anchor, ptr, members, gids, rows) in groups.items():
        cnt = group_counts[(l, m)]
        for g in range(len(anchor)):
            i = int(anchor[g])
            n_i = int(n_active[l][i])
            n_any, n_multi, n_cov = (int(x) for x in cnt[g])
            coverage = n_cov / n_i if n_i else float("nan")
            (cov_lo,), (cov_hi,) = evidence.beta_bounds(np.array([n_cov]), np.array([n_i]), confidence)
            (ex_lo,), (ex_hi,) = evidence.beta_bounds(np.array([n_any - n_multi]), np.array([n_any]), confidence)
            if not (cov_lo if test == "evidence" else coverage) >= min_coverage:
                continue
            r = rows[ptr[g] : ptr[g + 1]]
            cols["layer"].append(l)
            cols["feature"].append(i)
            cols["child_layer"].append(m)
            cols["children"].append(members[ptr[g] : ptr[g + 1]].tolist())
            cols["n_children"].append(int(ptr[g + 1] - ptr[g]))
            cols["children_n_co"].append(e["n_co"][cand["er"][r]].tolist())
            cols["children_necessity"].append(e["necessity"][cand["er"][r]].tolist())
            cols["n_parent"].append(n_i)
            cols["n_any_child"].append(n_any)
            cols["coverage"].append(coverage)
            cols["exclusivity"].append(1.0 - n_multi / n_any if n_any else float("nan"))
            cols["max_pair_jaccard"].append(float(max_pair[gids[g]]))
            cols["children_necessity_lo"].append(ev_lo[r].tolist())
            cols["children_q_value"].append(ev_q[r].tolist())
            cols["coverage_lo"].append(float(cov_lo))
            cols["coverage_hi"].append(float(cov_hi))
            cols["exclusivity_lo"].append(float(ex_lo))
            cols["exclusivity_hi"].append(float(ex_hi))
    t = pa.table(cols, schema=SPLIT_SCHEMA)
    return t.sort_by([("layer", "ascending"), ("feature", "ascending"), ("child_layer", "ascending")])
