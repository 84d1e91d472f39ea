"""The `ablate` stage on a run directory: sample edges, ablate, correlate, plot, error projections.

Reads manifest.json, edges.parquet, features.parquet (+ analyze's lifecycle) and the activation
store; writes ablations.parquet (one row per sampled (measure, pair)), ablations.html and its
per-feature table error_projection.parquet (readers join it with feature_table.read_features).
Work is saved per block of upstream layers under .ablate-parts/, so an interrupted stage resumes
and ends with the same files.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from saelineage import contract
from saelineage.causal.ablate import EFFECT_COLUMNS
from saelineage.causal.config import AblateConfig
from saelineage.causal.report import correlations, print_correlations, write_plot
from saelineage.causal.sampling import sample_edges, unique_pairs
from saelineage.causal.window_choice import (
    active_windows,
    choose,
    window_rank,
)
from saelineage.causal.work import PART_COUNTS, PART_INFO, ablate_part, error_projections
from saelineage.errors import SaelineageError
from saelineage.progress import progress as make_progress
from saelineage.run import (
    RunDir,
    StageResult,
    config_hash,
    identity,
    identity_of,
    read_parquet,
    settle,
    write_parquet,
    writes_run,
)


@writes_run("ablate")
def run_ablate(
    run_dir: str | Path | RunDir,
    cfg: AblateConfig | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    model=None,
) -> StageResult:
    """Sample edges, ablate their upstream features, measure the downstream drop; `model` = a preloaded
    RunModel. summary: the correlations (ablations.parquet holds the table, `StageResult.read`)."""
    t_start = time.perf_counter()
    cfg = cfg or AblateConfig()
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    manifest = run.require("stats")
    prev = manifest.stage("ablate")
    complete = prev.get("status") == "complete" and run.file(contract.ABLATIONS).is_file()
    ident = identity(cfg)
    recorded = identity_of(AblateConfig, prev.get("config") or {}) if complete else None
    if settle(run, "ablate", ident, recorded, complete=complete, force=force, progress=progress):
        corr = prev.get("correlations", [])
        if progress:
            print_correlations(corr)
        return StageResult.since(t_start, "ablate", run, skipped=True, summary={"correlations": corr})
    tc = [l for l in manifest.layers if "transcoder" in str((manifest.saes.get(l) or {}).get("saelens_architecture"))]
    if tc:
        raise SaelineageError(
            f"the run's SAEs of layers {tc} are transcoders: a latent writes "
            f"{manifest.saes[tc[0]].get('hook_name_out')}, not the site it reads, so removing it there is not "
            "the ablation it needs.",
            "ablate runs on SAEs (residual, attention or MLP outputs); stats and analyze work on transcoder runs.",
        )
    threshold = float(cfg.threshold if cfg.threshold is not None else manifest.thresholds.get("active", 0.0))
    edges = read_parquet(run.file(contract.EDGES))
    sample = sample_edges(edges, cfg.measures, cfg.bins, cfg.per_bin, cfg.seed, cfg.binning, cfg.layer_pairs)
    if sample.num_rows == 0:
        raise SaelineageError(
            "edges.parquet has no edges to sample for the chosen measures and layer pairs.",
            "lower stats thresholds, or choose other --measures / --layer-pairs.",
        )
    pairs, inverse = unique_pairs(sample)
    key = config_hash(
        {
            "cfg": ident,
            "threshold": threshold,
            "pairs": pairs.tolist(),
            "collect": manifest.config_hash,
            "stats": manifest.stage("stats").get("started"),
        }
    )
    if force:
        shutil.rmtree(run.file(contract.ABLATE_PARTS), ignore_errors=True)
    with run.stage("ablate", config=asdict(cfg)) as info:
        # windows per downstream feature (shared by every pair that ends in it)
        wanted: dict[int, list[int]] = {}
        for _, _, m, j in pairs.tolist():
            wanted.setdefault(m, []).append(j)
        act = active_windows(run, {m: np.asarray(v) for m, v in wanted.items()}, threshold)
        rank = window_rank(manifest.n_windows, cfg.seed)
        pw = [choose(act[(int(m), int(j))], cfg.windows_per_pair, rank) for _, _, m, j in pairs]
        parts_dir = run.file(contract.ABLATE_PARTS)
        parts_dir.mkdir(exist_ok=True)
        layers = sorted(set(pairs[:, 0].tolist()))
        blocks = [layers[i : i + cfg.layers_per_part] for i in range(0, len(layers), cfg.layers_per_part)]
        jobs = {}
        for block in blocks:
            sel = np.flatnonzero(np.isin(pairs[:, 0], block))
            jobs[parts_dir / f"l{block[0]}-{block[-1]}-{key}.parquet"] = (pairs[sel], [pw[p] for p in sel])
        todo = {path: job for path, job in jobs.items() if not path.is_file()}
        rm, hidden = model, None
        with make_progress(transient=not progress) as bar:
            task = bar.add_task("ablate", total=len(blocks), completed=len(blocks) - len(todo), rate="")
            if cfg.ray:
                from saelineage.causal.ray import ablate_on_ray

                info["ray"], hidden = ablate_on_ray(run, cfg, threshold, todo, lambda: bar.advance(task))
            else:
                if rm is None and (todo or cfg.hidden):
                    from saelineage.run_model import load_run_model

                    rm = load_run_model(run, device=cfg.device)
                for path, (block_pairs, block_windows) in todo.items():
                    ablate_part(run, rm, block_pairs, block_windows, threshold, cfg.batch_rows, path)
                    bar.advance(task)
        results, stats = [], dict.fromkeys(PART_COUNTS, 0)
        for path in jobs:
            done = read_parquet(path)
            # the part's own pass counts, so a resumed run records the same totals
            counted = json.loads((done.schema.metadata or {}).get(PART_INFO.encode(), b"{}"))
            for k in stats:
                stats[k] += int(counted.get(k, 0))
            results.append(done.replace_schema_metadata(None))
        effects = pa.concat_tables(results)
        table = _join(sample, pairs, inverse, effects)
        write_parquet(run.file(contract.ABLATIONS), table)
        corr = correlations(table)
        info.update(
            n_rows=table.num_rows,
            n_pairs=int(len(pairs)),
            threshold=threshold,
            correlations=corr,
            **{f"{k}": v for k, v in stats.items()},
        )
        if cfg.plot:
            write_plot(table, run.file(contract.ABLATIONS_HTML), f"Ablation effect vs similarity — {run.path.name}")
        if cfg.hidden:
            info["error_projection"] = hidden if cfg.ray else error_projections(run, rm, cfg, threshold)
        shutil.rmtree(parts_dir, ignore_errors=True)
    if progress:
        print_correlations(corr)
    return StageResult.since(t_start, "ablate", run, skipped=False, summary={"correlations": corr})


def _join(sample: pa.Table, pairs: np.ndarray, inverse: np.ndarray, effects: pa.Table) -> pa.Table:
    """Sample rows + the effect of their pair, matched on the full (src_layer, src, dst_layer, dst) key."""
    ekey = np.stack(
        [effects.column(c).to_numpy().astype(np.int64) for c in ("src_layer", "src", "dst_layer", "dst")], 1
    )
    index = {tuple(r): k for k, r in enumerate(ekey.tolist())}
    if len(index) != effects.num_rows:
        raise RuntimeError("ablation results hold a pair twice")
    missing = [tuple(p) for p in pairs.tolist() if tuple(p) not in index]
    if missing:
        raise RuntimeError(f"ablation results miss sampled pairs, e.g. {missing[:3]}")
    at = np.array([index[tuple(p)] for p in pairs.tolist()], np.int64)
    take = pa.array(at[inverse])
    cols = {c: sample.column(c) for c in sample.column_names}
    for c in EFFECT_COLUMNS:
        cols[c] = effects.column(c).take(take)
    return pa.table(cols)


def demo_ablation(
    run_dir: str | Path,
    layer_pairs: Sequence[tuple[int, int]] | None = None,
    max_layer_pairs: int = 3,
    model=None,
    force: bool = False,
) -> list[dict]:
    """The demo's small sample: 5 bins x 4 pairs per measure on up to `max_layer_pairs` layer pairs spread
    over the depth, 4 windows per pair; prints the correlations and returns them."""
    run = RunDir(run_dir)
    run.require("stats")
    if layer_pairs is None:
        edges = read_parquet(run.file(contract.EDGES), columns=["src_layer", "dst_layer"])
        lp = sorted(set(zip(edges.column("src_layer").to_pylist(), edges.column("dst_layer").to_pylist())))
        lp = [p for p in lp if p[1] - p[0] == min(b - a for a, b in lp)] if lp else lp
        pick: np.ndarray | list[int] = (
            np.unique(np.linspace(0, len(lp) - 1, min(max_layer_pairs, len(lp))).round().astype(int)) if lp else []
        )
        layer_pairs = [lp[i] for i in pick]
    cfg = AblateConfig(
        measures=None,
        bins=5,
        per_bin=4,
        windows_per_pair=4,
        layer_pairs=list(layer_pairs),
        hidden_windows=64,
        hidden_windows_per_feature=1,
    )
    table = run_ablate(run, cfg, model=model, progress=False, force=force).read(contract.ABLATIONS)
    rows = correlations(table)
    print_correlations(rows)
    return rows
