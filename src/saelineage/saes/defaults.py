"""The embedded default SAE set: SmolLM2-135M, resid_pre of blocks 0-11, trained once and cached.

12 residual positions starting at the embeddings (the layout of arXiv:2410.08869), 8× expansion (4,608
latents), k = 32, trained on the first ~100k tokens of the bundled English text; the last
16k tokens of that text are the held-out set. The folder is `cache_dir()/saes/<config hash>/`,
so changing any setting here (or TRAINER_VERSION) trains a new set instead of reusing a stale one.
"""

from __future__ import annotations

from pathlib import Path

from saelineage.saes.train import TrainConfig, config_hash, model_key, train_saes

DEFAULT_LAYERS = tuple(range(12))


def default_config() -> TrainConfig:
    """The configuration of the embedded default SAE set."""
    return TrainConfig(
        model="smollm2",
        hooks=[f"blocks.{l}.hook_resid_pre" for l in DEFAULT_LAYERS],
        corpus="default",
        expansion_factor=8,
        k=32,
        tokens=100_000,
    )


def default_saes_folder() -> Path:
    """Where the default set lives (whether or not it is trained yet)."""
    from saelineage.models.presets import cache_dir

    cfg = default_config()
    return cache_dir() / "saes" / config_hash(cfg.identity(model_key(cfg.model)))


def default_saes(progress: bool = True) -> Path:
    """Folder of the default SAE set: one SAELens folder per hook (`blocks.L.hook_resid_pre`) plus
    metrics.json and training.json. Trains it first (several minutes on 2 CPU cores) when missing."""
    return train_saes(default_config(), out=None, progress=progress)
