"""Activation store and the store API: round trips against brute-force summaries."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from saelineage.contract import new_manifest
from saelineage.data.importer import write_run
from saelineage.data.store import iter_shards, list_shards, read_shard
from saelineage.errors import SaelineageError
from saelineage.run import RunDir
from saelineage.saes.run_weights import load_decoder

FEATURE_COLUMNS = ["layer", "feature", "n_active", "density", "act_sum", "act_sumsq", "act_max"]
EXAMPLE_COLUMNS = ["layer", "feature", "rank", "value", "window", "pos"]


def random_codes(rng, t, d, density=0.05):
    m = sp.random(t, d, density=density, random_state=rng, format="csr", dtype=np.float64)
    m.data = np.round(m.data * 8) / 4  # many ties, to exercise the tie-break order
    m.eliminate_zeros()
    return m.astype(np.float32)


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    t, w = 40 * 16, 16
    codes = {0: random_codes(rng, t, 30), 2: random_codes(rng, t, 20, 0.2)}
    dead = codes[0].tolil()
    dead[:, 29] = 0  # a dead feature
    codes[0] = dead.tocsr()
    codes[0].eliminate_zeros()
    return codes, rng.integers(0, 500, t), w


def brute_features(m, mask):
    x = m.toarray().astype(np.float64)[mask]
    return (x > 0).sum(0), x.sum(0), (x**2).sum(0), x.max(0)


def brute_examples(m, window, pos, mask, k):
    x = m.toarray()
    rows = []
    for f in range(x.shape[1]):
        hits = [(-x[t, f], window[t], pos[t]) for t in range(x.shape[0]) if mask[t] and x[t, f] > 0]
        for r, (v, w, p) in enumerate(sorted(hits)[:k]):
            rows.append((f, r, -v, w, p))
    return rows


@pytest.mark.parametrize("shard_windows", [1, 7, 64])
def test_write_run_matches_brute_force(tmp_path, data, shard_windows):
    codes, tokens, w = data
    run = write_run(tmp_path / "run", codes, tokens, window_len=w, bos=True, shard_windows=shard_windows, examples_k=5)
    m = run.require("collect")
    assert m.layers == [0, 2] and m.n_tokens == len(tokens)
    feats = pq.read_table(run.file("features.parquet"))
    assert feats.column_names[: len(FEATURE_COLUMNS)] == FEATURE_COLUMNS
    ex = pq.read_table(run.file("examples.parquet"))
    assert ex.column_names == EXAMPLE_COLUMNS
    window = np.repeat(np.arange(len(tokens) // w), w)
    pos = np.tile(np.arange(w), len(tokens) // w)
    mask = pos != 0
    f = feats.to_pandas()
    e = ex.to_pandas()
    for layer, mat in codes.items():
        n, s, q, mx = brute_features(mat, mask)
        fl = f[f.layer == layer]
        np.testing.assert_array_equal(fl.n_active, n)
        np.testing.assert_allclose(fl.act_sum, s, rtol=1e-12)
        np.testing.assert_allclose(fl.act_sumsq, q, rtol=1e-12)
        np.testing.assert_array_equal(fl.act_max, mx)
        np.testing.assert_allclose(fl.density, n / mask.sum())
        el = e[e.layer == layer]
        got = list(zip(el.feature, el["rank"], el.value.astype(float), el.window, el.pos))
        assert got == brute_examples(mat, window, pos, mask, 5)
    # the shards hold the codes exactly
    rows = {l: [] for l in codes}
    for shard in iter_shards(run):
        for l in codes:
            rows[l].append(shard.codes[l].csr(codes[l].shape[1]))
    for l in codes:
        assert (sp.vstack(rows[l]) != codes[l]).nnz == 0
    assert len(list_shards(run)) == -(-(len(tokens) // w) // shard_windows)


def test_shard_size_does_not_change_outputs(tmp_path, data):
    codes, tokens, w = data
    a = write_run(tmp_path / "a", codes, tokens, window_len=w, shard_windows=3)
    b = write_run(tmp_path / "b", codes, tokens, window_len=w, shard_windows=40)
    for name in ("features.parquet", "examples.parquet"):
        assert pq.read_table(a.file(name)).equals(pq.read_table(b.file(name)))


def test_decoders_and_existing_run(tmp_path, data):
    codes, tokens, w = data
    dec = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    run = write_run(tmp_path / "r", codes, tokens, window_len=w, decoders={0: dec})
    np.testing.assert_array_equal(load_decoder(run, 0), dec)
    assert load_decoder(run, 2) is None
    with pytest.raises(SaelineageError, match="already holds a run"):
        write_run(tmp_path / "r", codes, tokens, window_len=w)


def test_bad_codes(tmp_path, data):
    codes, tokens, w = data
    with pytest.raises(SaelineageError, match="rows for"):
        write_run(tmp_path / "x", {0: codes[0][:-1]}, tokens, window_len=w)
    neg = codes[0].copy()
    neg.data[0] = -1
    with pytest.raises(SaelineageError, match="negative or non-finite"):
        write_run(tmp_path / "y", {0: neg}, tokens, window_len=w)
    with pytest.raises(SaelineageError, match="whole number of windows"):
        write_run(tmp_path / "z", {0: codes[0][:-3]}, tokens[:-3], window_len=w)


def test_truncated_shard_is_a_clear_error(tmp_path, data):
    codes, tokens, w = data
    run = write_run(tmp_path / "r", codes, tokens, window_len=w, shard_windows=8)
    path = list_shards(run)[1]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SaelineageError, match="unreadable or truncated"):
        read_shard(path)


def test_require_incomplete_stage(tmp_path):
    run = RunDir(tmp_path / "r")
    run.save(
        new_manifest(
            layers=[0],
            d_sae={0: 4},
            hooks={0: "layer0"},
            saes={},
            model={"spec": "imported"},
            corpus={"spec": "imported"},
            window=8,
            bos=False,
            n_windows=0,
            shard_windows=64,
            config_hash="test",
            stages={"collect": {"status": "running"}},
        )
    )
    with pytest.raises(SaelineageError, match="is running, not complete"):
        run.require("collect")
    with pytest.raises(SaelineageError, match="not a saelineage run"):
        RunDir(tmp_path / "other").load()
