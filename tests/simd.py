"""The SIMD levels this machine offers below its own, as environment settings.

NumPy picks its SIMD kernels (e.g. `log`, `exp`) at import time from the CPU; with
``NPY_DISABLE_CPU_FEATURES`` the same machine runs the kernels an older CPU would. numba
compiles for the host CPU unless ``NUMBA_CPU_NAME=generic``. Results that differ between such
settings only in the last bits are fine for measures (see numerics.py); counts, kept sets and
resume byte-identity must not differ at all. `.ci/run` re-runs the numeric tests under every
setting printed by ``python tests/simd.py``.

NumPy >= 2.4 names the x86-64 levels X86_V2 (baseline), X86_V3 (AVX2) and X86_V4 (AVX-512).
"""

from __future__ import annotations

import sys

GENERIC_NUMBA = {"NUMBA_CPU_NAME": "generic"}


def numpy_levels() -> list[dict[str, str]]:
    """One environment per NumPy SIMD level below this machine's, highest first."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as have
    except ImportError:  # NumPy < 2 keeps the table elsewhere and names levels differently
        return []
    disabled: list[str] = []
    out = []
    for level in ("X86_V4", "X86_V3"):
        if have.get(level):
            disabled.append(level)
            out.append({"NPY_DISABLE_CPU_FEATURES": " ".join(disabled)})
    return out


def variants() -> list[dict[str, str]]:
    """Every setting the numeric tests must pass under besides the default one."""
    return numpy_levels() + [GENERIC_NUMBA]


def lowest() -> dict[str, str]:
    """The lowest SIMD level reachable here: NumPy's baseline kernels and generic numba code."""
    levels = numpy_levels()
    return {**(levels[-1] if levels else {}), **GENERIC_NUMBA}


if __name__ == "__main__":
    # one line per variant: NAME=value pairs separated by ";" (values may hold spaces)
    for v in variants():
        sys.stdout.write(";".join(f"{k}={val}" for k, val in v.items()) + "\n")
