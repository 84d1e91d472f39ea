"""Results across SIMD levels: counts and kept sets exact, measures within MEASURE_RTOL.

Each variant of `simd.variants()` (NumPy with its AVX-512 / AVX2 kernels disabled, numba
compiled for a generic x86-64) recomputes the same stats in a fresh process, since NumPy
chooses its kernels at import. A result that only holds at this machine's own SIMD level
fails here, wherever the suite runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numerics
import numpy as np
import pyarrow.parquet as pq
import pytest
import simd
from test_stats import make_run
from test_stats_oracle import synthetic_codes

EXACT = ("src_layer", "src", "dst_layer", "dst", "n_co", "layer", "feature", "active_count")
STATS_SCRIPT = """
import sys
import numpy as np
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
rng = np.random.default_rng(5)
dec = {l: rng.normal(size=(d, 12)).astype(np.float32) for l, d in ((0, 40), (2, 30), (5, 35))}
run_stats(sys.argv[1], StatsConfig(span=2, relative_threshold=0.2 if sys.argv[2] == "rel" else None,
                                   keep={"pearson": 0.6, "mutual_info": 0.05}, top_k=3, min_support=3),
          decoders=dec, progress=False)
"""


def _run_stats(path: Path, mode: str, extra_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NPY_DISABLE_CPU_FEATURES", "NUMBA_CPU_NAME")}
    env.update(extra_env, HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, "-c", STATS_SCRIPT, str(path), mode], env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-3000:]


def _compare(a: Path, b: Path, what: str) -> None:
    for name in ("edges.parquet", "feature_links.parquet"):
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        assert ta.column_names == tb.column_names and ta.num_rows == tb.num_rows, (what, name)
        for col in ta.column_names:
            x, y = ta.column(col).to_numpy(), tb.column(col).to_numpy()
            if col in EXACT or col.endswith("_id") or x.dtype.kind in "iub":
                assert np.array_equal(x, y), (what, name, col)  # counts and ids: exact
            else:
                numerics.assert_close(x, y, f"{what} {name}:{col}")


@pytest.mark.parametrize("mode", ["abs", "rel"])
def test_stats_agree_at_every_simd_level(tmp_path, mode):
    codes = synthetic_codes(seed=2, t=640)
    ref = make_run(tmp_path / "default", codes)
    _run_stats(ref.path, mode, {})
    for k, variant in enumerate(simd.variants()):
        other = make_run(tmp_path / f"variant{k}", codes)
        _run_stats(other.path, mode, variant)
        _compare(ref.path, other.path, str(variant))
