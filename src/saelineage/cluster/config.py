"""`ClusterOptions`: the options every stage that can run on Ray shares (its configs inherit them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClusterOptions:
    """Where a stage runs: this process (default) or a Ray cluster."""

    ray: str | None = None
    """Run on Ray: a cluster's address (host:port, or 'auto' inside a cluster), or 'local' to start
    Ray on this machine. Every node must see the run directory at the same path (a shared
    filesystem); needs `pip install 'saelineage[ray]'`."""
    ray_workers: int | None = None
    """Ray workers at once (default: one per GPU with --device cuda, else one per CPU of the cluster)."""


CLUSTER_FIELDS = ("ray", "ray_workers")
"""Fields that say where a stage runs, never what it computes (left out of identity hashes)."""
