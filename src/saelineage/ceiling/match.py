"""Same-layer matching of two SAEs' features on the same tokens: the seed ceiling.

Two SAEs trained on the same layer with different seeds cut the same residual stream into
features. A feature of SAE A is *stable* when some feature of SAE B matches it at ≥ τ on the same
tokens; the *match rate* is the share of A's live features that are stable. It is the ceiling
of any cross-layer pass-through measured with such SAEs: if only 45% of a layer's features are
reproduced by a second training of the same layer, a next-layer SAE cannot be expected to carry
more than about that share either (docs/design.md, "Seed ceiling").

Measures are the stats stage's (`stats.measures.data_measure`, docs/design.md §4), from the
sufficient statistics over the token set: per feature the `Marginals` the stats stage keeps, per
pair co-counts c_ab and cross sums p_ab. Pure functions of sparse matrices; the work is one
sparse product per pair statistic, [d_a, d_b].
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from saelineage import contract
from saelineage.stats import measures as ms

MATCH_MEASURES = contract.DATA_MEASURES
"""The measures a match can be made by: the data measures of the stats stage."""


def _marginals(x: sp.csr_matrix) -> ms.Marginals:
    """Per-feature statistics of codes x [T, d] (float64, explicit zeros removed): what the stats
    stage keeps per feature, with "active" meaning a positive code. The extremes let
    `ms.never_varies` tell a constant feature exactly (its n·q − s² need not round to 0)."""
    d = x.shape[1]
    col = sp.csc_matrix(x)
    has = np.diff(col.indptr) > 0
    starts = col.indptr[:-1][has]  # empty columns are skipped, so each run ends where the next starts
    vmin, vmax = np.full(d, np.inf), np.zeros(d)
    vmin[has] = np.minimum.reduceat(col.data, starts)
    vmax[has] = np.maximum.reduceat(col.data, starts)
    count = np.bincount(x.indices[x.data > 0], minlength=d).astype(np.int64)
    return ms.Marginals(
        count=count,
        nonzero=count,
        s=np.asarray(x.sum(0)).ravel(),
        q=np.asarray(x.multiply(x).sum(0)).ravel(),
        vmin=vmin,
        vmax=vmax,
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
    side_a, side_b = ms.side(n, _marginals(a)), ms.side(n, _marginals(b))
    ab = a.copy()
    ab.data = np.ones_like(ab.data)
    bb = b.copy()
    bb.data = np.ones_like(bb.data)
    act = sp.csc_matrix(a)
    actb = sp.csc_matrix(ab)
    out = {m: (np.full(a.shape[1], np.nan), np.full(a.shape[1], -1, np.int64)) for m in measures}
    for lo in range(0, a.shape[1], block):
        hi = min(lo + block, a.shape[1])
        c = np.asarray((actb[:, lo:hi].T @ bb).todense())  # [B, d_b], exact integers in float64
        p = np.asarray((act[:, lo:hi].T @ b).todense())
        src = side_a.take(np.arange(lo, hi)[:, None])  # fields [B, 1] against side_b's [d_b]
        for m in measures:
            v = ms.data_measure(m, n, c, p, src, side_b)
            v = np.where(np.isfinite(v), v, -np.inf)
            idx = np.argmax(v, axis=1)
            best = v[np.arange(hi - lo), idx]
            ok = np.isfinite(best) & (side_a.count[lo:hi] > 0)
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
