"""The ceiling stage: encode the run's first windows with a second SAE set (e.g. another seed) and
match every feature of the run's SAE to its best partner in the second one, on the same tokens.

Writes seed_ceiling.parquet — one row per (layer, feature) of the measured layers: `live` (active
on these tokens), and per data measure the best partner's value and id — and records per-layer
match rates in the manifest. analyze reads the file when present: each layer's lifecycle is shown
beside its ceiling, pass-through is also given ceiling-normalised, and an ending feature without a
same-layer partner is labelled *unstable*.

The second set's codes are collected with the run's own collect configuration (same model, corpus,
windows, preprocessing) into RUN/.ceiling-codes, which is resumable and removed when done.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from saelineage import contract
from saelineage.ceiling.config import CeilingConfig
from saelineage.ceiling.match import MATCH_MEASURES, best_matches, match_rate
from saelineage.data.store import iter_shards, token_mask
from saelineage.errors import SaelineageError
from saelineage.progress import console
from saelineage.run import RunDir, StageResult, identity, settle, write_parquet, writes_run

THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
"""Thresholds at which the manifest records match rates (the file holds the values themselves)."""


def codes_csr(run: RunDir, layer: int, d_sae: int, n_windows: int, bos: bool, include_bos: bool) -> sp.csr_matrix:
    """The run's codes of `layer` on its first `n_windows` windows, counted tokens only: csr [T, d_sae]."""
    parts = []
    for shard in iter_shards(run, [layer]):
        keep = token_mask(shard.pos, bos, include_bos) & (np.asarray(shard.window) < n_windows)
        if keep.any():
            parts.append(shard.codes[layer].csr(d_sae)[np.nonzero(keep)[0]])
        if int(np.max(shard.window)) >= n_windows - 1:
            break
    if not parts:
        return sp.csr_matrix((0, d_sae))
    return sp.vstack(parts).tocsr()


def ceiling_table(layer: int, best: dict[str, tuple[np.ndarray, np.ndarray]], live: np.ndarray) -> pa.Table:
    """seed_ceiling.parquet rows of one layer (contract.CEILING_COLUMNS order)."""
    d = len(live)
    cols = {"layer": pa.array(np.full(d, layer, np.int64)), "feature": pa.array(np.arange(d, dtype=np.int64)),
            "live": pa.array(live)}  # fmt: skip
    for m in MATCH_MEASURES:
        cols[f"best_{m}"] = pa.array(best[m][0], pa.float64())
        cols[f"best_{m}_id"] = pa.array(best[m][1], pa.int64())
    return pa.table(cols)


@writes_run("ceiling")
def run_ceiling(run_dir: str | Path, cfg: CeilingConfig, *, force: bool = False, progress: bool = True) -> StageResult:
    """Measure the seed ceiling of the layers `cfg.saes` covers (module doc); summary: `rates`,
    {layer: {measure: {threshold: rate}}}."""
    t_start = time.perf_counter()
    from saelineage.collect.config import CollectConfig
    from saelineage.collect.stage import run_collect
    from saelineage.config import config_from_dict
    from saelineage.saes.resolve import is_folder

    run = RunDir(run_dir)
    manifest = run.require("collect")
    release = (manifest.config or {}).get("saes")
    if not cfg.saes and release and not is_folder(release):
        cfg = replace(cfg, saes=release)  # a run of a release: its published second seed
    if not cfg.saes:
        raise SaelineageError("no second SAE set given.", "pass --saes FOLDER (e.g. from `saelineage train --seed 1`).")
    if cfg.tokens < manifest.window:
        raise SaelineageError(f"--tokens {cfg.tokens} is less than one window.", "use e.g. --tokens 50000.")
    if manifest.config is None:
        raise SaelineageError(
            f"run {run.path} was not made by `saelineage collect` (no model or corpus is recorded).",
            "the ceiling re-runs the model: measure it on a run made by collect.",
        )
    options = identity(cfg)
    prev = manifest.stage("ceiling")
    done = prev.get("status") == "complete" and run.file(contract.SEED_CEILING).is_file()
    if settle(run, "ceiling", options, prev.get("options") if done else None, complete=done, force=force,
              progress=progress):  # fmt: skip
        rates = {int(l): r for l, r in prev.get("rates", {}).items()}
        return StageResult.since(t_start, "ceiling", run, skipped=True, summary={"rates": rates})
    base = config_from_dict(CollectConfig, manifest.config)
    work = run.path / contract.CEILING_CODES
    twin_layers, twin_template = (None, None) if is_folder(cfg.saes) else _second_seed(manifest, cfg)
    second = replace(base, saes=cfg.saes, layers=twin_layers, sae_id=twin_template,
                     width=None, l0=None, max_tokens=cfg.tokens, batch_windows=cfg.batch_windows,
                     shard_windows=cfg.batch_windows * max(1, base.shard_windows // cfg.batch_windows),
                     examples_k=1)  # fmt: skip
    with run.stage("ceiling", options=options) as info:
        other = run_collect(work, second, progress=progress).run.load()
        layers = [l for l in other.layers if l in manifest.layers]
        if not layers:
            raise SaelineageError(
                f"the SAE set {cfg.saes} covers layers {other.layers}, none of the run's {manifest.layers}.",
                "train the second set on some of the run's hooks (saelineage train --hooks ...).",
            )
        include_bos = manifest.include_bos
        tables, rates = [], {}
        for l in layers:
            if other.d_sae[l] <= 0:
                continue
            a = codes_csr(run, l, manifest.d_sae[l], other.n_windows, manifest.bos, include_bos)
            b = codes_csr(RunDir(work), l, other.d_sae[l], other.n_windows, other.bos, include_bos)
            if a.shape[0] != b.shape[0]:
                raise SaelineageError(
                    f"layer {l}: the run has {a.shape[0]} tokens in its first {other.n_windows} windows, the second "
                    f"set's codes {b.shape[0]}.",
                    f"delete {work} and run the ceiling again.",
                )
            best = best_matches(a, b)
            live = np.asarray((a > 0).sum(0)).ravel() > 0
            tables.append(ceiling_table(l, best, live))
            rates[l] = {m: {str(t): match_rate(best[m][0], live, t) for t in THRESHOLDS} for m in MATCH_MEASURES}
            if progress:
                console.print(f"ceiling: layer {l}: {100 * rates[l]['pearson']['0.5']:.1f}% of live features have a "
                              "same-layer partner at pearson ≥ 0.5")  # fmt: skip
        write_parquet(run.file(contract.SEED_CEILING), pa.concat_tables(tables))
        info.update(rates={str(l): r for l, r in rates.items()}, tokens=other.n_tokens, layers=layers,
                    second_saes={str(l): other.saes[l] for l in layers})  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return StageResult.since(t_start, "ceiling", run, skipped=False, summary={"rates": rates})


def _second_seed(manifest, cfg: CeilingConfig) -> tuple[list[int], str]:
    """(layers, id template) of the release's second-seed twins of the run's SAEs (or of `cfg.sae_id`)."""
    from saelineage.saes import catalog
    from saelineage.saes.catalog import ReleaseChoice
    from saelineage.saes.resolve import release_ids

    release = catalog.get_release(cfg.saes)
    if cfg.sae_id is not None:
        ids = release_ids(cfg.saes, None, ReleaseChoice(sae_id=cfg.sae_id))
    else:
        given = {l: (manifest.saes.get(l) or {}).get("sae_id") for l in manifest.layers}
        ids = {l: i for l, i in given.items() if i and (manifest.saes[l].get("release") == cfg.saes)}
    twins = {}
    for l, sid in ids.items():
        twin = catalog.seed_twin(release, sid)
        if twin is not None and l in manifest.layers:
            twins[l] = twin
    if not twins:
        raise SaelineageError(
            f"release '{cfg.saes}' has no second-seed twin of the run's SAEs ({', '.join(map(str, ids.values()))}).",
            "pass --sae-id naming SAEs that have a `…_seed_1` twin (`saelineage releases` shows which releases "
            "have a second seed), or --saes FOLDER with a second training of your own.",
        )
    templates = {release.by_id[t].template for t in twins.values()}
    if len(templates) != 1:
        raise SaelineageError(
            f"the second-seed twins of release '{cfg.saes}' follow several id patterns: {sorted(templates)}.",
            "pass --sae-id with one of them.",
        )
    return sorted(twins), templates.pop()
