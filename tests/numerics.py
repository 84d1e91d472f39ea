"""Tolerances for comparing floating-point results produced by different code paths.

Counts (integers) are compared exactly everywhere. A float computed two ways — numba vs
NumPy, or NumPy's AVX2 vs AVX-512 `log`, or two libm builds — may differ in its last bits
(seen: 6.6e-15 relative for mutual information between numba's and NumPy's AVX-512 `log1p`),
so such comparisons use a relative tolerance, never bitwise equality. Bitwise equality is
only asserted between runs of one code path on one machine (e.g. resume vs uninterrupted).
"""

from __future__ import annotations

import numpy as np

MEASURE_RTOL = 1e-12
"""Largest relative difference allowed between two code paths' values of one measure."""


def close_mask(got: np.ndarray, want: np.ndarray, rtol: float = MEASURE_RTOL) -> np.ndarray:
    """Elementwise: equal within `rtol` relative, NaN matching NaN, infinities matching exactly."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    both_nan = np.isnan(got) & np.isnan(want)
    with np.errstate(invalid="ignore"):
        same = got == want  # also covers equal infinities and exact zeros
        near = np.abs(got - want) <= rtol * np.maximum(np.abs(got), np.abs(want))
    return both_nan | same | near


def assert_close(got: np.ndarray, want: np.ndarray, what: str = "", rtol: float = MEASURE_RTOL) -> None:
    """Assert `close_mask` everywhere, reporting the first mismatches."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    ok = close_mask(got, want, rtol)
    bad = np.flatnonzero(~ok.ravel())
    assert ok.all(), (
        f"{what}: {len(bad)} values differ beyond rtol={rtol}: at {bad[:5]} "
        f"got {got.ravel()[bad[:5]]} want {want.ravel()[bad[:5]]}"
    )
