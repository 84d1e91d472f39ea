"""Recovery of planted lineage under noise: precision / recall of AND, OR and splits, lifecycle
accuracy and decoys reported, per noise level, for the evidence test (default) and the
reference's threshold rule, side by side; then, per noise model and level, the full precision /
recall table (AND, OR, splits, lifecycle classes new / ending / dead, decoys reported as gates).

    python benchmarks/bench_planted.py [--seeds 0 1 2] [--levels 0 0.02 0.05 0.1]
        [--models flips swap density correlated] [--json results.json]

Noise models (saelineage.testing.noise_models): flips (the default, and the first table's):
a share r of each feature's activations dropped, as many spurious ones added, and value jitter
(× exp(N(0, r))); swap: exactly a share r of every feature's activations moved to tokens where
it was inactive; density: removals as swap, spurious share r·p/p̄ growing with the feature's
density p; correlated: a share r of tokens corrupted in every layer and feature at once (each
layer's code row replaced by another token's). See saelineage.testing.noisy_lineage for the design.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from saelineage.lineage.config import AnalyzeConfig
from saelineage.lineage.stage import run_analyze
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
from saelineage.testing.noise_models import NOISE_MODELS
from saelineage.testing.noisy_lineage import build_noisy_run, recovery

COLUMNS = ("and_precision", "and_recall", "or_precision", "or_recall", "split_precision", "split_recall",
           "lifecycle_correct", "decoy_gates")  # fmt: skip
PR = ("and", "or", "split", "new", "ending", "dead")
"""The full table's precision / recall pairs (recovery's `{name}_precision`, `{name}_recall`)."""


def measure(
    model: str, level: float, seed: int, cfgs: dict[str, AnalyzeConfig], root: Path
) -> dict[str, dict[str, float]]:
    """recovery() of one planted run (noise `model` at `level`, `seed`) under each analysis config."""
    run, truth = build_noisy_run(root / f"{model}-{level}-{seed}", seed=seed, noise=model, level=level)
    run_stats(run.path, StatsConfig(), progress=False)
    out = {}
    for name, cfg in cfgs.items():
        run_analyze(run.path, cfg, force=True, progress=False)
        out[name] = recovery(run, truth)
    return out


def mean_cell(results: list[dict[str, float]], key: str) -> str:
    return f"{np.mean([r[key] for r in results]):.2f}"


def legacy_table(res: dict[tuple[str, float, int], dict[str, dict[str, float]]], seeds, levels, cfgs) -> Table:
    """The flips model's table, evidence and threshold test side by side (the benchmark's first table)."""
    table = Table(title=f"planted lineage recovery (mean over seeds {seeds}; decoys: total)")
    table.add_column("noise")
    table.add_column("test")
    for c in COLUMNS:
        table.add_column(c.replace("_precision", " P").replace("_recall", " R").replace("_", " "), justify="right")
    for level in levels:
        for name in cfgs:
            rows = [res[("flips", level, s)][name] for s in seeds]
            table.add_row(
                f"{level:.0%}",
                name,
                *[f"{np.sum([r[c] for r in rows]):.0f}" if c == "decoy_gates" else mean_cell(rows, c) for c in COLUMNS],
            )
    return table


def full_table(res: dict[tuple[str, float, int], dict[str, dict[str, float]]], seeds, levels, models) -> Table:
    """Per noise model and level, the evidence test's precision / recall of every relation and class."""
    table = Table(title=f"planted lineage recovery per noise model, evidence test (P / R, mean over seeds {seeds})")
    table.add_column("model")
    table.add_column("noise")
    for name in PR:
        table.add_column(f"{name} P / R", justify="right")
    table.add_column("lifecycle correct", justify="right")
    table.add_column("decoys as gates", justify="right")
    for model in models:
        for level in levels:
            rows = [res[(model, level, s)]["evidence"] for s in seeds]
            table.add_row(
                model,
                f"{level:.0%}",
                *[f"{mean_cell(rows, f'{n}_precision')} / {mean_cell(rows, f'{n}_recall')}" for n in PR],
                mean_cell(rows, "lifecycle_correct"),
                f"{np.sum([r['decoy_gates'] for r in rows]):.0f}",
            )
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    ap.add_argument("--models", nargs="+", default=list(NOISE_MODELS), choices=NOISE_MODELS)
    ap.add_argument("--json", type=Path, help="also write every run's recovery (per seed) to this file")
    args = ap.parse_args()
    evidence = {"evidence": AnalyzeConfig()}
    both = {**evidence, "threshold": AnalyzeConfig(gate_test="threshold")}
    res: dict[tuple[str, float, int], dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for level in args.levels:
                for s in args.seeds:
                    if level == 0 and model != args.models[0]:  # no noise: one run serves every model
                        res[(model, level, s)] = res[(args.models[0], level, s)]
                        continue
                    res[(model, level, s)] = measure(model, level, s, both if model == "flips" else evidence, Path(tmp))
    console = Console(width=max(Console().width, 160))
    if "flips" in args.models:
        console.print(legacy_table(res, args.seeds, args.levels, both))
    console.print(full_table(res, args.seeds, args.levels, args.models))
    if args.json:
        rows = [{"model": m, "level": lv, "seed": s, "test": t, **r}
                for (m, lv, s), by_test in res.items() for t, r in by_test.items()]  # fmt: skip
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
