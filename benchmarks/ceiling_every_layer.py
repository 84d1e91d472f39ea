"""The seed ceiling of an embedded SAE preset on every layer, beside its lifecycle.

Trains the preset and the same set with a second seed from one activation cache (what
`saelineage train --preset NAME --also-seeds 1` does; cached sets are reused), collects the
held-out windows after the training text with the first set, runs stats, then `ceiling` against
the second set on all 12 layers (the demo samples two), and analyze. Prints the per-layer
lifecycle table with the ceiling, the convergence statement, and a JSON line of the ceilings.

    python benchmarks/ceiling_every_layer.py --preset quality      # ~40 min of training on 2 cores
    python benchmarks/ceiling_every_layer.py --preset default --run /tmp/ceil-default
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

from saelineage import contract
from saelineage.ceiling.config import CeilingConfig
from saelineage.ceiling.stage import run_ceiling
from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.demo import convergence_statement
from saelineage.lineage.lifecycle import print_lifecycle
from saelineage.lineage.stage import run_analyze
from saelineage.progress import console
from saelineage.saes.defaults import preset_config
from saelineage.saes.train import train_sets
from saelineage.stats.stage import run_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quality")
    ap.add_argument("--seed", type=int, default=1, help="seed of the second training")
    ap.add_argument("--run", type=Path, default=None, help="run directory (default: runs/ceiling-<preset>)")
    ap.add_argument("--tokens", type=int, default=100_000, help="held-out tokens to collect")
    ap.add_argument("--match-tokens", type=int, default=50_000, help="tokens the ceiling matches on")
    args = ap.parse_args()

    cfg = preset_config(args.preset)
    main_set, second = train_sets([cfg, replace(cfg, seed=args.seed)])
    first = json.loads((main_set / "training.json").read_text())["train_windows"][1]
    run_dir = args.run or Path(f"runs/ceiling-{args.preset}")
    collect = CollectConfig(
        model="smollm2", saes=str(main_set), corpus="default", max_tokens=args.tokens, first_window=first
    )
    run = run_collect(run_dir, collect).run
    run_stats(run.path)
    run_ceiling(run.path, CeilingConfig(saes=str(second), tokens=args.match_tokens))
    run_analyze(run.path)
    print_lifecycle(run.path)
    console.print(convergence_statement(run.path))
    rows = [r for r in pq.read_table(run.file(contract.LIFECYCLE)).to_pylist() if r["chosen"]]
    print(
        json.dumps(
            {
                "preset": args.preset,
                "ceiling": {r["layer"]: r["seed_ceiling"] for r in rows},
                "share_continuing": {r["layer"]: r["share_continuing"] for r in rows},
                "share_new": {r["layer"]: r["share_new"] for r in rows},
            }
        )
    )


if __name__ == "__main__":
    main()
