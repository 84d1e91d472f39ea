"""`saelineage train`: train per-layer TopK SAEs (registered by saelineage.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saelineage.errors import SaelineageError


def parse_hooks(text: str, kind: str = "resid_pre") -> list[str]:
    """'0-11' / '0,3,5' / 'blocks.3.hook_resid_pre,resid_post.4' -> TransformerLens hook names."""
    from saelineage.models.hooks import KINDS, HookPoint, parse_hook

    if kind not in KINDS:
        raise SaelineageError(f"unknown --hook-kind '{kind}'.", f"use one of {', '.join(KINDS)}.")
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "-" in part and all(s.strip().isdigit() for s in part.split("-", 1)):
            a, b = (int(s) for s in part.split("-", 1))
            if a > b:
                raise SaelineageError(f"empty layer range '{part}'.", "write ranges low-high, e.g. '0-11'.")
            names += [HookPoint(l, kind).name for l in range(a, b + 1)]
        else:
            names.append(parse_hook(part, default_kind=kind).name)
    if not names:
        raise SaelineageError("no hook points given.", "pass --hooks, e.g. '0-11'.")
    return names


def train_command(
    preset: Optional[str] = typer.Option(
        None,
        help="An embedded SmolLM2 SAE set: default (what the demo trains first) or quality (longer training, more "
        "reproducible features; the demo uses it once trained). Its settings replace the training options below; "
        "--hooks, --seed, --out, --device, --threads and --force still apply.",
    ),
    model: str = typer.Option("smollm2", help="Preset (smollm2, gpt2), local Hugging Face folder, or hub id."),
    hooks: str = typer.Option(
        "0-11",
        help="Layers or hook names: '0-11', '2,4,6', 'blocks.3.hook_resid_pre'. "
        "All are trained from one forward pass per batch.",
    ),
    hook_kind: str = typer.Option(
        "resid_pre",
        help="Hook kind for bare layer numbers: resid_pre (input of the "
        "block; layer 0 = embeddings) or resid_post (output of the block).",
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for the SAEs (one SAELens folder per "
        "hook + metrics.json). Default: the cache, keyed by a hash of the "
        "configuration, where the embedded default set also lives.",
    ),
    corpus: str = typer.Option(
        "default",
        help="Text file, folder, .jsonl, .parquet, or 'default' (bundled "
        "English). Training uses the first windows, evaluation the last ones.",
    ),
    text_column: str = typer.Option("text", help="Text field of JSONL/Parquet corpora."),
    window: int = typer.Option(128, help="Tokens per window (BOS included)."),
    expansion_factor: int = typer.Option(8, help="Latents = expansion factor × d_model (8 × 576 = 4,608 for SmolLM2)."),
    latents: Optional[int] = typer.Option(None, help="Number of latents per SAE (overrides --expansion-factor)."),
    k: int = typer.Option(32, "-k", "--k", help="Active latents per token (TopK)."),
    tokens: int = typer.Option(100_000, help="Distinct training tokens (from the start of the corpus)."),
    epochs: float = typer.Option(2.0, help="Passes over the cached training activations."),
    batch_size: int = typer.Option(1024, help="Tokens per optimizer step."),
    lr: Optional[float] = typer.Option(
        None,
        help="Adam learning rate (default 3e-3 × sqrt(4608 / latents); inputs are scaled to unit variance per hook).",
    ),
    auxk_alpha: float = typer.Option(1 / 32, help="Weight of the AuxK loss that revives dead latents (0 = off)."),
    dead_tokens: int = typer.Option(
        25_000, help="Training tokens without firing after which a latent counts as dead for AuxK."
    ),
    seed: int = typer.Option(0, help="Seed for initialisation and batch order."),
    also_seeds: str = typer.Option(
        "",
        help="More seeds to train the same set with, from the same activation cache (one model pass): e.g. '1' "
        "for a second training of every layer, which `saelineage ceiling --saes` compares against. Cache only "
        "(not with --out).",
    ),
    heldout_tokens: int = typer.Option(
        16_384, help="Held-out tokens (end of the corpus) for FVU, L0 and dead fraction."
    ),
    ce_tokens: int = typer.Option(
        2_048,
        help="Held-out tokens for the next-token cross-entropy increase (one full forward pass per hook; 0 skips it).",
    ),
    center: Optional[bool] = typer.Option(
        None, "--center/--no-center", help="Mean-centre residuals over d_model (default: on for gpt2, off otherwise)."
    ),
    dtype: str = typer.Option("float32", help="Model dtype (float32 is fastest on CPU)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: torch's choice)."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Retrain even when --out already holds these SAEs, and replace SAEs of another configuration there.",
    ),
) -> None:
    """Train TopK sparse autoencoders on a model's residual stream, one per hook point, and evaluate them.

    All hook points are captured in one forward pass per batch and cached; the SAEs (eai-sparsify
    SparseCoder, AuxK against dead latents) train on that cache. Each is saved in SAELens format
    (cfg.json + sae_weights.safetensors, loadable by sae_lens.SAE.load_from_disk) and evaluated on
    held-out tokens: FVU, L0, dead fraction and the next-token cross-entropy increase when the SAE
    reconstruction replaces the residual stream. `--preset default` trains the embedded default
    set (SmolLM2-135M, resid_pre 0-11, 2,304 latents, k=16) that `collect` uses.
    """
    from dataclasses import replace

    from saelineage.saes.train import TrainConfig, train_saes, train_sets

    try:
        extra = [int(s) for s in also_seeds.split(",") if s.strip()]
    except ValueError:
        raise SaelineageError(
            f"--also-seeds '{also_seeds}' is not a list of integers.", "write e.g. --also-seeds 1,2."
        ) from None
    if extra and (out is not None or force):
        raise SaelineageError(
            "--also-seeds trains into the cache only.", "leave out --out and --force, or train each seed on its own."
        )

    def run(cfg: TrainConfig) -> None:
        if extra:
            for folder in train_sets([cfg] + [replace(cfg, seed=s) for s in extra if s != cfg.seed], progress=True):
                typer.echo(str(folder))
        else:
            typer.echo(str(train_saes(cfg, out=out, force=force, progress=True)))

    if preset is not None:
        from saelineage.saes.defaults import preset_config

        run(
            replace(
                preset_config(preset), hooks=parse_hooks(hooks, hook_kind), seed=seed, device=device, threads=threads
            )
        )
        return
    cfg = TrainConfig(
        model=model,
        hooks=parse_hooks(hooks, hook_kind),
        corpus=corpus,
        text_column=text_column,
        window=window,
        expansion_factor=expansion_factor,
        num_latents=latents,
        k=k,
        tokens=tokens,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        auxk_alpha=auxk_alpha,
        dead_tokens=dead_tokens,
        seed=seed,
        heldout_tokens=heldout_tokens,
        ce_tokens=ce_tokens,
        center_residual=center,
        dtype=dtype,
        device=device,
        threads=threads,
    )
    run(cfg)
