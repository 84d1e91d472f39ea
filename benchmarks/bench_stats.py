"""Benchmark of the stats engine on synthetic SAE codes with realistic structure.

Codes: 24,576 latents per layer, power-law feature densities (2% dead), L0 ~ 50 per token,
correlated across layers (70% of a token's active features carry on to a fixed partner in
the next layer with a jittered value; the rest are new). Prints, from one run:

  * co-active pair increments per second, seconds per 1M tokens per layer pair;
  * the reference's dense algorithm (float32 einsum over 4,096-token batches, counts and
    products, as many batches as fit in --dense-seconds) and the speed ratio, with a check
    that both give the same statistics on a shared batch;
  * an extrapolation to paper scale (12 layers x 24,576 latents, 10M tokens, 11 pairs):
    time and peak RSS under --memory-limit.

    python benchmarks/bench_stats.py                 # ~1M tokens, 3 layers, 8G limit
    python benchmarks/bench_stats.py --tokens 200000 --dense-seconds 20   # quicker
    python benchmarks/bench_stats.py --baseline abeb3ed --dense-seconds 0  # this code vs a revision

--baseline REV also runs the stats stage of git revision REV (checked out in a temporary
worktree, its kernels compiled beforehand) on the same run, right after this code's, and prints
both stages' phases and the ratio of their wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from saelineage.config import usable_cpus
from saelineage.contract import new_manifest
from saelineage.data.store import LayerCodes, write_shard
from saelineage.run import RunDir, config_hash
from saelineage.stats.config import parse_size

WINDOW = 128
PAPER = {"layers": 12, "d": 24576, "tokens": 10_000_000, "pairs": 11}


def densities(rng, d: int, l0: float, alpha: float = 0.9, cap: float = 0.3, dead: float = 0.02) -> np.ndarray:
    """Power-law densities summing to l0 (capped), 2% dead, in random feature order."""
    dens = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    dens[-int(dead * d) :] = 0
    for _ in range(50):
        dens = np.minimum(dens * l0 / dens.sum(), cap)
    return dens[rng.permutation(d)]


def sample(rng, cdf: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(len(counts)), counts)
    return rows, np.searchsorted(cdf, rng.random(len(rows)) * cdf[-1], side="right").astype(np.int64)


def to_codes(rows, feats, vals, t: int, d: int) -> LayerCodes:
    key = rows * d + feats
    order = np.argsort(key, kind="stable")
    key, vals = key[order], vals[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    key, vals = key[first], vals[first]  # duplicates: keep one
    indptr = np.searchsorted(key // d, np.arange(t + 1)).astype(np.int64)
    return LayerCodes(indptr, (key % d).astype(np.int32), vals.astype(np.float32))


def make_run(path: Path, tokens: int, layers: int, d: int, l0: float, seed: int = 0, carry: float = 0.7) -> RunDir:
    """Write a synthetic run (shards of 64 windows of 128 tokens) and its manifest."""
    rng = np.random.default_rng(seed)
    cdfs = [np.cumsum(densities(rng, d, l0)) for _ in range(layers)]
    perms = [rng.permutation(d) for _ in range(layers)]
    scale = [rng.lognormal(0, 0.5, d) for _ in range(layers)]
    run = RunDir(path)
    shard_t = 64 * WINDOW
    n = tokens // WINDOW * WINDOW
    for s, t0 in enumerate(range(0, n, shard_t)):
        t = min(shard_t, n - t0)
        codes = {}
        rows, feats = sample(rng, cdfs[0], rng.poisson(l0, t))
        vals = rng.exponential(1.0, len(rows)) * scale[0][feats]
        for l in range(layers):
            if l:
                keep = rng.random(len(rows)) < carry
                r_new, f_new = sample(rng, cdfs[l], rng.poisson(l0 * (1 - carry), t))
                rows = np.concatenate([rows[keep], r_new])
                feats = np.concatenate([perms[l][feats[keep]], f_new])
                vals = np.concatenate(
                    [vals[keep] * rng.lognormal(0, 0.3, keep.sum()), rng.exponential(1.0, len(r_new)) * scale[l][f_new]]
                )
            codes[l] = to_codes(rows, feats, vals, t, d)
            rows = np.repeat(np.arange(t), np.diff(codes[l].indptr))
            feats, vals = codes[l].indices.astype(np.int64), codes[l].values.astype(np.float64)
        window = np.repeat(np.arange(t0 // WINDOW, (t0 + t) // WINDOW, dtype=np.int32), WINDOW)
        pos = np.tile(np.arange(WINDOW, dtype=np.int32), t // WINDOW)
        write_shard(run, s, np.zeros(t, np.int32), window, pos, codes)
    run.save(
        new_manifest(
            layers=list(range(layers)),
            d_sae={l: d for l in range(layers)},
            hooks={l: f"layer{l}" for l in range(layers)},
            saes={},
            model={"spec": "synthetic"},
            corpus={"spec": "synthetic"},
            window=WINDOW,
            bos=True,
            n_windows=n // WINDOW,
            shard_windows=64,
            config_hash=config_hash({"synthetic": True, "tokens": n, "layers": layers, "d": d, "seed": seed}),
        )
    )
    run.set_stage("collect", "complete", synthetic=True)
    return run


STATS_CHILD = """
import json, resource, sys, time
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
t = time.perf_counter()
cfg = StatsConfig(memory_limit=int(sys.argv[2]), workers=int(sys.argv[3]))
s = run_stats(sys.argv[1], cfg, progress=False, force=True)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": time.process_time(),
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def synthetic_run(keep: Path | None, prefix: str, tokens: int, layers: int, d: int, l0: float):
    """(temporary folder, run, seconds to make it): the run kept at `keep` when it is complete there,
    else a new synthetic run (`make_run`) at `keep` or in the temporary folder (also used for warm-up)."""
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    path = keep or Path(tmp.name) / "run"
    t = time.perf_counter()
    run = RunDir(path) if (keep and RunDir(path).is_complete("collect")) else make_run(path, tokens, layers, d, l0)
    return tmp, run, time.perf_counter() - t


def warm_up(path: Path, env: dict | None = None) -> None:
    """Compile (and cache) the kernels on a tiny run so no compile time lands in the timings."""
    run = make_run(path, 8192, 3, 256, 20, seed=1)
    subprocess.run(
        [sys.executable, "-c", STATS_CHILD, str(run.path), str(1 << 30), "2"], check=True, capture_output=True, env=env
    )


def run_stats(run: RunDir, limit: int, workers: int, env: dict | None = None) -> dict:
    """run_stats in a child process (its peak RSS is then the stage's alone); env: e.g. another
    revision's source on PYTHONPATH."""
    out = subprocess.run(
        [sys.executable, "-c", STATS_CHILD, str(run.path), str(limit), str(workers)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["summary"] = json.loads(run.file("stats_summary.json").read_text())
    return res


def dense_batch(run: RunDir, layer: int, d: int, t0: int, t: int = 4096):
    """Dense float32 [t, d] codes of tokens t0..t0+t (BOS rows zeroed, as stats excludes them)."""
    from saelineage.stats.batch import read_layers

    shard_t = 64 * WINDOW
    x = np.zeros((t, d), np.float32)
    for s in range(t0 // shard_t, (t0 + t - 1) // shard_t + 1):
        pos, codes = read_layers(run.activations / f"shard-{s:05d}.safetensors", [layer])
        ptr, idx, val = codes[layer]
        lo, hi = max(t0, s * shard_t), min(t0 + t, (s + 1) * shard_t)
        for r in range(lo, hi):
            a, b = ptr[r - s * shard_t], ptr[r - s * shard_t + 1]
            x[r - t0, idx[a:b]] = val[a:b] if pos[r - s * shard_t] else 0
    return x


def reference_dense(run: RunDir, d: int, n_tokens: int, seconds: float):
    """The reference algorithm: per 4,096-token batch, float32 einsums of binarised and raw codes.

    Runs as many batches as fit in `seconds` (at least one). Returns the accumulators, the
    einsum time per batch and the number of batches.
    """
    acc_c = np.zeros((d, d), np.float32)
    acc_p = np.zeros((d, d), np.float32)
    times: list[float] = []
    available = n_tokens // 4096
    while len(times) < available and (not times or sum(times) + times[-1] <= seconds):
        b = len(times)
        x, y = dense_batch(run, 0, d, b * 4096), dense_batch(run, 1, d, b * 4096)
        t = time.perf_counter()
        acc_c += np.einsum("ti,tj->ij", (x > 0).astype(np.float32), (y > 0).astype(np.float32), optimize=True)
        acc_p += np.einsum("ti,tj->ij", x, y, optimize=True)
        times.append(time.perf_counter() - t)
    return acc_c, acc_p, times


def check_same(acc_c, acc_p, n_batches: int, run: RunDir, d: int, rows: int = 1024) -> dict:
    """Our kernels on the same batches, for source rows 0..rows-1: counts must be equal; sums
    are compared with an exact float64 product (the dense float32 einsum is the inexact one)."""
    import scipy.sparse as sp

    from saelineage.stats import kernels as kn

    cnt = np.zeros((rows, d), np.int32)
    psum = np.zeros((rows, d))
    exact = np.zeros((rows, d))
    z, zi, none = np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    for b in range(n_batches):
        x, y = dense_batch(run, 0, d, b * 4096), dense_batch(run, 1, d, b * 4096)
        keep = np.ones(len(x), bool)
        csr = {}
        for k, m in ((0, x), (1, y)):
            c = sp.csr_matrix(m)
            csr[k] = (c.indptr.astype(np.int64), c.indices.astype(np.int32), c.data.astype(np.float32))
            kn.prepare_inplace(*csr[k], len(x), keep, np.zeros(d), d, False, zi, zi, z, z, z, z, False, none)
        colptr, tok, val = (
            np.zeros(d + 1, np.int64),
            np.empty(len(csr[0][1]), np.int32),
            np.empty(len(csr[0][1]), np.float32),
        )
        kn.transpose_into(*csr[0], none, len(x), keep, d, False, colptr, tok, val, none)
        bounds = kn.chunk_bounds(kn.row_work(colptr, tok, csr[1][0], 0, rows), 0, 16)
        kn.accumulate(bounds, 0, colptr, tok, val, none, *csr[1], none, True, cnt, psum)
        exact += (sp.csr_matrix(x[:, :rows].astype(np.float64)).T @ sp.csr_matrix(y.astype(np.float64))).toarray()
    nz = exact != 0
    return {
        "counts_equal": bool(np.array_equal(cnt, acc_c[:rows].astype(np.int64))),
        "ours_vs_exact_max_rel": float(np.max(np.abs(psum[nz] - exact[nz]) / exact[nz])) if nz.any() else 0.0,
        "dense_f32_vs_exact_max_rel": float(np.max(np.abs(acc_p[:rows][nz] - exact[nz]) / exact[nz]))
        if nz.any()
        else 0.0,
    }


def compare(rev: str, run: RunDir, limit: int, workers: int, ours: dict, tmp: Path) -> None:
    """The stats stage of revision `rev` on the same run, right after ours: phases and wall ratio."""
    repo = Path(__file__).resolve().parents[1]
    tree = tmp / "baseline"
    subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), rev], check=True, capture_output=True
    )
    try:
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        warm_up(tmp / "warm-baseline", env)
        theirs = run_stats(run, limit, workers, env)
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)
    print(f"\nside by side on this run (limit {limit / 2**30:.1f} GiB, {workers} threads):")
    for name, r in (("this code", ours), (f"revision {rev}", theirs)):
        tm = r["summary"]["timings"]
        phases = ", ".join(
            f"{k} {tm.get(k, 0):.1f}s" for k in ("census", "read_prepare", "zero", "accumulate", "finalize")
        )
        print(
            f"  {name}: {r['seconds']:.1f}s wall, {r['summary']['passes']} passes, "
            f"peak {r['rss'] / 2**30:.2f} GiB; {phases}"
        )
    print(f"  ratio (revision / this code): {theirs['seconds'] / ours['seconds']:.2f}x")


def paper_plan(limit: int, workers: int):
    """Passes the engine would make at paper scale under `limit`."""
    from saelineage.stats.edges import EdgeOptions
    from saelineage.stats.engine import Layout, Pair, plan

    L, d = PAPER["layers"], PAPER["d"]
    layout = Layout(
        [],
        list(range(L)),
        {l: d for l in range(L)},
        [Pair(l, l + 1, 1) for l in range(L - 1)],
        {},
        True,
        False,
        True,
        PAPER["tokens"],
    )
    return plan(layout, EdgeOptions(), limit).passes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--d", type=int, default=24576)
    ap.add_argument("--l0", type=float, default=50)
    ap.add_argument("--memory-limit", default="8G")
    ap.add_argument("--workers", type=int, default=usable_cpus(), help="Threads (default: all usable CPUs).")
    ap.add_argument("--dense-seconds", type=float, default=60)
    ap.add_argument("--dir", type=Path, default=None, help="Keep the synthetic run here (default: a temp dir).")
    ap.add_argument("--baseline", default=None, help="A git revision whose stats stage runs beside this code's.")
    a = ap.parse_args()
    limit = parse_size(a.memory_limit)
    tmp, run, took = synthetic_run(a.dir, "bench_stats_", a.tokens, a.layers, a.d, a.l0)
    print(
        f"synthetic run: {a.tokens:,} tokens x {a.layers} layers x {a.d:,} latents, L0 ~ {a.l0:g} "
        f"({took:.0f}s to generate)"
    )

    warm_up(Path(tmp.name) / "warm")
    res = run_stats(run, limit, a.workers)
    if a.baseline:
        compare(a.baseline, run, limit, a.workers, res, Path(tmp.name))
    s = res["summary"]
    n, pairs, incr, tm = s["n_tokens"], s["pairs"], s["increments"], s["timings"]
    rate_acc = incr / tm["accumulate"]
    per_m = res["seconds"] / (n / 1e6) / pairs
    print(
        f"\nstats: {res['seconds']:.1f}s wall ({res['cpu']:.1f}s CPU), {s['passes']} pass(es), peak RSS "
        f"{res['rss'] / 2**30:.2f} GiB, limit {limit / 2**30:.1f} GiB, {s['edges']:,} edges"
    )
    print(
        f"  phases: reserve {tm.get('reserve', 0):.1f}s (once), zero {tm.get('zero', 0):.1f}s, "
        f"read+prepare {tm['read_prepare']:.1f}s, accumulate {tm['accumulate']:.1f}s, "
        f"finalize {tm['finalize']:.1f}s, write {tm['write']:.1f}s"
    )
    print(f"  co-active pair increments: {incr:,} ({incr / n / pairs:,.0f} per token per pair)")
    print(
        f"  increments/s: {rate_acc / 1e6:,.0f}M (accumulate phase), {incr / res['seconds'] / 1e6:,.0f}M "
        f"(whole stage); per core {rate_acc / a.workers / 1e6:,.0f}M in the accumulate phase (target >= 200M)"
    )
    print(
        f"  seconds per 1M tokens per layer pair: {per_m:.2f} (whole stage), "
        f"{tm['accumulate'] / (n / 1e6) / pairs:.2f} (accumulate)"
    )

    print(f"\nreference dense algorithm (float32 einsum, 4,096-token batches, up to {a.dense_seconds:.0f}s):")
    acc_c, acc_p, times = reference_dense(run, a.d, n, a.dense_seconds)
    nb = len(times)
    per_batch = float(np.mean(times))
    dense_per_m = per_batch * 1e6 / 4096
    print(
        f"  {nb} batch(es), {per_batch:.1f}s per batch (counts + products)"
        f" -> {dense_per_m:,.0f}s per 1M tokens per pair"
    )
    check = check_same(acc_c, acc_p, nb, run, a.d)
    del acc_c, acc_p
    print(
        f"  same batches through our kernels (rows 0..1023): counts identical: {check['counts_equal']}; "
        f"products max rel. error vs exact float64: ours {check['ours_vs_exact_max_rel']:.1e}, "
        f"dense float32 {check['dense_f32_vs_exact_max_rel']:.1e}"
    )
    print(
        f"  ratio: {dense_per_m / per_m:,.0f}x faster (whole stage vs dense counts+products; the reference also "
        f"ran one corpus pass per measure)"
    )

    passes = paper_plan(limit, a.workers)
    layer_reads = sum(len({u.pair for u in p}) + 1 for p in passes)  # ~ layers read per pass
    paper_incr = PAPER["tokens"] * PAPER["pairs"] * incr / n / pairs
    t_acc = paper_incr / rate_acc
    read_per_layer_token = tm["read_prepare"] / (s["passes"] * (a.layers if s["passes"] == 1 else 2) * n)
    t_read = layer_reads * PAPER["tokens"] * read_per_layer_token
    t_fin = tm["finalize"] / pairs * PAPER["pairs"]
    t_write = tm["write"] / pairs * PAPER["pairs"]
    # memory: faulting the pool and accumulators in happens once; the refill once per pass
    t_mem = tm.get("reserve", 0) + tm.get("zero", 0) / s["passes"] * len(passes)
    total = t_acc + t_read + t_fin + t_write + t_mem
    print(f"\npaper scale (12 layers x 24,576 latents, 10M tokens, 11 pairs), limit {limit / 2**30:.1f} GiB:")
    print(
        f"  {len(passes)} passes; accumulate {t_acc / 60:.1f} min + read/prepare {t_read / 60:.1f} min + "
        f"finalize {t_fin / 60:.1f} min + write {t_write / 60:.1f} min + memory {t_mem / 60:.1f} min "
        f"= {total / 60:.1f} min (target <= 15)"
    )
    print(f"  peak RSS ~ {res['rss'] / 2**30:.2f} GiB (measured at full width under the same limit; target <= 8)")


if __name__ == "__main__":
    main()
