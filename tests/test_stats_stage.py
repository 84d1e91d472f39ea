"""Stats stage: bad input, skip/force, interruption and restart, decoders, CLI."""

from __future__ import annotations

import json

import numba
import numpy as np
import pyarrow.parquet as pq
import pytest
from test_stats import make_run, same_table
from test_stats_oracle import synthetic_codes
from typer.testing import CliRunner

from saelineage.cli import app
from saelineage.config import usable_cpus
from saelineage.errors import SaelineageError
from saelineage.run import RunDir
from saelineage.stats import outputs as stats_outputs
from saelineage.stats.config import StatsConfig, parse_size
from saelineage.stats.measures import MEASURES
from saelineage.stats.stage import run_stats


@pytest.fixture(scope="module")
def codes():
    return synthetic_codes(seed=1, t=320)


@pytest.fixture
def run(tmp_path, codes):
    return make_run(tmp_path / "run", codes)


def test_incomplete_collect_is_refused(run):
    run.set_stage("collect", "running")
    with pytest.raises(SaelineageError, match="collect.*not complete"):
        run_stats(run.path, progress=False)


def test_bad_span_and_options(run):
    with pytest.raises(SaelineageError, match="span 3 needs 4 layers"):
        run_stats(run.path, StatsConfig(span=3), progress=False)
    with pytest.raises(SaelineageError, match="span must be >= 1"):
        run_stats(run.path, StatsConfig(span=0), progress=False)
    with pytest.raises(SaelineageError, match="relative-threshold"):
        run_stats(run.path, StatsConfig(relative_threshold=1.5), progress=False)
    with pytest.raises(SaelineageError, match="unknown measure"):
        run_stats(run.path, StatsConfig(keep={"cosine": 0.5}), progress=False)
    with pytest.raises(SaelineageError, match="workers"):
        run_stats(run.path, StatsConfig(workers=0), progress=False)
    assert run.stage_status("stats") is None  # refused before anything was marked


def test_single_layer_run_is_refused(tmp_path, codes):
    r = make_run(tmp_path / "one", {0: codes[0]})
    with pytest.raises(SaelineageError, match="at least two"):
        run_stats(r.path, progress=False)


def test_no_decoders_means_dec_cosine_absent_and_stated(run):
    s = run_stats(run.path, progress=False)
    assert not s.summary["dec_cosine"]
    edges = pq.read_table(run.file("edges.parquet"))
    assert np.isnan(edges.column("dec_cosine").to_numpy()).all()
    summary = json.loads(run.file("stats_summary.json").read_text())
    assert "no SAE decoder weights" in summary["dec_cosine_note"]
    assert run.load().stage("stats")["dec_cosine_missing_layers"] == [0, 2, 5]
    # --workers left out: every usable CPU (within numba's pool)
    assert run.load().stage("stats")["threads"] == min(usable_cpus(), numba.config.NUMBA_NUM_THREADS)


def test_decoders_from_the_run(tmp_path, codes):
    rng = np.random.default_rng(0)
    dec = {l: rng.normal(size=(x.shape[1], 8)).astype(np.float32) for l, x in codes.items() if l != 5}
    r = make_run(tmp_path / "dec", codes, decoders=dec)
    s = run_stats(r.path, StatsConfig(span=2), progress=False)
    assert not s.summary["dec_cosine"]  # layer 5 has none
    e = pq.read_table(r.file("edges.parquet")).to_pandas()
    has = e[(e.src_layer == 0) & (e.dst_layer == 2)]
    assert has.dec_cosine.notna().all() and e[e.dst_layer == 5].dec_cosine.isna().all()
    a, b = dec[0][has.src.to_numpy()].astype(float), dec[2][has.dst.to_numpy()].astype(float)
    want = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(has.dec_cosine, want, rtol=1e-12)


def test_wrong_decoder_shape(run):
    with pytest.raises(SaelineageError, match="decoder of layer 0"):
        run_stats(run.path, decoders={0: np.zeros((3, 4)), 2: np.zeros((30, 4))}, progress=False)


def test_complete_is_skipped_other_options_refused_force_recomputes(run):
    s = run_stats(run.path, progress=False)
    m = run.load().stage("stats")
    assert (
        m["status"] == "complete" and m["options"]["min_support"] == 5 and m["summary"]["edges"] == s.summary["edges"]
    )
    again = run_stats(run.path, progress=False)
    assert again.skipped and again.summary["edges"] == s.summary["edges"]
    with pytest.raises(SaelineageError, match="other options"):
        run_stats(run.path, StatsConfig(top_k=2), progress=False)
    s2 = run_stats(run.path, StatsConfig(top_k=2), force=True, progress=False)
    assert not s2.skipped and s2.summary["edges"] < s.summary["edges"]
    assert run.load().stage("stats")["options"]["top_k"] == 2


def test_interrupted_run_restarts_cleanly(tmp_path, codes, monkeypatch):
    ref = make_run(tmp_path / "ref", codes)
    run_stats(ref.path, progress=False)
    r = make_run(tmp_path / "run", codes)
    stale = r.file(".edges.parquet.tmp-99999")
    stale.write_bytes(b"half")

    def boom(*a, **k):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C while writing

    monkeypatch.setattr("saelineage.stats.stage.feature_links", boom)
    with pytest.raises(KeyboardInterrupt):
        run_stats(r.path, progress=False)
    assert r.stage_status("stats") == "running"  # edges.parquet may exist, but is not claimed complete
    assert not r.file("stats_summary.json").exists() and not stale.exists()
    monkeypatch.setattr("saelineage.stats.stage.feature_links", stats_outputs.feature_links)
    s = run_stats(r.path, progress=False)  # no --force needed: an incomplete stage restarts
    assert not s.skipped and r.is_complete("stats")
    for name in ("edges.parquet", "feature_links.parquet"):
        assert same_table(pq.read_table(r.file(name)), pq.read_table(ref.file(name)))


def test_failed_edges_write_leaves_no_edges_file(run, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(stats_outputs.pq.ParquetWriter, "write_table", broken)
    with pytest.raises(OSError):
        run_stats(run.path, progress=False)
    assert not run.file("edges.parquet").exists()
    assert not [p for p in run.path.iterdir() if ".tmp-" in p.name]


def test_relative_threshold_needs_features_parquet(run):
    run.file("features.parquet").unlink()
    with pytest.raises(SaelineageError, match="features.parquet is missing"):
        run_stats(run.path, StatsConfig(relative_threshold=0.2), progress=False)


def test_cli(run):
    runner = CliRunner()
    res = runner.invoke(app, ["stats", "--help"])
    assert res.exit_code == 0 and "--relative-threshold" in res.output and "--memory-limit" in res.output
    res = runner.invoke(
        app,
        [
            "stats",
            str(run.path),
            "--span",
            "2",
            "--memory-limit",
            "4G",
            "--keep",
            "pearson=0.5",
            "--relative-threshold",
            "0.2",
            "--primary",
            "all",
        ],
    )
    assert res.exit_code == 0, res.output
    m = RunDir(run.path).load().stage("stats")
    assert m["options"]["keep_thresholds"] == {"pearson": 0.5} and m["options"]["relative_threshold"] == 0.2
    assert m["options"]["primary"] == list(MEASURES)
    assert m["summary"]["memory_limit"] == 4 << 30


def test_parse_size():
    assert parse_size("8G") == 8 << 30 and parse_size("512m") == 512 << 20 and parse_size("1.5GiB") == 3 << 29
    assert parse_size("1000") == 1000
    with pytest.raises(SaelineageError):
        parse_size("lots")


def test_stored_zeros_and_negatives_count_as_absent(tmp_path, codes):
    import scipy.sparse as sp

    from saelineage.data.store import LayerCodes, read_shard, shard_path, write_shard

    a = make_run(tmp_path / "a", codes, shard_windows=64)
    b = make_run(tmp_path / "b", codes, shard_windows=64)
    sh = read_shard(shard_path(b, 0))
    rng = np.random.default_rng(0)
    new = {}
    for l, c in sh.codes.items():
        m = c.csr(codes[l].shape[1]).tocoo()
        t, d = m.shape
        rows, cols = rng.integers(0, t, 200), rng.integers(0, d, 200)
        free = np.asarray(m.tocsr()[rows, cols]).ravel() == 0
        vals = np.where(rng.random(free.sum()) < 0.5, 0.0, -1.0)
        z = sp.coo_matrix(
            (
                np.concatenate([m.data, vals]),
                (np.concatenate([m.row, rows[free]]), np.concatenate([m.col, cols[free]])),
            ),
            shape=m.shape,
        ).tocsr()
        z.sort_indices()
        assert (z.data <= 0).sum() > 0
        new[l] = LayerCodes(z.indptr.astype(np.int64), z.indices.astype(np.int32), z.data.astype(np.float32))
    write_shard(b, 0, sh.tokens, sh.window, sh.pos, new)
    for r in (a, b):
        run_stats(r.path, StatsConfig(span=2), progress=False)
    for name in ("edges.parquet", "feature_links.parquet"):
        assert same_table(pq.read_table(a.file(name)), pq.read_table(b.file(name)))
