"""The stats stage: options, checks, the pass, outputs, manifest (docs/design.md).

Restart rule: outputs are written atomically and the stage is marked complete only after
all of them exist. A run whose stats stage is not complete (interrupted, failed) starts
over: its old outputs are deleted first, so no file from an earlier attempt is ever taken
for a result of this one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np
import psutil

from saelineage import contract
from saelineage.data.store import collected_shards
from saelineage.errors import SaelineageError
from saelineage.progress import progress as make_progress
from saelineage.run import RunDir, StageResult, identity, read_parquet, settle, write_json, write_parquet, writes_run
from saelineage.stats.config import StatsConfig
from saelineage.stats.edges import EdgeOptions
from saelineage.stats.engine import Budget, Layout, Pair, plan_run, run_passes
from saelineage.stats.measures import MAX_TOKENS, side
from saelineage.stats.outputs import feature_links, pair_summary, write_edges
from saelineage.stats.sae_match import METHODS, Match, agreement, fold, match_bytes, match_layers

OUTPUTS = (contract.EDGES, contract.FEATURE_LINKS, contract.STATS_SUMMARY)


def default_memory_limit() -> int:
    """70% of the RAM available now (psutil's `available`: free memory plus what the page cache
    can give back), leaving room for other processes that share the machine. The README's
    figures were measured with `--memory-limit 8G`."""
    return int(0.7 * psutil.virtual_memory().available)


def _thresholds(run: RunDir, layers, d, opts) -> dict[int, np.ndarray]:
    if opts["relative_threshold"] is None:
        return {l: np.full(d[l], opts["threshold"]) for l in layers}
    path = run.file(contract.FEATURES)
    if not path.is_file():
        from saelineage.hints import recollect

        raise SaelineageError(
            f"{path} is missing; a relative threshold needs each feature's max activation.",
            f"{recollect(run.path)}: collect writes features.parquet.",
        )
    t = read_parquet(path, columns=["layer", "feature", "act_max"])
    lay, feat, mx_all = (t.column(c).to_numpy() for c in ("layer", "feature", "act_max"))
    out = {}
    for l in layers:
        mx = np.zeros(d[l])
        sel = lay == l
        mx[feat[sel]] = mx_all[sel]
        out[l] = opts["relative_threshold"] * mx
    return out


class _Decoders:
    """Decoder rows per layer, loaded on demand (two kept), checked against d_sae; JumpReLU
    thresholds per layer (for the data-free match's folding)."""

    def __init__(
        self,
        run: RunDir,
        d: dict[int, int],
        given: Mapping[int, np.ndarray] | None,
        given_thresholds: Mapping[int, np.ndarray] | None = None,
    ):
        self.run, self.d, self.given = run, d, given
        self.cache: dict[int, np.ndarray | None] = {}
        self.given_thresholds = given_thresholds
        self.available: dict[int, bool] = {}
        self.thresholds: dict[int, np.ndarray | None] = {}

    def threshold(self, layer: int) -> np.ndarray | None:
        """float64 [d_sae] JumpReLU thresholds, None for SAEs without (TopK, ReLU) or unknown."""
        if layer not in self.thresholds:
            if self.given is not None:
                th = (self.given_thresholds or {}).get(layer)
            else:
                from saelineage.saes.run_weights import load_threshold

                th = load_threshold(self.run, layer)
            if th is not None:
                th = np.asarray(th, np.float64).reshape(-1)
                if th.shape[0] != self.d[layer]:
                    raise SaelineageError(
                        f"layer {layer} has {th.shape[0]} SAE thresholds for d_sae {self.d[layer]}.",
                        "thresholds are [d_sae] (one per feature).",
                    )
            self.thresholds[layer] = th
        return self.thresholds[layer]

    def missing(self, layers) -> list[int]:
        """Layers without decoder weights (loading those not seen yet)."""
        return [l for l in layers if not self.available.get(l, self(l) is not None)]

    def __call__(self, layer: int):
        if layer not in self.cache:
            if self.given is not None:
                w = self.given.get(layer)
            else:
                from saelineage.saes.run_weights import load_decoder

                w = load_decoder(self.run, layer)
            if w is not None:
                w = np.ascontiguousarray(np.asarray(w), np.float32)
                if w.ndim != 2 or w.shape[0] != self.d[layer]:
                    raise SaelineageError(
                        f"decoder of layer {layer} has shape {w.shape}; expected [{self.d[layer]}, d_in].",
                        "decoders are [d_sae, d_in] (W_dec).",
                    )
            if len(self.cache) >= 2:
                self.cache.pop(next(iter(self.cache)))
            self.cache[layer] = w
            self.available[layer] = w is not None
        return self.cache[layer]


POOL_MIN_FEATURES = 1024
"""Match layer pairs in parallel processes (one per worker) from this many features on: an
assignment holds the GIL, and a process costs ~1 s to start."""


def _matches(
    pairs: list[Pair], dec: _Decoders, method: str, workers: int = 1, memory: int | None = None
) -> tuple[dict[int, Match], dict[int, str]]:
    """The data-free match of every span-1 pair whose layers both have decoder weights, and
    what was folded per layer ("threshold" or "none"; docs/design.md §5.12). Processes at once:
    at most `workers`, and no more than `memory` bytes hold (an exact match holds a dense
    float64 cost matrix, 4.8 GB at 24,576 latents, so all cores at once could exhaust RAM)."""
    out: dict[int, Match] = {}
    folded: dict[int, str] = {}
    if method == "off":
        return out, folded
    todo = [k for k, p in enumerate(pairs) if p.span == 1 and not dec.missing([p.src, p.dst])]
    pool = None
    smallest = min((min(dec.d[pairs[k].src], dec.d[pairs[k].dst]) for k in todo), default=0)
    n_proc = min(workers, len(todo)) if smallest >= POOL_MIN_FEATURES else 1
    if n_proc > 1 and memory is not None:
        d_in = dec(pairs[todo[0]].src).shape[1]
        need = max(match_bytes(dec.d[pairs[k].src], dec.d[pairs[k].dst], d_in, method) for k in todo)
        n_proc = max(1, min(n_proc, memory // need))
    if n_proc > 1:
        import multiprocessing

        # spawn, not fork: this process runs numba and BLAS threads
        pool = ProcessPoolExecutor(n_proc, mp_context=multiprocessing.get_context("spawn"))
    try:
        jobs = {}
        for k in todo:
            rows = []
            for l in (pairs[k].src, pairs[k].dst):
                th = dec.threshold(l)
                folded[l] = "none" if th is None else "threshold"
                rows.append(fold(dec(l), th))
            src_rows, dst_rows = rows
            if pool is None:
                out[k] = match_layers(src_rows, dst_rows, method)
                continue
            jobs[k] = pool.submit(match_layers, src_rows, dst_rows, method)
            del rows, src_rows, dst_rows
            if len([j for j in jobs.values() if not j.done()]) > n_proc:
                # bounded memory: a queued job holds two layers' folded rows
                wait([j for j in jobs.values() if not j.done()], return_when=FIRST_COMPLETED)
        out |= {k: j.result() for k, j in jobs.items()}
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return out, folded


def _match_summary(
    pairs: list[Pair], matches: dict[int, Match], links, folded: dict[int, str], method: str, missing: list[int]
) -> dict:
    """stats_summary.json's `sae_match` entry: options, note and the agreement per layer pair."""
    rows = []
    for k, p in enumerate(pairs):
        if p.span != 1:
            continue
        m = matches.get(k)
        row: dict[str, int | float | None] = {"src_layer": p.src, "dst_layer": p.dst}
        if m is None:
            row |= {"n_live": None, "n_matched": None, "agreement": None, "mean_similarity": None}
        else:
            sim = m.similarity[m.partner >= 0]
            row |= agreement(links, p.src, m.partner) | {"mean_similarity": float(sim.mean()) if len(sim) else None}
        rows.append(row)
    if method == "off":
        note = "no data-free match (--sae-match off)"
    elif missing:
        note = f"sae_match is NaN for pairs touching layers {missing}: no SAE decoder weights"
    else:
        note = "data-free match for every adjacent layer pair"
    return {"method": method, "folded": {str(l): f for l, f in sorted(folded.items())}, "note": note, "pairs": rows}


class StatsSetup(NamedTuple):
    run: RunDir
    opts: dict
    layout: Layout
    edge_opts: EdgeOptions


def stats_setup(run_dir: str | Path, cfg: StatsConfig) -> StatsSetup:
    """Check the run and the options; build the layout of the pass."""
    run = RunDir(run_dir)
    manifest = run.require("collect")
    if cfg.sae_match not in METHODS:  # its choices live with the match (the config's checks are in the config)
        raise SaelineageError(f"unknown --sae-match {cfg.sae_match!r}.", f"choose one of {', '.join(METHODS)}.")
    opts = identity(cfg)
    span = cfg.span
    layers = sorted(manifest.layers)
    d = {l: manifest.d_sae[l] for l in layers}
    if len(layers) < 2:
        raise SaelineageError(
            f"run {run.path} has {len(layers)} layer(s); stats needs at least two.",
            "collect codes for two or more layers.",
        )
    if span > len(layers) - 1:
        raise SaelineageError(
            f"--span {span} needs {span + 1} layers; run has {len(layers)} ({layers}).",
            f"use --span {len(layers) - 1} or less.",
        )
    shards = collected_shards(run)
    if not shards:
        raise SaelineageError(f"run {run.path} has no activation shards.", "run `saelineage collect RUN` first.")
    if manifest.n_tokens > MAX_TOKENS:
        raise SaelineageError(
            f"{manifest.n_tokens:,} tokens exceed the exact-arithmetic limit {MAX_TOKENS:,}.",
            "split the corpus into several runs.",
        )
    pairs = [
        Pair(layers[a], layers[a + s], s) for a in range(len(layers)) for s in range(1, span + 1) if a + s < len(layers)
    ]
    layout = Layout(
        shards,
        layers,
        d,
        pairs,
        _thresholds(run, layers, d, opts),
        manifest.bos,
        cfg.include_bos,
        cfg.relative_threshold is None and cfg.threshold == 0.0,
        manifest.n_tokens,
    )
    return StatsSetup(
        run, opts, layout, EdgeOptions(cfg.min_support, cfg.top_k, tuple(cfg.primary), cfg.keep_thresholds())
    )


def plan_stats(run_dir: str | Path, cfg: StatsConfig | None = None) -> Budget:
    """The passes `run_stats` would make under `cfg.memory_limit` (nothing is computed)."""
    cfg = cfg or StatsConfig()
    st = stats_setup(run_dir, cfg)
    limit = int(cfg.memory_limit or default_memory_limit())
    return plan_run(st.layout, st.edge_opts, limit, cfg.accumulate, cfg.threads())


@writes_run("stats")
def run_stats(
    run_dir: str | Path,
    cfg: StatsConfig | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    decoders: Mapping[int, np.ndarray] | None = None,
    thresholds: Mapping[int, np.ndarray] | None = None,
) -> StageResult:
    """Co-activation statistics of every layer pair (l, l+s), s = 1..cfg.span, in one pass.

    Writes edges.parquet, feature_links.parquet and stats_summary.json into the run and
    records the options in manifest ``stages.stats``; summary: n_tokens, pairs, edges, passes,
    increments, dec_cosine (False when some layer had no decoder weights: the column is NaN
    there), memory. decoders: {layer: [d_sae, d_in]} instead of the run's SAE weights (for
    dec_cosine and the data-free match); thresholds: {layer: [d_sae]} JumpReLU thresholds to
    fold with those decoders. An incomplete stage restarts from scratch (module doc).
    """
    cfg = cfg or StatsConfig()
    memory_limit, workers = cfg.memory_limit, cfg.threads()
    t_start = time.perf_counter()
    run, opts, layout, edge_opts = stats_setup(run_dir, cfg)
    layers, d, pairs, shards = layout.layers, layout.d, layout.pairs, layout.shards
    prev = run.load().stage("stats")
    done = prev.get("status") == "complete" and all(run.file(f).is_file() for f in OUTPUTS)
    if settle(run, "stats", opts, prev.get("options") if done else None, complete=done, force=force, progress=progress):
        return StageResult.since(t_start, "stats", run, skipped=True, summary=prev.get("summary", {}))
    dec = _Decoders(run, d, decoders, thresholds)
    manifest = run.load()
    manifest.stages["stats"] = {}  # drop what an earlier attempt recorded
    run.save(manifest)
    if force:
        shutil.rmtree(run.file(contract.STATS_PARTS), ignore_errors=True)
    with run.stage("stats", options=opts, config=asdict(cfg)) as info:
        for f in OUTPUTS:
            run.file(f).unlink(missing_ok=True)
        t_m = time.perf_counter()
        matches, folded = _matches(pairs, dec, opts["sae_match"], workers, int(memory_limit or default_memory_limit()))
        t_match = time.perf_counter() - t_m
        forced = {k: m.partner for k, m in matches.items()}
        with make_progress(transient=not progress) as bar:
            if cfg.ray:
                from saelineage.stats.ray import stats_on_ray

                task = bar.add_task("stats on Ray", total=None, rate="", visible=progress)

                def units_done(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total, rate=f"{done}/{total} units")

                acc, budget, info["ray"] = stats_on_ray(
                    run, cfg.ray, cfg.ray_workers, memory_limit, layout, edge_opts, opts, forced, units_done
                )
            else:
                budget = plan_run(
                    layout, edge_opts, int(memory_limit or default_memory_limit()), cfg.accumulate, workers
                )
                task = bar.add_task("stats", total=len(budget.passes) * len(shards), rate="", visible=progress)
                t0 = time.perf_counter()

                def tick(pass_no: int, n_sh: int, incr: int) -> None:
                    rate = incr / max(time.perf_counter() - t0, 1e-9)
                    bar.update(
                        task,
                        advance=n_sh,
                        rate=f"pass {pass_no + 1}/{len(budget.passes)}, {rate / 1e6:,.0f}M pairs/s",
                        description="stats",
                    )

                spill = run.file(contract.STATS_SPILL)
                shutil.rmtree(spill, ignore_errors=True)
                acc = run_passes(layout, budget, edge_opts, workers, tick if progress else None, forced, spill)
        if acc.n == 0:
            raise SaelineageError(
                "the token set is empty (every token is a BOS position?).", "use longer windows or --include-bos."
            )
        t_w = time.perf_counter()
        sides = {l: side(acc.n, acc.marginals[l]) for l in layers}
        n_edges, hists = write_edges(run.file(contract.EDGES), pairs, acc.results, acc.n, sides, dec, matches)
        links = feature_links(layers, d, pairs, acc.results, acc.n, acc.marginals, matches)
        write_parquet(run.file(contract.FEATURE_LINKS), links)
        missing = dec.missing(layers)
        summary = {
            "n_tokens": acc.n,
            "pairs": len(pairs),
            "edges": n_edges,
            "passes": len(budget.passes),
            "increments": acc.increments,
            "dec_cosine": not missing,
            "memory_limit": budget.limit,
            "batch_bytes": budget.batch_bytes,
            "accumulator_bytes": budget.accumulator_bytes(layout),
            "sparse_pairs": len(budget.caps),
        }
        timings = {k: round(v, 3) for k, v in acc.timings.items()} | {
            "census": round(budget.census_seconds, 3),
            "write": round(time.perf_counter() - t_w, 3),
            "sae_match": round(t_match, 3),
        }
        write_json(
            run.file(contract.STATS_SUMMARY),
            indent=1,
            obj={
                **summary,
                "options": opts,
                "timings": timings,
                "dec_cosine_note": (
                    "decoder cosine for every pair"
                    if not missing
                    else f"dec_cosine is NaN for pairs touching layers {missing}: no SAE decoder weights"
                ),
                "sae_match": _match_summary(pairs, matches, links, folded, opts["sae_match"], missing),
                "pairs_detail": [
                    pair_summary(p, r, d, hists.get(k)) for k, (p, r) in enumerate(zip(pairs, acc.results))
                ],
            },
        )
        # the kernels' threads: --workers (default: every usable CPU) within numba's pool
        threads = min(workers, int(numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]  # set at import
        info.update(summary=summary, timings=timings, dec_cosine_missing_layers=missing, threads=threads)
        shutil.rmtree(run.file(contract.STATS_PARTS), ignore_errors=True)
        shutil.rmtree(run.file(contract.STATS_SPILL), ignore_errors=True)
    return StageResult.since(t_start, "stats", run, skipped=False, summary=summary)
