"""`collect --ray`: shards encoded by Ray actors, each holding the model and the SAEs once.

An actor writes its shards and their partial summaries straight into the run directory (a
filesystem every node mounts), atomically, as single-process collect does; the driver only hands
out shard indices and then merges the partial summaries (data/finalize.py). Each actor reports the
digest of every shard it wrote (computed from the bytes it wrote), so the driver records collect's
checksums without reading the shards again."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from saelineage import checksum
from saelineage.cluster.session import dispatch, ray_cluster, worker_count
from saelineage.collect.config import CollectConfig
from saelineage.data.store import shard_path
from saelineage.run import RunDir


class CollectWorker:
    """A Ray actor: the run's model and SAEs, loaded once, encoding whole shards."""

    def __init__(self, run_path: str, cfg: CollectConfig, layers: list[int], threads: int):
        import torch

        from saelineage.models.loading import load_model
        from saelineage.saes.catalog import ReleaseChoice
        from saelineage.saes.resolve import resolve_saes

        torch.set_num_threads(threads)
        assert cfg.model is not None  # collect() resolved it before starting workers
        self.run = RunDir(run_path)
        m = self.run.load()
        self.cfg, self.layers = cfg, layers
        self.bos, self.d_sae = m.bos, {l: m.d_sae[l] for l in layers}
        self.adapter = load_model(
            cfg.model,
            dtype=cfg.dtype,
            device=cfg.device,
            center_residual=m.center_residual,
            blocks_path=cfg.blocks_path,
        )
        self.saes = resolve_saes(
            cfg.saes,
            cfg.model,
            device=cfg.device,
            dtype=cfg.dtype,
            layers=layers,
            choice=ReleaseChoice(sae_id=cfg.sae_id, width=cfg.width, l0=cfg.l0),
        )

    def shard(self, ids: np.ndarray, index: int, w0: int, w1: int) -> tuple[int, tuple[str, int, int] | None]:
        """Encode and store shard `index` (windows w0..w1-1); returns its token count and what this
        process noted when it wrote the shard: (digest, mtime_ns, size), for `checksum.note`."""
        from saelineage.collect.shard import encode_shard, store_shard

        shard = encode_shard(self.adapter, self.saes, self.layers, ids, index, w0, w1, self.cfg.batch_windows)
        store_shard(self.run, shard, self.d_sae, self.cfg.examples_k, self.bos, self.cfg.include_bos)
        return len(shard.tokens), checksum.written(shard_path(self.run, index))


def collect_on_ray(
    run: RunDir,
    cfg: CollectConfig,
    ids: np.ndarray,
    spans: dict[int, tuple[int, int]],
    layers: list[int],
    advance: Callable[[int], None],
) -> dict:
    """Encode the shards `spans` ({index: (w0, w1)}) on Ray; returns what the manifest records."""

    def done(index: int, result: tuple[int, tuple[str, int, int] | None]) -> None:
        tokens, written = result
        if written is not None:  # the driver's checksums then need not read the shard (checksum.written_digest)
            checksum.note(shard_path(run, index), *written)
        advance(tokens)

    gpu = cfg.device.startswith("cuda")
    assert cfg.ray is not None  # collect() comes here only with --ray
    with ray_cluster(cfg.ray, run.path) as ray:
        n = worker_count(ray, cfg.ray_workers, gpu)
        if not spans:
            return {"workers": 0, "shards": 0}
        actor = ray.remote(CollectWorker).options(
            num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=0, scheduling_strategy="SPREAD"
        )
        ids_ref = ray.put(ids)
        # one torch thread per actor, deliberately: an actor reserves one CPU (num_cpus=1), and the
        # actors are the parallelism (more threads would oversubscribe the node's CPUs)
        dispatch(
            ray,
            lambda: actor.remote(str(run.path), cfg, layers, 1),
            n,
            sorted(spans),
            lambda a, i: a.shard.remote(ids_ref, i, *spans[i]),
            done,
        )
        return {"workers": min(n, len(spans)), "shards": len(spans), "address": cfg.ray}
