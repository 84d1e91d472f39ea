"""Ray across two nodes on loopback (ray.cluster_utils.Cluster: a head and a worker node, each its
own raylet on 127.0.0.1), and the loss of a node in the middle of a stage.

Slow (a cluster starts in ~10 s and every worker loads its own model); `.ci/run` runs this file.
The oracle is the single-process run of test_cluster.py's fixtures.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from test_cluster import (  # noqa: F401  (fixtures)
    ABLATE,
    STATS,
    assert_same_ablate,
    assert_same_collect,
    assert_same_stats,
    collect_cfg,
    single,
    system,
)

from saelineage import contract
from saelineage.causal.config import AblateConfig
from saelineage.causal.stage import run_ablate
from saelineage.collect.stage import run_collect
from saelineage.run import RunDir
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats

pytestmark = pytest.mark.slow

NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}


@pytest.fixture
def two_nodes(monkeypatch):
    """A head and one worker node, one CPU each; torn down after the test."""
    # the driver connects over loopback too (see saelineage.cluster.session)
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    worker = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    yield cluster, worker
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def test_two_nodes_equal_one_process(system, single, two_nodes, tmp_path):  # noqa: F811
    cluster, _ = two_nodes
    ray.init(address=cluster.address, log_to_driver=False)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())

    run = tmp_path / "run"
    run_collect(run, collect_cfg(system, ray=cluster.address, ray_workers=2), progress=False)
    assert_same_collect(single, run)
    run_stats(run, StatsConfig(**STATS, ray=cluster.address, ray_workers=4), progress=False)
    assert_same_stats(single, run)
    run_ablate(run, AblateConfig(**ABLATE, ray=cluster.address, ray_workers=2), progress=False)
    assert_same_ablate(single, run)
    for stage in ("collect", "stats", "ablate"):
        assert RunDir(run).load().stage(stage)["ray"]["address"] == cluster.address


def kill_when(cluster, worker, ready, snapshot) -> tuple[threading.Thread, dict]:
    """Kill the worker node's processes (no graceful shutdown) as soon as ready() holds; what
    snapshot() says at that moment shows that the stage was still running."""
    seen: dict = {}

    def watch() -> None:
        deadline = time.monotonic() + 300
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["at_kill"] = snapshot()
        cluster.remove_node(worker, allow_graceful=False)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t, seen


def alive_nodes(expect: int, timeout: float = 120) -> int:
    """Alive nodes, once Ray has noticed the loss (its health checks take a while)."""
    deadline = time.monotonic() + timeout
    while (n := len([x for x in ray.nodes() if x["Alive"]])) != expect and time.monotonic() < deadline:
        time.sleep(1)
    return n


@pytest.mark.parametrize("stage", ["collect", "stats"])
def test_node_lost_mid_stage_still_equal(system, single, two_nodes, tmp_path, stage):  # noqa: F811
    cluster, worker = two_nodes
    ray.init(address=cluster.address, log_to_driver=False)
    if stage == "collect":
        run = tmp_path / "run"
        shards = run / contract.ACTIVATIONS
        n_shards = len(list((single / contract.ACTIVATIONS).iterdir()))
        t, seen = kill_when(
            cluster,
            worker,
            lambda: shards.is_dir() and len(list(shards.iterdir())) >= 1,
            lambda: len(list(shards.iterdir())),
        )
        run_collect(run, collect_cfg(system, ray=cluster.address, ray_workers=2), progress=False)
        t.join()
        assert seen["at_kill"] < n_shards  # killed mid-stage
        assert_same_collect(single, run)
    else:
        run = Path(shutil.copytree(single, tmp_path / "run"))
        parts = run / contract.STATS_PARTS
        t, seen = kill_when(
            cluster,
            worker,
            lambda: parts.is_dir() and any(parts.rglob("*.npz")),
            lambda: not (run / contract.STATS_SUMMARY).is_file(),  # force=True removed it; rewritten at the end
        )
        (run / contract.STATS_SUMMARY).unlink()
        run_stats(run, StatsConfig(**STATS, ray=cluster.address, ray_workers=8), progress=False, force=True)
        t.join()
        assert seen["at_kill"]  # killed before the stage wrote its summary
        assert_same_stats(single, run)
    assert alive_nodes(1) == 1  # the worker node is gone
