"""The seed ceiling: same-layer matching against brute force and the stats engine, and the stage
end to end on a tiny model."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from numerics import assert_close
from runs import write_corpus, write_saes
from tinymodels import tiny_llama

from saelineage import contract
from saelineage.ceiling.config import CeilingConfig
from saelineage.ceiling.match import MATCH_MEASURES, best_matches, match_rate
from saelineage.ceiling.stage import run_ceiling
from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.data.importer import write_run
from saelineage.errors import SaelineageError
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats


def _codes(seed: int, t: int = 600, d: int = 12) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((t, d)) < 0.15, rng.uniform(0.1, 2, (t, d)), 0.0)
    x[:, -1] = 0  # a dead feature
    return sp.csr_matrix(x)


def _brute(a: np.ndarray, b: np.ndarray, m: str) -> np.ndarray:
    n = len(a)
    out = np.full((a.shape[1], b.shape[1]), np.nan)
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            x, y = a[:, i], b[:, j]
            xa, ya = x > 0, y > 0
            c, ci, cj = (xa & ya).sum(), xa.sum(), ya.sum()
            if m == "jaccard":
                v = c / (ci + cj - c) if ci + cj - c else np.nan
            elif m == "sufficiency":
                v = c / ci if ci else np.nan
            elif m == "necessity":
                v = c / cj if cj else np.nan
            elif m == "mutual_info":
                v = 0.0
                for p in (0, 1):
                    for q in (0, 1):
                        pxy = np.mean((xa == p) & (ya == q))
                        if pxy > 0:
                            v += pxy * np.log(pxy / (np.mean(xa == p) * np.mean(ya == q)))
                v = v if ci and cj else np.nan
            elif m == "pearson":
                v = np.corrcoef(x, y)[0, 1] if x.std() > 0 and y.std() > 0 else np.nan
            else:
                v = x @ y / np.sqrt((x @ x) * (y @ y)) if (x @ x) * (y @ y) > 0 else np.nan
            out[i, j] = v
    assert n
    return out


def test_best_matches_equal_brute_force():
    a, b = _codes(0), _codes(1)
    a = sp.csr_matrix(np.hstack([a.toarray()[:, :6], b.toarray()[:, :6] * 0.5]))  # six exact copies
    got = best_matches(a, b, block=5)
    for m in MATCH_MEASURES:
        full = _brute(a.toarray(), b.toarray(), m)
        want = np.where(np.isnan(full), -np.inf, full).max(1)
        live = (a.toarray() > 0).any(0)
        assert_close(got[m][0][live], want[live])
        assert np.isnan(got[m][0][~live]).all() and (got[m][1][~live] == -1).all()
        hit = got[m][1][live]
        assert_close(full[np.nonzero(live)[0], hit], want[live])
    assert (got["pearson"][1][6:12] == np.arange(6)).all()
    assert match_rate(got["pearson"][0], (a.toarray() > 0).any(0), 0.99) == pytest.approx(6 / 12)


def test_a_constant_feature_has_no_pearson_partner():
    """A feature with one value on every token never varies: Pearson is undefined (NaN, no partner),
    decided exactly as the stats stage does although n·q − s² rounds to a tiny number; the count
    measures still match it, and no feature takes the constant one as its Pearson partner."""
    a, b = _codes(0).toarray(), _codes(1).toarray()
    a[:, 0] = b[:, 0] = 0.7
    got = best_matches(sp.csr_matrix(a), sp.csr_matrix(b))
    assert np.isnan(got["pearson"][0][0]) and got["pearson"][1][0] == -1
    assert got["jaccard"][0][0] == 1.0 and got["jaccard"][1][0] == 0
    assert (got["pearson"][1][1:] != 0).all()


def test_best_matches_equal_the_stats_engine(tmp_path):
    a, b = _codes(2), _codes(3)
    run = write_run(tmp_path / "r", {0: a, 1: b}, np.arange(600) % 50 + 1, window_len=20, bos=False,
                    vocab=[f"t{i}" for i in range(60)], force=True, shard_windows=8)  # fmt: skip
    run_stats(run.path, StatsConfig(), progress=False)
    links = pq.read_table(run.file(contract.FEATURE_LINKS)).to_pandas()
    mine = best_matches(a.astype(np.float32), b.astype(np.float32))  # the shards store float32
    l0 = links[links.layer == 0].sort_values("feature")
    live = (a.toarray() > 0).any(0)
    for m in MATCH_MEASURES:
        ok = l0[f"best_succ_{m}"].notna().to_numpy() & live
        assert_close(mine[m][0][ok], l0[f"best_succ_{m}"].to_numpy()[ok])


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    root = tmp_path_factory.mktemp("ceiling")
    model = tiny_llama(root / "model", n_layers=4, d=64)
    saes = write_saes(root / "saes", 64, [0, 1, 2, 3])
    corpus = write_corpus(root / "corpus.txt")
    cfg = CollectConfig(model=str(model), saes=str(saes), corpus=str(corpus), window=16, batch_windows=4,
                        shard_windows=8, examples_k=5)  # fmt: skip
    run = run_collect(root / "run", cfg, progress=False).run
    return root, run


def test_same_saes_reproduce_every_feature(collected):
    root, run = collected
    import shutil

    same = root / "same"
    same.mkdir(exist_ok=True)
    for hook in ("blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"):
        shutil.copytree(root / "saes" / hook, same / hook, dirs_exist_ok=True)
    r = run_ceiling(run.path, CeilingConfig(saes=str(same), tokens=400, batch_windows=4), progress=False)
    assert sorted(r.summary["rates"]) == [1, 2] and r.summary["rates"][1]["pearson"]["0.9"] == 1.0
    t = pq.read_table(run.file(contract.SEED_CEILING))
    assert tuple(t.column_names) == contract.CEILING_COLUMNS
    rows = t.to_pandas()
    live = rows[rows.live]
    assert np.allclose(live.best_jaccard, 1.0) and np.allclose(live.best_act_cosine, 1.0)  # ids may tie
    assert not (run.path / contract.CEILING_CODES).exists()
    # a different training of the same layers reproduces fewer features
    other = write_saes(root / "other", 64, [0, 1, 2, 3], archs=("standard", "jumprelu", "topk", "standard"))
    r2 = run_ceiling(run.path, CeilingConfig(saes=str(other), tokens=400, batch_windows=4), force=True, progress=False)
    assert sorted(r2.summary["rates"]) == [0, 1, 2, 3] and r2.summary["rates"][1]["jaccard"]["0.9"] < 1.0
    assert run.load().stage("ceiling")["status"] == "complete"


def test_bad_input(collected, tmp_path):
    root, run = collected
    with pytest.raises(SaelineageError, match="no second SAE set"):
        run_ceiling(run.path, CeilingConfig(), progress=False)
    store = write_run(tmp_path / "s", {0: _codes(0)}, np.arange(600) % 50 + 1, window_len=20, bos=False,
                      vocab=[f"t{i}" for i in range(60)], force=True)  # fmt: skip
    with pytest.raises(SaelineageError, match="not made by `saelineage collect`"):
        run_ceiling(store.path, CeilingConfig(saes=str(root / "saes")), progress=False)


def test_analyze_shows_lifecycle_beside_the_ceiling(collected):
    import shutil

    from saelineage.lineage.config import AnalyzeConfig
    from saelineage.lineage.lifecycle import lifecycle_rich_table
    from saelineage.lineage.stage import run_analyze

    root, run = collected
    second = write_saes(root / "second", 64, [0, 1, 2, 3], archs=("standard", "jumprelu", "topk", "standard"))
    shutil.rmtree(second / "blocks.0.hook_resid_pre")  # layer 0 not measured
    run_ceiling(run.path, CeilingConfig(saes=str(second), tokens=400, batch_windows=4), force=True, progress=False)
    run_stats(run.path, StatsConfig(), progress=False)
    run_analyze(run.path, AnalyzeConfig(bootstrap=0), progress=False)
    life = pq.read_table(run.file(contract.LIFECYCLE)).to_pandas()
    chosen = life[life.chosen].set_index("layer")
    ceil = pq.read_table(run.file(contract.SEED_CEILING)).to_pandas()
    fa = pq.read_table(run.file(contract.FEATURE_ANALYSIS)).to_pandas()
    feats = pq.read_table(run.file(contract.FEATURES)).to_pandas()
    assert np.isnan(chosen.loc[0, "seed_ceiling"])
    for layer in (1, 2, 3):
        c = ceil[ceil.layer == layer].set_index("feature")
        f = feats[feats.layer == layer].set_index("feature")
        live = f.n_active > 0
        stable = (c.best_pearson >= 0.5) & live
        assert chosen.loc[layer, "seed_ceiling"] == pytest.approx(stable.sum() / live.sum())
        if layer < 3:
            want = chosen.loc[layer, "share_continuing"] / chosen.loc[layer, "seed_ceiling"]
            assert chosen.loc[layer, "share_continuing_normalised"] == pytest.approx(want)
        a = fa[fa.layer == layer].set_index("feature")
        unstable = live & ~stable & (a.has_succ == False)  # noqa: E712 - a nullable column
        assert (a.lifecycle == "unstable").sum() == unstable.sum() == chosen.loc[layer, "n_unstable"]
    assert not (fa[fa.layer == 0].lifecycle == "unstable").any()
    table = lifecycle_rich_table(pq.read_table(run.file(contract.LIFECYCLE)))
    assert "ceiling" in [c.header for c in table.columns]


def test_browser_overview_reports_the_ceiling(collected):
    from fastapi.testclient import TestClient

    from saelineage.web.app import create_app

    root, run = collected
    if run.load().status("analyze") != "complete" or not run.file(contract.SEED_CEILING).is_file():
        pytest.skip("needs test_analyze_shows_lifecycle_beside_the_ceiling first")
    rates = TestClient(create_app(run.path, allowed_hosts=["testserver"])).get("/api/overview").json()["rates"]
    life = pq.read_table(run.file(contract.LIFECYCLE)).to_pandas()
    chosen = life[life.chosen].set_index("layer")
    for r in rates:
        want = chosen.loc[r["layer"], "seed_ceiling"]
        assert (r["seed_ceiling"] is None) == bool(np.isnan(want))
        if r["seed_ceiling"] is not None:
            assert r["seed_ceiling"] == pytest.approx(want)
    assert any(r["share_continuing_normalised"] is not None for r in rates)
