"""Same-layer matching of two SAEs' features on the same tokens: the seed ceiling.

Two SAEs trained on the same layer with different seeds cut the same residual stream into
features. A feature of SAE A is *stable* when some feature of SAE B matches it at ≥ τ on the same
tokens; the *match rate* is the share of A's live features that are stable. It is the ceiling
of any cross-layer pass-through measured with such SAEs: if only 45% of a layer's features are
reproduced by a second training of the same layer, a next-layer SAE cannot be expected to carry
more than about that share either (docs/design.md, "Seed ceiling").

Measures are computed exactly as the stats stage does (docs/design.md §4) from the sufficient
statistics over the token set: counts c, sums s, squares q, co-counts c_ab and cross sums p_ab.
Pure functions of sparse matrices; the work is one sparse product per statistic, [d_a, d_b].
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from saelineage import contract
from saelineage.lineage.evidence import mutual_info

MATCH_MEASURES = contract.DATA_MEASURES
"""The measures a match can be made by: the data measures of the stats stage."""


def _stats(x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per feature: active count, Σ a, Σ a² (positive entries)."""
    xb = x.copy()
    xb.data = (xb.data > 0).astype(np.float64)
    return (
        np.asarray(xb.sum(0)).ravel(),
        np.asarray(x.sum(0)).ravel().astype(np.float64),
        np.asarray(x.multiply(x).sum(0)).ravel().astype(np.float64),
    )


def best_matches(
    a: sp.csr_matrix, b: sp.csr_matrix, measures: tuple[str, ...] = MATCH_MEASURES, block: int = 1024
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For every feature of A, its best partner in B under each measure.

    a: [T, d_a], b: [T, d_b] non-negative codes on the same T tokens (float).
    Returns {measure: (best value float64 [d_a] (NaN for a dead or constant feature), partner id
    int64 [d_a] (−1 when none))}. Blocks of `block` A-features bound the memory to block × d_b.
    """
    a = sp.csr_matrix(a, dtype=np.float64)
    b = sp.csr_matrix(b, dtype=np.float64)
    a.eliminate_zeros()
    b.eliminate_zeros()
    n = a.shape[0]
    ca, sa, qa = _stats(a)
    cb, sb, qb = _stats(b)
    ab = a.copy()
    ab.data = np.ones_like(ab.data)
    bb = b.copy()
    bb.data = np.ones_like(bb.data)
    act = sp.csc_matrix(a)
    actb = sp.csc_matrix(ab)
    out = {m: (np.full(a.shape[1], np.nan), np.full(a.shape[1], -1, np.int64)) for m in measures}
    for lo in range(0, a.shape[1], block):
        hi = min(lo + block, a.shape[1])
        c = np.asarray((actb[:, lo:hi].T @ bb).todense())
        p = np.asarray((act[:, lo:hi].T @ b).todense())
        ci, si, qi = ca[lo:hi, None], sa[lo:hi, None], qa[lo:hi, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = {
                "jaccard": c / (ci + cb - c),
                "sufficiency": c / ci,
                "necessity": c / cb,
                "pearson": (n * p - si * sb) / np.sqrt((n * qi - si**2) * (n * qb - sb**2)),
                "act_cosine": p / np.sqrt(qi * qb),
            }
        for m in measures:
            v = mutual_info(c, ci, cb, n) if m == "mutual_info" else vals[m]
            v = np.where(np.isfinite(v), v, -np.inf)
            idx = np.argmax(v, axis=1)
            best = v[np.arange(hi - lo), idx]
            ok = np.isfinite(best) & (ca[lo:hi] > 0)
            out[m][0][lo:hi] = np.where(ok, best, np.nan)
            out[m][1][lo:hi] = np.where(ok, idx, -1)
    return out


def match_rate(best: np.ndarray, live: np.ndarray, threshold: float) -> float:
    """Share of live features whose best partner reaches `threshold` (NaN without live features)."""
    n = int(live.sum())
    if n == 0:
        return float("nan")
    with np.errstate(invalid="ignore"):
        return float(((best >= threshold) & live).sum() / n)
