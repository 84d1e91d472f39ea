"""Stats stage against a brute-force dense oracle, and invariance to sharding, workers, memory."""

from __future__ import annotations

import numba
import numerics
import numpy as np
import pyarrow.parquet as pq
import pytest
from test_stats_oracle import MEASURES, best, dec_cos, kept_mask, pair_oracle, synthetic_codes, to_csr

from saelineage.data.importer import write_run
from saelineage.stats import kernels_scan as ks
from saelineage.stats import measures as ms
from saelineage.stats.config import StatsConfig
from saelineage.stats.sae_match import fold, match_layers
from saelineage.stats.stage import plan_stats, run_stats

W = 16  # tokens per window; windows start with BOS
RTOL = 1e-9
VALUE_COLUMNS = list(MEASURES) + ["sufficiency_lo", "necessity_lo", "dec_cosine", "p_sum"]


@pytest.fixture(scope="module")
def codes():
    return synthetic_codes()


@pytest.fixture(scope="module")
def decoders():
    rng = np.random.default_rng(5)
    dec = {l: rng.normal(size=(d, 12)).astype(np.float32) for l, d in ((0, 40), (2, 30), (5, 35))}
    dec[2][3] = 0.0  # a zero decoder row: cosine undefined
    return dec


def make_run(path, codes, shard_windows=7, **kw):
    t = len(next(iter(codes.values())))
    return write_run(path, to_csr(codes), np.arange(t) % 50, window_len=W, bos=True, shard_windows=shard_windows, **kw)


def kept_tokens(t):
    return np.arange(t) % W != 0


def match_sim(a, b):
    """Folded similarity 2<a, b> / (|a|^2 + |b|^2) of matched rows, in extended precision."""
    a, b = a.astype(np.longdouble), b.astype(np.longdouble)
    return np.asarray(2 * (a * b).sum(1) / ((a * a).sum(1) + (b * b).sum(1)), np.float64)


def assert_close(got, want, what):
    both_nan = np.isnan(got) & np.isnan(want)
    ok = both_nan | (np.abs(got - want) <= RTOL * np.abs(want))
    assert ok.all(), f"{what}: {np.flatnonzero(~ok)[:5]} got {got[~ok][:5]} want {want[~ok][:5]}"


CASES = [  # span, relative threshold, absolute threshold, primary measures (None: default)
    (1, None, 0.0, MEASURES),
    (2, None, 0.0, None),
    (1, 0.2, 0.0, None),
    (2, 0.2, 0.0, MEASURES),
    (1, None, 0.5, ("mutual_info", "act_cosine")),
]


@pytest.mark.parametrize("accumulate", ["dense", "sparse"])
@pytest.mark.parametrize("span,rel,thr,primary", CASES)
def test_every_measure_matches_the_oracle(tmp_path, codes, decoders, span, rel, thr, primary, accumulate):
    run = make_run(tmp_path / "run", codes)
    k, ms_, keep = 3, 3, {"pearson": 0.6, "necessity": 0.95, "mutual_info": 0.05}
    kw = {} if primary is None else {"primary": primary}
    s = run_stats(
        run.path,
        StatsConfig(
            span=span,
            threshold=thr,
            relative_threshold=rel,
            min_support=ms_,
            top_k=k,
            keep=keep,
            accumulate=accumulate,
            **kw,
        ),
        decoders=decoders,
        progress=False,
    )
    layers = [0, 2, 5]
    mask = kept_tokens(len(codes[0]))
    x = {l: codes[l][mask] for l in layers}
    theta = {l: (rel * x[l].max(0).astype(np.float64) if rel else np.full(x[l].shape[1], thr)) for l in layers}
    edges = pq.read_table(run.file("edges.parquet")).to_pandas()
    assert s.summary["n_tokens"] == mask.sum() and s.summary["dec_cosine"]
    assert s.summary["sparse_pairs"] == (s.summary["pairs"] if accumulate == "sparse" else 0)
    keys = ["src_layer", "src", "dst_layer", "dst"]
    assert (edges[keys].to_records(index=False) == np.sort(edges[keys].to_records(index=False))).all()
    links = pq.read_table(run.file("feature_links.parquet")).to_pandas()
    n_pairs = 0
    for a, l in enumerate(layers):
        for m in layers[a + 1 : a + 1 + span]:
            n_pairs += 1
            want = pair_oracle(x[l], x[m], theta[l], theta[m])
            want["dec_cosine"] = dec_cos(decoders[l], decoders[m])
            kept = kept_mask(want, ms_, k, keep, **kw)
            sim = np.full(kept.shape, np.nan)
            if m == layers[a + 1]:  # adjacent: the data-free match's pairs are edges too, whatever their counts
                match = match_layers(fold(decoders[l]), fold(decoders[m]))
                i = np.flatnonzero(match.partner >= 0)
                kept[i, match.partner[i]] = True
                sim[i, match.partner[i]] = match_sim(decoders[l][i], decoders[m][match.partner[i]])
            got = edges[(edges.src_layer == l) & (edges.dst_layer == m)]
            gi, gj = got.src.to_numpy(), got.dst.to_numpy()
            assert sorted(zip(gi, gj)) == sorted(zip(*np.nonzero(kept))), f"kept set {l}->{m}"
            assert (got.n_co.to_numpy() == want["n_co"][gi, gj]).all()
            for col in VALUE_COLUMNS:
                assert_close(got[col].to_numpy(), want[col][gi, gj], f"{col} {l}->{m}")
            assert_close(got["sae_match"].to_numpy(), sim[gi, gj], f"sae_match {l}->{m}")
            if m != layers[a + 1]:
                continue
            # best successor of layer-l features / best predecessor of layer-m features, over ALL pairs
            for meas in MEASURES:
                for direction, layer, axis in (("succ", l, 1), ("pred", m, 0)):
                    v, ids = best(want[meas], axis)
                    row = links[links.layer == layer]
                    gv, gid = row[f"best_{direction}_{meas}"].to_numpy(), row[f"best_{direction}_{meas}_id"].to_numpy()
                    assert_close(gv, v, f"best_{direction}_{meas} layer {layer}")
                    assert (gid == ids).all(), f"best_{direction}_{meas}_id layer {layer}: {gid} vs {ids}"
    assert s.summary["pairs"] == n_pairs
    # no neighbour layer: NaN / -1
    assert links[links.layer == 0]["best_pred_jaccard_id"].eq(-1).all()
    assert links[links.layer == 5]["best_succ_pearson"].isna().all()


def test_active_count_and_constant_features(tmp_path, codes):
    run = make_run(tmp_path / "run", codes)
    run_stats(run.path, progress=False)
    links = pq.read_table(run.file("feature_links.parquet")).to_pandas()
    mask = kept_tokens(len(codes[0]))
    for l in (0, 2, 5):
        assert (links[links.layer == l].active_count.to_numpy() == (codes[l][mask] > 0).sum(0)).all()
    f = links[(links.layer == 2)]
    assert np.isnan(f.best_pred_pearson.to_numpy()[[1, 2]]).all()  # dead and constant: pearson undefined
    assert f.best_pred_jaccard_id.to_numpy()[2] >= 0  # a constant feature still has count measures


def _tables(path):
    return {name: pq.read_table(path / name) for name in ("edges.parquet", "feature_links.parquet")}


def same_table(a, b) -> bool:
    """Bit-for-bit equal columns (NaN equal to NaN)."""
    return a.column_names == b.column_names and all(
        np.array_equal(
            a.column(c).to_numpy(), b.column(c).to_numpy(), equal_nan=a.schema.field(c).type in ("double", "float")
        )
        for c in a.column_names
    )


def limit_for_passes(run, lo, hi, span=2):
    """A memory limit under which stats makes between lo and hi passes (bisection on the plan)."""
    a, b = 1, 1 << 30
    while b - a > 1:
        mid = (a + b) // 2
        if len(plan_stats(run.path, StatsConfig(memory_limit=mid, span=span)).passes) > hi:
            a = mid
        else:
            b = mid
    assert lo <= len(plan_stats(run.path, StatsConfig(memory_limit=b, span=span)).passes) <= hi
    return b


def test_identical_whatever_shards_workers_memory_and_storage(tmp_path, codes, decoders, monkeypatch):
    """Dense and sparse accumulators, in any blocking of rows, batching of tokens, sharding and
    threads, give the same tables bit for bit (the same additions in the same order per cell)."""
    monkeypatch.setattr("saelineage.stats.engine.process_baseline", lambda: 256 << 20)  # deterministic plans
    monkeypatch.setattr("saelineage.stats.engine.check_fits", lambda *a: None)  # a 1-byte limit: a row per pass
    ref = None
    mid = limit_for_passes(make_run(tmp_path / "probe", codes), 4, 6)
    cases = [(7, 2, None, "dense"), (1, 2, None, "dense"), (64, 1, None, "dense"), (64, 2, 1, "dense")]
    cases += [(5, 2, mid, "dense"), (7, 2, None, "sparse"), (3, 1, 1, "sparse"), (5, 2, mid, "sparse")]
    cases += [(2, 2, None, "sparse-batches"), (3, 2, 1, "dense-batches")]
    for k, (sw, workers, mem, acc) in enumerate(cases):
        run = make_run(tmp_path / f"run{k}", codes, shard_windows=sw)
        with monkeypatch.context() as m:
            if acc.endswith("-batches"):  # batches of a few hundred tokens: sparse rows grow batch by batch
                m.setattr("saelineage.stats.engine.BATCH_MIN_ENTRIES", 1 << 10)
                m.setattr("saelineage.stats.engine.BATCH_MIN_TOKENS", 1 << 6)
                m.setattr("saelineage.stats.engine.BATCH_MAX", 1 << 14)
            s = run_stats(
                run.path,
                StatsConfig(span=2, workers=workers, memory_limit=mem, accumulate=acc.split("-")[0]),
                decoders=decoders,
                progress=False,
            )
        if mem == 1:
            assert s.summary["passes"] == 40 + 40 + 30  # one source row per block: every row its own pass
        if mem == mid and acc == "dense":
            assert 4 <= s.summary["passes"] <= 6
        got = _tables(run.path)
        if ref is None:
            ref = got
        for name in ref:
            assert same_table(got[name], ref[name]), (name, sw, workers, mem)


def test_window_order_changes_only_rounding(tmp_path, codes):
    a = make_run(tmp_path / "a", codes)
    perm = np.random.default_rng(3).permutation(len(codes[0]) // W)
    rows = (perm[:, None] * W + np.arange(W)).ravel()
    b = make_run(tmp_path / "b", {l: x[rows] for l, x in codes.items()}, shard_windows=5)
    for r in (a, b):
        run_stats(r.path, StatsConfig(span=2), progress=False)
    ea, eb = (pq.read_table(r.file("edges.parquet")).to_pandas() for r in (a, b))
    assert (
        ea[["src_layer", "src", "dst_layer", "dst", "n_co"]].values
        == eb[["src_layer", "src", "dst_layer", "dst", "n_co"]].values
    ).all()
    for col in VALUE_COLUMNS:
        np.testing.assert_allclose(eb[col], ea[col], rtol=1e-12)


def test_scalar_kernels_agree_with_numpy_formulas():
    rng = np.random.default_rng(0)
    n = 10_000
    ci = rng.integers(0, n + 1, 1000)
    cj = rng.integers(0, n + 1, 1000)
    c = np.minimum(rng.integers(0, n + 1, 1000), np.minimum(ci, cj))
    c = np.maximum(c, np.maximum(ci + cj - n, 0))
    want = ms.mutual_info(n, c, ci, cj)
    got = np.array([ks.mi_scalar(np.int64(n), np.int64(a), np.int64(b), np.int64(e)) for a, b, e in zip(c, ci, cj)])
    # numba's log1p and NumPy's SIMD log1p may round differently: equal to MEASURE_RTOL, not bitwise
    numerics.assert_close(got, want, "mutual_info numba vs numpy")
    p, si, sj = rng.random(1000) * 50, rng.random(1000) * 90, rng.random(1000) * 90
    isd_i, isd_j, irq_i, irq_j = (rng.random(1000) for _ in range(4))
    v = np.empty(6)
    side_i, side_j = ms.Side(ci, si, isd_i, irq_i), ms.Side(cj, sj, isd_j, irq_j)
    idx = np.arange(1000)
    ref = ms.pair_measures(n, c, p, side_i, side_j, idx, idx)
    for r in range(0, 1000, 3):
        ks.cell_values(
            v,
            np.int64(n),
            np.int64(c[r]),
            p[r],
            np.int64(ci[r]),
            si[r],
            isd_i[r],
            irq_i[r],
            np.int64(cj[r]),
            sj[r],
            isd_j[r],
            irq_j[r],
            True,
        )
        got = np.array([ref[m][r] for m in MEASURES])
        numerics.assert_close(v, got, f"row {r}")


def test_bundles_are_sized_as_allocated():
    """The memory plan's sizes (kernels_scan.nbytes) are the bytes the bundle factories allocate."""
    from saelineage.stats.edges import RowBest

    for bundle, args in (
        (ks.ColumnScratch, (3, 4, 50, 5, True)),
        (ks.ColumnScratch, (3, 4, 50, 5, False)),
        (ks.ColumnState, (4, 50, 5, True)),
        (ks.ColumnState, (4, 50, 5, False)),
        (ks.RowResults, (7, 4, 5, True)),
        (ks.Edges, (11,)),
        (RowBest, (9,)),
    ):
        arrays = ks.new(bundle, *args)
        assert ks.nbytes(bundle, *args) == sum(a.nbytes for a in arrays), bundle.__name__


def test_mutual_info_is_exact_near_independence():
    n = 10**9
    ci, cj = 10**6, 2 * 10**6
    c = ci * cj // n + 1  # one co-activation above independence
    got = ms.mutual_info(n, c, ci, cj)
    N, C, I, J = (np.longdouble(v) for v in (n, c, ci, cj))
    want = sum(
        nxy / N * np.log(nxy * N / (nx * ny))
        for nxy, nx, ny in ((C, I, J), (I - C, I, N - J), (J - C, N - I, J), (N - I - J + C, N - I, N - J))
    )
    assert abs(got - float(want)) <= 1e-6 * float(want)


def test_mi_upper_bound_holds_and_is_tight_for_rare_features():
    """kernels_scan.mi_upper_logs (the sparse scan's MI pruning bound) is never below mutual
    information (measures.mutual_info, float64, and in extended precision where they differ) over
    random 2x2 tables from 10 to 10^9 tokens, near independence, and rare pairs, where it is
    within 1% at the median (the chi2 bound there is over twice the MI at the median, and 100
    times it for c = 4 of c_i = c_j = 100 in 10^6 tokens)."""

    @numba.njit
    def bounds(n, c, ci, cj, logs, out):
        for k in range(c.shape[0]):
            fn, fci, fcj = np.float64(n[k]), np.float64(ci[k]), np.float64(cj[k])
            fd = np.float64(n[k] * c[k] - ci[k] * cj[k])
            inv = (1.0 / fn, 1.0 / fci, 1.0 / (fn - fci))
            lg = (np.log(fn), np.log(fci), np.log(fcj))
            out[k] = ks.mi_upper_logs(
                c[k], fd, fn, lg[0], inv[0], inv[1], inv[2], lg[1], 1.0 / fcj, 1.0 / (fn - fcj), lg[2], logs
            )

    rng = np.random.default_rng(11)
    N = 200_000
    n = (10 ** rng.uniform(1, 9, N)).astype(np.int64)
    ci = np.clip((rng.uniform(0, 1, N) ** rng.choice([1, 4, 12], N) * n).astype(np.int64), 1, n - 1)
    cj = np.clip((rng.uniform(0, 1, N) ** rng.choice([1, 4, 12], N) * n).astype(np.int64), 1, n - 1)
    lo, hi = np.maximum(1, ci + cj - n), np.minimum(ci, cj)
    c = (lo + rng.uniform(0, 1, N) ** rng.choice([1, 3, 10], N) * (hi - lo)).astype(np.int64)
    near = rng.random(N) < 0.4
    c[near] = np.clip(np.round(ci[near] * cj[near] / n[near]) + rng.integers(-2, 3, near.sum()), lo[near], hi[near])
    rare = rng.random(N) < 0.2
    n[rare], ci[rare], cj[rare] = 10**6, rng.integers(1, 3000, rare.sum()), rng.integers(1, 3000, rare.sum())
    c[rare] = np.minimum(rng.integers(1, 6, rare.sum()), np.minimum(ci[rare], cj[rare]))
    assert (c >= 1).all() and (c <= np.minimum(ci, cj)).all() and (ci + cj - c <= n).all()
    ub = np.zeros(N)
    bounds(n, c, ci, cj, ks.log_table(), ub)
    mi = ms.mutual_info(n, c, ci, cj)
    assert (ub >= mi).all(), np.flatnonzero(ub < mi)[:5]
    ratio = ub[rare] / mi[rare]
    assert np.median(ratio) < 1.01
    chi2 = np.log1p(
        np.array(
            [
                ks.mi_bound(*(int(v) for v in t))
                for t in zip(n[rare][:200], c[rare][:200], ci[rare][:200], cj[rare][:200])
            ]
        )
    )
    assert np.median(chi2 / mi[rare][:200]) > 2  # what the chi2 bound would have pruned with


def test_buffer_pool_carves_a_batch_from_one_block():
    """A batch's buffers come from one block of exactly the planned size (faulted in at once):
    they lie inside it without overlapping; a smaller batch reuses it, and `free` returns it."""
    from saelineage.stats.batch import Batch, BufferPool

    d = {0: 512, 1: 512, 2: 700}
    pool = BufferPool()
    sizes = []
    for layers, src, ecap in (([0, 1], {0}, 90_000), ([0, 1, 2], {0, 1}, 60_000), ([1, 2], {1}, 20_000)):
        batch = Batch(layers, src, d, ecap=ecap, tcap=4096, need_act=True, pool=pool)
        sizes.append(Batch.nbytes(layers, src, d, ecap, 4096, True))
        assert len(pool.mem) == max(sizes)
        arrays = [batch.pos] + [
            a for b in batch.buf.values() for a in vars(b).values() if isinstance(a, np.ndarray) and a.size
        ]
        assert len(arrays) == 1 + sum(8 if l in src else 4 for l in layers)
        assert all(np.shares_memory(a, pool.mem) for a in arrays)
        spans = sorted((a.__array_interface__["data"][0], a.nbytes) for a in arrays)
        assert all(s0 + n0 <= s1 for (s0, n0), (s1, _) in zip(spans, spans[1:], strict=False))
        batch.release()
    pool.free()
    assert len(pool.mem) == 0


def sparse_codes(seed: int = 7, t: int = 960, dims=(120, 90)) -> dict[int, np.ndarray]:
    """Codes where most cells are never co-active: row and column bests of pearson and MI come
    from untouched cells (the ordered walks of kernels_scan), with a dead and a constant feature."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer, d in zip((0, 1), dims):
        dens = np.geomspace(0.04, 0.002, d)[rng.permutation(d)]
        x = ((rng.random((t, d)) < dens) * rng.exponential(1.0, (t, d))).astype(np.float32)
        x[:, 3] = 0.0
        x[:, 5] = 0.75
        out[layer] = x
    out[1][:, 10] = np.where(rng.random(t) < 0.9, out[0][:, 10], 0)  # a continued feature
    return out


@pytest.mark.parametrize("accumulate", ["dense", "sparse"])
@pytest.mark.parametrize("mem", [None, 1])
def test_untouched_cells_match_the_oracle(tmp_path, monkeypatch, mem, accumulate):
    """Best partners over all pairs when almost every cell is untouched, in one block or one
    source row per block (the column walks then fold across blocks)."""
    monkeypatch.setattr("saelineage.stats.engine.process_baseline", lambda: 256 << 20)
    monkeypatch.setattr("saelineage.stats.engine.check_fits", lambda *a: None)
    codes = sparse_codes()
    run = make_run(tmp_path / "run", codes)
    s = run_stats(run.path, StatsConfig(memory_limit=mem, accumulate=accumulate), progress=False)
    if mem == 1:
        assert s.summary["passes"] == 120
    mask = kept_tokens(len(codes[0]))
    x = {l: codes[l][mask] for l in (0, 1)}
    want = pair_oracle(x[0], x[1], np.zeros(120), np.zeros(90))
    assert (want["n_co"] == 0).mean() > 0.8
    links = pq.read_table(run.file("feature_links.parquet")).to_pandas()
    for meas in MEASURES:
        for direction, layer, axis in (("succ", 0, 1), ("pred", 1, 0)):
            v, ids = best(want[meas], axis)
            row = links[links.layer == layer]
            gv, gid = row[f"best_{direction}_{meas}"].to_numpy(), row[f"best_{direction}_{meas}_id"].to_numpy()
            assert_close(gv, v, f"best_{direction}_{meas}")
            # a different id only where the oracle ties within rounding (float64 vs extended sums)
            vals = want[meas] if axis == 1 else want[meas].T
            for r in np.flatnonzero(gid != ids):
                assert gid[r] >= 0 and abs(vals[r, gid[r]] - v[r]) <= 1e-12 * abs(v[r]), (direction, meas, r)
    untouched = want["p_sum"] == 0
    from_untouched = untouched[np.arange(120), np.maximum(best(want["pearson"], 1)[1], 0)]
    assert from_untouched.sum() > 10  # the walks decide many row bests


def test_finished_pairs_wait_on_disk(tmp_path, codes, monkeypatch):
    """Each finished pair's edges are spilled to the run and memory-mapped back (the plan does
    not hold them in memory), read back unchanged, and the folder is gone once outputs exist."""
    from saelineage import contract
    from saelineage.stats.edges import PairResult

    spilled = []
    original = PairResult.spill

    def spy(self, folder):
        out = original(self, folder)
        spilled.append((folder, self, out))
        return out

    monkeypatch.setattr(PairResult, "spill", spy)
    run = make_run(tmp_path / "run", codes)
    s = run_stats(run.path, StatsConfig(span=2), progress=False)
    assert len(spilled) == s.summary["pairs"] == 3
    for folder, before, after in spilled:
        assert folder.parent == run.file(contract.STATS_SPILL)
        for name in ("src", "dst", "n_co", "p"):
            assert isinstance(getattr(after, name), np.memmap)
            np.testing.assert_array_equal(getattr(after, name), getattr(before, name))
    assert sum(len(after.src) for _, _, after in spilled) == s.summary["edges"]
    assert not run.file(contract.STATS_SPILL).exists()


def test_column_walks_past_the_masks_match_the_dense_path(tmp_path, monkeypatch):
    """A sparse block answers a column's untouched walks from bit masks of the walks' first
    ks.MASK_BITS rows, then by binary search (`untouched_sparse`). Here a target feature that fires
    on 95% of the tokens co-occurs with 160 source features: 80 rare ones (the head of the pearson
    walk, by s·isd) and 80 dense ones (the head of the count walk), so both walks run past the
    masks to the three features that fire only on the other 5%. The tables equal the dense path's."""
    from saelineage.stats import kernels_scan as ks

    monkeypatch.setattr("saelineage.stats.engine.process_baseline", lambda: 256 << 20)
    rng = np.random.default_rng(3)
    t = 2000
    off = rng.random(t) < 0.05  # tokens where target feature 0 is silent
    src = np.zeros((t, 200), np.float32)
    dens = np.r_[rng.uniform(0.01, 0.03, 80), rng.uniform(0.2, 0.6, 80)]
    for f, d in enumerate(dens):
        src[:, f] = (~off & (rng.random(t) < d)) * rng.exponential(1.0, t)
    src[:, 160:163] = off[:, None] * rng.exponential(1.0, (t, 3))  # never with target 0
    src[:, 163:] = (rng.random((t, 37)) < 0.02) * rng.exponential(1.0, (t, 37))
    dst = ((rng.random((t, 50)) < 0.03) * rng.exponential(1.0, (t, 50))).astype(np.float32)
    dst[:, 0] = ~off * rng.exponential(1.0, t)
    codes = {0: src, 1: dst}
    kept = kept_tokens(t)
    on = src[kept] > 0
    assert (on[:, :160] & (dst[kept, 0] > 0)[:, None]).any(0).all()  # the 160 all touch column 0
    assert not (on[:, 160:163] & (dst[kept, 0] > 0)[:, None]).any()
    assert 160 > ks.MASK_BITS + 16
    tables = {}
    for acc in ("dense", "sparse"):
        run = make_run(tmp_path / acc, codes)
        s = run_stats(run.path, StatsConfig(accumulate=acc), progress=False)
        assert s.summary["passes"] == 1
        tables[acc] = _tables(run.path)
    for name in tables["dense"]:
        assert same_table(tables["sparse"][name], tables["dense"][name]), name
    links = tables["dense"]["feature_links.parquet"].to_pandas()
    # the best MI predecessor of target 0 is the zero-count candidate found past the masks (its
    # untouched pearson never wins with activations >= 0: test_stats_sparse covers signed ones)
    assert links[(links.layer == 1)].best_pred_mutual_info_id.to_numpy()[0] in range(160, 163)
