"""Noise models of the planted benchmark (saelineage.testing.noise_models): each does what its
docstring claims, checked against counts taken independently on the codes; and the analysis'
5% rows under every model, for the targets that hold today (precision ≥ 0.95 and recall ≥ 0.9
for AND, OR, splits and the lifecycle classes new / ending / dead; no decoy reported as a gate).
benchmarks/bench_planted.py prints the full table; docs/noise_models.md has it and the rows
that miss the targets."""

from __future__ import annotations

import numpy as np
import pytest

from saelineage.lineage.config import AnalyzeConfig
from saelineage.lineage.stage import run_analyze
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
from saelineage.testing import noise_models as nm
from saelineage.testing.noisy_lineage import build_noisy_run, noisy_codes, recovery

R = 0.1


@pytest.fixture(scope="module")
def codes() -> tuple[np.ndarray, np.ndarray]:
    """Dense codes [3, 6000, 40]: log-uniform densities 0.005–0.2, values in [0.5, 2], two dead
    features, BOS every 50 tokens (never active, never noised)."""
    rng = np.random.default_rng(7)
    n_layers, t, d = 3, 6000, 40
    counted = np.arange(t) % 50 != 0
    dens = np.exp(rng.uniform(np.log(0.005), np.log(0.2), (n_layers, 1, d)))
    on = (rng.random((n_layers, t, d)) < dens) & counted[None, :, None]
    acts = np.where(on, rng.uniform(0.5, 2.0, on.shape), 0).astype(np.float32)
    acts[:, :, -2:] = 0
    return acts, counted


def _noised(codes, model: str, level: float = R, seed: int = 0) -> np.ndarray:
    acts, counted = codes
    return nm.apply_noise(acts, counted, model, level, np.random.default_rng(seed))


@pytest.mark.parametrize("model", nm.NOISE_MODELS)
def test_pure_seeded_and_dead_stays_dead(codes, model):
    acts, counted = codes
    before = acts.copy()
    a, b = _noised(codes, model), _noised(codes, model)
    assert np.array_equal(acts, before), "the input was modified"
    assert np.array_equal(a, b) and a.shape == acts.shape and a.dtype == acts.dtype
    assert not np.array_equal(a, _noised(codes, model, seed=1))
    assert not (a[:, ~counted] > 0).any(), "BOS tokens were activated"
    assert not (a[:, :, -2:] > 0).any(), "a dead feature woke up"
    assert np.array_equal(_noised(codes, model, level=0.0), acts)


def test_unknown_model_and_misplaced_jitter(codes):
    acts, counted = codes
    with pytest.raises(ValueError, match="unknown noise model"):
        nm.apply_noise(acts, counted, "gaussian", 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="jitter"):
        nm.apply_noise(acts, counted, "swap", 0.1, np.random.default_rng(0), jitter=0.1)
    with pytest.raises(ValueError, match="level"):
        noisy_codes(flip=0.1, noise="swap")


def _moves(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (layer, feature): activations before, removed, added; int [L, d] each."""
    on0, on1 = before > 0, after > 0
    return on0.sum(1), (on0 & ~on1).sum(1), (~on0 & on1).sum(1)


def test_swap_moves_exactly_a_share_r_of_every_feature(codes):
    acts, counted = codes
    out = _noised(codes, "swap")
    n, removed, added = _moves(acts, out)
    expected = np.rint(R * n).astype(int)
    assert np.array_equal(removed, expected) and np.array_equal(added, expected)
    assert np.array_equal((out > 0).sum(1), n), "counts change"
    kept = (acts > 0) & (out > 0)
    assert np.array_equal(out[kept], acts[kept]), "kept activations changed value"
    # added values are some of the feature's own values
    for l, f in [(0, 0), (1, 5), (2, 17)]:
        new = (acts[l, :, f] == 0) & (out[l, :, f] > 0)
        assert np.isin(out[l, new, f], acts[l, acts[l, :, f] > 0, f]).all()
    # the same share whatever the density: dense and rare features lose r of their activations
    live = n >= 40
    assert np.allclose(removed[live] / n[live], R, atol=0.5 / 40)


def test_density_noise_grows_with_density(codes):
    acts, counted = codes
    out = _noised(codes, "density")
    n, removed, added = _moves(acts, out)
    assert np.array_equal(removed, np.rint(R * n).astype(int))
    # independently: p = n / #counted, p̄ over live features, spurious share r·p/p̄
    p = n / counted.sum()
    for l in range(acts.shape[0]):
        live = n[l] > 0
        share = R * p[l] / p[l][live].mean()
        assert np.abs(added[l][live] - share[live] * n[l][live]).max() <= 0.5
        assert np.all(added[l][~live] == 0)
        # the spurious share is proportional to the density (slope r / p̄), up to rounding
        dense = n[l] >= 100
        share_seen = added[l][dense] / n[l][dense]
        slope = (share_seen @ p[l][dense]) / (p[l][dense] @ p[l][dense])
        assert abs(slope - R / p[l][live].mean()) < 0.02 * slope
        assert np.corrcoef(share_seen, p[l][dense])[0, 1] > 0.99
    dense_share = added / np.maximum(n, 1)
    order = np.argsort(p[0][n[0] > 0])
    assert dense_share[0][n[0] > 0][order][-5:].mean() > 5 * dense_share[0][n[0] > 0][order][:5].mean()


def test_correlated_noise_hits_shared_tokens(codes):
    acts, counted = codes
    out = _noised(codes, "correlated")
    k = int(round(R * counted.sum()))
    changed = (out != acts).any(axis=2)  # [L, T]: tokens whose row changed, per layer
    union = changed.any(0)
    # every feature's changes, in every layer, lie on one set of at most k tokens (an empty row
    # may draw an empty donor and stay unchanged); each layer changes nearly all of them
    assert union.sum() <= k and changed.sum(1).min() >= 0.95 * k
    assert (changed[0] & changed[1] & changed[2]).sum() >= 0.9 * k, "layers corrupted on different tokens"
    # on a changed token many features change at once: the whole row is another token's row
    n_feat = (out != acts).sum(2)[changed]
    assert n_feat.mean() > 3
    for l in range(acts.shape[0]):
        rows = {acts[l, t].tobytes() for t in np.nonzero(counted)[0]}
        assert all(out[l, t].tobytes() in rows for t in np.nonzero(changed[l])[0])
    # independent per-feature noise (swap) at the same level touches far more tokens
    swapped = (_noised(codes, "swap") != acts).any(axis=2).any(0)
    assert swapped.sum() > 3 * union.sum()
    # densities kept up to the redraw's sampling noise
    n, _, _ = _moves(acts, out)
    live = n >= 100
    assert np.allclose((out > 0).sum(1)[live], n[live], rtol=0.25)


def test_flips_drop_add_and_jitter(codes):
    acts, counted = codes
    out = nm.flips(acts, counted, R, 0.0, np.random.default_rng(0))
    n, removed, added = _moves(acts, out)
    live = n >= 100
    assert np.allclose(removed[live] / n[live], R, atol=0.06)  # Bernoulli(r) drops
    assert np.all(added <= np.rint(R * n)) and np.all(added >= np.rint(R * n) * (1 - 0.3) - 1)
    jit = nm.flips(acts, counted, 0.0, 0.2, np.random.default_rng(0))
    assert np.array_equal(jit > 0, acts > 0)
    logs = np.log(jit[acts > 0] / acts[acts > 0])
    assert abs(logs.std() - 0.2) < 0.01 and abs(logs.mean()) < 0.01


def test_noise_model_does_not_change_the_truth():
    *_, clean = noisy_codes(seed=4, n_windows=200)
    for model in nm.NOISE_MODELS:
        *_, noisy = noisy_codes(seed=4, n_windows=200, noise=model, level=0.1)
        assert (clean.gates, clean.splits, clean.lifecycle) == (noisy.gates, noisy.splits, noisy.lifecycle)


# --- the analysis' 5% rows -------------------------------------------------------------------

ROWS = ("and", "or", "split", "new", "ending", "dead")
"""Precision / recall rows of the table (recovery's `{row}_precision`, `{row}_recall`). At 5% every
row meets the targets under every model today (seed 0 here; seeds 0–2 in the benchmark); the 10%
rows that miss them are the open work of issue #28 (docs/noise_models.md), not tested here."""


@pytest.fixture(scope="module", params=nm.NOISE_MODELS)
def at_5_percent(request, tmp_path_factory) -> tuple[str, dict[str, float]]:
    path = tmp_path_factory.mktemp(request.param) / "run"
    run, truth = build_noisy_run(path, seed=0, noise=request.param, level=0.05)
    run_stats(run.path, StatsConfig(), progress=False)
    run_analyze(run.path, AnalyzeConfig(), progress=False)
    return request.param, recovery(run, truth)


def test_targets_at_5_percent_noise(at_5_percent):
    model, r = at_5_percent
    for row in ROWS:
        assert r[f"{row}_precision"] >= 0.95 and r[f"{row}_recall"] >= 0.9, (model, row, r)
    assert r["decoy_gates"] == 0, (model, r)
