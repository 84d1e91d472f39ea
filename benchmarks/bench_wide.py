"""Stats at 262,144 latents: sparse accumulators against the dense path, side by side in one run.

Synthetic codes as in bench_stats.py (power-law densities, 70% of a token's features carried to
the next layer), 2 layers × 262,144 latents by default. The stage runs twice in child processes
under the same --memory-limit, once with `--accumulate sparse` and once with `--accumulate dense`
(the path every width took before sparse rows), and prints for each: wall time, passes, peak
RSS and the phases (census, read+prepare, zeroing, accumulate, finalize, write). Then:

  * the two paths' edges.parquet and feature_links.parquet compared column by column (bit for
    bit: the same additions in the same order per cell);
  * a brute-force oracle on a column subset: for --oracle-columns random target features, the
    exact co-activation counts and product sums against every source feature (scipy, float64),
    checked against every kept edge into those columns, and their best predecessor under each
    measure over all source features against feature_links.

    python benchmarks/bench_wide.py                          # 200k tokens, 8G, both paths
    python benchmarks/bench_wide.py --tokens 1000000 --no-dense
    python benchmarks/bench_wide.py --plan-table             # passes at 65k / 262k / 1M latents

--plan-table prints the plans alone (nothing runs): passes of the dense and the sparse path at
8 GiB for wide SAE sets, with the census taken from the synthetic densities (each source row's
increments = tokens × its density × L0).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import densities, synthetic_run  # noqa: E402  (a sibling script)

from saelineage.config import usable_cpus  # noqa: E402
from saelineage.data.store import collected_shards  # noqa: E402
from saelineage.run import RunDir  # noqa: E402
from saelineage.stats.batch import read_layers  # noqa: E402
from saelineage.stats.config import parse_size  # noqa: E402
from saelineage.stats.edges import EdgeOptions  # noqa: E402
from saelineage.stats.engine import Layout, Pair, plan  # noqa: E402
from saelineage.stats.measures import MEASURES, Marginals, data_measure, side  # noqa: E402

CHILD = """
import json, resource, sys, time
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
t = time.perf_counter()
cfg = StatsConfig(memory_limit=int(sys.argv[2]), workers=int(sys.argv[3]), accumulate=sys.argv[4], sae_match="off")
run_stats(sys.argv[1], cfg, progress=False, force=True)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": time.perf_counter() - t, "rss": rss}))
"""
TABLES = ("edges.parquet", "feature_links.parquet")


def run_path(run: RunDir, limit: int, workers: int, accumulate: str, keep: Path) -> dict:
    """Stats in a child process (its peak RSS is the stage's); the tables copied to `keep`."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(run.path), str(limit), str(workers), accumulate],
        check=True,
        capture_output=True,
        text=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["summary"] = json.loads(run.file("stats_summary.json").read_text())
    keep.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        (keep / name).write_bytes(run.file(name).read_bytes())
    return res


def same_tables(a: Path, b: Path) -> dict[str, bool]:
    """Per table: every column equal bit for bit (NaN equal to NaN)."""
    out = {}
    for name in TABLES:
        x, y = pq.read_table(a / name), pq.read_table(b / name)
        out[name] = x.column_names == y.column_names and all(
            np.array_equal(x[c].to_numpy(), y[c].to_numpy(), equal_nan=x.schema.field(c).type in ("double", "float"))
            for c in x.column_names
        )
    return out


def codes_matrix(run: RunDir, layer: int, d: int) -> sp.csc_matrix:
    """Kept tokens' codes of a layer as a float64 CSC [tokens, d] (BOS rows dropped, as stats does)."""
    parts = []
    for shard in collected_shards(run):
        pos, codes = read_layers(shard, [layer])
        ptr, idx, val = codes[layer]
        parts.append(sp.csr_matrix((val.astype(np.float64), idx, ptr), shape=(len(ptr) - 1, d))[pos > 0])
    return sp.vstack(parts).tocsc()


def oracle(run: RunDir, tables: Path, d: int, columns: int, seed: int = 0) -> dict:
    """Brute force on a subset of target columns j: counts and sums against all sources, every
    kept edge into them, and their best predecessor per measure over all sources."""
    x, y = codes_matrix(run, 0, d), codes_matrix(run, 1, d)
    n = x.shape[0]
    cols = np.sort(np.random.default_rng(seed).choice(d, columns, replace=False))
    ys = y[:, cols]
    xb, yb = (x > 0).astype(np.float64), (ys > 0).astype(np.float64)
    c = (xb.T @ yb).toarray()  # [d, columns], exact integers
    p = (x.T @ ys).toarray()
    edges = pq.read_table(tables / "edges.parquet").to_pandas()
    e = edges[edges.dst.isin(cols)]
    at = np.searchsorted(cols, e.dst.to_numpy())
    got_c, got_p, i = e.n_co.to_numpy(), e.p_sum.to_numpy(), e.src.to_numpy()
    rel = np.abs(got_p - p[i, at]) / np.maximum(np.abs(p[i, at]), 1e-300)

    def marginals(m: sp.csc_matrix) -> Marginals:
        cnt = np.diff(m.indptr).astype(np.int64)
        s, q = np.asarray(m.sum(0)).ravel(), np.asarray(m.multiply(m).sum(0)).ravel()
        vmax = np.asarray(m.max(0).todense()).ravel()
        vmin = np.full(m.shape[1], np.inf)  # not needed to tell constants apart: every feature is sparse
        return Marginals(cnt, cnt, s, q, vmin, vmax)

    src, dst = side(n, marginals(x)), side(n, marginals(ys))
    links = pq.read_table(tables / "feature_links.parquet").to_pandas()
    row = links[links.layer == 1].set_index("feature").loc[cols]
    best_ok = {}
    for meas in MEASURES:
        v = data_measure(meas, n, c, p, _col(src), _row(dst))
        v = np.where(np.isnan(v), -np.inf, v)
        want = v.max(0)
        got = row[f"best_pred_{meas}"].to_numpy()
        ok = np.isclose(got, want, rtol=1e-12, atol=0) | (np.isinf(want) & np.isnan(got))
        best_ok[meas] = int(ok.sum())
    return {
        "columns": columns,
        "edges_checked": len(e),
        "counts_equal": bool((got_c == c[i, at]).all()),
        "p_sum_max_rel": float(rel.max()) if len(rel) else 0.0,
        "best_pred_agree": best_ok,
    }


def _col(s):
    """A Side as [d, 1] columns (sources down the rows)."""
    return type(s)(*(x[:, None] for x in s))


def _row(s):
    """A Side as [1, k] rows (targets across)."""
    return type(s)(*(x[None, :] for x in s))


PLAN_SETS = [  # name, layers, latents
    ("GPT-2 small / res-jb", 12, 24_576),
    ("Gemma Scope 2B (65k)", 26, 65_536),
    ("Llama Scope 8B (131k)", 32, 131_072),
    ("2 layers, 262k", 2, 262_144),
    ("Gemma Scope 2, 262k", 26, 262_144),
    ("Gemma Scope 2, 1M", 4, 1_048_576),
]


def plan_table(limit: int, l0: float, token_counts: tuple[int, ...] = (200_000, 1_000_000, 10_000_000)) -> None:
    """Passes of the dense and the sparse plan (adjacent pairs) under `limit`, census modelled."""
    print(f"plans at --memory-limit {limit / 2**30:.0f} GiB (adjacent pairs; census: tokens x density x L0 {l0:g})")
    print("| SAE set | layers × latents | tokens | dense passes | sparse passes | sparse accumulators |")
    print("|---|---|---|---|---|---|")
    for name, layers, d in PLAN_SETS:
        dens = densities(np.random.default_rng(0), d, l0)
        for tokens in token_counts:
            pairs = [Pair(l, l + 1, 1) for l in range(layers - 1)]
            work = np.round(tokens * dens * l0).astype(np.int64)
            lay = Layout([], list(range(layers)), dict.fromkeys(range(layers), d), pairs, {}, True, False, True, tokens)
            dense = plan(lay, EdgeOptions(), limit, baseline=512 << 20)
            lay.work = dict.fromkeys(range(len(pairs)), work)
            sparse = plan(lay, EdgeOptions(), limit, baseline=512 << 20, accumulate="sparse")

            def passes(b) -> str:
                return f"{len(b.passes):,}" if b.needed <= limit else f"does not fit (needs {b.needed / 2**30:.1f} GiB)"

            print(
                f"| {name} | {layers} × {d:,} | {tokens / 1e6:g}M | {passes(dense)} | "
                f"{passes(sparse)} | {sparse.accumulator_bytes(lay) / 2**30:,.0f} GiB |"
            )


def phases(s: dict) -> str:
    tm = s["timings"]
    keys = ("census", "reserve", "read_prepare", "zero", "accumulate", "finalize", "write")
    return ", ".join(f"{k} {tm.get(k, 0):.1f}s" for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d", type=int, default=262_144)
    ap.add_argument("--l0", type=float, default=64)
    ap.add_argument("--memory-limit", default="8G")
    ap.add_argument("--workers", type=int, default=usable_cpus())
    ap.add_argument("--no-dense", action="store_true", help="Skip the dense path (and the comparison).")
    ap.add_argument("--oracle-columns", type=int, default=64, help="Target columns checked by brute force (0: none).")
    ap.add_argument("--dir", type=Path, default=None, help="Keep (and reuse) the synthetic run here.")
    ap.add_argument("--plan-table", action="store_true", help="Print the plans at wide widths and stop.")
    a = ap.parse_args()
    limit = parse_size(a.memory_limit)
    if a.plan_table:
        plan_table(limit, a.l0)
        return
    tmp, run, took = synthetic_run(a.dir, "bench_wide_", a.tokens, a.layers, a.d, a.l0)
    out = Path(tempfile.mkdtemp(prefix="bench_wide_tables_"))
    print(
        f"synthetic run: {a.tokens:,} tokens x {a.layers} layers x {a.d:,} latents, L0 ~ {a.l0:g} "
        f"({took:.0f}s to generate); --memory-limit {limit / 2**30:.1f} GiB, {a.workers} threads"
    )
    res = {}
    for acc in ("sparse",) + (() if a.no_dense else ("dense",)):
        t = time.perf_counter()
        r = res[acc] = run_path(run, limit, a.workers, acc, out / acc)
        s = r["summary"]
        print(
            f"\n{acc}: {r['seconds']:.1f}s wall ({time.perf_counter() - t:.1f}s with start-up), {s['passes']} passes, "
            f"peak RSS {r['rss'] / 2**30:.2f} GiB, {s['edges']:,} edges, {s['increments']:,} increments, "
            f"accumulators {s['accumulator_bytes'] / 2**30:.2f} GiB in all"
        )
        print(f"  phases: {phases(s)}")
        tm = s["timings"]
        print(
            f"  finalize + zeroing {tm['finalize'] + tm.get('zero', 0):.1f}s vs accumulate {tm['accumulate']:.1f}s "
            f"(ratio {(tm['finalize'] + tm.get('zero', 0)) / max(tm['accumulate'], 1e-9):.2f})"
        )
    if "dense" in res:
        print(f"\nratio dense/sparse wall time: {res['dense']['seconds'] / res['sparse']['seconds']:.2f}x")
        print(f"tables identical bit for bit: {same_tables(out / 'sparse', out / 'dense')}")
    if a.oracle_columns:
        o = oracle(run, out / "sparse", a.d, a.oracle_columns)
        print(
            f"\noracle on {o['columns']} random target columns (sparse path): {o['edges_checked']:,} kept edges, "
            f"counts identical: {o['counts_equal']}, p_sum max rel. error {o['p_sum_max_rel']:.1e}; best predecessor "
            f"over all {a.d:,} sources agrees in "
            + ", ".join(f"{m} {k}/{o['columns']}" for m, k in o["best_pred_agree"].items())
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
