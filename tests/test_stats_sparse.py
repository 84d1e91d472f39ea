"""Sparse accumulators (stats/engine.py, kernels.accumulate_sparse) against the dense kernel and a
brute-force product, the census bound, the plan's choice and its refusal of plans that cannot fit.

The stage-level equivalence (tables bit for bit equal to the dense path, in any blocking and
batching) is in test_stats.py; the oracle there checks both paths against dense numpy."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from saelineage.errors import SaelineageError
from saelineage.stats import kernels as kn
from saelineage.stats.config import StatsConfig
from saelineage.stats.edges import EdgeOptions
from saelineage.stats.engine import Layout, Pair, plan, plan_run


def _batch(rng, t: int, d: int, l0: float, hot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (ptr, idx, val) of t tokens over d features: a few hot features on most tokens plus
    about l0 random ones (so some rows touch most columns and most rows few)."""
    x = sp.random(t, d, density=l0 / d, format="lil", random_state=rng, dtype=np.float32)
    for f in range(hot):
        on = np.flatnonzero(rng.random(t) < 0.6)
        x[on, f] = rng.exponential(1.0, len(on)).astype(np.float32) + 0.01
    x = sp.csr_matrix(x)
    x.sort_indices()
    x.data = np.abs(x.data) + np.float32(1e-3)
    return x.indptr.astype(np.int64), x.indices.astype(np.int32), x.data.astype(np.float32)


def _csc(ptr, idx, val, t: int, d: int):
    colptr = np.zeros(d + 1, np.int64)
    tok, cval, none = np.empty(len(idx), np.int32), np.empty(len(idx), np.float32), np.zeros(0, np.uint8)
    kn.transpose_into(ptr, idx, val, none, t, np.ones(t, bool), d, False, colptr, tok, cval, none)
    return colptr, tok, cval


@pytest.mark.parametrize("d_m", [60, 3000])  # rows written back by a sweep of marks / by sorting new ids
def test_sparse_rows_equal_the_dense_kernel_over_batches(d_m):
    """Three batches added into the same rows: the sparse rows hold exactly the dense block's
    touched cells, with bitwise equal counts and sums, and counts equal to a brute-force product."""
    rng = np.random.default_rng(d_m)
    d_l, t, lo, hi = 80, 400, 5, 75
    threads = int(numba.config.NUMBA_NUM_THREADS)
    batches = [(_batch(rng, t, d_l, 4, 3), _batch(rng, t, d_m, 6, 2)) for _ in range(3)]
    work = np.zeros(d_l, np.int64)
    for s, m in batches:
        kn.census(s[0], s[1], t, np.ones(t, bool), m[0], work)
    cap = np.minimum(work[lo:hi], d_m)
    ptr = np.concatenate([[0], np.cumsum(cap)]).astype(np.int64)
    nnz, js = np.zeros(hi - lo, np.int64), np.full(int(ptr[-1]), -7, np.int32)
    cnt, psum = np.full(int(ptr[-1]), -7, np.int32), np.full(int(ptr[-1]), np.nan)
    scratch = (np.zeros((threads, d_m), np.int32), np.zeros((threads, d_m)), np.zeros((threads, d_m), np.uint8))
    scratch += (np.zeros((threads, d_m), np.int32),)
    full = np.zeros(1, np.uint8)
    dense_c, dense_p = np.zeros((hi - lo, d_m), np.int32), np.zeros((hi - lo, d_m))
    brute = np.zeros((d_l, d_m))
    none = np.zeros(0, np.uint8)
    for s, m in batches:
        colptr, tok, cval = _csc(*s, t, d_l)
        bounds = kn.chunk_bounds(kn.row_work(colptr, tok, m[0], lo, hi), lo, 5)
        args = (bounds, lo, colptr, tok, cval, none, *m, none, True)
        kn.accumulate(*args, dense_c, dense_p)
        kn.accumulate_sparse(*args, (ptr, nnz, js), cnt, psum, scratch, full)
        x, y = (sp.csr_matrix((v, i, p), shape=(t, d)) for (p, i, v), d in ((s, d_l), (m, d_m)))
        brute += ((x > 0).astype(np.float64).T @ (y > 0).astype(np.float64)).toarray()
    assert not full[0]
    assert all(not a.any() for a in scratch[:3])  # counts, sums and marks left zero
    got_c, got_p = np.zeros_like(dense_c), np.zeros_like(dense_p)
    for r in range(hi - lo):
        j = js[ptr[r] : ptr[r] + nnz[r]]
        assert (np.diff(j) > 0).all()  # ascending, no duplicates
        got_c[r, j], got_p[r, j] = cnt[ptr[r] : ptr[r] + nnz[r]], psum[ptr[r] : ptr[r] + nnz[r]]
    assert set(zip(*np.nonzero(dense_p))) == {(r, j) for r in range(hi - lo) for j in js[ptr[r] : ptr[r] + nnz[r]]}
    np.testing.assert_array_equal(got_c, dense_c)
    np.testing.assert_array_equal(got_p, dense_p)  # bitwise: the same additions in the same order
    np.testing.assert_array_equal(got_c, brute[lo:hi])
    assert (nnz <= cap).all() and nnz.max() > 0


def test_a_row_over_its_capacity_is_reported_and_left_unchanged():
    rng = np.random.default_rng(1)
    t, d_l, d_m = 200, 10, 50
    (s, m), threads = (_batch(rng, t, d_l, 3, 2), _batch(rng, t, d_m, 8, 0)), int(numba.config.NUMBA_NUM_THREADS)
    colptr, tok, cval = _csc(*s, t, d_l)
    ptr, nnz = np.arange(d_l + 1, dtype=np.int64) * 2, np.zeros(d_l, np.int64)  # room for 2 cells a row
    js, cnt, psum = np.zeros(2 * d_l, np.int32), np.zeros(2 * d_l, np.int32), np.zeros(2 * d_l)
    scratch = tuple(np.zeros((threads, d_m), dt) for dt in (np.int32, np.float64, np.uint8, np.int32))
    full, none = np.zeros(1, np.uint8), np.zeros(0, np.uint8)
    bounds = np.array([0, d_l], np.int64)
    kn.accumulate_sparse(bounds, 0, colptr, tok, cval, none, *m, none, True, (ptr, nnz, js), cnt, psum, scratch, full)
    assert full[0] == 1 and (nnz == 0).all() and (cnt == 0).all()
    assert all(not a.any() for a in scratch[:3])


def _layout(d: int, tokens: int, layers: int = 2, work: float | None = None) -> Layout:
    pairs = [Pair(l, l + 1, 1) for l in range(layers - 1)]
    w = None if work is None else {k: np.full(d, int(work), np.int64) for k in range(len(pairs))}
    return Layout([], list(range(layers)), dict.fromkeys(range(layers), d), pairs, {}, True, False, True, tokens, w)


def test_sparse_plans_follow_the_touched_cells_not_the_width():
    """At 262,144 latents a sparse pair whose rows touch ~400 cells plans one pass where the dense
    plan needs dozens, and the accumulators take what the census bounds; four times the cells
    take about four times the passes' memory."""
    d, gib = 262_144, 1 << 30
    lay = _layout(d, 200_000, work=400)
    dense = plan(lay, EdgeOptions(), 8 * gib, baseline=256 << 20)
    sparse = plan(lay, EdgeOptions(), 8 * gib, baseline=256 << 20, accumulate="auto")
    assert len(dense.passes) > 50 and not dense.caps
    assert 0 in sparse.caps and len(sparse.passes) == 1
    assert sparse.accumulator_bytes(lay) == d * (400 * sparse.sparse_cell + sparse.sparse_row)
    more = plan(_layout(d, 200_000, work=2000), EdgeOptions(), 8 * gib, baseline=256 << 20, accumulate="auto")
    biggest = max(more.pass_bytes(lay, units) for units in more.passes)
    assert biggest + more.needed <= 8 * gib  # every pass fits beside the state
    assert len(more.passes) == -(-more.accumulator_bytes(lay) // biggest) >= 3
    # auto keeps a pair dense when its rows touch most of their cells
    wide = plan(_layout(4096, 10**7, work=10**6), EdgeOptions(), 8 * gib, baseline=256 << 20, accumulate="auto")
    assert not wide.caps


def test_a_plan_that_cannot_fit_is_one_error_with_the_memory_needed():
    lay = _layout(262_144, 200_000, work=64)
    with pytest.raises(SaelineageError) as e:
        plan_run(lay, EdgeOptions(), 512 << 20, "sparse", 2)
    msg = str(e.value)
    assert "needs at least" in msg and "--memory-limit" in msg and "--top-k 8" in msg and "--workers 1" in msg
    need = plan(lay, EdgeOptions(), 512 << 20, accumulate="sparse").needed
    plan_run(lay, EdgeOptions(), need + (64 << 20), "sparse", 2)  # the memory it names is enough


def test_accumulate_option_is_checked():
    with pytest.raises(SaelineageError, match="--accumulate"):
        StatsConfig(accumulate="csr")


def test_auto_takes_the_census_only_where_sparse_can_pay(tmp_path, monkeypatch):
    """'auto' with several dense passes samples the first shard: codes whose rows touch every
    column stay dense without the full census; codes that touch few cells go sparse, with the
    dense path's tables."""
    from test_stats import _tables, limit_for_passes, make_run, same_table, sparse_codes
    from test_stats_oracle import synthetic_codes

    from saelineage.stats import engine
    from saelineage.stats.stage import run_stats

    monkeypatch.setattr(engine, "process_baseline", lambda: 256 << 20)
    monkeypatch.setattr(engine, "check_fits", lambda *a: None)  # the bisection below tries limits that cannot fit
    shards, real = [], engine.census
    monkeypatch.setattr(engine, "census", lambda lay, b, pool=None: shards.append(len(lay.shards)) or real(lay, b))
    wide = sparse_codes(dims=(300, 6000))  # rows touch ~15% of their cells: a third of the dense bytes
    for name, codes, want_sparse in (("dense", synthetic_codes(), False), ("sparse", wide, True)):
        run = make_run(tmp_path / name, codes, shard_windows=5)
        n_shards = len(list(run.activations.glob("shard-*")))
        limit = limit_for_passes(run, 3, 6, span=1)
        shards.clear()
        s = run_stats(run.path, StatsConfig(memory_limit=limit), progress=False)
        assert s.summary["passes"] > 1 or want_sparse
        assert (s.summary["sparse_pairs"] > 0) == want_sparse, name
        assert shards == ([1, n_shards] if want_sparse else [1]), name
        ref = make_run(tmp_path / f"{name}-dense", codes, shard_windows=5)
        run_stats(ref.path, StatsConfig(accumulate="dense"), progress=False)
        got, want = _tables(run.path), _tables(ref.path)
        assert all(same_table(got[t], want[t]) for t in want)


def _pair_blocks(rng, t: int, d_l: int, d_m: int):
    """Codes of two layers with signed activations and an activity threshold (so cells with c = 0
    but p != 0 exist), as dense accumulators [d_l, d_m] and the pair's `Side`s."""
    from saelineage.stats.measures import Marginals, side

    off = rng.random(t) < 0.05
    third = d_l // 3
    dens = np.r_[rng.uniform(0.01, 0.03, third), rng.uniform(0.2, 0.6, third), np.full(d_l - 2 * third, 0.02)]
    x = (rng.random((t, d_l)) < dens) * rng.normal(0.0, 1.0, (t, d_l))
    x[off, : 2 * (d_l // 3)] = 0.0  # the first two thirds never fire where target 0 is silent
    x[:, -3:] = off[:, None] * rng.normal(0.0, 1.0, (t, 3))  # these fire only there
    y = (rng.random((t, d_m)) < 0.05) * rng.normal(0.0, 1.0, (t, d_m))
    y[:, 0] = ~off * rng.normal(0.0, 1.0, t)
    sides = []
    for a in (x, y):
        active = np.abs(a) > 0.3
        ones = np.ones(a.shape[1])
        m = Marginals(active.sum(0), (a != 0).sum(0), a.sum(0), (a * a).sum(0), ones, ones)
        sides.append(side(t, m))
    ax, ay = (np.abs(x) > 0.3).astype(np.int64), (np.abs(y) > 0.3).astype(np.int64)
    return ax.T @ ay, x.T @ y, sides


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_scan_equals_the_dense_scan(seed):
    """edges.PairState.add_block on a SparseBlock (`scan_sparse`, `untouched_sparse`: tiles, row
    chunks, the column walks' masks and their binary-search tails) against the same accumulators
    as a dense Block (`scan_block`, `untouched_columns`): every column result, best successor and
    kept edge bit for bit, folded over two blocks of rows. Negative activations make untouched
    pearson cells win, and the 2·d_l/3 rows at the head of both walks touch column 0, so its walks
    run past ks.MASK_BITS."""
    from saelineage.stats import edges as ed
    from saelineage.stats import kernels_scan as ks

    rng = np.random.default_rng(seed)
    t, d_l, d_m = 3000, 240, 700
    cnt, psum, (src, dst) = _pair_blocks(rng, t, d_l, d_m)
    head = 2 * (d_l // 3)
    assert ((cnt[:head, 0] > 0) | (psum[:head, 0] != 0)).all() and head > ks.MASK_BITS + 64
    opts = EdgeOptions(primary=("jaccard", "pearson", "mutual_info"), top_k=5)
    states = {}
    for kind in ("dense", "sparse"):
        st = ed.PairState(d_l, d_m, opts, True)
        for lo, hi in ((0, 150), (150, d_l)):
            c, p = cnt[lo:hi], psum[lo:hi]
            if kind == "dense":
                block = ks.Block(c.astype(np.int32), p.copy(), lo)
            else:
                on = (c != 0) | (p != 0)
                nnz = on.sum(1).astype(np.int64)
                ptr = np.r_[0, np.cumsum(nnz + 3)].astype(np.int64)  # spare room after each row
                j = np.zeros(ptr[-1], np.int32)
                cc, pp = np.zeros(ptr[-1], np.int32), np.zeros(ptr[-1])
                for r in range(hi - lo):
                    cols = np.flatnonzero(on[r])
                    j[ptr[r] : ptr[r] + len(cols)], cc[ptr[r] : ptr[r] + len(cols)] = cols, c[r, cols]
                    pp[ptr[r] : ptr[r] + len(cols)] = p[r, cols]
                block = ks.SparseBlock(ptr[:-1], nnz, j, cc, pp, lo, d_m)
            st.add_block(block, t, src, dst)
        states[kind] = st
    a, b = states["dense"], states["sparse"]
    for f in ks.ColumnState._fields:
        assert np.array_equal(getattr(a.cols, f), getattr(b.cols, f), equal_nan=True), f
    for f in ("j", "c", "p"):
        assert np.array_equal(getattr(a.succ, f), getattr(b.succ, f), equal_nan=True), f
    assert np.array_equal(a.counters, b.counters)
    ea, eb = (ks.Edges(*(np.concatenate([p[x] for p in s.parts]) for x in range(4))) for s in (a, b))
    for x in range(4):
        assert np.array_equal(ea[x], eb[x])
    # column 0's best untouched pearson and zero-count MI rows come from past the masks
    assert a.cols.pz_i[0] >= d_l - 3
