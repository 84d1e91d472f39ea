"""The embedded SAE sets for SmolLM2-135M (resid_pre of blocks 0-11), trained once and cached.

12 residual positions starting at the embeddings (the layout of arXiv:2410.08869), TopK SAEs of
2,304 latents (4×), k = 16, trained on the first tokens of the bundled English text; the demo
collects from the windows after them. Two presets (docs/seed_ceiling.md explains the choice):

- `default`: what the first `make demo` trains, within its time budget;
- `quality`: longer training for more reproducible features (`saelineage train --preset quality`);
  the demo uses it when it is already trained.

A preset's *ceiling set* is the same training with another seed on a few layers: the `ceiling`
stage compares the two to measure how reproducible the features are. The folder of a set is
`cache_dir()/saes/<config hash>/`, so changing any setting here (or TRAINER_VERSION) trains a new
set instead of reusing a stale one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from saelineage.errors import SaelineageError
from saelineage.saes.outdir import is_complete
from saelineage.saes.train import TrainConfig, cache_folder, train_saes

DEFAULT_LAYERS = tuple(range(12))
CEILING_LAYERS = (2, 6)
"""Layers whose SAEs the ceiling set trains again with another seed (a sample: early and middle)."""
CEILING_SEED = 1


def _hooks(layers) -> list[str]:
    return [f"blocks.{l}.hook_resid_pre" for l in layers]


PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(expansion_factor=4, k=16, tokens=100_000, epochs=4.0),
    "quality": dict(expansion_factor=4, k=16, tokens=650_000, epochs=2.5),
}
"""Training settings of each preset (the rest are TrainConfig's defaults). 2,304 latents with k = 16
reproduce more features across seeds than 4,608 with k = 32, at the same training cost per token
pass; the default spends the first run's budget on 4 passes over 100k tokens, the quality preset
on 2.5 passes over 650k: at 2 its layer 1 reproduced 0.698 of features across seeds, at 2.5 0.720
(docs/seed_ceiling.md)."""


def preset_config(name: str = "default") -> TrainConfig:
    """The configuration of SAE preset `name` (PRESETS)."""
    if name not in PRESETS:
        raise SaelineageError(f"unknown SAE preset {name!r}.", f"choose one of {', '.join(PRESETS)}.")
    return TrainConfig(model="smollm2", hooks=_hooks(DEFAULT_LAYERS), corpus="default", **PRESETS[name])


def ceiling_config(name: str = "default") -> TrainConfig:
    """The ceiling set of preset `name`: the same training, seed CEILING_SEED, on CEILING_LAYERS."""
    return replace(preset_config(name), hooks=_hooks(CEILING_LAYERS), seed=CEILING_SEED)


def default_config() -> TrainConfig:
    """The configuration of the embedded default SAE set."""
    return preset_config("default")


def folder_of(cfg: TrainConfig) -> Path:
    """Where the cached set of `cfg` lives (whether or not it is trained yet)."""
    return cache_folder(cfg)


def default_saes_folder() -> Path:
    """Where the default set lives (whether or not it is trained yet)."""
    return folder_of(default_config())


def is_trained(cfg: TrainConfig) -> bool:
    """The cached set of `cfg` is complete."""
    folder = folder_of(cfg)
    return is_complete(folder, folder.name)


def default_saes(progress: bool = True) -> Path:
    """Folder of the default SAE set: one SAELens folder per hook (`blocks.L.hook_resid_pre`) plus
    metrics.json and training.json. Trains it first (several minutes on 2 CPU cores) when missing."""
    return train_saes(default_config(), out=None, progress=progress)
