"""Quasi-boolean gates: a child j (layer m) that behaves like a∧b or a∨b of two parents (layer l).

Candidates come from the kept edges (docs/design.md §4): AND pairs parents whose necessity(a→j)
reaches a floor, OR pairs parents whose sufficiency(a→j) does, each pair with n_co ≥ min_support
and c_j ≥ min_support. Every candidate is then counted on the codes (validate.count) into the
2×2×2 table of j against (a, b) and scored, with condition C = a∧b or a∨b:

    support        = #tokens(j ∧ C)
    score_backward = P(C | j)      (j fires only when C holds)
    score_forward  = P(j | C)      (C makes j fire)

plus the evidence of `evidence.gate_evidence`: exact bounds on both scores, the information gain
of C over the better single parent, and a one-sided likelihood-ratio p-value (the child depends
on C, and each parent adds to the other). q-values (Benjamini–Hochberg) run over every candidate
of the run. The default test ('evidence') reports a gate when q ≤ fdr, both lower bounds reach
min_prob and the gain reaches min_gain; 'threshold' keeps the reference's rule (both scores ≥ τ_v,
neither parent alone reaching τ_v).

The general case: every child with two or more supported parents gets its two strongest
parents (by `pair_measure`) scored as a∧b and as a∨b the same way (best_pairs.parquet).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from saelineage.lineage import evidence

GATE_COLUMNS = (
    "kind",
    "layer",
    "feature",
    "parent_layer",
    "parent_a",
    "parent_b",
    "support",
    "score_forward",
    "score_backward",
    "n_child",
    "n_condition",
    "jaccard",
    "parent_a_score",
    "parent_b_score",
    *evidence.GATE_EVIDENCE_COLUMNS,
    "q_value",
)
_GATE_TYPES = {
    c: pa.int64() if c in ("layer", "feature", "parent_layer", "parent_a", "parent_b", "support", "n_child",
                           "n_condition") else pa.float64()
    for c in GATE_COLUMNS if c != "kind"
}  # fmt: skip


def ranked_groups(
    keys: list[np.ndarray], scores: list[np.ndarray], max_per_group: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sort rows by group `keys` then by `scores` (descending, in priority order); keep the first
    `max_per_group` rows per group. Returns (row order int64 [R], group id int64 [R])."""
    order = np.lexsort(tuple([-s for s in reversed(scores)]) + tuple(reversed(keys)))
    if len(order) == 0:
        return order.astype(np.int64), np.zeros(0, np.int64)
    k = np.stack([np.asarray(x)[order] for x in keys], axis=1)
    new = np.ones(len(order), bool)
    new[1:] = np.any(k[1:] != k[:-1], axis=1)
    gid = np.cumsum(new) - 1
    start = np.nonzero(new)[0]
    rank = np.arange(len(order)) - start[gid]
    keep = rank < max_per_group
    return order[keep], gid[keep]


def pairs_in_groups(gid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (r1 < r2) position pairs within each run of equal `gid` (gid sorted). Loops only over
    the distinct group sizes, so the work is vectorised over pairs."""
    if len(gid) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new = np.ones(len(gid), bool)
    new[1:] = gid[1:] != gid[:-1]
    starts = np.nonzero(new)[0]
    sizes = np.diff(np.append(starts, len(gid)))
    r1, r2 = [], []
    for k in np.unique(sizes[sizes >= 2]):
        s = starts[sizes == k]
        iu, ju = np.triu_indices(int(k), 1)
        r1.append((s[:, None] + iu).ravel())
        r2.append((s[:, None] + ju).ravel())
    if not r1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(r1).astype(np.int64), np.concatenate(r2).astype(np.int64)


def child_counts(e: dict[str, np.ndarray]) -> np.ndarray:
    """c_j per edge row (from n_co / necessity; the stats stage stores no c_j column)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(e["necessity"] > 0, np.rint(e["n_co"] / e["necessity"]), 0).astype(np.int64)


def candidates(
    e: dict[str, np.ndarray], kind: str, tau: float, min_support: int, max_parents: int = 8
) -> dict[str, np.ndarray]:
    """Candidate gates of `kind` from edges `e` (columns of edges.parquet as arrays).

    Returns {l, m, j, a, b, ea, eb} int64 [G] (ea/eb: edge rows of (a→j), (b→j)); a < b.
    Per child and parent layer at most `max_parents` parents are paired (best score first).
    """
    col = "necessity" if kind == "and" else "sufficiency"
    ok = (e["n_co"] >= min_support) & (child_counts(e) >= min_support) & (e[col] >= tau)
    rows = np.nonzero(ok)[0]
    order, gid = ranked_groups(
        [e["dst_layer"][rows], e["dst"][rows], e["src_layer"][rows]],
        [e[col][rows], e["n_co"][rows].astype(np.float64), -e["src"][rows].astype(np.float64)],
        max_parents,
    )
    rows = rows[order]
    p1, p2 = pairs_in_groups(gid)
    ea, eb = rows[p1], rows[p2]
    swap = e["src"][ea] > e["src"][eb]
    ea, eb = np.where(swap, eb, ea), np.where(swap, ea, eb)
    return _parent_pairs(e, ea, eb)


def _parent_pairs(e: dict[str, np.ndarray], ea: np.ndarray, eb: np.ndarray) -> dict[str, np.ndarray]:
    """Candidate arrays for parent edges ea, eb of one child each: layers l → m, child j, parents a, b."""
    return {"l": e["src_layer"][ea], "m": e["dst_layer"][ea], "j": e["dst"][ea], "a": e["src"][ea],
            "b": e["src"][eb], "ea": ea, "eb": eb}  # fmt: skip


def best_pair_candidates(e: dict[str, np.ndarray], min_support: int, measure: str = "jaccard") -> dict[str, np.ndarray]:
    """The two strongest parents (by `measure`, then n_co) of every child per parent layer, among
    edges with n_co ≥ min_support. Same keys as `candidates`; a is the strongest (not a < b)."""
    ok = (e["n_co"] >= min_support) & (child_counts(e) >= min_support) & np.isfinite(e[measure])
    rows = np.nonzero(ok)[0]
    order, gid = ranked_groups(
        [e["dst_layer"][rows], e["dst"][rows], e["src_layer"][rows]],
        [e[measure][rows], e["n_co"][rows].astype(np.float64), -e["src"][rows].astype(np.float64)],
        2,
    )
    rows = rows[order]
    p1, p2 = pairs_in_groups(gid)
    ea, eb = rows[p1], rows[p2]
    return _parent_pairs(e, ea, eb)


def _keys(c: dict[str, np.ndarray], d_l: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoded (a, b) pair keys and (j, a, b) triple keys with a < b (int64; d_sae < 2^20)."""
    lo, hi = np.minimum(c["a"], c["b"]), np.maximum(c["a"], c["b"])
    return lo * d_l + hi, (c["j"] * d_l + lo) * d_l + hi


def build_requests(
    cands: list[dict[str, np.ndarray]], d_sae: dict[int, int]
) -> tuple[dict[int, np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """Unique within-layer pairs {l: [P, 2] (a, b)} and triples {(l, m): [Q, 3] (j, a, b)}, a < b,
    sorted by their encoded keys (so `lookup` can binary-search them)."""
    pk: dict[int, list] = {}
    tk: dict[tuple[int, int], list] = {}
    for c in cands:
        for l, m in set(zip(c["l"].tolist(), c["m"].tolist())):
            sel = (c["l"] == l) & (c["m"] == m)
            p, t = _keys({x: v[sel] for x, v in c.items()}, d_sae[l])
            pk.setdefault(l, []).append(p)
            tk.setdefault((l, m), []).append(t)
    pairs = {}
    for l, parts in pk.items():
        u = np.unique(np.concatenate(parts))
        pairs[l] = np.stack([u // d_sae[l], u % d_sae[l]], axis=1)
    triples = {}
    for (l, m), parts in tk.items():
        u = np.unique(np.concatenate(parts))
        d = d_sae[l]
        triples[(l, m)] = np.stack([u // (d * d), (u // d) % d, u % d], axis=1)
    return pairs, triples


def lookup(
    c: dict[str, np.ndarray],
    pairs: dict[int, np.ndarray],
    triples: dict[tuple[int, int], np.ndarray],
    counts,
    d_sae: dict[int, int],
) -> dict[str, np.ndarray]:
    """Validation counts for candidate rows: n_j, n_a, n_b, n_ab, t_and (j∧a∧b), t_or (j∧(a∨b))."""
    n = len(c["j"])
    out = {k: np.zeros(n, np.int64) for k in ("n_j", "n_a", "n_b", "n_ab", "t_and", "t_or")}
    for l, m in set(zip(c["l"].tolist(), c["m"].tolist())):
        sel = np.nonzero((c["l"] == l) & (c["m"] == m))[0]
        d = d_sae[l]
        pkey, tkey = _keys({x: v[sel] for x, v in c.items()}, d)
        pu = pairs[l][:, 0] * d + pairs[l][:, 1]
        tq = triples[(l, m)]
        tu = (tq[:, 0] * d + tq[:, 1]) * d + tq[:, 2]
        out["n_j"][sel] = counts.n_active[m][c["j"][sel]]
        out["n_a"][sel] = counts.n_active[l][c["a"][sel]]
        out["n_b"][sel] = counts.n_active[l][c["b"][sel]]
        out["n_ab"][sel] = counts.pairs[l][np.searchsorted(pu, pkey)]
        t = counts.triples[(l, m)][np.searchsorted(tu, tkey)]
        out["t_and"][sel], out["t_or"][sel] = t[:, 0], t[:, 1]
    return out


def _ratio(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(y > 0, x / np.maximum(y, 1), np.nan)


def condition_scores(k: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """support, n_condition, score_forward, score_backward, jaccard for condition a∧b / a∨b."""
    support = k["t_and"] if kind == "and" else k["t_or"]
    n_cond = k["n_ab"] if kind == "and" else k["n_a"] + k["n_b"] - k["n_ab"]
    return {
        "support": support,
        "n_condition": n_cond,
        "score_forward": _ratio(support, n_cond),
        "score_backward": _ratio(support, k["n_j"]),
        "jaccard": _ratio(support, k["n_j"] + n_cond - support),
    }


def score_candidates(
    e: dict[str, np.ndarray],
    c: dict[str, np.ndarray],
    k: dict[str, np.ndarray],
    kind: str,
    n_tokens: int,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Every candidate of `kind` with its scores and evidence (GATE_COLUMNS but q_value, plus
    `single_score`: the best parent's own score, which the threshold rule vetoes on)."""
    s = condition_scores(k, kind)
    ev = evidence.gate_evidence(
        kind, n_tokens, k["n_j"], k["n_a"], k["n_b"], k["n_ab"], e["n_co"][c["ea"]], e["n_co"][c["eb"]],
        k["t_and"], confidence,
    )  # fmt: skip
    parent = "necessity" if kind == "and" else "sufficiency"
    single = "sufficiency" if kind == "and" else "necessity"
    return {
        "kind": np.full(len(c["j"]), kind, dtype=object),
        "layer": c["m"],
        "feature": c["j"],
        "parent_layer": c["l"],
        "parent_a": c["a"],
        "parent_b": c["b"],
        "support": s["support"],
        "score_forward": s["score_forward"],
        "score_backward": s["score_backward"],
        "n_child": k["n_j"],
        "n_condition": s["n_condition"],
        "jaccard": s["jaccard"],
        "parent_a_score": e[parent][c["ea"]],
        "parent_b_score": e[parent][c["eb"]],
        **ev,
        "single_score": np.maximum(e[single][c["ea"]], e[single][c["eb"]]),
    }


def concat_scored(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Candidates of several kinds as one family (same keys)."""
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def select_gates(
    s: dict[str, np.ndarray],
    test: str,
    min_support: int,
    tau_valid: float = 0.95,
    fdr: float = 0.01,
    min_prob: float = 0.6,
    min_gain: float = 0.1,
) -> np.ndarray:
    """Which scored candidates (with q_value) are gates, bool [R].

    'evidence': q ≤ fdr, both scores' lower bounds ≥ min_prob and gain ≥ min_gain (a child that
    one parent alone explains as well, within noise, is carried, not gated); of the pairs that
    pass for one child, kind and parent layer only the one with the largest gain is a gate (the
    others pair a parent with a near-duplicate of the other). 'threshold' (the reference's rule):
    both scores ≥ τ_v and each parent's own score < τ_v, every passing pair.
    """
    ok = (s["support"] >= min_support) & (s["n_child"] >= min_support)
    if test == "threshold":
        return (
            ok
            & (s["score_backward"] >= tau_valid)
            & (s["score_forward"] >= tau_valid)
            & (s["single_score"] < tau_valid)
        )
    passing = (
        ok
        & (s["q_value"] <= fdr)
        & (s["score_forward_lo"] >= min_prob)
        & (s["score_backward_lo"] >= min_prob)
        & (s["gain"] >= min_gain)
    )
    rows = np.nonzero(passing)[0]
    kind = (s["kind"][rows] == "or").astype(np.int64)
    order, _ = ranked_groups(
        [kind, s["layer"][rows], s["feature"][rows], s["parent_layer"][rows]],
        [s["gain"][rows], -s["parent_a"][rows].astype(np.float64), -s["parent_b"][rows].astype(np.float64)],
        1,
    )
    best = np.zeros(len(passing), bool)
    best[rows[order]] = True
    return best


def gate_table(s: dict[str, np.ndarray], keep: np.ndarray) -> pa.Table:
    """gates.parquet from the kept rows of scored candidates, sorted by child then parents."""
    cols = {}
    for name in GATE_COLUMNS:
        v = s[name][keep]
        cols[name] = pa.array(list(v), pa.string()) if name == "kind" else pa.array(v, _GATE_TYPES[name])
    t = pa.table(cols)
    return t.sort_by([("layer", "ascending"), ("feature", "ascending"), ("kind", "ascending"),
                      ("parent_layer", "ascending"), ("parent_a", "ascending"), ("parent_b", "ascending")])  # fmt: skip


def empty_gates() -> pa.Table:
    return pa.table({c: pa.array([], pa.string() if c == "kind" else _GATE_TYPES[c]) for c in GATE_COLUMNS})


def best_pairs_table(
    e: dict[str, np.ndarray], c: dict[str, np.ndarray], k: dict[str, np.ndarray], measure: str
) -> pa.Table:
    """best_pairs.parquet: each child's two strongest parents scored as a∧b and as a∨b.

    `best` names the explanation with the highest Jaccard with the child: 'and', 'or', or
    'single' (the strongest parent alone, jaccard(a, j) from the edge).
    """
    s_and, s_or = condition_scores(k, "and"), condition_scores(k, "or")
    j_single = e["jaccard"][c["ea"]]
    stack = np.stack(
        [
            np.nan_to_num(s_and["jaccard"], nan=-1),
            np.nan_to_num(s_or["jaccard"], nan=-1),
            np.nan_to_num(j_single, nan=-1),
        ],
        axis=1,
    )
    best = np.array(["and", "or", "single"], dtype=object)[np.argmax(stack, axis=1)] if len(stack) else []
    t = {
        "layer": c["m"],
        "feature": c["j"],
        "parent_layer": c["l"],
        "parent_a": c["a"],
        "parent_b": c["b"],
        "n_child": k["n_j"],
        f"parent_a_{measure}": e[measure][c["ea"]],
        f"parent_b_{measure}": e[measure][c["eb"]],
        "single_jaccard": j_single,
    }
    for name, s in (("and", s_and), ("or", s_or)):
        for key in ("support", "score_forward", "score_backward", "jaccard"):
            t[f"{name}_{key}"] = s[key]
    out = pa.table(
        {
            n: pa.array(np.asarray(v), pa.float64() if np.asarray(v).dtype.kind == "f" else pa.int64())
            for n, v in t.items()
        }
    )
    return out.append_column("best", pa.array(list(best), pa.string()))
