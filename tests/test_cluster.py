"""Ray scale-out (saelineage.cluster): every stage run on Ray ends in the same files as one process.

The oracle is the single-process stage itself, run on a copy of the same run: shards, partial
summaries, features/examples, edges, feature links and ablations must match value for value
(bytes, where the file holds no timings). The merge of block states that the Ray path relies on
is also checked without Ray, against the single-process fold, on a planted run.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from runs import write_corpus, write_saes
from tinymodels import tiny_llama

from saelineage import contract
from saelineage.causal.config import AblateConfig
from saelineage.causal.stage import run_ablate
from saelineage.cluster.session import require_ray
from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.data.finalize import partial_path
from saelineage.errors import SaelineageError
from saelineage.run import RunDir
from saelineage.stats.config import StatsConfig
from saelineage.stats.engine import plan, run_passes
from saelineage.stats.ray import merge_units, part_path, run_unit, split_units
from saelineage.stats.stage import run_stats, stats_setup
from saelineage.testing.planted import build_planted_run

LAYERS = (0, 1, 2, 3)
STATS_VOLATILE = ("timings", "passes", "memory_limit", "batch_bytes", "accumulator_bytes")
"""stats_summary.json keys that describe how the pass ran, not what it found."""


def collect_cfg(root: Path, **kw) -> CollectConfig:
    return CollectConfig(
        model=str(root / "model"),
        saes=str(root / "saes"),
        corpus=str(root / "corpus.txt"),
        window=16,
        max_tokens=16 * 64,
        batch_windows=8,
        shard_windows=16,
        examples_k=4,
        **kw,
    )


ABLATE = dict(measures=["jaccard", "pearson"], bins=2, per_bin=3, windows_per_pair=2, layers_per_part=1)
STATS = dict(min_support=2, top_k=4, sae_match="off")


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    tiny_llama(root / "model", n_layers=4, d=64)
    write_saes(root / "saes", 64, LAYERS, d_sae=96)
    write_corpus(root / "corpus.txt", n_docs=40)
    return root


@pytest.fixture(scope="module")
def single(system) -> Path:
    """The reference: every stage in this process."""
    run = system / "single"
    run_collect(run, collect_cfg(system), progress=False)
    run_stats(run, StatsConfig(**STATS), progress=False)
    run_ablate(run, AblateConfig(**ABLATE), progress=False)
    return run


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance on 127.0.0.1 with two CPUs; the stages reuse it."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_collect(a: Path, b: Path) -> None:
    for sub in (contract.ACTIVATIONS, contract.SUMMARY_PARTS):
        fa, fb = files_under(a / sub), files_under(b / sub)
        assert fa.keys() == fb.keys() and fa, sub
        assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]]
    for f in (contract.FEATURES, contract.EXAMPLES, contract.VOCAB):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def same_table(a: Path, b: Path) -> bool:
    """Same schema and the same values, NaN equal to NaN (pyarrow's equals says NaN != NaN)."""
    ta, tb = pq.read_table(a), pq.read_table(b)
    return ta.num_rows > 0 and ta.schema.equals(tb.schema) and ta.to_pandas().equals(tb.to_pandas())


def assert_same_stats(a: Path, b: Path) -> None:
    for f in (contract.EDGES, contract.FEATURE_LINKS):
        assert same_table(a / f, b / f), f
    sa, sb = (json.loads((r / contract.STATS_SUMMARY).read_text()) for r in (a, b))
    for k in STATS_VOLATILE:
        sa.pop(k), sb.pop(k)
    assert sa == sb


def assert_same_ablate(a: Path, b: Path) -> None:
    for f in (contract.ABLATIONS, contract.ERROR_PROJECTION):
        assert same_table(a / f, b / f), f


# ---- Ray-free: the pieces the Ray path is made of ----------------------------------------------


@pytest.mark.numeric
def test_block_states_merged_equal_one_fold(tmp_path):
    """Units run as separate tasks (here: in this process) and merged give the single-pass result."""
    run, _ = build_planted_run(tmp_path / "run", noise=0.05, seed=3)
    cfg = StatsConfig(min_support=2, top_k=3)
    st = stats_setup(run.path, cfg)
    budget = plan(st.layout, st.edge_opts, 1 << 30)
    one = run_passes(st.layout, budget, st.edge_opts, 1)
    units = split_units([u for p in budget.passes for u in p], 3 * len(st.layout.pairs))
    assert len(units) >= 3 * len(st.layout.pairs)  # every pair in several blocks of rows
    folder = tmp_path / "parts"
    folder.mkdir()
    for u in reversed(units):  # any order
        run_unit(st.layout, budget, st.edge_opts, u, None, str(part_path(folder, u)))
    merged = merge_units(st.layout, st.edge_opts, units, folder)
    assert merged.n == one.n and merged.increments == one.increments
    for l in st.layout.layers:
        assert all(np.array_equal(x, y) for x, y in zip(merged.marginals[l], one.marginals[l]))
    for r1, r2 in zip(one.results, merged.results):
        for f in ("src", "dst", "n_co", "p"):
            assert np.array_equal(getattr(r1, f), getattr(r2, f)), f
        assert np.array_equal(r1.counters, r2.counters)
        for x, y in zip(r1.pred_j or (), r2.pred_j or ()):
            assert np.array_equal(x, y)
        for x, y in zip(r1.succ or (), r2.succ or ()):
            assert np.array_equal(x, y)


def test_summary_from_partials_equals_summary_from_shards(system, single, tmp_path):
    """Partials missing (an imported run, a crash between shard and partial): same summary bytes."""
    run = Path(shutil.copytree(single, tmp_path / "run"))
    before = {f: (run / f).read_bytes() for f in (contract.FEATURES, contract.EXAMPLES)}
    partial_path(RunDir(run), 1).unlink()
    partial_path(RunDir(run), 2).write_bytes(b"damaged")
    from saelineage.data.finalize import summarize_run

    summarize_run(RunDir(run), 4)
    assert {f: (run / f).read_bytes() for f in before} == before


def test_summary_matches_brute_force(single):
    from saelineage.data.store import iter_shards, token_mask

    run = RunDir(single)
    m = run.load()
    feats = pq.read_table(run.file(contract.FEATURES)).to_pandas().set_index(["layer", "feature"])
    for l in LAYERS:
        dense = []
        for sh in iter_shards(run, [l]):
            dense.append(sh.codes[l].csr(m.d_sae[l]).toarray()[token_mask(sh.pos, m.bos, False)])
        a = np.concatenate(dense).astype(np.float64)
        got = feats.loc[l]
        assert np.array_equal(got["n_active"].to_numpy(), (a > 0).sum(0))
        np.testing.assert_allclose(got["act_sum"].to_numpy(), a.sum(0), rtol=1e-12)
        np.testing.assert_array_equal(got["act_max"].to_numpy(), a.max(0))


def test_without_ray_the_flag_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SaelineageError) as err:
        require_ray()
    assert "pip install 'saelineage[ray]'" in str(err.value)


# ---- a local Ray instance ----------------------------------------------------------------------


def test_collect_on_ray_equals_one_process(system, single, local_ray, monkeypatch):
    from saelineage import checksum

    hashed_from_disk: list[Path] = []
    digest_file = checksum.digest_file
    monkeypatch.setattr(checksum, "digest_file", lambda p, *a: hashed_from_disk.append(p) or digest_file(p, *a))
    run = system / "ray-collect"
    res = run_collect(run, collect_cfg(system, ray="local", ray_workers=2), progress=False)
    assert not res.skipped
    assert_same_collect(single, run)
    info = RunDir(run).load().stage("collect")["ray"]
    assert info["workers"] == 2 and info["shards"] == 4
    # the workers reported each shard's digest: the driver recorded them without reading the shards
    recorded = RunDir(run).load().stage("collect")["checksums"]
    shards = {k: v for k, v in recorded.items() if k.startswith(f"{contract.ACTIVATIONS}/")}
    assert len(shards) == 4 and shards == {k: digest_file(run / k) for k in shards}
    assert not [p for p in hashed_from_disk if Path(p).name.startswith("shard-")], hashed_from_disk


def test_stats_on_ray_equals_one_process_and_resumes(system, single, local_ray, tmp_path, monkeypatch):
    run = Path(shutil.copytree(single, tmp_path / "run"))
    # six workers asked for: every pair is split into blocks whose states the driver merges
    out = run_stats(run, StatsConfig(**STATS, ray="local", ray_workers=6), progress=False, force=True)
    assert not out.skipped
    assert_same_stats(single, run)
    info = RunDir(run).load().stage("stats")["ray"]
    assert info["units"] >= 6 and info["units_resumed"] == 0
    assert not (run / contract.STATS_PARTS).exists()

    # a rerun after a failure skips the units already saved
    from saelineage.stats import ray as cs

    st = stats_setup(run, StatsConfig(**STATS))
    opts = RunDir(run).load().stage("stats")["options"]

    def fail_merge(*a, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(cs, "merge_units", fail_merge)
        with pytest.raises(KeyboardInterrupt):
            cs.stats_on_ray(RunDir(run), "local", 6, None, st.layout, st.edge_opts, opts, {})
    acc, _, info = cs.stats_on_ray(RunDir(run), "local", 6, None, st.layout, st.edge_opts, opts, {})
    assert info["units_resumed"] == info["units"] >= 6


def test_ablate_on_ray_equals_one_process(system, single, local_ray, tmp_path):
    run = Path(shutil.copytree(single, tmp_path / "run"))
    res = run_ablate(run, AblateConfig(**ABLATE, ray="local", ray_workers=2), progress=False, force=True)
    assert not res.skipped
    assert_same_ablate(single, run)
    info = RunDir(run).load().stage("ablate")["ray"]
    assert info["parts"] == 3 and info["workers"] == 2
