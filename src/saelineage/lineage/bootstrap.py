"""Bootstrap intervals over whole windows for the lifecycle shares and the gate counts.

Windows are the unit of resampling (tokens within a window are not independent). They are dealt
at random into W groups (default 32), and the validation pass keeps every count and sum per
group (validate.Grouped); a replicate draws W groups with replacement (multinomial weights), so
any statistic that is a function of counts and sums is recomputed for a replicate as a weighted
sum over groups, without another pass over the codes. Intervals are percentile intervals of the
replicates recentred on the point estimate (`interval`).

What a replicate recomputes:
- lifecycle: each feature's best match in the adjacent layers under the analysis measure, over
  its candidate partners (its top partners in edges.parquet plus its best partner over all pairs
  from feature_links.parquet), then the per-layer shares of new / ending features among the
  (full-data) live features;
- gates: every candidate's evidence, q-values over the family and the test, as in the analysis;
"""

from __future__ import annotations

import numpy as np

from saelineage.lineage import evidence, gates
from saelineage.lineage.validate import Counts, Grouped
from saelineage.stats import measures as ms

INTERVAL = 0.95


def window_groups(n_windows: int, n_groups: int, seed: int) -> np.ndarray:
    """A random, balanced assignment of windows to groups: int64 [n_windows] in 0..W-1."""
    w = max(1, min(n_groups, n_windows))
    g = np.arange(n_windows, dtype=np.int64) % w
    np.random.default_rng([seed, 7]).shuffle(g)
    return g


def replicate_weights(n_groups: int, replicates: int, seed: int) -> np.ndarray:
    """Multinomial group weights of each replicate: int64 [B, W] (rows sum to W)."""
    rng = np.random.default_rng([seed, 11])
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=replicates).astype(np.int64)


def interval(x: np.ndarray, point: float | None = None, level: float = INTERVAL) -> tuple[float, float]:
    """Interval of replicate values x [B] at `level` (NaN where there are none).

    With `point` (the full-data estimate), the replicates are first shifted so that their median is
    the point: thresholded statistics (gates passing a bar, features with a partner ≥ τ) are biased
    under resampling, because a window drawn twice adds perfectly correlated co-firing that lifts
    candidates near the bar. The plain percentile interval then lies beside the estimate (1,387–1,450
    around 1,378 AND gates); the recentred one keeps the bootstrap's spread without its bias, and
    always holds the estimate. Without `point`: the plain percentile interval."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    if point is not None and np.isfinite(point):
        x = x + (float(point) - float(np.median(x)))
    a = (1 - level) / 2
    return float(np.quantile(x, a)), float(np.quantile(x, 1 - a))


def replicate_counts(g: Grouped, w: np.ndarray, triples: bool = True) -> Counts:
    """The counts of one replicate (group weights w int64 [W]) in the shape `validate.count` returns
    (triples=False leaves the triple counts out, for callers that need none)."""
    return Counts(
        n_tokens=int(w @ g.n_tokens),
        n_active={l: w @ v for l, v in g.n_active.items()},
        pairs={l: w @ v for l, v in g.pairs.items()},
        triples={k: np.einsum("w,wqc->qc", w, v) for k, v in g.triples.items()} if triples else {},
        groups={k: np.einsum("w,wgc->gc", w, v) for k, v in g.groups.items()},
        samples=[],
        example_tokens=None,
        links={k: w @ v[0] for k, v in g.links.items()},
    )


# ---------------------------------------------------------------------------- lifecycle
def _replicate_side(g: Grouped, w: np.ndarray, n: np.ndarray, layer: int, ids: np.ndarray, sums: bool) -> ms.Side:
    """Per-feature inputs of `layer` under replicate weights w float64 [R, W] (n [R, 1] tokens per
    replicate), gathered at feature ids [L]: fields [R, L].

    sums=False leaves the value fields NaN (a count measure reads only the counts; the sums would
    add a quarter to its time). No exact constancy test here (the groups keep no extremes): Pearson
    is undefined where a replicate's n·q − s² is not positive, which covers a feature never active
    in the replicate."""
    if not sums:
        count = (w @ g.n_active[layer])[:, ids]
        unused = np.broadcast_to(np.nan, count.shape)
        return ms.Side(count, unused, unused, unused)
    s, q = w @ g.sums[layer][0], w @ g.sums[layer][1]
    return ms.Side(w @ g.n_active[layer], s, ms.inv_sd(n, s, q), ms.inv_rms(q)).take(ids)


def link_values(
    g: Grouped,
    w: np.ndarray,
    pair: tuple[int, int],
    links: np.ndarray,
    measure: str,
    idx: np.ndarray | slice = slice(None),
) -> np.ndarray:
    """The data measure `measure` of links under replicate weights w float64 [R, W]: float64 [R, L].

    links: [L, 2] (a, j) features of layer pair `pair`; idx: their positions in g.links[pair] (all
    of them, in order, by default). Weighted sums of counts stay exact integers in float64 (far below
    2^53), so the measures are the stats stage's on the replicate's counts (docs/design.md §4)."""
    l, m = pair
    cnt, sxy = g.links[pair]
    n = (w @ g.n_tokens)[:, None]
    sums = measure not in ms.COUNT_MEASURES
    src = _replicate_side(g, w, n, l, links[:, 0], sums)
    dst = _replicate_side(g, w, n, m, links[:, 1], sums)
    return ms.data_measure(measure, n, (w @ cnt)[:, idx], (w @ sxy)[:, idx], src, dst)


def _best_by(key: np.ndarray, values: np.ndarray, d: int) -> np.ndarray:
    """Per id 0..d-1, the largest of values [R, L] over columns with that key (−inf where none)."""
    out = np.full((values.shape[0], d), -np.inf)
    if values.shape[1] == 0:
        return out
    order = np.argsort(key, kind="stable")
    k = key[order]
    starts = np.nonzero(np.r_[True, k[1:] != k[:-1]])[0]
    v = np.where(np.isnan(values[:, order]), -np.inf, values[:, order])
    out[:, k[starts]] = np.maximum.reduceat(v, starts, axis=1)
    return out


def lifecycle_replicates(
    g: Grouped,
    links: dict[tuple[int, int], np.ndarray],
    weights: np.ndarray,
    layers: list[int],
    live: dict[int, np.ndarray],
    measure: str,
    threshold: float,
    chunk: int = 25,
) -> dict[int, dict[str, np.ndarray]]:
    """Per layer, replicate shares of live features that are new and that end: float [B] each
    (absent where not applicable: new at the first layer, ending at the last).

    links: {(l, l_next): [L, 2] (a, j)} as requested from `validate.count`; weights int64 [B, W]."""
    nb = weights.shape[0]
    has_pred = {l: np.zeros((nb, len(live[l])), bool) for l in layers}
    has_succ = {l: np.zeros((nb, len(live[l])), bool) for l in layers}
    for (l, m), q in links.items():
        a, j = q[:, 0], q[:, 1]
        for lo in range(0, nb, chunk):
            r = link_values(g, weights[lo : lo + chunk].astype(np.float64), (l, m), q, measure)
            has_succ[l][lo : lo + chunk] = _best_by(a, r, len(live[l])) >= threshold
            has_pred[m][lo : lo + chunk] = _best_by(j, r, len(live[m])) >= threshold
    out: dict[int, dict[str, np.ndarray]] = {}
    for l in layers:
        n_live = int(live[l].sum())
        out[l] = {}
        if n_live == 0:
            continue
        if l != layers[0]:
            out[l]["new"] = (~has_pred[l] & live[l]).sum(1) / n_live
        if l != layers[-1]:
            out[l]["ending"] = (~has_succ[l] & live[l]).sum(1) / n_live
    return out


def lifecycle_links(
    e: dict[str, np.ndarray], best_ids: dict[tuple[int, int], np.ndarray], measure: str, top: int = 4
) -> dict[tuple[int, int], np.ndarray]:
    """Candidate partners per adjacent layer pair: each feature's `top` edges by `measure` on either
    side, plus the best pairs over all pairs (best_ids: {(l, m): [K, 2] (a, j)}). {(l, m): [L, 2]}."""
    out = {}
    for (l, m), best in best_ids.items():
        sel = np.nonzero((e["src_layer"] == l) & (e["dst_layer"] == m) & np.isfinite(e[measure]))[0]
        parts = [np.asarray(best, np.int64).reshape(-1, 2)]
        for side in ("src", "dst"):
            order, _ = gates.ranked_groups([e[side][sel]], [e[measure][sel]], top)
            rows = sel[order]
            parts.append(np.stack([e["src"][rows], e["dst"][rows]], axis=1))
        out[(l, m)] = np.unique(np.concatenate(parts), axis=0)
    return out


# ---------------------------------------------------------------------------- gates
def near_passing(scored: dict[str, np.ndarray], select: dict, gain_margin: float = 0.05) -> np.ndarray:
    """Candidates a replicate could pass, bool [R]: both scores' upper confidence bounds reach the bar
    (a replicate's lower bound rarely rises past the data's upper one) and the gain is within
    `gain_margin` of its bar. Only these are re-tested per replicate; the others keep their point
    p-values in the family and never pass."""
    if select.get("test") == "threshold":
        tau = select.get("tau_valid", 0.95)
        return (scored["score_forward_hi"] >= tau) & (scored["score_backward_hi"] >= tau)
    p = select.get("min_prob", 0.6)
    return (
        (scored["score_forward_hi"] >= p)
        & (scored["score_backward_hi"] >= p)
        & (scored["gain"] >= select.get("min_gain", 0.1) - gain_margin)
    )


def gate_count_replicates(
    e: dict[str, np.ndarray],
    cands: dict[str, dict[str, np.ndarray]],
    point: dict[str, np.ndarray],
    pairs: dict[int, np.ndarray],
    triples: dict[tuple[int, int], np.ndarray],
    edge_links: tuple[np.ndarray, dict[tuple[int, int], np.ndarray]],
    g: Grouped,
    weights: np.ndarray,
    d_sae: dict[int, int],
    select: dict,
    confidence: float,
) -> dict[str, np.ndarray]:
    """Replicate counts of gates per kind: {'and': int [B], 'or': int [B]}.

    cands: {kind: candidates} in the order of `point` (their scored point evidence); edge_links:
    (edge rows [E], {(l, m): link index of each row}) — where each edge row's co-activation count
    sits in g.links; select: select_gates' options. Candidates far from the bars (`near_passing`)
    keep their point p-values and never pass."""
    rows, link_of = edge_links
    near = near_passing(point, select)
    sub = {kind: {k: v[near & (point["kind"] == kind)] for k, v in point.items()} for kind in cands}
    cand = {kind: {k: v[near[point["kind"] == kind]] for k, v in c.items()} for kind, c in cands.items()}
    out = {kind: np.zeros(len(weights), np.int64) for kind in cands}
    far_p = point["p_value"][~near]
    min_prob = select.get("min_prob", 0.6)
    for b, w in enumerate(weights):
        rc = replicate_counts(g, w)
        n_co = _replicate_n_co(e, rows, link_of, rc)
        parts = []
        for kind, c in cand.items():
            k = gates.lookup(c, pairs, triples, rc, d_sae)
            core = evidence.gate_core(kind, rc.n_tokens, k["n_j"], k["n_a"], k["n_b"], k["n_ab"], n_co[c["ea"]],
                                      n_co[c["eb"]], k["t_and"])  # fmt: skip
            # the test compares exact lower bounds with min_prob; lower_bound_reaches answers that
            # without inverting the Beta (the replicate loop's cost), so the bounds stand in as 0/1
            fwd = evidence.lower_bound_reaches(core["support"], core["n_condition"], min_prob, confidence)
            bwd = evidence.lower_bound_reaches(core["support"], k["n_j"], min_prob, confidence)
            parts.append({**{key: sub[kind][key] for key in ("kind", "layer", "feature", "parent_layer", "parent_a",
                                                              "parent_b")},
                          "support": core["support"], "n_child": k["n_j"], "gain": core["gain"],
                          "p_value": core["p_value"], "score_forward_lo": np.where(fwd, 1.0, -1.0),
                          "score_backward_lo": np.where(bwd, 1.0, -1.0),
                          "score_forward": core["support"] / np.maximum(core["n_condition"], 1),
                          "score_backward": core["support"] / np.maximum(k["n_j"], 1),
                          "single_score": sub[kind]["single_score"]})  # fmt: skip
        scored = gates.concat_scored(parts)
        q = evidence.bh_qvalues(np.concatenate([scored["p_value"], far_p]))
        scored["q_value"] = q[: len(scored["p_value"])]
        keep = gates.select_gates(scored, **select)
        for kind in cands:
            out[kind][b] = int((keep & (scored["kind"] == kind)).sum())
    return out


def _replicate_n_co(
    e: dict[str, np.ndarray], rows: np.ndarray, link_of: dict[tuple[int, int], np.ndarray], rc: Counts
) -> np.ndarray:
    """edges' n_co with the replicate's counts at `rows` (the edges the replicate needs; the other
    rows keep the data's counts)."""
    n_co = e["n_co"].copy()
    lay = (e["src_layer"][rows], e["dst_layer"][rows])
    for (l, m), idx in link_of.items():
        sel = (lay[0] == l) & (lay[1] == m)
        n_co[rows[sel]] = rc.links[(l, m)][idx]
    return n_co


def merge_links(
    a: dict[tuple[int, int], np.ndarray], b: dict[tuple[int, int], np.ndarray]
) -> dict[tuple[int, int], np.ndarray]:
    """Union of two link requests, unique (a, j) rows sorted."""
    out = {}
    for k in set(a) | set(b):
        parts = [x[k] for x in (a, b) if k in x]
        out[k] = np.unique(np.concatenate(parts), axis=0)
    return out


def locate_links(
    e: dict[str, np.ndarray], rows: np.ndarray, links: dict[tuple[int, int], np.ndarray]
) -> dict[tuple[int, int], np.ndarray]:
    """For edge rows `rows`, grouped by layer pair in row order, their index in `links`."""
    out = {}
    for (l, m), q in links.items():
        sel = rows[(e["src_layer"][rows] == l) & (e["dst_layer"][rows] == m)]
        if len(sel) == 0:
            continue
        d = int(max(q[:, 1].max(), e["dst"][sel].max())) + 1
        key = q[:, 0] * d + q[:, 1]
        out[(l, m)] = np.searchsorted(key, e["src"][sel] * d + e["dst"][sel])
    return out


# ---------------------------------------------------------------------------- splits
def split_count_replicates(
    e: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    p1: np.ndarray,
    p2: np.ndarray,
    pairs: dict[int, np.ndarray],
    groups: dict,
    g2: Grouped,
    g: Grouped,
    weights: np.ndarray,
    d_sae: dict[int, int],
    edge_links: tuple[np.ndarray, dict[tuple[int, int], np.ndarray]],
    opts: dict,
) -> np.ndarray:
    """Replicate counts of splits, int [B]: each replicate re-runs the split choice (children's
    evidence, exclusivity, greedy choice) on its counts. Coverage is exact for a parent whose chosen
    children are the point estimate's (g2: the second pass per group); for another choice it is the
    Bonferroni bound Σ c(i∧c) − Σ c(c∧c'), tight when the children are nearly exclusive."""
    from saelineage.lineage import splits

    rows, link_of = edge_links
    point_members = {}
    for (l, m), (anchor, ptr, members, _gids, _rows) in groups.items():
        for k in range(len(anchor)):
            point_members[(l, m, int(anchor[k]))] = (frozenset(members[ptr[k] : ptr[k + 1]].tolist()), k)
    out = np.zeros(len(weights), np.int64)
    for b, w in enumerate(weights):
        rc = replicate_counts(g, w, triples=False)
        n_co = _replicate_n_co(e, rows, link_of, rc)
        eb = dict(e, n_co=n_co)
        eligible = (
            splits.eligible_children(
                eb, cand, rc.n_tokens, rc.n_active, opts["fdr"], opts["min_prob"], opts["confidence"]
            )
            if opts["test"] == "evidence"
            else None
        )
        pj, n12 = splits.child_pair_jaccard(cand, p1, p2, pairs, rc, d_sae)
        chosen, _ = splits.choose_children(cand, p1, p2, pj, opts["exclusivity"], eligible)
        pair_of = {(int(x), int(y)): int(c) for x, y, c in zip(p1.tolist(), p2.tolist(), n12.tolist())}
        n = 0
        for (l, m), (anchor, ptr, members, _gids, grows) in splits.split_groups(cand, chosen).items():
            for k in range(len(anchor)):
                i = int(anchor[k])
                n_i = int(rc.n_active[l][i])
                kids = grows[ptr[k] : ptr[k + 1]]
                same = point_members.get((l, m, i))
                if same is not None and same[0] == frozenset(members[ptr[k] : ptr[k + 1]].tolist()):
                    n_cov = int(w @ g2.groups[(l, m)][:, same[1], 2])
                else:
                    single = n_co[cand["er"][kids]]
                    overlap = sum(pair_of.get((int(x), int(y)), 0) for x in kids for y in kids if x < y)
                    n_cov = max(int(single.sum()) - overlap, int(single.max()))
                cov = n_cov / n_i if n_i else float("nan")
                if opts["test"] == "evidence":
                    ok = bool(evidence.lower_bound_reaches(np.array([n_cov]), np.array([n_i]), opts["min_coverage"],
                                                           opts["confidence"])[0])  # fmt: skip
                else:
                    ok = cov >= opts["min_coverage"]
                n += ok
        out[b] = n
    return out


# ---------------------------------------------------------------------------- communities
def community_rows(e: dict[str, np.ndarray], measure: str, threshold: float, slack: float = 0.8) -> np.ndarray:
    """Edge rows a replicate's community graph may use: measure ≥ slack × threshold (an edge just
    below the threshold can cross it in a replicate)."""
    w = np.asarray(e[measure], np.float64)
    return np.nonzero(np.isfinite(w) & (w >= slack * threshold) & (w > 0))[0]


def community_count_replicates(
    e: dict[str, np.ndarray],
    rows: np.ndarray,
    link_of: dict[tuple[int, int], np.ndarray],
    g: Grouped,
    weights: np.ndarray,
    measure: str,
    leiden,
) -> np.ndarray:
    """Replicate counts of communities, int [B]: the community graph's edge weights recomputed from
    the replicate's counts and sums (`rows` from `community_rows`), then Leiden again.

    leiden(e_sub) → (community per feature row, info) runs the analysis' Leiden on an edge subset."""
    out = np.zeros(len(weights), np.int64)
    lay = (e["src_layer"][rows], e["dst_layer"][rows])
    for b, w in enumerate(weights):
        wf = w.astype(np.float64)[None, :]  # one replicate, as link_values' [R = 1, W]
        vals = np.full(len(rows), np.nan)
        for (l, m), idx in link_of.items():
            sel = (lay[0] == l) & (lay[1] == m)
            ends = np.stack([e["src"][rows[sel]], e["dst"][rows[sel]]], axis=1)
            vals[sel] = link_values(g, wf, (l, m), ends, measure, idx)[0]
        sub = {k: e[k][rows] for k in ("src_layer", "src", "dst_layer", "dst")}
        sub[measure] = vals
        community, _ = leiden(sub)
        out[b] = len(np.unique(community[community >= 0]))
    return out
