"""Pair measures from sufficient statistics (docs/design.md §4), vectorised over numpy arrays.

Inputs per pair (i in layer l, j in layer m) over a token set of n tokens:
``c`` = c_ij (both active), ``p`` = p_ij = Σ a_i a_j; per feature: ``c_i`` (active count),
``s_i`` = Σ a_i, ``q_i`` = Σ a_i² (raw activations, inactive = 0).

Undefined values are NaN, never 0: jaccard when both features are never active;
sufficiency when c_i = 0; necessity when c_j = 0; pearson when either feature never varies;
act_cosine when either feature is never non-zero. Mutual information is always defined.

Every function broadcasts: the stats stage passes pairs [K], the seed ceiling a block of
features against all others ([B, 1] against [d]), the bootstrap replicates × links ([R, L],
with n per replicate [R, 1]). This module is the only place the formulas are written; the
numba kernels (`kernels_scan`) evaluate the same expressions on scalars to rank partners
(tests/test_stats.py holds them equal), and the values written to disk always come from here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from saelineage import contract

MEASURES = contract.DATA_MEASURES
"""Data measures, in the fixed order used by every kernel (index = position here)."""
MEASURE_INDEX = {m: k for k, m in enumerate(MEASURES)}
COUNT_MEASURES = ("jaccard", "sufficiency", "necessity", "mutual_info")
"""Measures of the activity counts alone: `data_measure` reads only `Side.count` for them."""
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

    count: np.ndarray  # type: ignore[assignment]  # shadows tuple.count (a field name in the outputs)
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


def never_varies(n: int, m: Marginals) -> np.ndarray:
    """bool [d]: the feature is never non-zero, or takes one value on all n tokens.

    Decided exactly from the counts and extremes rather than from n·q − s², which rounds to
    a tiny non-zero number for a constant.
    """
    return (m.nonzero == 0) | ((m.nonzero == n) & (m.vmin == m.vmax))


def inv_sd(n: ArrayLike, s: np.ndarray, q: np.ndarray, constant: ArrayLike = False) -> np.ndarray:
    """float64, broadcast of the inputs: 1/sqrt(n·q − s²); NaN where that is not > 0 or where
    `constant` (`never_varies`) says the feature does not vary.

    n: tokens (scalar, or per bootstrap replicate); s = Σ a, q = Σ a² per feature."""
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.asarray(n, np.float64) * q - s * s
        return np.where(constant | ~(var > 0), np.nan, 1.0 / np.sqrt(np.where(var > 0, var, 1.0)))


def inv_rms(q: np.ndarray) -> np.ndarray:
    """float64, shape of q (= Σ a² per feature): 1/sqrt(q), NaN for a feature never non-zero."""
    with np.errstate(divide="ignore"):
        return np.where(q > 0, 1.0 / np.sqrt(np.where(q > 0, q, 1.0)), np.nan)


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


def mutual_info(n: ArrayLike, c: ArrayLike, ci: ArrayLike, cj: ArrayLike) -> np.ndarray:
    """Mutual information (nats) of the two binary variables: I(x; y) from the 2×2 counts over
    n tokens, c = both on, ci = x on, cj = y on. Integer counts in (int64, or floats holding
    exact integers such as weighted sums of counts; cast to int64), float64 out, all four
    broadcast (n may be one total per bootstrap replicate, [R, 1]).

    Each cell contributes n_xy·log(n·n_xy / (n_x·n_y)) = n_xy·log1p(d_xy / (n_x·n_y)) where
    d_xy = ±(n·c_ij − c_i·c_j) is exact in int64, so near-independent pairs keep their
    precision instead of cancelling two logs. Tiny negative round-off is clipped to 0.
    """
    n, c, ci, cj = (np.asarray(x, np.int64) for x in (n, c, ci, cj))
    d = (n * c - ci * cj).astype(np.float64)
    fci, fcj = ci.astype(np.float64), cj.astype(np.float64)
    fni, fnj = (n - ci).astype(np.float64), (n - cj).astype(np.float64)
    out = np.zeros(np.broadcast(n, c, ci, cj).shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        for nxy, x in (
            (c, d / (fci * fcj)),
            (ci - c, -d / (fci * fnj)),
            (cj - c, -d / (fni * fcj)),
            (n - ci - cj + c, d / (fni * fnj)),
        ):
            out = out + np.where(nxy > 0, nxy * np.log1p(np.where(nxy > 0, x, 0.0)), 0.0)
    return np.maximum(out / n.astype(np.float64), 0.0)


def pearson(n: ArrayLike, p, si, sj, isd_i, isd_j) -> np.ndarray:
    """(n·p_ij − s_i·s_j) / sqrt((n·q_i − s_i²)(n·q_j − s_j²)), via the per-feature 1/sd."""
    return (np.asarray(n, np.float64) * p - si * sj) * isd_i * isd_j


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
    """Per-feature inputs for one side of a pair (arrays of one shape: [d], or gathered)."""

    count: np.ndarray  # type: ignore[assignment]  # shadows tuple.count
    s: np.ndarray
    isd: np.ndarray
    irq: np.ndarray

    def take(self, idx: np.ndarray) -> Side:
        """Every field gathered at feature ids `idx` along the last axis: [..., d] → [..., *idx.shape]."""
        return Side(*(x[..., idx] for x in self))


def side(n: int, m: Marginals) -> Side:
    """Per-feature vectors (length d) needed by `data_measure` and `pair_measures`."""
    return Side(m.count, m.s, inv_sd(n, m.s, m.q, never_varies(n, m)), inv_rms(m.q))


def data_measure(name: str, n: ArrayLike, c: ArrayLike, p: ArrayLike, src: Side, dst: Side) -> np.ndarray:
    """The data measure `name` of pairs with co-count c and cross sum p, whose per-feature
    inputs src, dst are already gathered to broadcast with c (float64, their broadcast shape).

    The one dispatch from a measure's name to its formula: the stats stage, the seed ceiling
    and the bootstrap all go through it, so they cannot disagree."""
    if name == "jaccard":
        return jaccard(c, src.count, dst.count)
    if name == "sufficiency":
        return sufficiency(c, src.count)
    if name == "necessity":
        return necessity(c, dst.count)
    if name == "mutual_info":
        return mutual_info(n, c, src.count, dst.count)
    if name == "pearson":
        return pearson(n, p, src.s, dst.s, src.isd, dst.isd)
    if name == "act_cosine":
        return act_cosine(p, src.irq, dst.irq)
    raise ValueError(f"unknown data measure {name!r} (one of {', '.join(MEASURES)})")


def pair_measures(
    n: int, c: np.ndarray, p: np.ndarray, src: Side, dst: Side, i: np.ndarray, j: np.ndarray
) -> dict[str, np.ndarray]:
    """All data measures for pairs (i[k], j[k]) with statistics c[k], p[k]; arrays [K]."""
    src, dst = src.take(i), dst.take(j)
    out = {m: data_measure(m, n, c, p, src, dst) for m in MEASURES}
    out["sufficiency_lo"] = wilson_lower(c, src.count)
    out["necessity_lo"] = wilson_lower(c, dst.count)
    return out
