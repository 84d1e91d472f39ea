"""The data-free match (stats/sae_match.py): against a brute-force oracle, on a planted
permutation, in the stats stage's edges, and its agreement with the data's best partners."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_stats_oracle import pair_oracle, synthetic_codes, to_csr

from saelineage.data.importer import write_run
from saelineage.saes.run_weights import load_threshold
from saelineage.stats.config import StatsConfig
from saelineage.stats.sae_match import agreement, fold, match_bytes, match_layers
from saelineage.stats.stage import run_stats

W = 16  # tokens per window; windows start with BOS
LAYERS = (0, 2, 5)
MEASURES = ("jaccard", "sufficiency", "necessity", "mutual_info", "pearson", "act_cosine")


def brute_force(a: np.ndarray, b: np.ndarray, ta: np.ndarray | None, tb: np.ndarray | None) -> np.ndarray:
    """Partner per row of a (-1: none) minimising Σ‖θ_i a_i − θ'_j b_j‖² over every injective map."""
    fa = a * (ta[:, None] if ta is not None else 1.0)
    fb = b * (tb[:, None] if tb is not None else 1.0)
    cost = ((fa[:, None, :] - fb[None, :, :]) ** 2).sum(-1)
    best, arg = np.inf, None
    if len(a) <= len(b):
        for perm in itertools.permutations(range(len(b)), len(a)):
            c = cost[np.arange(len(a)), perm].sum()
            if c < best:
                best, arg = c, np.array(perm)
        return arg
    for perm in itertools.permutations(range(len(a)), len(b)):  # rows of a chosen for each row of b
        c = cost[perm, np.arange(len(b))].sum()
        if c < best:
            best, arg = c, perm
    out = np.full(len(a), -1)
    out[list(arg)] = np.arange(len(b))
    return out


@pytest.mark.parametrize("da,db", [(1, 1), (3, 3), (5, 5), (6, 6), (4, 6), (6, 4), (2, 5)])
@pytest.mark.parametrize("seed", range(4))
def test_assignment_equals_brute_force(da, db, seed):
    rng = np.random.default_rng(100 * da + 10 * db + seed)
    a, b = rng.normal(size=(da, 7)), rng.normal(size=(db, 7))
    ta, tb = rng.uniform(0.1, 3.0, da), rng.uniform(0.1, 3.0, db)
    for th_a, th_b in ((ta, tb), (None, None), (ta, None)):
        got = match_layers(fold(a, th_a), fold(b, th_b))
        want = brute_force(a, b, th_a, th_b)
        assert got.partner.tolist() == want.tolist()
        fa, fb = fold(a, th_a), fold(b, th_b)
        i = np.flatnonzero(got.partner >= 0)
        j = got.partner[i]
        sim = 2 * (fa[i] * fb[j]).sum(1) / ((fa[i] ** 2).sum(1) + (fb[j] ** 2).sum(1))
        np.testing.assert_allclose(got.similarity[i], sim, rtol=1e-12)
        assert np.isnan(got.similarity[got.partner < 0]).all()


def test_folding_changes_the_answer():
    """Two features writing the same direction at different scales: only the folded match tells them apart."""
    d = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    th = np.array([0.5, 2.0, 1.0])
    nxt = np.array([[2.0, 0.1, 0.0], [0.5, -0.1, 0.0], [0.0, 1.0, 0.05]])  # scales 2.0 and 0.5, swapped
    assert match_layers(fold(d, th), fold(nxt)).partner.tolist() == [1, 0, 2]
    assert brute_force(d, nxt, th, None).tolist() == [1, 0, 2]


def test_zero_and_missing_rows_stay_unmatched():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    a[1] = 0.0
    b[3] = np.nan
    m = match_layers(a, b)
    assert m.partner[1] == -1 and np.isnan(m.similarity[1])
    assert 3 not in m.partner.tolist()
    assert (m.partner >= 0).sum() == 4
    th = np.ones(5)
    th[2] = 0.0  # a zero threshold folds a row to zero
    assert match_layers(fold(rng.normal(size=(5, 4)), th), b).partner[2] == -1


@pytest.mark.parametrize("method", ["exact", "greedy"])
def test_planted_permutation_is_recovered(method):
    """Layer l+1's decoder is layer l's, permuted, each row rescaled against its own threshold, plus
    noise; pairs of layer-l features share a direction at different thresholds."""
    rng = np.random.default_rng(7)
    d, d_in = 300, 64
    a = rng.normal(size=(d, d_in))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    a[1:40:2] = a[0:40:2]  # 20 pairs with one direction ...
    th = rng.uniform(0.5, 1.5, d)
    th[1:40:2] = 3.0 * th[0:40:2]  # ... written at scales 3x apart
    perm = rng.permutation(d)  # feature i of layer l is feature perm[i] of layer l+1
    th_b = rng.uniform(0.2, 2.0, d)
    b = np.empty_like(a)
    b[perm] = a * (th / th_b[perm])[:, None]
    b += rng.normal(scale=0.01, size=b.shape) / th_b[:, None]
    got = match_layers(fold(a, th), fold(b, th_b), method)
    assert (got.partner == perm).all()
    assert np.nanmin(got.similarity) > 0.95
    unfolded = match_layers(fold(a), fold(b), method)
    assert (unfolded.partner != perm).any()  # without the thresholds the shared directions get confused


def test_greedy_is_one_to_one_nearest_first():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(180, 16))
    g, e = match_layers(a, b, "greedy"), match_layers(a, b, "exact")
    p = g.partner[g.partner >= 0]
    assert len(np.unique(p)) == len(p) and len(p) > 150  # rows whose candidates are all taken stay unmatched
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(cost), cost.shape)
    assert g.partner[i] == j  # the nearest pair of all is taken first
    assert (e.partner >= 0).sum() == 180  # exact: min(d_l, d_m) pairs


# ---- in the stats stage -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codes():
    return synthetic_codes(seed=1)


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(11)
    dec = {l: rng.normal(size=(d, 12)).astype(np.float32) for l, d in ((0, 40), (2, 30), (5, 35))}
    th = {l: rng.uniform(0.2, 2.0, w.shape[0]).astype(np.float32) for l, w in dec.items()}
    return dec, th


def make_run(path, codes, **kw):
    t = len(next(iter(codes.values())))
    return write_run(path, to_csr(codes), np.arange(t) % 50, window_len=W, bos=True, shard_windows=7, **kw)


@pytest.fixture(scope="module")
def stats_run(tmp_path_factory, codes, weights):
    dec, th = weights
    run = make_run(tmp_path_factory.mktemp("m") / "run", codes, decoders=dec, decoder_thresholds=th)
    run_stats(run.path, StatsConfig(min_support=3, top_k=2), progress=False)
    return run


def test_thresholds_round_trip_through_the_decoder_file(stats_run, weights):
    _, th = weights
    for l in LAYERS:
        np.testing.assert_array_equal(load_threshold(stats_run, l), th[l])


def test_thresholds_from_the_sae_folder(tmp_path, codes):
    """A collected run names its SAE folders: JumpReLU thresholds are read there, TopK has none."""
    from runs import random_sae

    from saelineage.saes.loading import save_saelens

    run = make_run(tmp_path / "run", codes)
    m = run.load()
    saes = {
        0: random_sae(12, 40, "blocks.0.hook_resid_pre", "jumprelu"),
        2: random_sae(12, 30, "blocks.2.hook_resid_pre", "topk"),
    }
    for l, sae in saes.items():
        save_saelens(sae, tmp_path / f"sae{l}")
        m.saes[l] |= {"path": str(tmp_path / f"sae{l}"), "architecture": sae.architecture}
    run.save(m)
    np.testing.assert_array_equal(load_threshold(run, 0), saes[0].threshold.numpy())
    assert load_threshold(run, 2) is None and load_threshold(run, 5) is None


def test_matched_pairs_are_edges_with_oracle_measures(stats_run, codes, weights):
    dec, th = weights
    edges = pq.read_table(stats_run.file("edges.parquet")).to_pandas()
    keep = np.arange(len(codes[0])) % W != 0
    x = {l: codes[l][keep] for l in LAYERS}
    forced_only = 0
    for l, m in zip(LAYERS, LAYERS[1:]):
        match = match_layers(fold(dec[l], th[l]), fold(dec[m], th[m]))
        got = edges[(edges.src_layer == l) & (edges.dst_layer == m) & edges.sae_match.notna()]
        i = np.flatnonzero(match.partner >= 0)
        assert sorted(zip(got.src, got.dst)) == sorted(zip(i, match.partner[i]))
        np.testing.assert_allclose(got.sae_match.to_numpy(), match.similarity[got.src.to_numpy()], rtol=1e-12)
        want = pair_oracle(x[l], x[m], np.zeros(x[l].shape[1]), np.zeros(x[m].shape[1]))
        gi, gj = got.src.to_numpy(), got.dst.to_numpy()
        assert (got.n_co.to_numpy() == want["n_co"][gi, gj]).all()
        for col in (*MEASURES, "sufficiency_lo", "necessity_lo", "p_sum"):
            w = want[col][gi, gj]
            ok = (np.isnan(w) & got[col].isna().to_numpy()) | np.isclose(got[col].to_numpy(), w, rtol=1e-9, atol=0)
            assert ok.all(), (col, l, m)
        forced_only += int((want["n_co"][gi, gj] < 3).sum())  # below min_support: kept for the match alone
    assert forced_only > 0
    assert edges[edges.sae_match.notna()].groupby(["src_layer", "src"]).size().max() == 1


def test_agreement_equals_a_recomputation(stats_run):
    summary = json.loads(stats_run.file("stats_summary.json").read_text())["sae_match"]
    links = pq.read_table(stats_run.file("feature_links.parquet")).to_pandas()
    edges = pq.read_table(stats_run.file("edges.parquet")).to_pandas()
    assert summary["method"] == "exact" and summary["folded"] == {"0": "threshold", "2": "threshold", "5": "threshold"}
    rows = {(r["src_layer"], r["dst_layer"]): r for r in summary["pairs"]}
    assert set(rows) == {(0, 2), (2, 5)}
    for (l, m), r in rows.items():
        f = links[links.layer == l].sort_values("feature")
        matched = edges[(edges.src_layer == l) & edges.sae_match.notna()]
        partner = np.full(len(f), -1)
        partner[matched.src.to_numpy()] = matched.dst.to_numpy()
        assert (f.sae_match_succ_id.to_numpy() == partner).all()
        back = links[links.layer == m].sort_values("feature").sae_match_pred_id.to_numpy()
        assert all(back[j] == i for i, j in enumerate(partner) if j >= 0)
        live = f.active_count.to_numpy() > 0
        assert r["n_live"] == live.sum() and r["n_matched"] == (live & (partner >= 0)).sum()
        for meas in MEASURES:
            hits = sum(1 for k in range(len(f)) if live[k] and f[f"best_succ_{meas}_id"].iloc[k] == partner[k] >= 0)
            assert r["agreement"][meas] == pytest.approx(hits / live.sum(), abs=0)
        assert r["mean_similarity"] == pytest.approx(matched.sae_match.mean(), rel=1e-12)
    # the planted copies in synthetic_codes are not mirrored by random weights: agreement is low but defined
    assert all(0 <= r["agreement"]["pearson"] <= 1 for r in rows.values())


def test_agreement_function_on_a_hand_made_table():
    import pyarrow as pa

    t = pa.table(
        {
            "layer": np.array([0, 0, 0, 0, 1], np.int32),
            "feature": np.array([0, 1, 2, 3, 0], np.int32),
            "active_count": np.array([5, 0, 3, 2, 1]),
            "best_succ_pearson_id": np.array([2, 1, 0, 0, -1], np.int32),
        }
    )
    out = agreement(t, 0, np.array([2, 1, 1, -1], np.int32), ("pearson",))
    # live: 0, 2, 3; feature 0 agrees, 2 does not (0 vs 1), 3 is unmatched; dead feature 1 is left out
    assert out == {"n_live": 3, "n_matched": 2, "agreement": {"pearson": pytest.approx(1 / 3)}}


def test_missing_decoders_and_off(tmp_path, codes, weights):
    dec, th = weights
    run = make_run(tmp_path / "run", codes, decoders={0: dec[0], 2: dec[2]})  # layer 5 has none; no thresholds
    run_stats(run.path, StatsConfig(min_support=3, top_k=2), progress=False)
    s = json.loads(run.file("stats_summary.json").read_text())["sae_match"]
    assert "layers [5]" in s["note"] and s["folded"] == {"0": "none", "2": "none"}
    by = {(r["src_layer"], r["dst_layer"]): r for r in s["pairs"]}
    assert by[(2, 5)]["agreement"] is None and by[(0, 2)]["n_matched"] > 0
    e = pq.read_table(run.file("edges.parquet")).to_pandas()
    assert e[e.dst_layer == 5].sae_match.isna().all() and e[e.dst_layer == 2].sae_match.notna().sum() == 30
    want = match_layers(fold(dec[0]), fold(dec[2]))  # no thresholds stored: nothing folded
    got = e[(e.dst_layer == 2) & e.sae_match.notna()]
    assert (want.partner[got.src.to_numpy()] == got.dst.to_numpy()).all()

    n_on = len(e)
    run_stats(run.path, StatsConfig(min_support=3, top_k=2, sae_match="off"), progress=False, force=True)
    e = pq.read_table(run.file("edges.parquet")).to_pandas()
    assert e.sae_match.isna().all() and len(e) < n_on
    s = json.loads(run.file("stats_summary.json").read_text())["sae_match"]
    assert s["method"] == "off" and all(r["agreement"] is None for r in s["pairs"])
    assert (pq.read_table(run.file("feature_links.parquet")).column("sae_match_succ_id").to_numpy() == -1).all()


def test_parallel_processes_give_the_same_edges(tmp_path, stats_run, codes, weights, monkeypatch):
    from saelineage.stats import stage

    dec, th = weights
    monkeypatch.setattr(stage, "POOL_MIN_FEATURES", 1)  # two processes match the two pairs
    run = make_run(tmp_path / "run", codes, decoders=dec, decoder_thresholds=th)
    run_stats(run.path, StatsConfig(min_support=3, top_k=2, workers=2), progress=False)
    for name in ("edges.parquet", "feature_links.parquet"):
        a, b = pq.read_table(run.file(name)), pq.read_table(stats_run.file(name))
        assert a.column_names == b.column_names and a.num_rows == b.num_rows, name
        for c in a.column_names:
            x, y = a.column(c).to_numpy(), b.column(c).to_numpy()
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (name, c)


def test_unknown_method_is_refused(tmp_path, codes):
    from saelineage.errors import SaelineageError

    run = make_run(tmp_path / "run", codes)
    with pytest.raises(SaelineageError, match="sae-match"):
        run_stats(run.path, StatsConfig(sae_match="hungarian"), progress=False)


def test_match_memory_bounds_the_parallel_matches():
    """How many matches run at once is bounded by memory as well as by --workers: the exact
    match's dense float64 cost matrix is 4.8 GB at 24,576 latents; greedy holds one block."""
    exact = match_bytes(24576, 24576, 768, "exact")
    assert 24576**2 * 8 <= exact < 24576**2 * 8 * 1.2
    assert match_bytes(24576, 24576, 768, "greedy") < exact / 3
