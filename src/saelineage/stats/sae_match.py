"""Data-free matching of adjacent layers' features from SAE weights ("SAE Match", Balagansky,
Maksimov, Gavrilov 2024, arXiv:2410.07656; docs/design.md §5.12).

Each decoder row is *folded* with the scale at which its feature starts to write: a JumpReLU
feature is zero below its threshold θ_i and at least θ_i above it, so θ_i·W_dec[i] is the
smallest vector it adds to the residual stream, and two features of different layers that write
the same direction at different scales stay apart. TopK and ReLU ("standard") SAEs have no such
parameter in their weights, so their rows are used as they are (folding the encoder norm or
bias would mix the read side into a write-side comparison; a data scale such as the mean
activation would make the method data-dependent).

The two layers' folded rows are then paired one to one by the assignment that minimises the
total squared distance Σ‖a_i − b_π(i)‖² (`scipy.optimize.linear_sum_assignment`, exact). MSE,
not negative cosine: cosine ignores the norms, so it would undo the folding. For rows of equal
norm (unit-norm TopK decoders) the two costs give the same assignment.

The value stored per matched pair is the folded similarity 2⟨a, b⟩ / (‖a‖² + ‖b‖²) = 1 −
‖a − b‖² / (‖a‖² + ‖b‖²): 1 for identical folded rows, the decoder cosine when the folded norms
are equal, lower when the scales differ.

Pure NumPy/SciPy: no run files here (the stats stage loads the weights).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from saelineage import contract

METHODS = ("exact", "greedy", "off")
"""exact: optimal assignment; greedy: best candidates first (wide SAEs); off: no matching."""
GREEDY_CANDIDATES = 16
"""Nearest folded rows of the next layer considered per row by the greedy matching."""
_BLOCK = 2048  # rows of the cost matrix computed at once by the greedy matching (bounded memory)


def match_bytes(d_l: int, d_m: int, d_in: int, method: str) -> int:
    """Peak bytes of one `match_layers` call, a bound: the folded rows in float64 (and the usable
    ones copied), plus the dense cost matrix (exact) or one block of it and the candidates (greedy)."""
    rows = 2 * (d_l + d_m) * d_in * 8
    if method == "exact":
        return rows + d_l * d_m * 8
    return rows + 2 * min(_BLOCK, d_l) * d_m * 8 + 2 * d_l * min(GREEDY_CANDIDATES, d_m) * 24


class Match(NamedTuple):
    """The matching of one layer pair (l → m)."""

    partner: np.ndarray
    """int32 [d_l]: the matched feature of layer m, -1 when none (zero or missing row, or d_l > d_m)"""
    similarity: np.ndarray
    """float64 [d_l]: folded similarity of the matched pair, NaN when unmatched"""


def fold(w_dec: np.ndarray, threshold: np.ndarray | None = None) -> np.ndarray:
    """float64 [d_sae, d_in]: decoder rows W_dec [d_sae, d_in] scaled by the JumpReLU threshold
    θ [d_sae] (unchanged when `threshold` is None: TopK and ReLU SAEs)."""
    w = np.asarray(w_dec, np.float64)
    if threshold is None:
        return w.copy()
    th = np.asarray(threshold, np.float64).reshape(-1)
    if th.shape[0] != w.shape[0]:
        raise ValueError(f"{th.shape[0]} thresholds for {w.shape[0]} decoder rows")
    return w * th[:, None]


def _usable(w: np.ndarray) -> np.ndarray:
    """Rows that can be matched: finite with a positive norm (a zero row is equally far from all)."""
    return np.isfinite(w).all(1) & ((w * w).sum(1) > 0)


def match_layers(a: np.ndarray, b: np.ndarray, method: str = "exact") -> Match:
    """Pair the folded rows a [d_l, d_in] with b [d_m, d_in] one to one, minimising Σ‖a_i − b_j‖².

    exact: `linear_sum_assignment` on the dense [d_l, d_m] cost matrix (min(d_l, d_m) pairs).
    greedy: each row's GREEDY_CANDIDATES nearest rows, taken in ascending cost (ties: lower i,
    then lower j) while both ends are free; a row whose candidates are all taken stays unmatched.
    """
    if method not in ("exact", "greedy"):
        raise ValueError(f"unknown matching method {method!r}")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"folded rows {a.shape} and {b.shape} must be [d, d_in] with the same d_in")
    partner = np.full(a.shape[0], -1, np.int32)
    similarity = np.full(a.shape[0], np.nan)
    ia, ib = np.flatnonzero(_usable(a)), np.flatnonzero(_usable(b))
    if len(ia) == 0 or len(ib) == 0:
        return Match(partner, similarity)
    sa, sb = a[ia], b[ib]
    na, nb = (sa * sa).sum(1), (sb * sb).sum(1)
    if method == "exact":
        from scipy.optimize import linear_sum_assignment

        cost = sa @ sb.T
        cost *= -2.0
        cost += na[:, None]
        cost += nb[None, :]
        rows, cols = linear_sum_assignment(cost)
        del cost
    else:
        rows, cols = _greedy(sa, sb, na, nb)
    dot = np.einsum("kd,kd->k", sa[rows], sb[cols])
    partner[ia[rows]] = ib[cols]
    similarity[ia[rows]] = 2.0 * dot / (na[rows] + nb[cols])
    return Match(partner, similarity)


def _greedy(a: np.ndarray, b: np.ndarray, na: np.ndarray, nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching over each row's nearest candidates (rows, cols ascending by row)."""
    k = min(GREEDY_CANDIDATES, b.shape[0])
    ci, cj, cc = [], [], []
    for lo in range(0, a.shape[0], _BLOCK):
        cost = na[lo : lo + _BLOCK, None] + nb[None, :] - 2.0 * (a[lo : lo + _BLOCK] @ b.T)
        near = np.argpartition(cost, k - 1, axis=1)[:, :k] if k < b.shape[0] else np.argsort(cost, axis=1)
        ci.append(np.repeat(np.arange(lo, lo + cost.shape[0]), near.shape[1]))
        cj.append(near.ravel())
        cc.append(np.take_along_axis(cost, near, 1).ravel())
    i, j, c = np.concatenate(ci), np.concatenate(cj), np.concatenate(cc)
    order = np.lexsort((j, i, c))
    free_a, free_b = np.ones(a.shape[0], bool), np.ones(b.shape[0], bool)
    rows, cols = [], []
    for r, s in zip(i[order].tolist(), j[order].tolist()):
        if free_a[r] and free_b[s]:
            free_a[r] = free_b[s] = False
            rows.append(r)
            cols.append(s)
    rows_a, cols_a = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    o = np.argsort(rows_a)
    return rows_a[o], cols_a[o]


def agreement(
    links: pa.Table, src_layer: int, partner: np.ndarray, measures: tuple[str, ...] = contract.DATA_MEASURES
) -> dict:
    """How often the data's best successor and the data-free match agree, for layer `src_layer`.

    links: feature_links.parquet's table (its `best_succ_{M}_id` are over all pairs); partner:
    int32 [d_l] from `match_layers`. Per measure M, the share of live features (active at least
    once) of the layer whose best successor by M is their matched partner; unmatched live
    features count as disagreeing. Returns {"n_live", "n_matched" (live features with a partner),
    "agreement": {M: share, None without live features}}."""
    lay = links.column("layer").to_numpy()
    rows = np.flatnonzero(lay == src_layer)
    feat = links.column("feature").to_numpy()[rows].astype(np.int64)
    live = links.column("active_count").to_numpy()[rows] > 0
    mine = np.full(len(rows), -1, np.int64)
    ok = feat < len(partner)
    mine[ok] = partner[feat[ok]]
    n_live = int(live.sum())
    out: dict = {"n_live": n_live, "n_matched": int((live & (mine >= 0)).sum()), "agreement": {}}
    for m in measures:
        best = links.column(f"best_succ_{m}_id").to_numpy()[rows].astype(np.int64)
        hit = live & (mine >= 0) & (best == mine)
        out["agreement"][m] = float(hit.sum() / n_live) if n_live else None
    return out
