"""Recovery of planted lineage under noise: precision / recall of AND, OR and splits, lifecycle
accuracy and decoys reported, per noise level, for the evidence test (default) and the
reference's threshold rule, side by side.

    python benchmarks/bench_planted.py [--seeds 0 1 2] [--levels 0 0.02 0.05 0.1]

Noise at level r: flips (a share r of each feature's activations dropped, as many spurious ones
added) and value jitter (× exp(N(0, r))). See saelineage.testing.noisy_lineage for the design.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from saelineage.lineage.config import AnalyzeConfig
from saelineage.lineage.stage import run_analyze
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
from saelineage.testing.noisy_lineage import build_noisy_run, recovery

COLUMNS = ("and_precision", "and_recall", "or_precision", "or_recall", "split_precision", "split_recall",
           "lifecycle_correct", "decoy_gates")  # fmt: skip


def measure(level: float, seed: int, cfgs: dict[str, AnalyzeConfig], root: Path) -> dict[str, dict[str, float]]:
    run, truth = build_noisy_run(root / f"r{level}-{seed}", flip=level, jitter=level, seed=seed)
    run_stats(run.path, StatsConfig(), progress=False)
    out = {}
    for name, cfg in cfgs.items():
        run_analyze(run.path, cfg, force=True, progress=False)
        out[name] = recovery(run, truth)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    args = ap.parse_args()
    cfgs = {"evidence": AnalyzeConfig(), "threshold": AnalyzeConfig(gate_test="threshold")}
    table = Table(title=f"planted lineage recovery (mean over seeds {args.seeds}; decoys: total)")
    table.add_column("noise")
    table.add_column("test")
    for c in COLUMNS:
        table.add_column(c.replace("_precision", " P").replace("_recall", " R").replace("_", " "), justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels:
            res = [measure(level, s, cfgs, Path(tmp)) for s in args.seeds]
            for name in cfgs:
                vals = {c: [r[name][c] for r in res] for c in COLUMNS}
                table.add_row(
                    f"{level:.0%}",
                    name,
                    *[f"{np.sum(v):.0f}" if c == "decoy_gates" else f"{np.mean(v):.2f}" for c, v in vals.items()],
                )
    Console().print(table)


if __name__ == "__main__":
    main()
