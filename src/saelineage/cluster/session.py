"""Connecting to Ray, checking that every node sees the run directory, and a dispatcher that keeps
a set of workers busy and survives the loss of a node."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saelineage.errors import SaelineageError

FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "SAELINEAGE_CACHE", "TRANSFORMERS_OFFLINE")
"""Environment variables the workers get from the driver: where models and SAEs are cached and
whether the hub may be reached."""

RETRIES = 3
"""Ray retries of a task whose worker or node died (and rounds of failed actors per job)."""


def require_ray():
    """The ray module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SaelineageError(
            "--ray needs Ray, which is not installed.", "pip install 'saelineage[ray]' (or pip install ray)."
        ) from None
    return ray


def runtime_env() -> dict:
    return {"env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}


@contextmanager
def ray_cluster(address: str, run_path: Path) -> Iterator[Any]:
    """Ray, connected to `address` ('local': a new single-node instance on 127.0.0.1), after checking
    that every node sees `run_path`. Reuses a Ray already initialised in this process (and then
    leaves it running); shuts down what it started."""
    ray = require_ray()
    own = not ray.is_initialized()
    if own:
        common = dict(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
        try:
            if address == "local":
                ray.init(address="local", _node_ip_address="127.0.0.1", **common)
            else:
                _keep_loopback(ray, address)
                ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SaelineageError(
                f"cannot connect to the Ray cluster at {address!r}: {exc}",
                "start it with `ray start --head`, pass its address (e.g. 127.0.0.1:6379), or use --ray local.",
            ) from None
    try:
        check_shared(ray, run_path)
        yield ray
    finally:
        if own:
            ray.shutdown()


def _keep_loopback(ray, address: str) -> None:
    """Ray rewrites a loopback bootstrap address to this machine's routable IP (so that drivers can
    reach remote nodes); a cluster started with --node-ip-address 127.0.0.1 listens only on
    loopback, so for such an address the driver must keep 127.0.0.1."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False


def _read_probe(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        return f"unreadable: {exc}"


def check_shared(ray, run_path: Path) -> None:
    """Every alive node reads the same token from a file the driver writes into the run."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probe = Path(run_path) / f".cluster-probe-{token}"
    probe.write_text(token)
    try:
        reader = ray.remote(num_cpus=0)(_read_probe)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [
            reader.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(probe)
            )
            for n in nodes
        ]
        for node, got in zip(nodes, ray.get(refs)):
            if got != token:
                raise SaelineageError(
                    f"Ray node {node.get('NodeManagerAddress')} does not see the run directory {run_path} ({got}).",
                    "put the run on a filesystem every node mounts at the same path (e.g. NFS), and pass that path.",
                )
    finally:
        probe.unlink(missing_ok=True)


def worker_count(ray, requested: int | None, gpu: bool) -> int:
    """Workers to start: as requested, else one per GPU (gpu=True) or per CPU of the cluster."""
    if requested is not None:
        if requested < 1:
            raise SaelineageError(f"--ray-workers must be >= 1 (got {requested}).", "e.g. --ray-workers 2.")
        return requested
    res = ray.cluster_resources()
    n = int(res.get("GPU", 0)) if gpu else int(res.get("CPU", 1))
    if gpu and n == 0:
        raise SaelineageError("--device cuda was asked for, but the Ray cluster has no GPU.", "use --device cpu.")
    return max(1, n)


def dispatch(
    ray,
    make_worker: Callable[[], Any],
    n_workers: int,
    jobs: list[Any],
    call: Callable[[Any, Any], Any],
    on_done: Callable[[Any, Any], None],
) -> list[Any]:
    """Run every job on a pool of `n_workers` workers, one job per worker at a time. A worker is
    an actor, or any token standing for a slot when jobs are stateless tasks (`make_worker=object`).

    call(actor, job) returns an object ref; on_done(job, result) runs in the driver as each job
    finishes. A job whose actor died (its node was lost) goes back to the queue and the surviving
    actors take it; new actors are started only when none survives (a restarted actor could wait
    forever for the CPU of a node that is gone). Returns the actors alive at the end."""
    from ray.exceptions import RayActorError, WorkerCrashedError

    queue = list(reversed(jobs))
    actors = [make_worker() for _ in range(min(n_workers, len(jobs)))]
    running: dict[Any, tuple[Any, Any]] = {}
    failures = 0

    def feed_idle() -> None:
        busy = {id(a) for a, _ in running.values()}
        for a in actors:
            if queue and id(a) not in busy:
                job = queue.pop()
                running[call(a, job)] = (a, job)

    feed_idle()
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        actor, job = running.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except (RayActorError, WorkerCrashedError) as exc:
            failures += 1
            if failures > RETRIES * max(1, len(jobs)):
                raise SaelineageError(
                    f"Ray workers keep failing ({exc}).",
                    "check the cluster's nodes; a rerun resumes from what is done.",
                ) from None
            queue.append(job)
            actors = [a for a in actors if a is not actor]
            if not actors:
                actors = [make_worker() for _ in range(min(n_workers, len(queue)))]
            feed_idle()
            continue
        on_done(job, result)
        feed_idle()
    return actors
