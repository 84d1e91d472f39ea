"""`stats --ray`: each unit of the plan (layer pair × block of source rows) is a Ray task.

A task streams the shards it needs (its pair's two layers) under the per-worker memory limit,
accumulates its block exactly as a pass of the single-process engine does (per cell, additions
in global token order), scans it into a pair state of its own and saves that state into the run
(`.stats-parts/`, atomically). The driver merges each pair's block states in row order and
finishes the pair: the merge keeps, per column, the best under the same total order as the
single-process fold, so edges.parquet, feature_links.parquet and stats_summary.json's values are
identical to one process's. Ray retries a task whose worker or node died; a rerun skips the units
whose state is saved."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from saelineage import contract
from saelineage.cluster.session import RETRIES, dispatch, ray_cluster, worker_count
from saelineage.errors import SaelineageError
from saelineage.run import RunDir, atomic_write_bytes, config_hash
from saelineage.stats.batch import BufferPool
from saelineage.stats.edges import EdgeOptions, PairState
from saelineage.stats.engine import (
    Accumulated,
    Arena,
    Budget,
    Layout,
    Unit,
    accumulate_pass,
    new_marginals,
    new_timings,
    plan,
)
from saelineage.stats.measures import Marginals, side

WORKER_BASELINE = 512 << 20
"""Resident memory of a Ray worker before it allocates (interpreter, numba, Ray itself)."""

_ARENA = Arena()
"""This worker process's accumulators, kept from one task to the next (see engine.Arena)."""
_POOL = BufferPool()
"""This worker process's batch buffers, kept likewise (see batch.BufferPool)."""


def split_units(units: list[Unit], at_least: int) -> list[Unit]:
    """Halve the largest units until there are `at_least` (or every unit is one row): enough
    tasks to keep every worker busy. Blocking never changes results."""
    units = list(units)
    while len(units) < at_least:
        k = max(range(len(units)), key=lambda i: units[i].hi - units[i].lo)
        u = units[k]
        if u.hi - u.lo < 2:
            break
        mid = (u.lo + u.hi) // 2
        units[k : k + 1] = [Unit(u.pair, u.lo, mid), Unit(u.pair, mid, u.hi)]
    return sorted(units, key=lambda u: (u.pair, u.lo))


def part_path(folder: Path, u: Unit) -> Path:
    return folder / f"pair{u.pair:03d}-{u.lo:06d}-{u.hi:06d}.npz"


def run_unit(layout: Layout, budget: Budget, opts: EdgeOptions, u: Unit, forced: np.ndarray | None, out: str) -> dict:
    """One task: accumulate unit `u` over every shard, fold it into a fresh pair state, save the
    state and both layers' marginals to `out`. Returns the task's counts and timings."""
    import numba

    numba.set_num_threads(1)  # deliberate: a task reserves one CPU (num_cpus=1); the tasks are the parallelism
    t0 = time.perf_counter()
    p = layout.pairs[u.pair]
    fresh = {l: new_marginals(layout.d[l]) for l in sorted({p.src, p.dst})}
    tm = new_timings()
    done = accumulate_pass(layout, budget, [u], fresh, _POOL, tm, arena=_ARENA)
    block = done.acc.pop(u)
    t1 = time.perf_counter()
    st = PairState(layout.d[p.src], layout.d[p.dst], opts, p.span == 1, forced)
    n = done.n
    st.add_block(block, n, side(n, fresh[p.src]), side(n, fresh[p.dst]))
    del block
    arrays = st.block_arrays(u.lo, u.hi)
    for l, m in fresh.items():
        arrays |= {f"marg{l}.{f}": getattr(m, f) for f in Marginals._fields}
    tm["finalize"] += time.perf_counter() - t1
    arrays["info"] = np.array([n, done.increments], np.int64)
    arrays["timings"] = np.array([tm["read_prepare"], tm["accumulate"], tm["finalize"]])
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy stub: a key could be allow_pickle
    atomic_write_bytes(Path(out), buf.getvalue())
    return {"seconds": time.perf_counter() - t0}


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def stats_on_ray(
    run: RunDir,
    address: str,
    workers: int | None,
    memory_limit: int | None,
    layout: Layout,
    opts: EdgeOptions,
    options: dict,
    forced: Mapping[int, np.ndarray],
    on_unit: Callable[[int, int], None] | None = None,
) -> tuple[Accumulated, Budget, dict]:
    """Run the stats pass as Ray tasks; returns the merged result (as `run_passes` would), the
    per-worker plan, and what the manifest records. on_unit(done, total) after each unit."""
    with ray_cluster(address, run.path) as ray:
        n_workers = worker_count(ray, workers, False)
        if memory_limit is None:
            memory_limit = int(ray.available_resources().get("memory", 2 << 30) / n_workers)
        budget = plan(layout, opts, memory_limit, baseline=WORKER_BASELINE)
        units = split_units([u for p_ in budget.passes for u in p_], n_workers)
        key = config_hash({"options": options, "collect": run.load().config_hash, "tokens": layout.n_tokens_hint})
        folder = run.file(contract.STATS_PARTS) / key
        folder.mkdir(parents=True, exist_ok=True)
        todo = [u for u in units if not part_path(folder, u).is_file()]
        task = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(run_unit)
        layout_ref, budget_ref = ray.put(layout), ray.put(budget)
        finished = len(units) - len(todo)
        if on_unit:
            on_unit(finished, len(units))

        def submit(_slot: object, u: Unit):
            return task.remote(layout_ref, budget_ref, opts, u, forced.get(u.pair), str(part_path(folder, u)))

        def done(_u: Unit, _result: dict) -> None:
            nonlocal finished
            finished += 1
            if on_unit:
                on_unit(finished, len(units))

        # Tasks keep no state between units (the part files do), so a worker "slot" is only a
        # place in the pool: dispatch keeps n_workers tasks in flight and requeues a lost one.
        dispatch(ray, object, n_workers, todo, submit, done)
    acc = merge_units(layout, opts, units, folder)
    info = {"address": address, "workers": n_workers, "units": len(units), "units_resumed": len(units) - len(todo)}
    return acc, budget, info


def merge_units(layout: Layout, opts: EdgeOptions, units: list[Unit], folder: Path) -> Accumulated:
    """Each pair's block states merged in row order and finished; marginals and counts from the
    blocks (every block of a layer must agree: they read the same shards)."""
    d, pairs = layout.d, layout.pairs
    marg: dict[int, Marginals] = {}
    n_tokens, increments, tm = None, 0, new_timings()
    states: dict[int, PairState] = {}
    blocks: dict[int, list[dict]] = {}
    for u in units:
        arrays = _load(part_path(folder, u))
        n, incr = (int(v) for v in arrays.pop("info"))
        for name, v in zip(("read_prepare", "accumulate", "finalize"), arrays.pop("timings")):
            tm[name] += float(v)
        increments += incr
        if n_tokens is None:
            n_tokens = n
        elif n != n_tokens:
            raise SaelineageError("Ray tasks read different token counts.", "the shards changed: re-run stats --force.")
        p = pairs[u.pair]
        for l in (p.src, p.dst):
            m = Marginals(*(arrays.pop(f"marg{l}.{f}") for f in Marginals._fields))
            if l not in marg:
                marg[l] = m
            elif not all(np.array_equal(a, b) for a, b in zip(marg[l], m)):
                raise SaelineageError(f"Ray tasks disagree on layer {l}'s marginals.", "re-run stats --force.")
        blocks.setdefault(u.pair, []).append(arrays)
    t0 = time.perf_counter()
    results = []
    n = int(n_tokens or 0)
    for k, p in enumerate(pairs):
        st = states.setdefault(k, PairState(d[p.src], d[p.dst], opts, p.span == 1))
        for arrays in blocks.get(k, []):
            st.merge(arrays)
        if st.rows_done != d[p.src]:
            raise SaelineageError(f"layer pair {p.src}->{p.dst} lacks source rows after the Ray pass.", "re-run stats.")
        results.append(st.finish(n, side(n, marg[p.src]), side(n, marg[p.dst])))
    tm["finalize"] += time.perf_counter() - t0
    return Accumulated(n, marg, results, increments, tm)
