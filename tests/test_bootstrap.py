"""Bootstrap over whole windows: grouped counts against brute force, and a replicate's lifecycle
shares against the same shares computed on the resampled corpus materialised window by window."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from saelineage import contract
from saelineage.lineage import bootstrap
from saelineage.lineage.config import AnalyzeConfig
from saelineage.lineage.stage import run_analyze
from saelineage.lineage.validate import Requests, count
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
from saelineage.testing.noisy_lineage import build_noisy_run, noisy_codes


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    kw = dict(d_sae=96, n_windows=120, window=32, n_copies=12, n_and=4, n_or=4, n_splits=3)
    run, truth = build_noisy_run(tmp_path_factory.mktemp("b") / "run", flip=0.05, jitter=0.05, seed=3, **kw)
    run_stats(run.path, StatsConfig(), progress=False)
    codes, tokens, _ = noisy_codes(flip=0.05, jitter=0.05, seed=3, **kw)
    dense = {l: c.toarray().astype(np.float64) for l, c in codes.items()}
    counted = np.arange(len(tokens)) % 32 != 0
    return run, dense, counted


def test_grouped_counts_equal_brute_force(noisy):
    run, dense, counted = noisy
    rng = np.random.default_rng(0)
    links = {(0, 1): np.unique(rng.integers(0, 96, (300, 2)), axis=0)}
    pairs = {1: np.unique(np.sort(rng.integers(0, 96, (200, 2)), axis=1), axis=0)}
    pairs[1] = pairs[1][pairs[1][:, 0] < pairs[1][:, 1]]
    wg = bootstrap.window_groups(120, 7, seed=1)
    c = count(run, Requests(pairs=pairs, links=links, window_groups=wg))
    g = c.by_group
    tok_group = np.repeat(wg, 32)
    for w in range(7):
        sel = counted & (tok_group == w)
        x, y = dense[0][sel], dense[1][sel]
        assert g.n_tokens[w] == sel.sum()
        assert np.array_equal(g.n_active[1][w], (y > 0).sum(0))
        a, j = links[(0, 1)].T
        assert np.array_equal(g.links[(0, 1)][0][w], ((x[:, a] > 0) & (y[:, j] > 0)).sum(0))
        np.testing.assert_allclose(g.links[(0, 1)][1][w], (x[:, a] * y[:, j]).sum(0), rtol=1e-9)
        np.testing.assert_allclose(g.sums[0][1][w], (x**2).sum(0), rtol=1e-9)
        p, q = pairs[1].T
        assert np.array_equal(g.pairs[1][w], ((y[:, p] > 0) & (y[:, q] > 0)).sum(0))
    # the totals are the groups' sums, and equal an ungrouped pass
    plain = count(run, Requests(pairs=pairs, links=links))
    assert np.array_equal(plain.pairs[1], c.pairs[1]) and np.array_equal(plain.links[(0, 1)], c.links[(0, 1)])
    assert plain.by_group is None


def _dense_measure(x: np.ndarray, y: np.ndarray, m: str) -> np.ndarray:
    """Data measure `m` of column pairs (x[:, k], y[:, k]) straight from the token values [T, L]."""
    xa, ya = x > 0, y > 0
    c, ci, cj = (xa & ya).sum(0), xa.sum(0), ya.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if m == "jaccard":
            return c / (ci + cj - c)
        if m in ("sufficiency", "necessity"):
            return c / (ci if m == "sufficiency" else cj)
        if m == "mutual_info":
            out = np.zeros(x.shape[1])
            for u in (False, True):
                for v in (False, True):
                    pxy, px, py = ((xa == u) & (ya == v)).mean(0), (xa == u).mean(0), (ya == v).mean(0)
                    out += np.where(pxy > 0, pxy * np.log(pxy / (px * py)), 0.0)
            return out
        if m == "pearson":
            sx, sy = x.std(0), y.std(0)
            cov = ((x - x.mean(0)) * (y - y.mean(0))).mean(0)
            return np.where((sx > 0) & (sy > 0), cov / (sx * sy), np.nan)
        return (x * y).sum(0) / np.sqrt((x * x).sum(0) * (y * y).sum(0))


def test_link_values_equal_the_resampled_corpus(noisy):
    """Each data measure of a replicate (from weighted group counts and sums) equals the measure
    computed directly on the replicate's tokens, the chosen windows repeated by their weights."""
    run, dense, counted = noisy
    wg = bootstrap.window_groups(120, 6, seed=4)
    weights = bootstrap.replicate_weights(6, 2, seed=4)
    links = np.unique(np.random.default_rng(4).integers(0, 96, (400, 2)), axis=0)
    g = count(run, Requests(links={(0, 1): links}, window_groups=wg)).by_group
    tok_group = np.repeat(wg, 32)
    for m in contract.DATA_MEASURES:
        got = bootstrap.link_values(g, weights.astype(np.float64), (0, 1), links, m)
        for b, w in enumerate(weights):
            rows = np.concatenate([np.nonzero(counted & (tok_group == k))[0] for k in range(6) for _ in range(w[k])])
            want = _dense_measure(dense[0][rows][:, links[:, 0]], dense[1][rows][:, links[:, 1]], m)
            # the direct sums cancel differently from n·Σxy − Σx·Σy: absolute tolerance near 0
            np.testing.assert_allclose(got[b], want, rtol=1e-9, atol=1e-12, err_msg=f"{m} replicate {b}")


def _dense_shares(dense, counted_rows, live, threshold):
    """new / ending shares from dense Pearson over the given (repeated) token rows."""
    out = {}
    layers = sorted(dense)
    best_pred, best_succ = {}, {}
    for l in layers[:-1]:
        x, y = dense[l][counted_rows], dense[l + 1][counted_rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.corrcoef(x.T, y.T)[: x.shape[1], x.shape[1] :]
        r = np.where(np.isnan(r), -np.inf, r)
        best_succ[l], best_pred[l + 1] = r.max(1), r.max(0)
    for l in layers:
        n_live = live[l].sum()
        out[l] = {}
        if l in best_pred:
            out[l]["new"] = ((best_pred[l] < threshold) & live[l]).sum() / n_live
        if l in best_succ:
            out[l]["ending"] = ((best_succ[l] < threshold) & live[l]).sum() / n_live
    return out


def test_replicate_shares_equal_the_resampled_corpus(noisy):
    run, dense, counted = noisy
    wg = bootstrap.window_groups(120, 6, seed=2)
    weights = bootstrap.replicate_weights(6, 3, seed=2)
    # every pair of adjacent layers is a candidate: the replicate's best match is then exact
    links = {(l, l + 1): np.stack(np.meshgrid(np.arange(96), np.arange(96), indexing="ij"), -1).reshape(-1, 2)
             for l in (0, 1)}  # fmt: skip
    c = count(run, Requests(links=links, window_groups=wg))
    live = {l: (dense[l][counted] > 0).any(0) for l in dense}
    reps = bootstrap.lifecycle_replicates(c.by_group, links, weights, [0, 1, 2], live, "pearson", 0.5)
    tok_group = np.repeat(wg, 32)
    for b, w in enumerate(weights):
        rows = np.concatenate([np.nonzero(counted & (tok_group == g))[0] for g in range(6) for _ in range(w[g])])
        want = _dense_shares(dense, rows, live, 0.5)
        for l in (0, 1, 2):
            for k, v in want[l].items():
                assert reps[l][k][b] == pytest.approx(v, abs=1e-12), (b, l, k)


def test_analyze_reports_intervals(noisy):
    run, *_ = noisy
    run_analyze(run.path, AnalyzeConfig(bootstrap=50), force=True, progress=False)
    t = pq.read_table(run.file(contract.LIFECYCLE)).to_pylist()
    chosen = [r for r in t if r["chosen"]]
    for r in chosen:
        for k in ("new", "ending", "carried", "continuing"):
            if r[f"share_{k}"] is None:
                assert r[f"share_{k}_lo"] is None
                continue
            assert r[f"share_{k}_lo"] <= r[f"share_{k}"] + 1e-12 and r[f"share_{k}"] - 1e-12 <= r[f"share_{k}_hi"]
            assert 0 <= r[f"share_{k}_lo"] <= r[f"share_{k}_hi"] <= 1
    assert all(r["share_new_lo"] is None for r in t if not r["chosen"])
    entry = run.load().stage("analyze")
    ci = entry["intervals"]
    assert ci["replicates"] == 50
    points = {"gates_and": entry["gates"]["and"], "gates_or": entry["gates"]["or"], "splits": entry["splits"]}
    for key, point in points.items():
        assert ci[key][0] <= point <= ci[key][1], (key, ci[key], point)
    run_analyze(run.path, AnalyzeConfig(bootstrap=0), force=True, progress=False)
    t = pq.read_table(run.file(contract.LIFECYCLE)).to_pylist()
    assert all(r["share_new_lo"] is None for r in t)


def test_interval_is_recentred_on_the_point():
    """Replicates biased above the estimate (every one passes more gates than the data): the plain
    percentile interval misses the estimate; the recentred one holds it with the same width."""
    rng = np.random.default_rng(0)
    reps = 1420 + rng.normal(0, 15, 400)
    plain = bootstrap.interval(reps)
    lo, hi = bootstrap.interval(reps, 1378)
    assert plain[0] > 1378 and lo < 1378 < hi
    assert hi - lo == pytest.approx(plain[1] - plain[0])
    assert (lo + hi) / 2 - 1378 == pytest.approx((plain[0] + plain[1]) / 2 - np.median(reps))
    assert bootstrap.interval(np.array([np.nan]), 3.0) == pytest.approx((np.nan, np.nan), nan_ok=True)


def test_demo_convergence_statement(noisy):
    from saelineage.demo import convergence_statement

    run, *_ = noisy
    run_analyze(run.path, AnalyzeConfig(bootstrap=40), force=True, progress=False)
    rows = [r for r in pq.read_table(run.file(contract.LIFECYCLE)).to_pylist() if r["chosen"]]
    widest = max(r[f"share_{k}_hi"] - r[f"share_{k}_lo"] for r in rows for k in ("new", "ending")
                 if r[f"share_{k}_lo"] is not None)  # fmt: skip
    text = convergence_statement(run.path)
    assert f"widest 95% interval over windows {100 * widest:.1f} points" in text
    assert "AND gates:" in text and "Seed ceiling" not in text  # no ceiling measured on this run


def test_unit_weights_reproduce_the_point_counts(noisy, monkeypatch):
    """A replicate that takes every group once is the data itself: its gate counts and lifecycle
    shares equal the point estimates."""
    run, *_ = noisy
    monkeypatch.setattr(bootstrap, "replicate_weights", lambda w, b, seed: np.ones((b, w), np.int64))
    run_analyze(run.path, AnalyzeConfig(bootstrap=3), force=True, progress=False)
    entry = run.load().stage("analyze")
    for kind in ("and", "or"):
        assert entry["intervals"][f"gates_{kind}"] == [entry["gates"][kind]] * 2
    assert entry["intervals"]["splits"] == [entry["splits"]] * 2
    assert entry["intervals"]["communities"] == [entry["communities"]["communities"]] * 2
    for r in pq.read_table(run.file(contract.LIFECYCLE)).to_pylist():
        if r["chosen"] and r["share_new"] is not None:
            assert r["share_new_lo"] == pytest.approx(r["share_new"]) == r["share_new_hi"]


def test_convergence_statement_knows_the_quality_preset(tmp_path, monkeypatch):
    """The advice to train the quality preset is not given to a run collected with it."""
    import json

    from saelineage.demo import _uses_quality_preset
    from saelineage.run import RunDir
    from saelineage.saes.defaults import folder_of, preset_config

    monkeypatch.setenv("SAELINEAGE_CACHE", str(tmp_path / "cache"))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for folder, want in ((folder_of(preset_config("quality")), True), (folder_of(preset_config("default")), False)):
        saes = {str(l): {"path": str(folder / f"blocks.{l}.hook_resid_pre")} for l in range(3)}
        (run.path / contract.MANIFEST).write_text(json.dumps({"saes": saes}))
        assert _uses_quality_preset(run) is want
