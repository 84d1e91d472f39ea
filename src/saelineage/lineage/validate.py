"""Validation passes over the stored codes: exact counts for gates, splits and samples.

Edges only hold pairwise statistics; whether a child equals a∧b or a∨b, or whether a
parent's children fire together, needs joint counts of three or more features. These are
counted here in one streaming pass over the shards, with the same token set (BOS rule) and
the same active threshold the stats stage used, so the numbers are comparable with the
edge measures. Work per token is proportional to the requests touching its active
features, never to d_sae² (numba kernels below).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from saelineage import contract
from saelineage.contract import Manifest
from saelineage.data.store import LayerCodes, iter_shards, token_mask
from saelineage.errors import SaelineageError
from saelineage.run import RunDir, read_parquet


# ---------------------------------------------------------------------------- thresholds
def stats_options(manifest: Manifest) -> dict:
    """Options the stats stage recorded (threshold, relative_threshold, include_bos, min_support)."""
    entry = manifest.stage("stats")
    opts = dict(entry.get("options") or {})
    for key in ("threshold", "relative_threshold", "include_bos", "min_support", "span"):
        if key in entry and key not in opts:
            opts[key] = entry[key]
    return opts


def active_thresholds(run: RunDir, manifest: Manifest) -> dict[int, np.ndarray]:
    """θ per layer, float64 [d_sae]: a feature is active on a token when a > θ (docs/design.md §4).

    Uses the stats stage's absolute `threshold` or `relative_threshold` × act_max (the max
    from collection, features.parquet), so validation counts match the edges' counts.
    """
    opts = stats_options(manifest)
    layers, d_sae = manifest.layers, manifest.d_sae
    rel = opts.get("relative_threshold")
    absolute = float(opts.get("threshold") or 0.0)
    out = {l: np.full(d_sae[l], absolute if rel is None else 0.0, np.float64) for l in layers}
    if rel is not None:
        feats = read_parquet(run.file(contract.FEATURES), columns=["layer", "feature", "act_max"])
        lay = feats.column("layer").to_numpy()
        fid = feats.column("feature").to_numpy()
        mx = feats.column("act_max").to_numpy().astype(np.float64)
        for l in layers:
            sel = lay == l
            out[l][fid[sel]] = float(rel) * mx[sel]  # as the stats stage: r · max, not max(θ, r · max)
    return out


def active_csr(codes: LayerCodes, mask: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64 [T+1], indices int32 [nnz']) of the entries that are active on counted tokens."""
    t = len(codes.indptr) - 1
    rows = np.repeat(np.arange(t), np.diff(codes.indptr))
    v = codes.values.astype(np.float64)
    keep = mask[rows] & (v > theta[codes.indices]) & (v > 0)
    counts = np.bincount(rows[keep], minlength=t)
    indptr = np.zeros(t + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, np.ascontiguousarray(codes.indices[keep], dtype=np.int32)


def group_csr(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """(ptr int64 [n_keys+1], order int64 [len(keys)]): rows of each key, stable order."""
    order = np.argsort(keys, kind="stable")
    ptr = np.zeros(n_keys + 1, np.int64)
    np.cumsum(np.bincount(keys, minlength=n_keys), out=ptr[1:])
    return ptr, order


# ------------------------------------------------------------------------------ kernels
@numba.njit(cache=True, nogil=True)
def _pair_kernel(indptr, indices, tg, scratch, ptr, other, out):
    """out[g, p] += #tokens of window group g where both features of pair p are active (pairs
    grouped by first feature; tg int64 [T] is each token's window group)."""
    for t in range(len(indptr) - 1):
        lo, hi = indptr[t], indptr[t + 1]
        g = tg[t]
        for e in range(lo, hi):
            scratch[indices[e]] = True
        for e in range(lo, hi):
            a = indices[e]
            for p in range(ptr[a], ptr[a + 1]):
                if scratch[other[p]]:
                    out[g, p] += 1
        for e in range(lo, hi):
            scratch[indices[e]] = False


@numba.njit(cache=True, nogil=True)
def _triple_kernel(l_indptr, l_indices, m_indptr, m_indices, tg, scratch, ptr, ta, tb, out_and, out_or):
    """For triples (j; a, b) grouped by child j: tokens with j ∧ a ∧ b and with j ∧ (a ∨ b), per window group."""
    for t in range(len(l_indptr) - 1):
        m_lo, m_hi = m_indptr[t], m_indptr[t + 1]
        if m_lo == m_hi:
            continue
        g = tg[t]
        for e in range(l_indptr[t], l_indptr[t + 1]):
            scratch[l_indices[e]] = True
        for e in range(m_lo, m_hi):
            j = m_indices[e]
            for q in range(ptr[j], ptr[j + 1]):
                ina = scratch[ta[q]]
                inb = scratch[tb[q]]
                if ina and inb:
                    out_and[g, q] += 1
                if ina or inb:
                    out_or[g, q] += 1
        for e in range(l_indptr[t], l_indptr[t + 1]):
            scratch[l_indices[e]] = False


@numba.njit(cache=True, nogil=True)
def _group_kernel(l_indptr, l_indices, m_indptr, m_indices, tg, scratch, ptr, groups_of, anchor, cnt, touched, out):
    """Groups g (anchor at l, members at m): out[w, g] += (any member, ≥2 members, anchor ∧ any member),
    w the token's window group."""
    for t in range(len(l_indptr) - 1):
        n_touched = 0
        w = tg[t]
        for e in range(m_indptr[t], m_indptr[t + 1]):
            j = m_indices[e]
            for k in range(ptr[j], ptr[j + 1]):
                g = groups_of[k]
                if cnt[g] == 0:
                    touched[n_touched] = g
                    n_touched += 1
                cnt[g] += 1
        if n_touched == 0:
            continue
        for e in range(l_indptr[t], l_indptr[t + 1]):
            scratch[l_indices[e]] = True
        for k in range(n_touched):
            g = touched[k]
            out[w, g, 0] += 1
            if cnt[g] >= 2:
                out[w, g, 1] += 1
            if scratch[anchor[g]]:
                out[w, g, 2] += 1
            cnt[g] = 0
        for e in range(l_indptr[t], l_indptr[t + 1]):
            scratch[l_indices[e]] = False


@numba.njit(cache=True, nogil=True)
def _link_kernel(l_ptr, l_idx, l_val, l_theta, m_ptr, m_idx, m_val, m_theta, tg, vals, ptr, dst, cnt, sxy):
    """Links q (a at l, j at m), grouped by a, per window group: cnt += tokens where both are active
    (value > θ), sxy += a_a·a_j (every positive entry, as the stats stage sums them). The CSRs hold
    the positive entries of counted tokens."""
    for t in range(len(l_ptr) - 1):
        lo, hi = m_ptr[t], m_ptr[t + 1]
        if lo == hi:
            continue
        g = tg[t]
        for e in range(lo, hi):
            vals[m_idx[e]] = m_val[e]
        for e in range(l_ptr[t], l_ptr[t + 1]):
            a = l_idx[e]
            x = l_val[e]
            on_a = x > l_theta[a]
            for q in range(ptr[a], ptr[a + 1]):
                j = dst[q]
                y = vals[j]
                if y > 0:
                    sxy[g, q] += x * y
                    if on_a and y > m_theta[j]:
                        cnt[g, q] += 1
        for e in range(lo, hi):
            vals[m_idx[e]] = 0.0


# ------------------------------------------------------------------------------ the pass
@dataclass
class Requests:
    """What to count. Feature ids are per layer; arrays are int64.

    pairs: {layer: [P, 2] (a, b)} — tokens where a and b (same layer) are both active.
    triples: {(l, m): [Q, 3] (j, a, b)} — child j at m, parents a, b at l.
    groups: {(l, m): (anchor [G], members ptr [G+1], members [K])} — anchor at l, members at m.
    links: {(l, m): [L, 2] (a, j)} — tokens where a (at l) and j (at m) are both active, and Σ a_a·a_j.
    samples: windows whose codes at `sample_pos` (negative: from the end) are kept raw.
    example_keys: (window [E], pos [E]) whose token id is looked up.
    window_groups: int64 [n_windows] — each window's group (0..W-1) for the bootstrap: every count
    is then also kept per group (`Counts.by_group`).
    """

    pairs: dict[int, np.ndarray] = field(default_factory=dict)
    triples: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    groups: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    links: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    samples: np.ndarray | None = None
    sample_pos: int = -1
    example_keys: tuple[np.ndarray, np.ndarray] | None = None
    window_groups: np.ndarray | None = None


@dataclass
class Grouped:
    """Counts per window group (leading axis W): the bootstrap resamples these groups."""

    n_tokens: np.ndarray
    """int64 [W]"""
    n_active: dict[int, np.ndarray]
    """{layer: int64 [W, d_sae]}"""
    sums: dict[int, tuple[np.ndarray, np.ndarray]]
    """{layer: (Σ a, Σ a²) float64 [W, d_sae]} over positive entries, as the stats stage sums them"""
    pairs: dict[int, np.ndarray]
    """{layer: int64 [W, P]}"""
    triples: dict[tuple[int, int], np.ndarray]
    """{(l, m): int64 [W, Q, 2]}"""
    groups: dict[tuple[int, int], np.ndarray]
    """{(l, m): int64 [W, G, 3]}"""
    links: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
    """{(l, m): (co-active int64 [W, L], Σ a_a·a_j float64 [W, L])}"""


@dataclass
class Counts:
    """Results of `count`, aligned with the requests (totals over every window)."""

    n_tokens: int
    n_active: dict[int, np.ndarray]
    """{layer: int64 [d_sae]} active counts under the stats threshold"""
    pairs: dict[int, np.ndarray]
    """{layer: int64 [P]}"""
    triples: dict[tuple[int, int], np.ndarray]
    """{(l, m): int64 [Q, 2]} (child ∧ a ∧ b, child ∧ (a ∨ b))"""
    groups: dict[tuple[int, int], np.ndarray]
    """{(l, m): int64 [G, 3]} (any member, ≥ 2 members, anchor ∧ any member)"""
    samples: list[dict]
    """[{window, pos, token, codes: {layer: (features int64, values float64)}}] (raw codes)"""
    example_tokens: np.ndarray | None
    """int64 [E] token id of each example key (-1 if not found)"""
    links: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    """{(l, m): int64 [L]} tokens with both ends active"""
    by_group: Grouped | None = None
    """Every count per window group, when the requests named groups."""


def positive_csr(codes: LayerCodes, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr int64 [T+1], indices int32, values float64) of the positive entries on counted tokens."""
    t = len(codes.indptr) - 1
    rows = np.repeat(np.arange(t), np.diff(codes.indptr))
    v = codes.values.astype(np.float64)
    keep = mask[rows] & (v > 0)
    indptr = np.zeros(t + 1, np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=t), out=indptr[1:])
    return indptr, np.ascontiguousarray(codes.indices[keep], dtype=np.int32), np.ascontiguousarray(v[keep])


def count(run: RunDir, req: Requests) -> Counts:
    """One streaming pass over the run's shards computing everything `req` asks for."""
    manifest = run.load()
    layers, d_sae = manifest.layers, manifest.d_sae
    opts = stats_options(manifest)
    include_bos = bool(opts.get("include_bos", manifest.include_bos))
    theta = active_thresholds(run, manifest)
    wg = None if req.window_groups is None else np.asarray(req.window_groups, np.int64)
    n_w = 1 if wg is None else int(wg.max()) + 1 if len(wg) else 1
    n_tok = np.zeros(n_w, np.int64)
    n_active = {l: np.zeros((n_w, d_sae[l]), np.int64) for l in layers}
    value_layers = sorted({x for lm in req.links for x in lm}) if wg is not None else []
    sums = {l: (np.zeros((n_w, d_sae[l])), np.zeros((n_w, d_sae[l]))) for l in value_layers}
    scratch = {l: np.zeros(d_sae[l], np.bool_) for l in layers}
    vals = {l: np.zeros(d_sae[l], np.float64) for l in layers}

    pair_plan = {}
    for l, p in req.pairs.items():
        p = np.asarray(p, np.int64).reshape(-1, 2)
        ptr, order = group_csr(p[:, 0], d_sae[l])
        pair_plan[l] = (ptr, order, np.ascontiguousarray(p[order, 1]), np.zeros((n_w, len(p)), np.int64))
    tri_plan = {}
    for (l, m), q in req.triples.items():
        q = np.asarray(q, np.int64).reshape(-1, 3)
        ptr, order = group_csr(q[:, 0], d_sae[m])
        tri_plan[(l, m)] = (
            ptr,
            order,
            np.ascontiguousarray(q[order, 1]),
            np.ascontiguousarray(q[order, 2]),
            np.zeros((n_w, len(q)), np.int64),
            np.zeros((n_w, len(q)), np.int64),
        )
    grp_plan = {}
    for (l, m), (anchor, mptr, members) in req.groups.items():
        anchor = np.asarray(anchor, np.int64)
        gid = np.repeat(np.arange(len(anchor)), np.diff(mptr))
        ptr, order = group_csr(np.asarray(members, np.int64), d_sae[m])
        grp_plan[(l, m)] = (
            ptr,
            np.ascontiguousarray(gid[order]),
            anchor,
            np.zeros(len(anchor), np.int64),
            np.zeros(len(anchor), np.int64),
            np.zeros((n_w, len(anchor), 3), np.int64),
        )
    link_plan = {}
    for (l, m), q in req.links.items():
        q = np.asarray(q, np.int64).reshape(-1, 2)
        ptr, order = group_csr(q[:, 0], d_sae[l])
        link_plan[(l, m)] = (
            ptr,
            order,
            np.ascontiguousarray(q[order, 1]),
            np.zeros((n_w, len(q)), np.int64),
            np.zeros((n_w, len(q)), np.float64),
        )

    need_layers = sorted(set(layers))
    samples_wanted = set() if req.samples is None else {int(w) for w in req.samples}
    samples: list[dict] = []
    ex_tokens = None
    if req.example_keys is not None:
        ex_w, ex_p = (np.asarray(x, np.int64) for x in req.example_keys)
        ex_order = np.lexsort((ex_p, ex_w))  # by window, so each shard takes one slice
        ex_w_sorted = ex_w[ex_order]
        ex_tokens = np.full(len(ex_w), -1, np.int64)
    n_shards = 0
    for shard in iter_shards(run, need_layers):
        n_shards += 1
        mask = token_mask(shard.pos, manifest.bos, include_bos)
        tg = np.zeros(len(mask), np.int64) if wg is None else wg[np.asarray(shard.window, np.int64)]
        n_tok += np.bincount(tg[mask], minlength=n_w)
        act = {l: active_csr(shard.codes[l], mask, theta[l]) for l in layers}
        for l in layers:
            rows = np.repeat(tg, np.diff(act[l][0]))
            n_active[l] += np.bincount(rows * d_sae[l] + act[l][1], minlength=n_w * d_sae[l]).reshape(n_w, -1)
        pos = {l: positive_csr(shard.codes[l], mask) for l in value_layers}
        for l, (ptr_, idx, v) in pos.items():
            key = np.repeat(tg, np.diff(ptr_)) * d_sae[l] + idx
            s1, s2 = sums[l]  # in place: the tuple holds the arrays
            s1 += np.bincount(key, weights=v, minlength=n_w * d_sae[l]).reshape(n_w, -1)
            s2 += np.bincount(key, weights=v * v, minlength=n_w * d_sae[l]).reshape(n_w, -1)
        for l, (ptr, _, other, out) in pair_plan.items():
            _pair_kernel(act[l][0], act[l][1], tg, scratch[l], ptr, other, out)
        for (l, m), (ptr, _, ta, tb, o_and, o_or) in tri_plan.items():
            _triple_kernel(act[l][0], act[l][1], act[m][0], act[m][1], tg, scratch[l], ptr, ta, tb, o_and, o_or)
        for (l, m), (ptr, gof, anchor, cnt, touched, g_out) in grp_plan.items():
            _group_kernel(
                act[l][0], act[l][1], act[m][0], act[m][1], tg, scratch[l], ptr, gof, anchor, cnt, touched, g_out
            )
        for (l, m), (ptr, _, dst, lc, lx) in link_plan.items():
            pl = pos[l] if l in pos else positive_csr(shard.codes[l], mask)
            pm = pos[m] if m in pos else positive_csr(shard.codes[m], mask)
            _link_kernel(*pl, theta[l], *pm, theta[m], tg, vals[m], ptr, dst, lc, lx)
        if samples_wanted:
            samples.extend(_take_samples(shard, samples_wanted, req.sample_pos, layers))
        if ex_tokens is not None and len(shard.tokens):
            lo = np.searchsorted(ex_w_sorted, int(shard.window.min()), "left")
            hi = np.searchsorted(ex_w_sorted, int(shard.window.max()), "right")
            sel = ex_order[lo:hi]
            ex_tokens[sel] = _lookup_tokens(shard, ex_w[sel], ex_p[sel])
    if n_shards == 0:
        raise SaelineageError(f"run {run.path} has no activation shards.", "run `saelineage collect` first.")

    def unsort(order: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values)
        out[:, order] = values
        return out

    pairs = {l: unsort(order, out) for l, (_, order, _, out) in pair_plan.items()}
    triples = {
        k: unsort(order, np.stack([o_and, o_or], axis=2)) for k, (_, order, _, _, o_and, o_or) in tri_plan.items()
    }
    groups = {k: v[5] for k, v in grp_plan.items()}
    links = {k: (unsort(order, lc), unsort(order, lx)) for k, (_, order, _, lc, lx) in link_plan.items()}
    grouped = None if wg is None else Grouped(n_tok, n_active, sums, pairs, triples, groups, links)
    return Counts(
        n_tokens=int(n_tok.sum()),
        n_active={l: v.sum(0) for l, v in n_active.items()},
        pairs={l: v.sum(0) for l, v in pairs.items()},
        triples={k: v.sum(0) for k, v in triples.items()},
        groups={k: v.sum(0) for k, v in groups.items()},
        samples=sorted(samples, key=lambda s: s["window"]),
        example_tokens=ex_tokens,
        links={k: v[0].sum(0) for k, v in links.items()},
        by_group=grouped,
    )


def _take_samples(shard, wanted: set[int], sample_pos: int, layers: list[int]) -> list[dict]:
    out = []
    for w in sorted(wanted & set(np.unique(shard.window).tolist())):
        rows = np.nonzero(shard.window == w)[0]
        k = sample_pos if sample_pos >= 0 else len(rows) + sample_pos
        if not 0 <= k < len(rows):
            continue
        t = int(rows[k])
        codes = {}
        for l in layers:
            c = shard.codes[l]
            lo, hi = int(c.indptr[t]), int(c.indptr[t + 1])
            codes[l] = (c.indices[lo:hi].astype(np.int64), c.values[lo:hi].astype(np.float64))
        out.append({"window": int(w), "pos": int(shard.pos[t]), "token": int(shard.tokens[t]), "codes": codes})
    return out


def _lookup_tokens(shard, ex_w: np.ndarray, ex_p: np.ndarray) -> np.ndarray:
    """Token ids at (window, pos) pairs that lie in this shard's windows (−1 where absent)."""
    out = np.full(len(ex_w), -1, np.int64)
    if len(ex_w) == 0:
        return out
    span = max(int(shard.pos.max()), int(ex_p.max())) + 1
    key = shard.window.astype(np.int64) * span + shard.pos
    order = np.argsort(key, kind="stable")
    want = ex_w * span + ex_p
    idx = np.minimum(np.searchsorted(key[order], want), len(key) - 1)
    hit = key[order][idx] == want
    out[hit] = shard.tokens[order[idx[hit]]]
    return out
