"""Compiled (numba) kernels that turn a finished accumulator block into results.

One parallel scan over every cell (i, j) of a block of source rows evaluates all measures
(the same expressions as `measures.py`) and collects, in one go:
  - per row: the best partner under each measure over *all* j (span-1 pairs only) and the
    top-k supported partners under each primary measure;
  - per column (per thread, merged later): the best source row under each measure and the
    top-k supported source rows, so that blocks of rows can be combined exactly;
  - counters for the summary (histograms are taken over the kept edges when written).

Ranking order everywhere: higher value first, then lower partner id; NaN never ranks.

Mutual information of a pair that is never co-active (c_ij = 0) is not evaluated per cell:
for a live feature i (0 < c_i) MI(c_ij=0; c_i, c_j) is strictly increasing in c_j, so the
best such partner is the one with the largest c_j (lowest id on ties); when c_i = 0 every
partner has MI 0 and the lowest id wins. The scan records those candidates instead.

Mutual information costs four logarithms; it is evaluated only where it could matter. By
Jensen, MI = KL(joint || product) <= log(1 + chi2/n) with chi2/n = r = D² / (c_i c_j (n-c_i)
(n-c_j)), D = n c_ij - c_i c_j (a few multiplications). A cell whose bound is below every
value it could displace (row best, column best, the k-th of the row and column top-k lists,
the keep threshold) is skipped: r < expm1(that value), with a 1e-9 relative margin.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

_JIT = dict(cache=True, nogil=True, error_model="numpy")
N_MEASURES = 6
MI = 3  # index of mutual_info in measures.MEASURES
NO_ID = np.iinfo(np.int32).max  # "no row yet" in column states: loses every id tie


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def mi_scalar(n, c, ci, cj):
    """measures.mutual_info on int64 scalars (same operations, same order)."""
    d = n * c - ci * cj
    fd = np.float64(d)
    fci = np.float64(ci)
    fcj = np.float64(cj)
    fni = np.float64(n - ci)
    fnj = np.float64(n - cj)
    out = 0.0
    if c > 0:
        out = out + c * np.log1p(fd / (fci * fcj))
    if ci - c > 0:
        out = out + (ci - c) * np.log1p(-fd / (fci * fnj))
    if cj - c > 0:
        out = out + (cj - c) * np.log1p(-fd / (fni * fcj))
    if n - ci - cj + c > 0:
        out = out + (n - ci - cj + c) * np.log1p(fd / (fni * fnj))
    return max(out / np.float64(n), 0.0)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def cell_values(v, n, c, p, ci, si, isdi, irqi, cj, sj, isdj, irqj, with_mi):
    """Fill v[0..5] with the measures of one cell (measures.MEASURES order; MI NaN unless asked)."""
    fc = np.float64(c)
    v[0] = fc / np.float64(ci + cj - c)
    v[1] = fc / np.float64(ci)
    v[2] = fc / np.float64(cj)
    v[3] = mi_scalar(n, c, ci, cj) if with_mi else np.nan
    v[4] = (np.float64(n) * p - si * sj) * isdi * isdj
    v[5] = p * irqi * irqj


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def passes(v, thr):
    """True when any measure reaches its keep threshold (NaN threshold = none)."""
    for m in range(N_MEASURES):
        if v[m] >= thr[m]:
            return True
    return False


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def cell_passes(n, c, p, ci, si, isdi, irqi, cj, sj, isdj, irqj, thr, thr_mie):
    """passes(cell_values(...), thr), computing only the measures that have a threshold
    (mutual information only when its bound can reach the threshold)."""
    fc = np.float64(c)
    if thr[0] == thr[0] and fc / np.float64(ci + cj - c) >= thr[0]:
        return True
    if thr[1] == thr[1] and fc / np.float64(ci) >= thr[1]:
        return True
    if thr[2] == thr[2] and fc / np.float64(cj) >= thr[2]:
        return True
    if thr[4] == thr[4] and (np.float64(n) * p - si * sj) * isdi * isdj >= thr[4]:
        return True
    if thr[5] == thr[5] and p * irqi * irqj >= thr[5]:
        return True
    if thr[MI] == thr[MI] and c > 0 and mi_bound(n, c, ci, cj) / MARGIN >= thr_mie:
        return mi_scalar(n, c, ci, cj) >= thr[MI]
    return False


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _insert_desc(vals, ids, x, e):
    """Insert (x, e) into a full-length sorted top list (value desc, id asc) if it ranks."""
    k = vals.shape[0]
    last = k - 1
    if not (x > vals[last] or (x == vals[last] and e < ids[last])):
        return
    s = last
    while s > 0 and (vals[s - 1] < x or (vals[s - 1] == x and ids[s - 1] > e)):
        vals[s] = vals[s - 1]
        ids[s] = ids[s - 1]
        s -= 1
    vals[s] = x
    ids[s] = e


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def zero_best(m, own_count, own_q_pos, first_live, first_q):
    """Partner of the best value 0 of a count measure / act_cosine when no pair is positive.

    With no positive value every pair has c_ij = 0 (p_ij = 0 for act_cosine), so the best
    is 0 at the lowest partner for which the measure is defined, or none (-1: all NaN).
    m: measure index; own_count, own_q_pos: this feature's count and q > 0; first_live /
    first_q: lowest partner with count > 0 / q > 0. Jaccard and the "own-side" ratio need own_count > 0 or
    a live partner; the "partner-side" ratio needs a live partner.
    """
    if m == 0:  # jaccard: c_i + c_j > 0
        return 0 if own_count > 0 else first_live
    if m == 1:  # c / own count
        return 0 if own_count > 0 else -1
    if m == 2:  # c / partner count
        return first_live
    return first_q if own_q_pos else -1  # act_cosine: q_i > 0 and q_j > 0


BAND = 1.0 + 1e-12  # candidates within this factor of the first untouched one are all evaluated


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _untouched_pearson(fn, s_own, isd_own, s_other, isd_other):
    """pearson of a cell with c = p = 0, the same expression as cell_values with p = 0."""
    return (fn * 0.0 - s_own * s_other) * isd_own * isd_other


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _best_untouched(cells_c, cells_p, order, val, fn, s_own, isd_own, s_other, isd_other, offset, own_is_row):
    """The best untouched pearson along one row or one column: (value, index into cells), -1 for none.

    cells_c/cells_p: the row's (or the column's) counts and sums; order: the walkable indices by
    val = s·isd of the partner ascending; s_other/isd_other are read at offset + index. Untouched
    pearson is −(s_i s_j)·isd_i·isd_j: for a live feature it falls as the partner's s·isd grows, so
    the best is the first untouched index in order. Rounding can reorder values whose val differ by
    a few ulps, so every untouched index within BAND of the first is evaluated and the exact
    (value desc, index asc) best kept. The walk skips only touched cells: its cost is proportional
    to the touched cells, not to the length."""
    best = -np.inf
    best_k = -1
    if isd_own == isd_own:
        v0 = -1.0
        for t in range(order.shape[0]):
            if v0 >= 0.0 and val[t] > v0 * BAND:
                break
            k = order[t]
            if cells_c[k] != 0 or cells_p[k] != 0.0:
                continue
            if v0 < 0.0:
                v0 = val[t]
            o = offset + k
            if own_is_row:  # the cell's expression with the row's factors first, as in cell_values
                x = _untouched_pearson(fn, s_own, isd_own, s_other[o], isd_other[o])
            else:
                x = _untouched_pearson(fn, s_other[o], isd_other[o], s_own, isd_own)
            if x > best or (x == best and k < best_k):
                best = x
                best_k = k
    return best, best_k


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _first_zero(cells_c, order):
    """First index in order whose count is 0 (-1 if none): the zero-count MI candidate when order
    ranks partners by count descending, index ascending."""
    for t in range(order.shape[0]):
        if cells_c[order[t]] == 0:
            return order[t]
    return -1


@numba.njit(parallel=True, **_JIT)
def untouched_columns(cnt, psum, lo, fn, ci, si, isdi, sj, isdj, g_order, g_val, c_order, cb_v, cb_i, zc, zi):
    """Per column of a block (cnt, psum [B, d_m], rows lo..): the best pearson over untouched
    cells and the zero-count MI candidate (c_ij = 0: largest c_i, lowest i), folded into this
    thread's column state (cb_v/cb_i [th, d_m] for pearson, zc/zi [th, d_m]).

    g_order: block rows (0..B-1) with finite g_i = s_i·isd_i, by g ascending (g_val their g);
    c_order: block rows by c_i descending, row ascending (`_best_untouched`, `_first_zero`)."""
    B, dm = cnt.shape
    for j in prange(dm):
        th = numba.get_thread_id()
        best, r = _best_untouched(cnt[:, j], psum[:, j], g_order, g_val, fn, sj[j], isdj[j], si, isdi, lo, False)
        if r >= 0 and (best > cb_v[th, j] or (best == cb_v[th, j] and lo + r < cb_i[th, j])):
            cb_v[th, j] = best
            cb_i[th, j] = lo + r
        r = _first_zero(cnt[:, j], c_order)
        if r >= 0:
            c = np.int64(ci[lo + r])
            if c > zc[th, j] or (c == zc[th, j] and lo + r < zi[th, j]):
                zc[th, j] = c
                zi[th, j] = lo + r


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def mi_bound(n, c, ci, cj):
    """chi2 / n of the 2x2 table: MI <= log1p(this) (see the module docstring).

    A constant variable (c_i or c_j in {0, n}) has MI exactly 0: the bound is then 0.
    """
    den = np.float64(ci) * np.float64(cj) * np.float64(n - ci) * np.float64(n - cj)
    if den == 0.0:
        return 0.0
    d = np.float64(n * c - ci * cj)
    return d * d / den


MARGIN = 1.0 - 1e-9  # safety margin on the MI bound test (rounding of r and of expm1)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _best(bv, bj, cb_v, cb_i, m, x, i, j):
    """Row best (j ascending: ties keep the earlier j) and column best (value desc, id asc).

    Returns True when the column best changed."""
    if x > bv[m]:
        bv[m] = x
        bj[m] = j
    if x > cb_v[m, j] or (x == cb_v[m, j] and i < cb_i[m, j]):
        cb_v[m, j] = x
        cb_i[m, j] = i
        return True
    return False


@numba.njit(parallel=True, **_JIT)
def scan_block(
    cnt,
    psum,
    lo,
    n,
    ci,
    si,
    isdi,
    irqi,
    cj,
    sj,
    isdj,
    irqj,
    first_live_j,
    first_q_j,
    do_best,
    prim,
    min_support,
    thr,
    floor_v,
    floor_i,
    floor_mie,
    rbest,
    rtop,
    rkeep,
    cbest_v,
    cbest_i,
    cb_mie,
    zc,
    zi,
    ctop_v,
    ctop_i,
    ckth,
    ck_mie,
    counters,
    h_order,
    h_val,
    cz_order,
):
    """Scan block rows lo..lo+B-1 (cnt, psum [B, d_m]); see the module docstring.

    Per-feature inputs are [d_l] (ci, si, isdi, irqi) and [d_m] (cj, ...); first_*_j:
    lowest column with c_j > 0 / q_j > 0 (-1 if none). prim int64[P]: measure indices
    ranked for edges; thr float64[6] keep thresholds (NaN = none); floor_v/floor_i
    [P, d_m]: the pair's current k-th best per column (entries that do not beat it cannot
    enter), floor_mie [d_m] = expm1(floor of the MI list). Outputs: rbest int32[B,6] (best
    j per measure, do_best only), rtop int32[B,P,k] (-1 padded), rkeep int64[B] (threshold
    cells); per thread th: cbest_v/cbest_i [th,6,d_m] (positive values only, except
    pearson and MI) with cb_mie [th,d_m] = expm1(column best MI; start: the pair's best),
    zc/zi [th,d_m] zero-count MI candidates, ctop_v/ctop_i [th,P,d_m,k] with ckth
    [th,P,d_m] their k-th value and ck_mie [th,d_m] its expm1 for the MI list, counters
    int64[th,3] (seen, touched, supported).

    Untouched cells (c = p = 0) are skipped: every measure but pearson is 0 or NaN there
    (resolved in closed form), and their pearson row and column bests come from the ordered walks
    of `_best_untouched` / `untouched_columns` (h_order/h_val/cz_order over columns, passed in;
    the column walk runs after this scan). Past one sequential sweep that finds the touched cells,
    the cost is proportional to the touched cells.
    """
    B, dm = cnt.shape
    P = prim.shape[0]
    k = rtop.shape[2]
    fn = np.float64(n)
    q_mi = -1
    for q in range(P):
        if prim[q] == MI:
            q_mi = q
    any_thr = False
    for m in range(N_MEASURES):
        any_thr = any_thr or thr[m] == thr[m]
    thr_mie = np.expm1(thr[MI]) if thr[MI] == thr[MI] else np.inf
    for r in prange(B):
        th = numba.get_thread_id()
        i = lo + r
        ci_ = np.int64(ci[i])
        fci = np.float64(ci_)
        si_, isdi_, irqi_ = si[i], isdi[i], irqi[i]
        crow = cnt[r]
        prow = psum[r]
        cb_v = cbest_v[th]  # [6, d_m], or [6, 0] for span > 1 pairs (never read then)
        cb_i = cbest_i[th]
        v = np.empty(N_MEASURES)
        bv = np.full(N_MEASURES, -np.inf)
        bj = np.full(N_MEASURES, -1, np.int32)
        tv = np.full((P, k), -np.inf)
        tj = np.full((P, k), np.int32(NO_ID), np.int32)
        row_mie = -1.0  # expm1 of the row's best MI so far
        top_mie = -1.0  # expm1 of the k-th of the row's MI top list
        zmax_j = -1
        tb = -np.inf  # pearson row best over touched cells (j ascending: ties keep the earlier j)
        tbj = -1
        ub = -np.inf
        ubj = -1
        if do_best:
            ub, ubj = _best_untouched(crow, prow, h_order, h_val, fn, si_, isdi_, sj, isdj, 0, True)
            zmax_j = _first_zero(crow, cz_order)
        seen = 0
        touched = 0
        supported = 0
        n_thr = 0
        for j in range(dm):
            c = np.int64(crow[j])
            p = prow[j]
            if c == 0 and p == 0.0:
                continue
            touched += 1
            cjj = np.int64(cj[j])
            sup = c >= min_support
            # the measures, as in cell_values / measures.py
            fc = np.float64(c)
            v[0] = fc / np.float64(ci_ + cjj - c)
            v[1] = fc / fci
            v[2] = fc / np.float64(cjj)
            v[4] = (fn * p - si_ * sj[j]) * isdi_ * isdj[j]
            v[5] = p * irqi_ * irqj[j]
            v[3] = np.nan
            if c > 0:
                seen += 1
                rb = mi_bound(n, c, ci_, cjj) / MARGIN
                need = do_best and (rb >= row_mie or rb >= cb_mie[th, j])
                if sup and not need:
                    need = rb >= thr_mie or (
                        q_mi >= 0 and (rb >= top_mie or (rb >= ck_mie[th, j] and rb >= floor_mie[j]))
                    )
                if need:
                    v[3] = mi_scalar(n, c, ci_, cjj)
            if do_best:
                for m in (0, 1, 2, 5):
                    if v[m] > 0.0:  # zeros are resolved in closed form (zero_best)
                        _best(bv, bj, cb_v, cb_i, m, v[m], i, j)
                x = v[4]
                if x > tb:
                    tb = x
                    tbj = j
                if x > cb_v[4, j] or (x == cb_v[4, j] and i < cb_i[4, j]):
                    cb_v[4, j] = x
                    cb_i[4, j] = i
                if v[3] == v[3]:
                    if v[3] > bv[MI]:
                        row_mie = np.expm1(v[3])
                    if _best(bv, bj, cb_v, cb_i, MI, v[3], i, j):
                        cb_mie[th, j] = np.expm1(v[3])
            if not sup:
                continue
            supported += 1
            for q in range(P):
                x = v[prim[q]]
                if not x == x:
                    continue
                if x > tv[q, k - 1]:  # j ascends along the row: ties keep the earlier j
                    _insert_desc(tv[q], tj[q], x, j)
                    if q == q_mi:
                        top_mie = np.expm1(tv[q, k - 1])
                if x >= ckth[th, q, j] and (x > floor_v[q, j] or (x == floor_v[q, j] and i < floor_i[q, j])):
                    _insert_desc(ctop_v[th, q, j], ctop_i[th, q, j], x, i)
                    ckth[th, q, j] = ctop_v[th, q, j, k - 1]
                    if q == q_mi:
                        ck_mie[th, j] = np.expm1(ckth[th, q, j])
            if any_thr and passes(v, thr):
                n_thr += 1
        if do_best:
            if ubj >= 0 and (ub > tb or (ub == tb and ubj < tbj)):
                tb = ub
                tbj = ubj
            bv[4] = tb
            bj[4] = tbj
            for m in (0, 1, 2, 5):
                if bj[m] < 0:
                    bj[m] = zero_best(m, ci_, irqi_ == irqi_, first_live_j, first_q_j)
            cand = zmax_j if ci_ > 0 else 0  # c_i = 0: every partner has MI 0, lowest id wins
            if cand >= 0 and cand < dm:
                x = mi_scalar(n, np.int64(0), ci_, np.int64(cj[cand]))
                if x > bv[MI] or (x == bv[MI] and cand < bj[MI]):
                    bv[MI] = x
                    bj[MI] = cand
            for m in range(N_MEASURES):
                rbest[r, m] = bj[m]
        for q in range(P):
            for s in range(k):
                rtop[r, q, s] = tj[q, s] if tj[q, s] != NO_ID else -1
        rkeep[r] = n_thr
        counters[th, 0] += seen
        counters[th, 1] += touched
        counters[th, 2] += supported


@numba.njit(parallel=True, **_JIT)
def merge_columns(
    cnt,
    psum,
    lo,
    do_best,
    cbest_v,
    cbest_i,
    zc,
    zi,
    ctop_v,
    ctop_i,
    pb_v,
    pb_i,
    pb_c,
    pb_p,
    pz_c,
    pz_i,
    pt_v,
    pt_i,
    pt_c,
    pt_p,
):
    """Fold the per-thread column states of one block into the pair's running state.

    Pair state: pb_* [6, d_m] best row per measure (value, id, c_ij, p_ij); pz_c/pz_i
    [d_m] zero-count MI candidates; pt_* [P, d_m, k] column top-k with c_ij, p_ij. The
    order (value desc, id asc) is total, so the result is independent of block and thread
    order. c_ij and p_ij of newly taken rows are read from this block (cnt, psum).
    """
    T = ctop_v.shape[0]  # cbest_* are empty for span > 1 pairs
    P = ctop_v.shape[1]
    dm = cnt.shape[1]
    k = ctop_v.shape[3]
    for j in prange(dm):
        for th in range(T):
            if do_best:
                for m in range(N_MEASURES):
                    x = cbest_v[th, m, j]
                    i = cbest_i[th, m, j]
                    if i != NO_ID and (x > pb_v[m, j] or (x == pb_v[m, j] and i < pb_i[m, j])):
                        pb_v[m, j] = x
                        pb_i[m, j] = i
                        pb_c[m, j] = cnt[i - lo, j]
                        pb_p[m, j] = psum[i - lo, j]
                i = zi[th, j]
                if i != NO_ID and (zc[th, j] > pz_c[j] or (zc[th, j] == pz_c[j] and i < pz_i[j])):
                    pz_c[j] = zc[th, j]
                    pz_i[j] = i
            for q in range(P):
                for s in range(k):
                    x = ctop_v[th, q, j, s]
                    i = ctop_i[th, q, j, s]
                    if i == NO_ID:
                        break
                    if not (x > pt_v[q, j, k - 1] or (x == pt_v[q, j, k - 1] and i < pt_i[q, j, k - 1])):
                        break  # thread lists are sorted: nothing further can enter
                    u = k - 1
                    while u > 0 and (pt_v[q, j, u - 1] < x or (pt_v[q, j, u - 1] == x and pt_i[q, j, u - 1] > i)):
                        pt_v[q, j, u] = pt_v[q, j, u - 1]
                        pt_i[q, j, u] = pt_i[q, j, u - 1]
                        pt_c[q, j, u] = pt_c[q, j, u - 1]
                        pt_p[q, j, u] = pt_p[q, j, u - 1]
                        u -= 1
                    pt_v[q, j, u] = x
                    pt_i[q, j, u] = i
                    pt_c[q, j, u] = cnt[i - lo, j]
                    pt_p[q, j, u] = psum[i - lo, j]


@numba.njit(parallel=True, **_JIT)
def gather_rows(
    cnt,
    psum,
    lo,
    n,
    ci,
    si,
    isdi,
    irqi,
    cj,
    sj,
    isdj,
    irqj,
    min_support,
    thr,
    rtop,
    rkeep,
    offsets,
    out_i,
    out_j,
    out_c,
    out_p,
    count_only,
):
    """Kept cells of each block row: its top-k partners (any primary measure) and the
    supported cells that pass a keep threshold, ascending j, without duplicates.

    With count_only, writes the number of kept cells of row r into offsets[r + 1];
    otherwise fills out_* [K] from offsets (exclusive prefix sums of those counts).
    """
    B, dm = cnt.shape
    thr_mie = np.expm1(thr[MI]) if thr[MI] == thr[MI] else np.inf
    for r in prange(B):
        i = lo + r
        ids = np.sort(rtop[r].ravel())
        w = offsets[r]
        u = 0
        prev = -1
        nxt = 0  # next unread position in ids
        while nxt < ids.shape[0] and ids[nxt] < 0:
            nxt += 1
        scan = rkeep[r] > 0
        j = 0
        while True:
            # next candidate: the smaller of the next top-k id and the next threshold cell
            cand = ids[nxt] if nxt < ids.shape[0] else dm
            if scan:
                while j < cand:
                    c = np.int64(cnt[r, j])
                    if c >= min_support:
                        if cell_passes(
                            n,
                            c,
                            psum[r, j],
                            np.int64(ci[i]),
                            si[i],
                            isdi[i],
                            irqi[i],
                            np.int64(cj[j]),
                            sj[j],
                            isdj[j],
                            irqj[j],
                            thr,
                            thr_mie,
                        ):
                            break
                    j += 1
                if j < cand:
                    cand = j
            if cand >= dm:
                break
            if cand != prev:
                if not count_only:
                    out_i[w + u] = i
                    out_j[w + u] = cand
                    out_c[w + u] = cnt[r, cand]
                    out_p[w + u] = psum[r, cand]
                u += 1
                prev = cand
            if nxt < ids.shape[0] and ids[nxt] == cand:
                nxt += 1
            j = max(j, cand + 1)
        if count_only:
            offsets[r + 1] = u
