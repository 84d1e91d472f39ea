"""`ablate --ray`: the parts of the ablation (blocks of upstream layers with their sampled pairs)
run on Ray actors that each load the run's model and SAEs once; each actor writes its part file
into the run (`.ablate-parts/`) with the same code as one process, and the driver joins the parts
as it does after a single-process run. The error projections run on one of the actors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from saelineage.causal.config import AblateConfig
from saelineage.cluster.session import dispatch, ray_cluster, worker_count
from saelineage.run import RunDir


class AblateWorker:
    """A Ray actor holding the run's model and SAEs."""

    def __init__(self, run_path: str, device: str | None, threads: int):
        import torch

        from saelineage.run_model import load_run_model

        torch.set_num_threads(threads)
        self.run = RunDir(run_path)
        self.rm = load_run_model(self.run, device=device)

    def part(self, pairs: np.ndarray, windows: list[np.ndarray], threshold: float, batch_rows: int, path: str) -> str:
        from saelineage.causal.work import ablate_part

        ablate_part(self.run, self.rm, pairs, windows, threshold, batch_rows, Path(path))
        return path

    def hidden(self, cfg: AblateConfig, threshold: float) -> dict:
        from saelineage.causal.work import error_projections

        return error_projections(self.run, self.rm, cfg, threshold)


def ablate_on_ray(
    run: RunDir,
    cfg: AblateConfig,
    threshold: float,
    todo: dict[Path, tuple[np.ndarray, list[np.ndarray]]],
    advance: Callable[[], None],
) -> tuple[dict, dict | None]:
    """Compute the missing parts `todo` ({part file: (pairs, windows)}) and, with cfg.hidden, the
    error projections on Ray. Returns what the manifest records and the projections' summary."""
    assert cfg.ray is not None  # the ablate stage comes here only with --ray
    device = cfg.device or (run.load().config or {}).get("device", "cpu")
    gpu = str(device).startswith("cuda")
    with ray_cluster(cfg.ray, run.path) as ray:
        n = worker_count(ray, cfg.ray_workers, gpu)
        actor = ray.remote(AblateWorker).options(
            num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=0, scheduling_strategy="SPREAD"
        )
        # one torch thread per actor, deliberately: an actor reserves one CPU (num_cpus=1)
        make = lambda: actor.remote(str(run.path), cfg.device, 1)  # noqa: E731
        alive = dispatch(
            ray,
            make,
            n,
            list(todo),
            lambda a, path: a.part.remote(*todo[path], threshold, cfg.batch_rows, str(path)),
            lambda path, _: advance(),
        )
        hidden = ray.get((alive[0] if alive else make()).hidden.remote(cfg, threshold)) if cfg.hidden else None
        return {"address": cfg.ray, "workers": min(n, len(todo)), "parts": len(todo)}, hidden
