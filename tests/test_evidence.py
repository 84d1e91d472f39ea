"""The evidence statistics against independent computations (scipy's exact tests, brute force)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from saelineage.lineage import evidence


def test_beta_bounds_equal_scipy_exact_interval():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 400, 60)
    k = (rng.random(60) * (n + 1)).astype(np.int64).clip(0, n)
    k[:3], n[:3] = (0, 5, 7), (5, 5, 9)
    lo, hi = evidence.beta_bounds(k, n, 0.95)
    for i in range(len(n)):
        ci = stats.binomtest(int(k[i]), int(n[i])).proportion_ci(0.95, method="exact")
        assert lo[i] == pytest.approx(ci.low, abs=1e-10) and hi[i] == pytest.approx(ci.high, abs=1e-10)
    lo, hi = evidence.beta_bounds(np.array([0]), np.array([0]))
    assert (lo[0], hi[0]) == (0.0, 1.0)


def test_greater_pvalue_is_the_one_sided_likelihood_ratio_test():
    rng = np.random.default_rng(1)
    for _ in range(40):
        n1, n2 = rng.integers(5, 300, 2)
        k1, k2 = rng.integers(0, n1 + 1), rng.integers(0, n2 + 1)
        table = np.array([[k1, n1 - k1], [k2, n2 - k2]])
        if (table.sum(0) == 0).any():
            continue
        g = stats.chi2_contingency(table, correction=False, lambda_="log-likelihood")[0]
        one_sided = stats.chi2.sf(g, 1) / 2 if k1 / n1 > k2 / n2 else 1 - stats.chi2.sf(g, 1) / 2
        got = evidence.greater_pvalue(np.array([k1]), np.array([n1]), np.array([k2]), np.array([n2]))[0]
        assert got == pytest.approx(one_sided, rel=1e-9, abs=1e-15)
    assert evidence.greater_pvalue(np.array([3]), np.array([0]), np.array([1]), np.array([9]))[0] == 1.0


def _brute_mi(x: np.ndarray, y: np.ndarray) -> float:
    out = 0.0
    for a in (0, 1):
        for b in (0, 1):
            pxy = np.mean((x == a) & (y == b))
            if pxy > 0:
                out += pxy * np.log(pxy / (np.mean(x == a) * np.mean(y == b)))
    return out


def test_entropy_equals_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(20):
        x = rng.random(500) < rng.uniform(0.01, 0.5)
        assert evidence.entropy(np.array([x.sum()]), 500)[0] == pytest.approx(_brute_mi(x, x), rel=1e-12)


def test_gate_information_equals_brute_force():
    """info_condition = I(j; C) / H(j) and info_single = max(I(j; a), I(j; b)) / H(j), against the
    information computed here from the token vectors (C = a∧b or a∨b)."""
    rng = np.random.default_rng(2)
    n = 500
    for _ in range(20):
        a, b = rng.random((2, n)) < rng.uniform(0.05, 0.5, (2, 1))
        for kind, cond in (("and", a & b), ("or", a | b)):
            j = np.where(rng.random(n) < 0.8, cond, rng.random(n) < 0.1)
            got = evidence.gate_evidence(kind, n, **_table_counts(a, b, j))
            h = _brute_mi(j, j)
            single = max(_brute_mi(j, a), _brute_mi(j, b)) / h
            assert got["info_condition"][0] == pytest.approx(_brute_mi(j, cond) / h, rel=1e-12, abs=1e-15)
            assert got["info_single"][0] == pytest.approx(single, rel=1e-12, abs=1e-15)


def test_bh_qvalues_equal_scipy():
    p = np.random.default_rng(3).random(500) ** 3
    assert np.allclose(evidence.bh_qvalues(p), stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    assert len(evidence.bh_qvalues(np.zeros(0))) == 0


def _table_counts(a, b, j):
    return dict(
        n_j=np.array([j.sum()]), n_a=np.array([a.sum()]), n_b=np.array([b.sum()]), n_ab=np.array([(a & b).sum()]),
        n_aj=np.array([(a & j).sum()]), n_bj=np.array([(b & j).sum()]), t_and=np.array([(a & b & j).sum()]),
    )  # fmt: skip


def test_gate_evidence_separates_gates_from_carried_children():
    rng = np.random.default_rng(4)
    n = 20_000
    a, b = rng.random(n) < 0.1, rng.random(n) < 0.12
    flip = rng.random(n) < 0.03
    and_child = (a & b) ^ (flip & (rng.random(n) < 0.1))
    carried = a ^ (flip & (rng.random(n) < 0.5))  # a alone, with noise: a∧b adds nothing
    ev_and = evidence.gate_evidence("and", n, **_table_counts(a, b, and_child))
    ev_car = evidence.gate_evidence("and", n, **_table_counts(a, b, carried))
    assert ev_and["p_value"][0] < 1e-12 and ev_and["gain"][0] > 0.3
    assert ev_car["gain"][0] < 0  # the single parent explains the child better than a∧b
    or_child = a | b
    ev_or = evidence.gate_evidence("or", n, **_table_counts(a, b, or_child))
    assert ev_or["info_condition"][0] == pytest.approx(1.0) and ev_or["score_backward_lo"][0] > 0.99
    # the 2×2×2 cells add up to the counts they came from
    c = evidence.gate_tables(n, **_table_counts(a, b, and_child))
    assert sum(c[f"n{x}"][0] for x in ("11", "10", "01", "00")) == n
    assert sum(c[f"j{x}"][0] for x in ("11", "10", "01", "00")) == and_child.sum()
    assert c["j10"][0] == (a & ~b & and_child).sum() and c["j00"][0] == (~a & ~b & and_child).sum()


def test_lower_bound_reaches_equals_inverting_the_beta():
    rng = np.random.default_rng(5)
    n = rng.integers(0, 500, 2000)
    k = (rng.random(2000) * (n + 1)).astype(np.int64).clip(0, n)
    lo, _ = evidence.beta_bounds(k, n, 0.95)
    for p0 in (0.3, 0.6, 0.9):
        got = evidence.lower_bound_reaches(k, n, p0, 0.95)
        near = np.abs(lo - p0) < 1e-9  # ties decided by rounding either way
        assert np.array_equal(got[~near], (lo >= p0)[~near])
