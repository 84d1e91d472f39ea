"""The units of the ablate stage's work, run by one process or by Ray actors alike (the same code
gives the same bytes): one part of the ablation, and the error projections of ending features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from saelineage import contract
from saelineage.causal.ablate import ablate_pairs
from saelineage.causal.config import AblateConfig
from saelineage.causal.error_projection import ending_features, project_errors
from saelineage.causal.window_choice import active_windows, choose, load_windows, load_windows_with_codes, window_rank
from saelineage.progress import console
from saelineage.run import RunDir, write_parquet

PART_INFO = "saelineage.ablate_counts"
"""Schema metadata key of a part file: the part's pass counts (JSON)."""
PART_COUNTS = ("forward_passes", "rows", "jobs_pruned")


def ablate_part(
    run: RunDir,
    rm,
    pairs: np.ndarray,
    windows: list[np.ndarray],
    threshold: float,
    batch_rows: int,
    path: Path,
) -> None:
    """Ablate one part: `pairs` int [P, 4] (src_layer, src, dst_layer, dst) on their chosen
    `windows` (global indices, one array per pair); write the effects to `path` atomically with
    the part's pass counts in its metadata. One process or a Ray worker: same code, same bytes."""
    wins = np.unique(np.concatenate(windows))
    keep: dict[int, list[int]] = {}
    for l, f, m, j in pairs.tolist():
        keep.setdefault(l, []).append(f)
        keep.setdefault(m, []).append(j)
    ids, mask, stored = load_windows_with_codes(run, wins, {l: np.asarray(v) for l, v in keep.items()})
    local = [np.searchsorted(wins, w) for w in windows]
    res = ablate_pairs(rm.adapter, rm.saes, ids, pairs, local, mask, threshold, batch_rows, stored=stored)
    counted = {k: int(res.info.get(k, 0)) for k in PART_COUNTS}
    write_parquet(path, res.table.replace_schema_metadata({PART_INFO: json.dumps(counted)}))


def error_projections(run: RunDir, rm, cfg: AblateConfig, threshold: float) -> dict:
    """Error projections of ending features; writes error_projection.parquet."""
    feats, note = ending_features(run, cfg.ending_measure, cfg.ending_threshold)
    console.print(f"hidden in the error: {note}.")
    layers = sorted(run.load().layers)
    nxt = dict(zip(layers[:-1], layers[1:]))
    if cfg.layer_pairs:
        keep = {a for a, _ in cfg.layer_pairs}
        feats = {l: f for l, f in feats.items() if l in keep}
    feats = {l: f for l, f in feats.items() if len(f)}
    if not feats:
        console.print("hidden in the error: no ending features; nothing to project.")
        return {"note": note, "n_features": 0}
    act = active_windows(run, feats, threshold)
    rank = window_rank(run.load().n_windows, cfg.seed)
    chosen = {lf: choose(w, cfg.hidden_windows_per_feature, rank) for lf, w in act.items()}
    wins = _cover(chosen, cfg.hidden_windows, cfg.seed)
    ids, mask = load_windows(run, wins)
    proj = project_errors(rm.adapter, rm.saes, ids, mask, feats, nxt, threshold, cfg.batch_rows)
    write_parquet(run.file(contract.ERROR_PROJECTION), proj)
    rel = np.asarray(proj.column("error_proj_rel").to_pylist(), dtype=float)
    base = np.asarray(proj.column("error_proj_base").to_pylist(), dtype=float)
    ok = np.isfinite(rel)
    summary = {
        "note": note,
        "n_features": proj.num_rows,
        "n_windows": int(len(wins)),
        "n_measured": int(ok.sum()),
        "median_error_proj_rel": float(np.median(rel[ok])) if ok.any() else None,
        "median_error_proj_base": float(np.nanmedian(base)) if np.isfinite(base).any() else None,
    }
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    console.print(
        f"hidden in the error: {summary['n_measured']:,} features without a successor measured; median share "
        f"of their write found in the next SAE's error: {fmt(summary['median_error_proj_rel'])} (median "
        f"projection on tokens where they are off: {fmt(summary['median_error_proj_base'])})"
    )
    return summary


def _cover(chosen: dict[tuple[int, int], np.ndarray], cap: int, seed: int) -> np.ndarray:
    """At most `cap` windows, taken round-robin over features in a seeded order (each feature gets
    its first window before any gets a second)."""
    keys = sorted(chosen)
    order = np.random.default_rng(seed).permutation(len(keys))
    out: list[int] = []
    seen: set[int] = set()
    depth = max((len(v) for v in chosen.values()), default=0)
    for r in range(depth):
        for k in order:
            w = chosen[keys[k]]
            if r < len(w) and int(w[r]) not in seen:
                if len(out) >= cap:
                    return np.sort(np.asarray(out, np.int64))
                seen.add(int(w[r]))
                out.append(int(w[r]))
    return np.sort(np.asarray(out, np.int64))
