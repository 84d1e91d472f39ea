"""The `saelineage` command line: one sub-command per pipeline stage, plus `demo`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from saelineage.errors import SaelineageError
from saelineage.progress import console

app = typer.Typer(
    name="saelineage",
    help="Trace how SAE features connect across the layers of a language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """saelineage: where does an SAE feature come from, and where does it go?"""


def _layers(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return sorted(set(out))


@app.command("collect")
def collect_command(
    run: Path = typer.Argument(..., help="Run directory to create (or resume)."),
    model: str = typer.Option("smollm2", help="Preset (smollm2, gpt2), local HF folder, or hub id."),
    saes: Optional[str] = typer.Option(None, help="Folder of SAELens/sparsify SAEs, or a SAELens release name. "
                                       "Default: the model's default set (trained once for smollm2)."),
    layers: Optional[str] = typer.Option(None, help="Layers to encode, e.g. '0-11' or '2,4,6' (default: all SAEs)."),
    corpus: str = typer.Option("default", help="Text file, folder, .jsonl, .parquet, or 'default' (bundled English)."),
    text_column: str = typer.Option("text", help="Text field of JSONL/Parquet corpora."),
    window: int = typer.Option(128, help="Tokens per window (BOS included)."),
    max_tokens: Optional[int] = typer.Option(None, help="Collect at most this many tokens."),
    first_window: int = typer.Option(0, help="Skip this many corpus windows (e.g. SAE training text)."),
    batch_windows: int = typer.Option(16, help="Windows per forward pass."),
    shard_windows: int = typer.Option(64, help="Windows per shard file."),
    examples: int = typer.Option(20, help="Top activating examples kept per feature."),
    include_bos: bool = typer.Option(False, "--include-bos", help="Count BOS positions in statistics."),
    dtype: str = typer.Option("float32", help="float32 (fast on CPU), bfloat16, float16."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    center: Optional[bool] = typer.Option(None, "--center/--no-center",
                                          help="Mean-centre residuals (default: on for gpt2, off otherwise)."),
    force: bool = typer.Option(False, "--force", help="Discard an existing run in RUN and start again."),
) -> None:
    """Run the model over a corpus once and store every layer's sparse SAE codes."""
    from saelineage.collect import CollectConfig, collect

    cfg = CollectConfig(model=model, saes=saes, layers=_layers(layers), corpus=corpus, text_column=text_column,
                        window=window, max_tokens=max_tokens, first_window=first_window,
                        batch_windows=batch_windows, shard_windows=shard_windows, examples_k=examples,
                        include_bos=include_bos, dtype=dtype, device=device, center_residual=center)
    r = collect(run, cfg, force=force)
    m = r.load()
    console.print(f"[green]collect complete[/]: {m['n_tokens']:,} tokens, layers {m['layers']}, run {r.path}")


def _register_optional() -> None:
    """Stage commands live next to their stage; each registers itself here."""
    import importlib

    for module, attr, name in [
        ("saelineage.saes.train_command", "train_command", "train"),
        ("saelineage.stats.command", "stats_command", "stats"),
        ("saelineage.lineage.command", "analyze_command", "analyze"),
        ("saelineage.lineage.command", "prompt_command", "prompt"),
        ("saelineage.lineage.command", "export_command", "export"),
        ("saelineage.causal.command", "ablate_command", "ablate"),
        ("saelineage.web.command", "serve_command", "serve"),
        ("saelineage.web.command", "labels_app", "labels"),
        ("saelineage.demo", "demo_command", "demo"),
    ]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("saelineage"):
                continue  # that stage is not part of this build
            raise
        obj = getattr(mod, attr)
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=name)
        else:
            app.command(name)(obj)


_register_optional()


def main() -> None:
    """Console entry point: user errors print one message (problem + fix) and exit 2."""
    try:
        app()
    except SaelineageError as exc:
        console.print(f"[bold red]error:[/] {exc.problem}")
        if exc.fix:
            console.print(f"[bold]fix:[/] {exc.fix}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; completed work is kept — run the same command again to resume.")
        sys.exit(130)


if __name__ == "__main__":
    main()
