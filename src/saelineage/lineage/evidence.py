"""Evidence for a boolean relation between features: exact bounds, likelihood-ratio tests,
information gain and false-discovery control (docs/design.md §4, "Evidence").

A fixed score rule (both scores ≥ 0.95) fails on noisy codes twice over: a true gate whose
child misfires on 5% of its tokens drops below the bar, and a child that one parent alone
already explains passes it. The tests here weigh support instead. Everything is vectorised
over candidates (millions of rows) and pure: counts in, columns out.

Conventions: counts are int64 arrays of one length; probabilities are float64; a p-value is
one-sided (the relation's direction), 1.0 where a test has no data. Mutual information is the
stats stage's (`stats.measures.mutual_info`, exact in integer counts), so a gate's information
terms and its edges' mutual_info are one computation.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from saelineage.stats.measures import mutual_info


def beta_bounds(k: np.ndarray, n: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Clopper–Pearson (exact binomial) interval of k / n at `confidence`, two-sided.

    k, n: int [R]. Returns (lo, hi) float64 [R]; (0, 1) where n = 0."""
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    a = (1.0 - confidence) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, special.betaincinv(k, n - k + 1, a), 0.0)
        hi = np.where(k < n, special.betaincinv(k + 1, n - k, 1 - a), 1.0)
    empty = n <= 0
    return np.where(empty, 0.0, np.nan_to_num(lo)), np.where(empty, 1.0, np.nan_to_num(hi, nan=1.0))


def lower_bound_reaches(k: np.ndarray, n: np.ndarray, p0: float, confidence: float = 0.95) -> np.ndarray:
    """Whether the Clopper–Pearson lower bound of k / n (two-sided `confidence`) is ≥ p0, bool [R].

    Same answer as `beta_bounds(k, n)[0] >= p0` without inverting the Beta: the bound reaches p0
    exactly when P(X ≥ k | n, p0) = I_p0(k, n − k + 1) ≤ (1 − confidence) / 2."""
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    ok = (k > 0) & (n > 0)
    with np.errstate(invalid="ignore"):
        tail = special.betainc(np.where(ok, k, 1), np.where(ok, n - k + 1, 1), p0)
    return ok & (tail <= (1.0 - confidence) / 2)


def _loglik(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Binomial log-likelihood of k successes in n at rate p (0·log 0 = 0)."""
    return special.xlogy(k, p) + special.xlogy(n - k, 1 - p)


def greater_pvalue(k1: np.ndarray, n1: np.ndarray, k2: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """One-sided p-value of H1: k1/n1 > k2/n2, from the signed root of the likelihood ratio.

    G = 2·[ℓ(p̂1) + ℓ(p̂2) − ℓ(pooled)] is χ²₁ under equal rates; z = sign(p̂1 − p̂2)·√G is
    standard normal, so p = Φ̄(z). Rows where either group is empty get 1.0 (no evidence).
    """
    k1, n1, k2, n2 = (np.asarray(x, np.float64) for x in (k1, n1, k2, n2))
    ok = (n1 > 0) & (n2 > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1 = np.where(ok, k1 / np.where(ok, n1, 1), 0.0)
        p2 = np.where(ok, k2 / np.where(ok, n2, 1), 0.0)
        pool = np.where(ok, (k1 + k2) / np.where(ok, n1 + n2, 1), 0.0)
        g = 2 * (_loglik(k1, n1, p1) + _loglik(k2, n2, p2) - _loglik(k1, n1, pool) - _loglik(k2, n2, pool))
    z = np.sign(p1 - p2) * np.sqrt(np.maximum(g, 0.0))
    return np.where(ok, stats.norm.sf(z), 1.0)


def entropy(n_x: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Entropy (nats) of a binary variable on n_x of n tokens."""
    p = np.asarray(n_x, np.float64) / np.asarray(n, np.float64)
    return -(special.xlogy(p, p) + special.xlogy(1 - p, 1 - p))


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values of p-values `p` [R] (the family is all R rows)."""
    p = np.asarray(p, np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def gate_tables(
    n: int,
    n_j: np.ndarray,
    n_a: np.ndarray,
    n_b: np.ndarray,
    n_ab: np.ndarray,
    n_aj: np.ndarray,
    n_bj: np.ndarray,
    t_and: np.ndarray,
) -> dict[str, np.ndarray]:
    """The 2×2×2 table of child j against parents a, b: tokens (n_xy) and child tokens (j_xy) per
    parent state xy ∈ {11, 10, 01, 00}. Inputs are the validation counts (int64 [R])."""
    return {
        "n11": n_ab, "j11": t_and,
        "n10": n_a - n_ab, "j10": n_aj - t_and,
        "n01": n_b - n_ab, "j01": n_bj - t_and,
        "n00": n - n_a - n_b + n_ab, "j00": n_j - n_aj - n_bj + t_and,
    }  # fmt: skip


GATE_EVIDENCE_COLUMNS = (
    "score_forward_lo", "score_forward_hi", "score_backward_lo", "score_backward_hi",
    "info_condition", "info_single", "gain", "p_value",
)  # fmt: skip
"""Evidence columns of every gate row (q_value is added once the whole family is known)."""


def gate_evidence(
    kind: str,
    n: int,
    n_j: np.ndarray,
    n_a: np.ndarray,
    n_b: np.ndarray,
    n_ab: np.ndarray,
    n_aj: np.ndarray,
    n_bj: np.ndarray,
    t_and: np.ndarray,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Evidence that child j = a∧b (`kind` 'and') or a∨b ('or'), per candidate row.

    - score_forward = P(j | C), score_backward = P(C | j), each with exact (Clopper–Pearson)
      bounds at `confidence`;
    - info_condition = I(j; C) / H(j), info_single = max(I(j; a), I(j; b)) / H(j): the share of the
      child's entropy the condition, or the better parent alone, explains; gain = their difference;
    - p_value: one-sided likelihood-ratio tests, all of which must reject (intersection–union):
      the child depends on C (against independence), and each parent adds to the other — for AND
      P(j | a∧b) > P(j | a∧¬b) and > P(j | ¬a∧b); for OR P(j | ¬a∧b) > P(j | ¬a∧¬b) and
      P(j | a∧¬b) > P(j | ¬a∧¬b). The p-value is the largest of the three.
    """
    core = gate_core(kind, n, n_j, n_a, n_b, n_ab, n_aj, n_bj, t_and)
    f_lo, f_hi = beta_bounds(core["support"], core["n_condition"], confidence)
    b_lo, b_hi = beta_bounds(core["support"], n_j, confidence)
    return {
        "score_forward_lo": f_lo,
        "score_forward_hi": f_hi,
        "score_backward_lo": b_lo,
        "score_backward_hi": b_hi,
        "info_condition": core["info_condition"],
        "info_single": core["info_single"],
        "gain": core["gain"],
        "p_value": core["p_value"],
    }


def gate_core(
    kind: str,
    n: int,
    n_j: np.ndarray,
    n_a: np.ndarray,
    n_b: np.ndarray,
    n_ab: np.ndarray,
    n_aj: np.ndarray,
    n_bj: np.ndarray,
    t_and: np.ndarray,
) -> dict[str, np.ndarray]:
    """`gate_evidence` without the bounds (support, n_condition, information terms, gain, p_value)."""
    c = gate_tables(n, n_j, n_a, n_b, n_ab, n_aj, n_bj, t_and)
    if kind == "and":
        support, n_cond = t_and, n_ab
        p_b_adds = greater_pvalue(c["j11"], c["n11"], c["j10"], c["n10"])
        p_a_adds = greater_pvalue(c["j11"], c["n11"], c["j01"], c["n01"])
    else:
        support, n_cond = n_aj + n_bj - t_and, n_a + n_b - n_ab
        p_b_adds = greater_pvalue(c["j01"], c["n01"], c["j00"], c["n00"])
        p_a_adds = greater_pvalue(c["j10"], c["n10"], c["j00"], c["n00"])
    p_dep = greater_pvalue(support, n_cond, n_j - support, n - n_cond)
    h = entropy(n_j, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        i_c = np.where(h > 0, mutual_info(n, support, n_cond, n_j) / h, 0.0)
        i_s = np.where(h > 0, np.maximum(mutual_info(n, n_aj, n_a, n_j), mutual_info(n, n_bj, n_b, n_j)) / h, 0.0)
    return {
        "support": support,
        "n_condition": n_cond,
        "info_condition": i_c,
        "info_single": i_s,
        "gain": i_c - i_s,
        "p_value": np.maximum(np.maximum(p_a_adds, p_b_adds), p_dep),
    }


def implication_evidence(
    n: int, n_parent: np.ndarray, n_child: np.ndarray, n_co: np.ndarray, confidence: float = 0.95
) -> dict[str, np.ndarray]:
    """Evidence that a child implies its parent (a split's child): P(parent | child) with exact
    bounds, and the one-sided p-value of P(parent | child) > P(parent | ¬child)."""
    lo, hi = beta_bounds(n_co, n_child, confidence)
    p = greater_pvalue(n_co, n_child, n_parent - n_co, n - n_child)
    return {"necessity_lo": lo, "necessity_hi": hi, "p_value": p}
