"""Planted lineage data: codes with known copies, AND / OR gates, splits, new, ending and dead
features, written through the store API, for tests and for checking the analysis by eye.

Every transition l → l+1 takes the "eligible" features of layer l (independent base
features, their copies, new features) and plants, with disjoint parents:

- copies:  child = parent × a constant in [0.8, 1.2]            (carried)
- AND:     child on parent_a ∧ parent_b (value min of the two)   (child is new: Pearson ≈ √p < 0.5)
- OR:      child on parent_a ∨ parent_b (value max of the two)   (child carried, parents continue)
- splits:  parent's tokens divided at random 45% / 40% / 15%; two children on the first two
- new features (independent) and two dead features per layer; unused eligible features end.

Parents of gates and splits are not copied, and gate/split children are never parents in the
next transition, so the ground truth of every relation is unambiguous (the module's
`Truth`). Noise (rate r) then drops a share r of every feature's activations and adds
spurious ones on random tokens amounting to a share r of its count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from saelineage.run import RunDir


@dataclass
class Truth:
    """Planted relations. Keys are (layer, feature)."""

    layers: list[int]
    role: dict[tuple[int, int], str] = field(default_factory=dict)
    has_pred: dict[tuple[int, int], bool] = field(default_factory=dict)
    has_succ: dict[tuple[int, int], bool] = field(default_factory=dict)
    gates: set[tuple] = field(default_factory=set)
    """(kind, layer, feature, parent_layer, parent_a, parent_b), parent_a < parent_b"""
    rare_gates: set[tuple] = field(default_factory=set)
    """AND gates resting on `rare_support` tokens only"""
    splits: dict[tuple[int, int], tuple[int, frozenset]] = field(default_factory=dict)
    """(layer, parent) → (child layer, children)"""
    copies: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)

    def lifecycle(self, key: tuple[int, int]) -> str:
        """Expected label (lifecycle.LABELS) of a feature."""
        if self.role[key] == "dead":
            return "dead"
        p = self.has_pred.get(key)
        s = self.has_succ.get(key)
        if p is False and s is False:
            return "new+ending"
        if p is False:
            return "new"
        if s is False:
            return "ending"
        return "carried"


def planted_codes(
    n_layers: int = 3,
    d_sae: int = 48,
    n_windows: int = 400,
    window: int = 32,
    noise: float = 0.0,
    seed: int = 0,
    n_copies: int = 14,
    n_and: int = 4,
    n_or: int = 4,
    n_splits: int = 2,
    rare_support: int = 3,
) -> tuple[dict[int, sp.csr_matrix], np.ndarray, Truth]:
    """Codes {layer: csr [T, d_sae]}, token ids int32 [T] and the Truth (see module doc)."""
    rng = np.random.default_rng(seed)
    t = n_windows * window
    counted = np.arange(t) % window != 0  # position 0 is BOS: outside the token set
    tokens = rng.integers(1, 200, t).astype(np.int32)
    tokens[~counted] = 0
    layers = list(range(n_layers))
    truth = Truth(layers)
    acts = np.zeros((n_layers, t, d_sae), np.float32)

    def bern(p: float) -> np.ndarray:
        return np.where(rng.random(t) < p, rng.uniform(0.5, 2.0, t), 0.0).astype(np.float32)

    # layer 0: independent base features, two rare ones for the low-support gate, two dead
    rare = (d_sae - 4, d_sae - 3)
    for f in range(d_sae - 4):
        acts[0, :, f] = bern(rng.uniform(0.05, 0.15))
        truth.role[(0, f)] = "base"
    pool = np.nonzero(counted)[0]
    both = rng.choice(pool, rare_support, replace=False)
    for f in rare:
        only = rng.choice(np.setdiff1d(pool, both), 40, replace=False)
        acts[0, np.concatenate([both, only]), f] = rng.uniform(0.5, 2.0, 40 + rare_support)
        truth.role[(0, f)] = "rare"
    for f in (d_sae - 2, d_sae - 1):
        truth.role[(0, f)] = "dead"
    eligible = [f for f in range(d_sae - 4)]
    for l in range(n_layers - 1):
        m = l + 1
        prev, cur = acts[l], acts[m]
        el = list(rng.permutation(eligible))
        slot = iter(range(d_sae - 2))
        next_eligible = []

        def take(n: int, el: list = el) -> list[int]:  # this layer's pool, bound now
            out, el[:] = el[:n], el[n:]
            return [int(x) for x in out]

        # OR parents paired by similar density, so that each parent's Pearson with the child is ≈ 0.7
        or_par = take(2 * n_or)
        or_par.sort(key=lambda f: (prev[:, f] > 0).mean())
        for k in range(n_or):
            a, b = sorted(or_par[2 * k : 2 * k + 2])
            j = next(slot)
            cur[:, j] = np.maximum(prev[:, a], prev[:, b])
            truth.role[(m, j)] = "or"
            truth.has_pred[(m, j)] = True
            truth.has_succ[(l, a)] = truth.has_succ[(l, b)] = True
            truth.gates.add(("or", m, j, l, a, b))
        for _ in range(n_and):
            a, b = sorted(take(2))
            j = next(slot)
            on = (prev[:, a] > 0) & (prev[:, b] > 0)
            cur[on, j] = np.minimum(prev[on, a], prev[on, b])
            truth.role[(m, j)] = "and"
            truth.has_pred[(m, j)] = False
            truth.has_succ[(l, a)] = truth.has_succ[(l, b)] = False
            truth.gates.add(("and", m, j, l, a, b))
        for _ in range(n_splits):
            (p,) = take(1)
            part = rng.choice(3, t, p=[0.45, 0.40, 0.15])
            kids = []
            for q in range(2):
                c = next(slot)
                on = (prev[:, p] > 0) & (part == q)
                cur[on, c] = prev[on, p]
                truth.role[(m, c)] = "split"
                truth.has_pred[(m, c)] = True
                kids.append(c)
            truth.has_succ[(l, p)] = True
            truth.splits[(l, p)] = (m, frozenset(kids))
        for a in take(n_copies):
            j = next(slot)
            cur[:, j] = prev[:, a] * np.float32(rng.uniform(0.8, 1.2))
            truth.role[(m, j)] = "copy"
            truth.has_pred[(m, j)] = True
            truth.has_succ[(l, a)] = True
            truth.copies.append(((l, a), (m, j)))
            next_eligible.append(j)
        for a in el:  # unused eligible features end here
            truth.has_succ[(l, int(a))] = False
        if l == 0:  # the low-support AND gate
            j = next(slot)
            on = (prev[:, rare[0]] > 0) & (prev[:, rare[1]] > 0)
            cur[on, j] = 1.0
            truth.role[(m, j)] = "rare_and"
            truth.has_pred[(m, j)] = False
            truth.rare_gates.add(("and", m, j, 0, rare[0], rare[1]))
        for j in slot:  # the remaining slots are new, independent features
            cur[:, j] = bern(rng.uniform(0.05, 0.15))
            truth.role[(m, j)] = "new"
            truth.has_pred[(m, j)] = False
            next_eligible.append(j)
        for f in (d_sae - 2, d_sae - 1):
            truth.role[(m, f)] = "dead"
        eligible = next_eligible
    # features of layer 0 not given a successor status above (rare, dead) and of the last layer
    for (l, f), r in truth.role.items():
        if r not in ("dead",) and l < n_layers - 1:
            truth.has_succ.setdefault((l, f), False)
    if noise > 0:
        for l in layers:
            for f in range(d_sae):
                col = acts[l, :, f]
                on = np.nonzero(col > 0)[0]
                if len(on) == 0:
                    continue
                drop = on[rng.random(len(on)) < noise]
                col[drop] = 0
                extra = rng.choice(t, int(round(noise * len(on))), replace=False)
                col[extra] = np.where(col[extra] > 0, col[extra], rng.uniform(0.5, 2.0, len(extra)))
    codes = {l: sp.csr_matrix(acts[l]) for l in layers}
    return codes, tokens, truth


def build_planted_run(path: str | Path, noise: float = 0.0, seed: int = 0, **kw) -> tuple[RunDir, Truth]:
    """Write a planted run (collect stage complete) to `path`; see `planted_codes`."""
    from saelineage.data.importer import write_run

    codes, tokens, truth = planted_codes(noise=noise, seed=seed, **kw)
    window = kw.get("window", 32)
    vocab = ["<bos>"] + [f"tok{i}" for i in range(1, 200)]
    run = write_run(
        path, codes, tokens, window_len=window, bos=True, vocab=vocab, force=True, shard_windows=64, examples_k=10
    )
    return run, truth
