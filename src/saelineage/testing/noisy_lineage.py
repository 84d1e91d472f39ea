"""A hard planted lineage for the robustness benchmark: skewed densities, flip and jitter noise,
and decoys that look like gates but are not.

Every transition l → l+1 plants, on disjoint features of layer l:

- AND gates (child = min(a, b) on a∧b) and OR gates (child = max(a, b)), parents of unequal
  density drawn from a log-uniform density range;
- splits: the parent's tokens cut into two parts of 35–55% and the rest; a child on each part;
- copies (child = parent × a constant): children that are only carried;
- decoys, whose children must never be reported as gate children:
  * near-duplicate parents: a' in layer l re-draws 10% of a's tokens; the child copies a;
  * parents that co-fire: b' in layer l fires on 60% of a's tokens (and a little elsewhere); the
    child copies b' (so a∧b' ≈ b' looks like an AND), and a second child copies a (a∨b' = a);
  * coincidental overlaps: dense independent children (density 0.2) that overlap every parent.
- new independent features, and two dead features per layer.

Noise is applied after planting, by one of the models of `noise_models` (`noise`, at level
`level`): "flips" (the default: `flip` drops that share of every feature's activations and adds
as many spurious ones on random tokens, `jitter` multiplies every value by exp(N(0, jitter))),
"swap" (exactly a share r of every feature's activations moved to tokens where it was
inactive), "density" (spurious share proportional to the feature's density) and "correlated"
(a share r of tokens corrupted in every feature and layer at once).

The lifecycle truth is the lifecycle of the noise-free codes (best Pearson over all pairs of
adjacent layers ≥ τ, computed densely here): the benchmark asks whether noise changes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from saelineage.run import RunDir
from saelineage.testing import noise_models


@dataclass
class NoisyTruth:
    """What was planted. Keys are (layer, feature)."""

    layers: list[int]
    gates: set[tuple] = field(default_factory=set)
    """(kind, layer, feature, parent_layer, parent_a, parent_b), parent_a < parent_b"""
    splits: set[tuple] = field(default_factory=set)
    """(layer, parent, child_layer, frozenset(children))"""
    decoy_children: set[tuple[int, int]] = field(default_factory=set)
    """children that no reported gate may have"""
    lifecycle: dict[tuple[int, int], str] = field(default_factory=dict)
    """label of every feature on the noise-free codes (lifecycle.LABELS)"""


def _clean_lifecycle(acts: np.ndarray, counted: np.ndarray, threshold: float) -> dict[tuple[int, int], str]:
    """Lifecycle labels from dense Pearson correlations over the counted tokens (independent of
    the stats stage)."""
    n_layers, _, d = acts.shape
    x = [acts[l][counted].astype(np.float64) for l in range(n_layers)]
    live = [(v > 0).any(0) for v in x]
    best_pred = [np.full(d, np.nan) for _ in range(n_layers)]
    best_succ = [np.full(d, np.nan) for _ in range(n_layers)]
    for l in range(n_layers - 1):
        a, b = x[l], x[l + 1]
        za = (a - a.mean(0)) / np.where(a.std(0) > 0, a.std(0), np.nan)
        zb = (b - b.mean(0)) / np.where(b.std(0) > 0, b.std(0), np.nan)
        r = za.T @ zb / len(a)
        best_succ[l] = np.nanmax(np.where(np.isnan(r), -np.inf, r), axis=1)
        best_pred[l + 1] = np.nanmax(np.where(np.isnan(r), -np.inf, r), axis=0)
    out = {}
    for l in range(n_layers):
        for f in range(d):
            if not live[l][f]:
                out[(l, f)] = "dead"
                continue
            pred = None if l == 0 else bool(best_pred[l][f] >= threshold)
            succ = None if l == n_layers - 1 else bool(best_succ[l][f] >= threshold)
            out[(l, f)] = (
                "new+ending" if pred is False and succ is False
                else "new" if pred is False
                else "ending" if succ is False
                else "carried"
            )  # fmt: skip
    return out


def noisy_codes(
    flip: float = 0.0,
    jitter: float = 0.0,
    seed: int = 0,
    n_layers: int = 3,
    d_sae: int = 128,
    n_windows: int = 600,
    window: int = 64,
    n_and: int = 6,
    n_or: int = 6,
    n_splits: int = 5,
    n_copies: int = 20,
    threshold: float = 0.5,
    noise: str = "flips",
    level: float = 0.0,
) -> tuple[dict[int, sp.csr_matrix], np.ndarray, NoisyTruth]:
    """Codes {layer: csr [T, d_sae]}, token ids int32 [T] and the truth (module doc).

    noise: a model of `noise_models.NOISE_MODELS`, at level r = `level`. For "flips", `level` r
    means flip = jitter = r (the benchmark's convention), or give `flip` and `jitter` apart;
    the other models take `level` only. The structure depends on `seed` only, never on the
    noise, so runs at several noise models and levels share one truth."""
    if noise == "flips":
        if level and (flip or jitter):
            raise ValueError("give the flips model either level or flip / jitter, not both")
        if level:
            flip = jitter = level
    elif flip or jitter:
        raise ValueError(f"flip and jitter belong to the flips model; the {noise!r} model takes level")
    if noise not in noise_models.NOISE_MODELS:
        raise ValueError(f"unknown noise model {noise!r}: choose one of {', '.join(noise_models.NOISE_MODELS)}")
    rng = np.random.default_rng(seed)
    t = n_windows * window
    counted = np.arange(t) % window != 0  # position 0 is BOS
    tokens = rng.integers(1, 200, t).astype(np.int32)
    tokens[~counted] = 0
    truth = NoisyTruth(list(range(n_layers)))
    acts = np.zeros((n_layers, t, d_sae), np.float32)
    dead = (d_sae - 2, d_sae - 1)

    def bern(p: float) -> np.ndarray:
        return np.where(counted & (rng.random(t) < p), rng.uniform(0.5, 2.0, t), 0.0).astype(np.float32)

    def density() -> float:
        return float(np.exp(rng.uniform(np.log(0.005), np.log(0.15))))

    # layer 0: independent features with skewed densities; slots 0..3 are kept free for decoy parents
    free0 = 4
    for f in range(free0, d_sae - 2):
        acts[0, :, f] = bern(density())
    eligible = list(range(free0, d_sae - 2))
    free_slots = list(range(free0))
    for l in range(n_layers - 1):
        m = l + 1
        prev, cur = acts[l], acts[m]
        dens = {f: float((prev[:, f] > 0).mean()) for f in eligible}
        pool = [int(f) for f in rng.permutation(eligible)]

        def take(lo: float = 0.0, partner: int | None = None, pool: list = pool, dens: dict = dens) -> int:
            """The next eligible feature of density ≥ lo (and, with a partner, joint density ≥ 1.5e-3)."""
            for i, f in enumerate(pool):
                if dens[f] >= lo and (partner is None or dens[f] * dens[partner] >= 1.5e-3):
                    return pool.pop(i)
            raise ValueError("the planted layer ran out of eligible features: raise d_sae")

        slot = iter([s for s in range(d_sae - 2) if s >= 4 or m == n_layers - 1])
        # the next layer's first four slots stay free for its decoy parents (unless it is the last)
        next_eligible: list[int] = []
        for _ in range(n_and):  # dense enough for ~40+ tokens of support, densities unequal
            a = take(0.03)
            b = take(0.03, partner=a)
            j = next(slot)
            on = (prev[:, a] > 0) & (prev[:, b] > 0)
            cur[on, j] = np.minimum(prev[on, a], prev[on, b])
            truth.gates.add(("and", m, j, l, min(a, b), max(a, b)))
        for _ in range(n_or):
            a = take(0.01)
            b = take(0.01)
            j = next(slot)
            cur[:, j] = np.maximum(prev[:, a], prev[:, b])
            truth.gates.add(("or", m, j, l, min(a, b), max(a, b)))
        for _ in range(n_splits):
            p = take(0.04)
            q1 = rng.uniform(0.35, 0.55)
            q2 = rng.uniform(0.35, 1 - q1) if 1 - q1 > 0.35 else 1 - q1
            part = rng.choice(3, t, p=[q1, q2, max(0.0, 1 - q1 - q2)])
            kids = []
            for q in range(2):
                c = next(slot)
                on = (prev[:, p] > 0) & (part == q)
                cur[on, c] = prev[on, p]
                kids.append(c)
            truth.splits.add((l, p, m, frozenset(kids)))
        for _ in range(n_copies):
            a = take()
            j = next(slot)
            cur[:, j] = prev[:, a] * np.float32(rng.uniform(0.8, 1.2))
            next_eligible.append(j)
        # decoys: near-duplicate parents and parents that co-fire use this layer's free slots
        for _ in range(2):
            a = take(0.02)
            dup = free_slots.pop()
            on = np.nonzero(prev[:, a] > 0)[0]
            redraw = on[rng.random(len(on)) < 0.1]
            col = prev[:, a].copy()
            col[redraw] = 0
            extra = rng.choice(np.nonzero(counted)[0], len(redraw), replace=False)
            col[extra] = rng.uniform(0.5, 2.0, len(extra))
            prev[:, dup] = col
            j = next(slot)
            cur[:, j] = prev[:, a]
            truth.decoy_children.add((m, j))
        a = take(0.05)
        sub = free_slots.pop()
        on = prev[:, a] > 0
        prev[:, sub] = np.where(on & (rng.random(t) < 0.6), prev[:, a], 0) + np.where(
            ~on & counted & (rng.random(t) < 0.002), 1.0, 0
        )
        for src in (sub, a):
            j = next(slot)
            cur[:, j] = prev[:, src]
            truth.decoy_children.add((m, j))
        for _ in range(2):  # coincidental overlaps
            j = next(slot)
            cur[:, j] = bern(0.2)
            truth.decoy_children.add((m, j))
        for j in slot:  # the rest: new, independent
            cur[:, j] = bern(density())
            next_eligible.append(j)
        eligible = next_eligible
        free_slots = list(range(4))
    for l in range(n_layers):
        acts[l][:, list(dead)] = 0
    truth.lifecycle = _clean_lifecycle(acts, counted, threshold)
    noise_rng = np.random.default_rng([seed, 1])
    if noise == "flips":
        acts = noise_models.flips(acts, counted, flip, jitter, noise_rng)
    else:
        acts = noise_models.apply_noise(acts, counted, noise, level, noise_rng)
    codes = {l: sp.csr_matrix(acts[l]) for l in range(n_layers)}
    return codes, tokens, truth


def build_noisy_run(
    path: str | Path,
    flip: float = 0.0,
    jitter: float = 0.0,
    seed: int = 0,
    noise: str = "flips",
    level: float = 0.0,
    **kw,
):
    """Write a noisy planted run (collect complete) to `path` (`noisy_codes`' arguments).
    Returns (RunDir, NoisyTruth)."""
    from saelineage.data.importer import write_run

    codes, tokens, truth = noisy_codes(flip=flip, jitter=jitter, seed=seed, noise=noise, level=level, **kw)
    vocab = ["<bos>"] + [f"tok{i}" for i in range(1, 200)]
    run: RunDir = write_run(
        path, codes, tokens, window_len=kw.get("window", 64), bos=True, vocab=vocab, force=True, shard_windows=100
    )
    return run, truth


LIFECYCLE_CLASSES = {"new": ("new", "new+ending"), "ending": ("ending", "new+ending"), "dead": ("dead",)}
"""Lifecycle classes scored by `recovery`, as the labels that belong to each: new = no predecessor,
ending = no successor (a new+ending feature is both, as in lifecycle.parquet's counts), dead."""


def recovery(run: RunDir, truth: NoisyTruth) -> dict[str, float]:
    """Precision and recall of AND, OR and splits (`{kind}_precision`, `{kind}_recall`), and of
    the lifecycle classes new, ending and dead (`LIFECYCLE_CLASSES`) against the noise-free
    labels, over all features; the share of live features whose lifecycle label matches the
    noise-free one (`lifecycle_correct`); and the number of gates reported on decoy children
    (`decoy_gates`). Precision is 1.0 when nothing is reported, recall 1.0 when nothing is planted."""
    import pyarrow.parquet as pq

    from saelineage import contract

    g = pq.read_table(run.file(contract.GATES)).to_pylist()
    got = {(r["kind"], r["layer"], r["feature"], r["parent_layer"], r["parent_a"], r["parent_b"]) for r in g}
    s = pq.read_table(run.file(contract.SPLITS)).to_pylist()
    got_s = {(r["layer"], r["feature"], r["child_layer"], frozenset(r["children"])) for r in s}
    out: dict[str, float] = {}

    def pr(name: str, found: set, want: set) -> None:
        tp = len(found & want)
        out[f"{name}_precision"] = tp / len(found) if found else 1.0
        out[f"{name}_recall"] = tp / len(want) if want else 1.0

    for kind in ("and", "or"):
        pr(kind, {x for x in got if x[0] == kind}, {x for x in truth.gates if x[0] == kind})
    pr("split", got_s, truth.splits)
    out["decoy_gates"] = float(sum((x[1], x[2]) in truth.decoy_children for x in got))
    fa = pq.read_table(run.file(contract.FEATURE_ANALYSIS), columns=["layer", "feature", "lifecycle"]).to_pylist()
    for name, labels in LIFECYCLE_CLASSES.items():
        pr(
            name,
            {(r["layer"], r["feature"]) for r in fa if r["lifecycle"] in labels},
            {key for key, label in truth.lifecycle.items() if label in labels},
        )
    live = [r for r in fa if truth.lifecycle[(r["layer"], r["feature"])] != "dead"]
    out["lifecycle_correct"] = sum(r["lifecycle"] == truth.lifecycle[(r["layer"], r["feature"])] for r in live) / len(
        live
    )
    return out
