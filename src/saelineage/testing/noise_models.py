"""Noise models for planted codes: how an SAE's codes may differ from the lineage planted in them.

Every model takes dense codes `acts` float32 [L, T, d] (layers, tokens, features; 0 = inactive),
the mask `counted` bool [T] of tokens that count (position 0 of a window is BOS: never touched),
a noise level r and a seeded generator, and returns NEW codes of the same shape and dtype: the
input is never modified, and the same seed gives the same codes. A feature's *density* is its
share of active counted tokens before noise; a *dead* feature (never active) stays dead under
every model. Layers are noised alike; only `correlated` ties them together.

- ``flips`` (the benchmark's default since it was written): per feature, every activation is
  dropped with probability r (Bernoulli), and round(r·n) spurious ones (n: its count before the
  drops) are put on counted tokens drawn uniformly (already active ones keep their value, so a
  little fewer are added); then every value is multiplied by exp(N(0, jitter)), jitter = r.
- ``swap``: per feature, exactly k = round(r·n) of its n activations are removed (drawn without
  replacement) and exactly k are added on counted tokens where it was inactive, with values
  re-drawn from its own activations. The same share r for every feature whatever its density;
  its count is unchanged. No jitter.
- ``density``: density-proportional noise. Removals as in `swap` (exactly round(r·n)), but the
  spurious share grows with density: a feature of density p gains round(r · (p / p̄) · n)
  activations (p̄: mean density of the layer's live features), on counted tokens where it was
  inactive, values re-drawn from its own. So the spurious rate per inactive token is
  ≈ r·p²/(p̄(1−p)): a feature at the layer's mean density is noised like `swap`, one ten times
  denser gains ten times the share, a rare one almost nothing. (Spurious activations added at a
  per-token rate merely proportional to p, r·p, would be `swap` again in expectation: that is
  already r·n per feature.) Models SAEs whose dense features are the unreliable ones.
- ``correlated``: token-level corruption shared by all features and all layers. A share r of the
  counted tokens (exactly round(r·T_counted), one set for every layer) is corrupted; on a
  corrupted token every layer's whole code row is replaced by that layer's row at a donor token
  (a counted token drawn uniformly, independently per layer and token). Every feature's activity
  on those tokens is redrawn at once from the layer's own joint distribution: features active
  there drop out together, the donor's features switch on together, densities and within-layer
  co-activation are kept, but layer l and layer l+1 no longer describe the same token. Models
  the tokens an SAE encodes badly in every layer (residual-stream outliers, massive activations,
  misaligned positions) — one failure hits many features at once, unlike the three models above
  where every feature is noised independently.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NOISE_MODELS = ("flips", "swap", "density", "correlated")
"""Names accepted by `apply_noise` (and noisy_lineage.noisy_codes' `noise`); flips is the default."""


def densities(acts: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Share of counted tokens on which each feature is active, float64 [L, d] (acts [L, T, d])."""
    return (acts[:, counted, :] > 0).mean(axis=1, dtype=np.float64)


def flips(acts: np.ndarray, counted: np.ndarray, flip: float, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Flip and jitter noise (module doc), [L, T, d] → [L, T, d]. Draws in the order the benchmark
    always has (layer, feature; drops, additions, additions' values, jitter), so that its figures
    are reproduced exactly."""
    out = acts.copy()
    if not (flip > 0 or jitter > 0):
        return out
    token_pool = np.nonzero(counted)[0]
    n_layers, _, d = out.shape
    for l in range(n_layers):
        for f in range(d):
            col = out[l, :, f]
            on = np.nonzero(col > 0)[0]
            if len(on) == 0:
                continue
            if flip > 0:
                col[on[rng.random(len(on)) < flip]] = 0
                extra = rng.choice(token_pool, int(round(flip * len(on))), replace=False)
                col[extra] = np.where(col[extra] > 0, col[extra], rng.uniform(0.5, 2.0, len(extra)))
            if jitter > 0:
                live = np.nonzero(col > 0)[0]
                col[live] *= np.exp(rng.normal(0, jitter, len(live))).astype(np.float32)
    return out


def _move(col: np.ndarray, on: np.ndarray, off: np.ndarray, n_drop: int, n_add: int, rng: np.random.Generator) -> None:
    """In place on one feature's column [T]: drop n_drop of its active tokens `on`, activate n_add of
    the inactive tokens `off` with values drawn (with replacement) from its original values."""
    values = col[on].copy()
    n_add = min(n_add, len(off))
    col[rng.choice(on, n_drop, replace=False)] = 0
    add = rng.choice(off, n_add, replace=False)
    col[add] = rng.choice(values, n_add, replace=True)


def swap(acts: np.ndarray, counted: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Swap noise (module doc): per feature of n activations, exactly round(r·n) removed and as many
    added on counted tokens where it was inactive. [L, T, d] → [L, T, d]."""
    return _move_per_feature(acts, counted, r, rng, lambda l: np.rint(r * (acts[l] > 0).sum(axis=0)))


def _move_per_feature(
    acts: np.ndarray,
    counted: np.ndarray,
    r: float,
    rng: np.random.Generator,
    added: Callable[[int], np.ndarray],
) -> np.ndarray:
    """Per live feature f of layer l with n activations, round(r·n) removed and added(l)[f] (an
    array [d]) added on counted tokens where it was inactive. [L, T, d] → [L, T, d]; layers and
    features are visited in order, so the draws are reproducible."""
    out = acts.copy()
    n_layers, _, d = out.shape
    for l in range(n_layers):
        add = added(l)
        for f in range(d):
            col = out[l, :, f]
            active = col > 0
            on = np.nonzero(active)[0]
            if len(on) == 0:
                continue
            _move(col, on, np.nonzero(counted & ~active)[0], int(round(r * len(on))), int(add[f]), rng)
    return out


def density_added(n: np.ndarray, p: np.ndarray, r: float) -> np.ndarray:
    """Spurious activations the `density` model adds per feature, int64 [d]: round(r · (p / p̄) · n)
    for counts n int [d] and densities p float [d] of one layer; p̄ is the mean density of its live
    features (0 for dead features). Not capped here: `density` caps at the inactive tokens."""
    live = n > 0
    if not live.any():
        return np.zeros(len(n), np.int64)
    mean = float(p[live].mean())
    return np.where(live, np.rint(r * (p / mean) * n), 0).astype(np.int64)


def density(acts: np.ndarray, counted: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Density-proportional noise (module doc): per feature, exactly round(r·n) removed and
    `density_added` spurious ones added on counted tokens where it was inactive. [L, T, d] → [L, T, d]."""
    dens = densities(acts, counted)
    return _move_per_feature(
        acts, counted, r, rng, lambda l: density_added((acts[l][counted] > 0).sum(axis=0), dens[l], r)
    )


def corruption_plan(
    n_layers: int, counted: np.ndarray, r: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The `correlated` model's corruption: tokens int64 [K] (K = round(r · #counted), sorted, one
    set for all layers) and donors int64 [L, K] (donor token of each layer for each corrupted token,
    counted, never the token itself)."""
    pool = np.nonzero(counted)[0]
    k = int(round(r * len(pool)))
    tokens = np.sort(rng.choice(pool, k, replace=False))
    # draw among the pool without the token itself: indices ≥ the token's own index shift by one
    own = np.searchsorted(pool, tokens)
    idx = rng.integers(0, len(pool) - 1, (n_layers, k))
    idx = idx + (idx >= own[None, :])
    donors = pool[idx]
    return tokens.astype(np.int64), donors.astype(np.int64)


def correlated(acts: np.ndarray, counted: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Correlated token-level corruption (module doc): on round(r · #counted) tokens, shared by all
    layers, each layer's code row is replaced by its row at a donor token. [L, T, d] → [L, T, d]."""
    out = acts.copy()
    tokens, donors = corruption_plan(acts.shape[0], counted, r, rng)
    for l in range(acts.shape[0]):
        out[l, tokens] = acts[l, donors[l]]
    return out


def apply_noise(
    acts: np.ndarray,
    counted: np.ndarray,
    model: str,
    level: float,
    rng: np.random.Generator,
    jitter: float | None = None,
) -> np.ndarray:
    """Codes [L, T, d] with noise `model` (NOISE_MODELS) at level r = `level` (see the module doc);
    `jitter` applies to flips only (default: the level). Level 0 returns an unchanged copy."""
    if model not in NOISE_MODELS:
        raise ValueError(f"unknown noise model {model!r}: choose one of {', '.join(NOISE_MODELS)}")
    if not 0 <= level <= 1:
        raise ValueError(f"noise level must lie in [0, 1] (got {level})")
    if model == "flips":
        return flips(acts, counted, level, level if jitter is None else jitter, rng)
    if jitter:
        raise ValueError(f"jitter belongs to the flips model, not to {model!r}")
    if level == 0:
        return acts.copy()
    return {"swap": swap, "density": density, "correlated": correlated}[model](acts, counted, level, rng)
