"""Brute-force dense oracle for the stats stage (imported by test_stats*.py; no tests here).

Everything is recomputed from dense activation matrices in extended precision
(np.longdouble) straight from the definitions of docs/design.md §4, with no shared code.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

LD = np.longdouble
MEASURES = ("jaccard", "sufficiency", "necessity", "mutual_info", "pearson", "act_cosine")
Z = 1.959963984540054


def synthetic_codes(seed: int = 0, t: int = 960, dims=(40, 30, 35), layers=(0, 2, 5)) -> dict[int, np.ndarray]:
    """Dense float32 [t, d] codes: skewed densities, dead and constant features, layer-to-layer copies."""
    rng = np.random.default_rng(seed)
    out, prev = {}, None
    for layer, d in zip(layers, dims):
        dens = np.geomspace(0.6, 0.002, d)[rng.permutation(d)]
        x = ((rng.random((t, d)) < dens) * rng.exponential(1.0, (t, d))).astype(np.float32)
        if prev is not None:  # a third of the features continue an earlier one (noisy copy)
            for j in range(0, d, 3):
                src = prev[:, (7 * j) % prev.shape[1]]
                x[:, j] = np.where(rng.random(t) < 0.85, src * rng.uniform(0.5, 2.0), 0) + x[:, j] * (
                    rng.random(t) < 0.05
                )
        x[:, 1] = 0.0  # dead
        x[:, 2] = 1.5  # constant on every token
        x[:, 4] = np.where(rng.random(t) < 0.995, 0.25, 0.0)  # almost always the same value
        x[:, 6] = 0.0
        x[rng.integers(0, t, 3), 6] = rng.uniform(0.1, 1.0, 3).astype(np.float32)  # very rare
        out[layer] = x
        prev = x
    return out


def to_csr(codes: dict[int, np.ndarray]) -> dict[int, sp.csr_matrix]:
    return {l: sp.csr_matrix(x) for l, x in codes.items()}


def pair_oracle(x: np.ndarray, y: np.ndarray, thx: np.ndarray, thy: np.ndarray) -> dict[str, np.ndarray]:
    """All measures [d_x, d_y] (float64 from longdouble) and c_ij for dense kept-token codes."""
    X, Y = x.astype(LD), y.astype(LD)
    n = LD(len(X))
    A, B = (x > thx).astype(np.int64), (y > thy).astype(np.int64)
    c = (A.T @ B).astype(LD)
    ci, cj = A.sum(0).astype(LD)[:, None], B.sum(0).astype(LD)[None, :]
    p = X.T @ Y
    si, sj = X.sum(0)[:, None], Y.sum(0)[None, :]
    qi, qj = (X * X).sum(0)[:, None], (Y * Y).sum(0)[None, :]
    const_i = (x.min(0) == x.max(0))[:, None]
    const_j = (y.min(0) == y.max(0))[None, :]
    with np.errstate(all="ignore"):
        out = {
            "n_co": c,
            "jaccard": c / (ci + cj - c),
            "sufficiency": c / ci,
            "necessity": c / cj,
            "pearson": np.where(
                const_i | const_j, np.nan, (n * p - si * sj) / np.sqrt((n * qi - si * si) * (n * qj - sj * sj))
            ),
            "act_cosine": np.where((qi == 0) | (qj == 0), np.nan, p / np.sqrt(qi * qj)),
            "p_sum": p,
        }
        mi = np.zeros(c.shape, LD)
        for nxy, nx, ny in ((c, ci, cj), (ci - c, ci, n - cj), (cj - c, n - ci, cj), (n - ci - cj + c, n - ci, n - cj)):
            mi += np.where(nxy > 0, nxy / n * np.log(np.where(nxy > 0, nxy * n / (nx * ny), 1)), 0)
        out["mutual_info"] = mi
        for name, k, m in (("sufficiency_lo", c, ci), ("necessity_lo", c, cj)):
            ph = k / m
            lo = (ph + Z * Z / (2 * m) - Z * np.sqrt(ph * (1 - ph) / m + Z * Z / (4 * m * m))) / (1 + Z * Z / m)
            out[name] = np.where(m > 0, np.where(k == 0, 0, np.clip(lo, 0, 1)), np.nan)  # k = 0: exactly 0
    return {k: np.asarray(v, np.float64) if k != "n_co" else np.asarray(v, np.int64) for k, v in out.items()}


def top_k_mask(values: np.ndarray, support: np.ndarray, k: int) -> np.ndarray:
    """[d_x, d_y] True where a cell is among the k best supported cells of its row or of its column."""
    keep = np.zeros(values.shape, bool)
    for axis in (0, 1):
        v = values if axis == 1 else values.T
        s = support if axis == 1 else support.T
        m = np.zeros(v.shape, bool)
        for r in range(v.shape[0]):
            ids = [j for j in range(v.shape[1]) if s[r, j] and not np.isnan(v[r, j])]
            ids.sort(key=lambda j: (-v[r, j], j))
            m[r, ids[:k]] = True
        keep |= m if axis == 1 else m.T
    return keep


def kept_mask(
    meas: dict[str, np.ndarray],
    min_support: int,
    k: int,
    keep: dict[str, float],
    primary=("jaccard", "sufficiency", "necessity", "pearson"),
) -> np.ndarray:
    sup = meas["n_co"] >= min_support
    mask = np.zeros(sup.shape, bool)
    for m in primary:
        mask |= top_k_mask(meas[m], sup, k)
    for m, t in keep.items():
        mask |= sup & (np.nan_to_num(meas[m], nan=-np.inf) >= t)
    return mask & sup


def best(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Max over `axis` ignoring NaN, lowest index on ties: (values, ids), NaN/-1 where all NaN."""
    v = values if axis == 1 else values.T
    ids = np.full(v.shape[0], -1)
    out = np.full(v.shape[0], np.nan)
    for r in range(v.shape[0]):
        ok = ~np.isnan(v[r])
        if ok.any():
            j = int(np.flatnonzero(v[r] == np.max(v[r][ok]))[0])
            ids[r], out[r] = j, v[r, j]
    return out, ids


def dec_cos(w_src: np.ndarray, w_dst: np.ndarray) -> np.ndarray:
    a, b = w_src.astype(LD), w_dst.astype(LD)
    na, nb = np.sqrt((a * a).sum(1))[:, None], np.sqrt((b * b).sum(1))[None, :]
    with np.errstate(all="ignore"):
        return np.asarray(np.where((na > 0) & (nb > 0), (a @ b.T) / (na * nb), np.nan), np.float64)
