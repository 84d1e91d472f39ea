"""Pair measures from sufficient statistics (docs/design.md §4), vectorised over numpy arrays.

Inputs per pair (i in layer l, j in layer m) over a token set of n tokens:
``c`` = c_ij (both active), ``p`` = p_ij = Σ a_i a_j; per feature: ``c_i`` (active count),
``s_i`` = Σ a_i, ``q_i`` = Σ a_i² (raw activations, inactive = 0).

Undefined values are NaN, never 0: jaccard when both features are never active;
sufficiency when c_i = 0; necessity when c_j = 0; pearson when either feature never varies;
act_cosine when either feature is never non-zero. Mutual information is always defined.

The numba kernels (`kernels_scan`) evaluate the same expressions on scalars to rank
partners; the values written to disk always come from these functions.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saelineage import contract

MEASURES = contract.DATA_MEASURES
"""Data measures, in the fixed order used by every kernel (index = position here)."""
MEASURE_INDEX = {m: k for k, m in enumerate(MEASURES)}
PRIMARY = contract.PRIMARY
"""Measures ranked for the top-k edge rule by default: overlap, both conditional
probabilities and correlation. act_cosine tracks pearson closely on sparse codes, and the
top partners by mutual information include mutually exclusive pairs; either can be added
(`primary=MEASURES`), at ~15% more finalize time each."""
#: Range of each measure, used for the fixed histogram bins of the summary.
MEASURE_RANGE = {
    "jaccard": (0.0, 1.0),
    "sufficiency": (0.0, 1.0),
    "necessity": (0.0, 1.0),
    "mutual_info": (0.0, float(np.log(2.0))),
    "pearson": (-1.0, 1.0),
    "act_cosine": (0.0, 1.0),
}
WILSON_Z = 1.959963984540054  # two-sided 95%: the 0.975 quantile of the standard normal
MAX_TOKENS = 3_000_000_000  # n·c_ij − c_i·c_j must fit in int64 (n² < 2^63)


class Marginals(NamedTuple):
    """Per-feature statistics of one layer over the token set (arrays of length d_sae)."""

    count: np.ndarray
    """int64: c_i, tokens where the feature is active (above its threshold)"""
    nonzero: np.ndarray
    """int64: tokens where the stored activation is > 0"""
    s: np.ndarray
    """float64: Σ a_i"""
    q: np.ndarray
    """float64: Σ a_i²"""
    vmin: np.ndarray
    """float64: smallest non-zero activation (+inf when none)"""
    vmax: np.ndarray
    """float64: largest activation (0 when none)"""


def inv_sd(n: int, m: Marginals) -> np.ndarray:
    """float64 [d]: 1/sqrt(n·q − s²), NaN for a feature that never varies over the n tokens.

    "Never varies" is decided exactly (never non-zero, or the same value on every token)
    rather than from n·q − s², which rounds to a tiny non-zero number for a constant.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        var = float(n) * m.q - m.s * m.s
        constant = (m.nonzero == 0) | ((m.nonzero == n) & (m.vmin == m.vmax))
        return np.where(constant | ~(var > 0), np.nan, 1.0 / np.sqrt(np.where(var > 0, var, 1.0)))


def inv_rms(m: Marginals) -> np.ndarray:
    """float64 [d]: 1/sqrt(q), NaN for a feature that is never non-zero."""
    with np.errstate(divide="ignore"):
        return np.where(m.q > 0, 1.0 / np.sqrt(np.where(m.q > 0, m.q, 1.0)), np.nan)


def jaccard(c, ci, cj):
    """c_ij / (c_i + c_j − c_ij)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(c, np.float64) / np.asarray(ci + cj - c, np.float64)


def sufficiency(c, ci):
    """P(j active | i active) = c_ij / c_i."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(c, np.float64) / np.asarray(ci, np.float64)


def necessity(c, cj):
    """P(i active | j active) = c_ij / c_j."""
    return sufficiency(c, cj)


def mutual_info(n, c, ci, cj):
    """Mutual information (nats) of the two binary variables; int64 inputs, float64 out.

    Each cell contributes n_xy·log(n·n_xy / (n_x·n_y)) = n_xy·log1p(d_xy / (n_x·n_y)) where
    d_xy = ±(n·c_ij − c_i·c_j) is exact in int64, so near-independent pairs keep their
    precision instead of cancelling two logs. Tiny negative round-off is clipped to 0.
    """
    n = np.int64(n)
    c, ci, cj = (np.asarray(x, np.int64) for x in (c, ci, cj))
    d = (n * c - ci * cj).astype(np.float64)
    fci, fcj = ci.astype(np.float64), cj.astype(np.float64)
    fni, fnj = (n - ci).astype(np.float64), (n - cj).astype(np.float64)
    out = np.zeros(np.broadcast(c, ci, cj).shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        for nxy, x in (
            (c, d / (fci * fcj)),
            (ci - c, -d / (fci * fnj)),
            (cj - c, -d / (fni * fcj)),
            (n - ci - cj + c, d / (fni * fnj)),
        ):
            out = out + np.where(nxy > 0, nxy * np.log1p(np.where(nxy > 0, x, 0.0)), 0.0)
    return np.maximum(out / np.float64(n), 0.0)


def pearson(n, p, si, sj, isd_i, isd_j):
    """(n·p_ij − s_i·s_j) / sqrt((n·q_i − s_i²)(n·q_j − s_j²)), via the per-feature 1/sd."""
    return (np.float64(n) * p - si * sj) * isd_i * isd_j


def act_cosine(p, irq_i, irq_j):
    """p_ij / sqrt(q_i·q_j), via the per-feature 1/sqrt(q)."""
    return p * irq_i * irq_j


def wilson_lower(k, m, z: float = WILSON_Z):
    """Wilson score lower bound of a proportion k/m (NaN where m = 0), clipped to [0, 1]."""
    k = np.asarray(k, np.float64)
    m = np.asarray(m, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = k / m
        z2 = z * z
        centre = phat + z2 / (2.0 * m)
        margin = z * np.sqrt(np.maximum(phat * (1.0 - phat) / m + z2 / (4.0 * m * m), 0.0))
        lo = (centre - margin) / (1.0 + z2 / m)
    # k = 0 (a matched pair that never fires together): the bound is exactly 0, which the formula
    # reaches only up to cancellation (~1e-17)
    lo = np.where(k == 0, 0.0, lo)
    return np.where(m > 0, np.clip(lo, 0.0, 1.0), np.nan)


class Side(NamedTuple):
    """Per-feature inputs for one side of a pair, gathered to the pairs' length."""

    count: np.ndarray
    s: np.ndarray
    isd: np.ndarray
    irq: np.ndarray


def side(n: int, m: Marginals) -> Side:
    """Per-feature vectors (length d) needed by `pair_measures`."""
    return Side(m.count, m.s, inv_sd(n, m), inv_rms(m))


def pair_measures(
    n: int, c: np.ndarray, p: np.ndarray, src: Side, dst: Side, i: np.ndarray, j: np.ndarray
) -> dict[str, np.ndarray]:
    """All data measures for pairs (i[k], j[k]) with statistics c[k], p[k]; arrays [K]."""
    ci, cj = src.count[i], dst.count[j]
    return {
        "jaccard": jaccard(c, ci, cj),
        "sufficiency": sufficiency(c, ci),
        "necessity": necessity(c, cj),
        "mutual_info": mutual_info(n, c, ci, cj),
        "pearson": pearson(n, p, src.s[i], dst.s[j], src.isd[i], dst.isd[j]),
        "act_cosine": act_cosine(p, src.irq[i], dst.irq[j]),
        "sufficiency_lo": wilson_lower(c, ci),
        "necessity_lo": wilson_lower(c, cj),
    }
