"""The stats stage with 1, 2, … threads side by side, and this machine's memory bandwidth.

One synthetic run (bench_stats.py's generator: 24,576 latents per layer, power-law densities,
L0 ~ 50, 70% of a token's features carried to the next layer) goes through `run_stats` once per
thread count, each in a child process, the thread counts interleaved (1, 2, 1, 2 with
--repeats 2) so that a noisy neighbour hits all of them alike; each phase keeps its fastest
repeat. Prints, from one run:

  * seconds per phase (the stats stage's own timings: reserve, zero, read_prepare, accumulate,
    finalize, write) per thread count, and the speed-up of each over 1 thread;
  * the serial part inside the accumulate phase (`kernels.row_work`, timed by a wrapper);
  * memory bandwidth: numpy copy, write (fill) and read (sum) of 512 MiB arrays, on 1 thread and
    on every thread (slices on a thread pool: numpy releases the GIL for these), and the
    kernels' own parallel `zero_fill`;
  * the accumulate phase's bytes moved under a simple traffic model (below) against that
    bandwidth, and the zero phase's and finalize sweep's rates.

Traffic model of the accumulate phase, per batch and source row i with w_i increments (from
`row_work`): the row's accumulator cells (d_dst x 12 bytes: an int32 count and a float64 sum)
come in from memory and go back, at most the whole row, at least one 64-byte line of counts and
one of sums per increment: min(128 * w_i, 12 * d_dst) bytes each way; plus 8 bytes (feature id
and value) of the destination layer's entries per increment. Caches hold a row while it is being
added into, not between batches (a unit's rows far exceed the caches), so this counts DRAM traffic.

    python benchmarks/bench_threads.py                          # 1M tokens, 3 layers, 8G limit
    python benchmarks/bench_threads.py --tokens 200000 --repeats 1   # a quick look
    python benchmarks/bench_threads.py --threads 1,4,16         # on a bigger machine
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import synthetic_run, warm_up  # noqa: E402

from saelineage.config import usable_cpus  # noqa: E402
from saelineage.run import RunDir  # noqa: E402
from saelineage.stats.config import parse_size  # noqa: E402

PHASES = ("reserve", "zero", "read_prepare", "accumulate", "finalize", "write")

CHILD = """
import json, resource, sys, time
import numpy as np
from saelineage.stats import kernels as kn
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats

d, line, cell = int(sys.argv[4]), 64, 12
model = {"row_bytes": 0, "entry_bytes": 0, "rows": 0, "row_work_s": 0.0, "batch_units": 0}
row_work = kn.row_work

def counted(colptr, tok, m_indptr, lo, hi):
    t = time.perf_counter()
    w = row_work(colptr, tok, m_indptr, lo, hi)
    model["row_work_s"] += time.perf_counter() - t
    model["row_bytes"] += 2 * int(np.minimum(2 * line * w, cell * d).sum())
    model["entry_bytes"] += 8 * int(w.sum())
    model["rows"] += int((w > 0).sum())
    model["batch_units"] += 1
    return w

kn.row_work = counted
t = time.perf_counter()
cfg = StatsConfig(memory_limit=int(sys.argv[2]), workers=int(sys.argv[3]))
run_stats(sys.argv[1], cfg, progress=False, force=True)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": time.process_time(), "model": model,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _busy() -> float:
    """CPU-seconds that every process of the machine has used (psutil: all CPUs, idle excluded)."""
    import psutil

    ct = psutil.cpu_times()
    return sum(ct) - ct.idle - getattr(ct, "iowait", 0.0) - getattr(ct, "guest", 0.0) - getattr(ct, "guest_nice", 0.0)


def stats_child(run: RunDir, limit: int, threads: int, d: int) -> dict:
    """run_stats in a child process; also how many CPUs other processes kept busy meanwhile (the
    noise of a shared machine: a parallel region waits for its slowest thread)."""
    busy0, own0, t0 = _busy(), _own(), time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(run.path), str(limit), str(threads), str(d)],
        check=True,
        capture_output=True,
        text=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["others"] = max(0.0, (_busy() - busy0) - (_own() - own0)) / (time.perf_counter() - t0)
    res["summary"] = json.loads(run.file("stats_summary.json").read_text())
    return res


def _own() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def refill_bytes(run: RunDir, limit: int) -> tuple[int, int]:
    """(bytes the zero phase refills, bytes of all passes' accumulators) under the stage's own plan:
    each pass refills the cells the previous pass used (the first pass's were zeroed at reserve)."""
    from saelineage.stats.config import StatsConfig
    from saelineage.stats.engine import pass_cells
    from saelineage.stats.stage import plan_stats, stats_setup

    cfg = StatsConfig(memory_limit=limit)
    layout, budget = stats_setup(run.path, cfg).layout, plan_stats(run.path, cfg)
    cells = [pass_cells(layout, units) for units in budget.passes]
    return sum(cells[:-1]) * budget.cell_bytes, sum(cells) * budget.cell_bytes


def _best(f, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def bandwidth(threads: int, mib: int = 512) -> dict[str, float]:
    """GB/s (1e9 bytes) of copy (read + write counted), fill (write) and sum (read) over `mib` MiB
    float64 arrays, split into equal slices over `threads` threads."""
    n = mib * 2**20 // 8
    src, dst = np.ones(n), np.zeros(n)
    cuts = np.linspace(0, n, threads + 1).astype(int)
    parts = list(zip(cuts[:-1], cuts[1:]))
    size = n * 8
    with ThreadPoolExecutor(threads) as ex:

        def each(f) -> None:
            list(ex.map(f, parts))

        def copy(p) -> None:
            np.copyto(dst[p[0] : p[1]], src[p[0] : p[1]])

        def fill(p) -> None:
            dst[p[0] : p[1]].fill(0.0)

        def read(p) -> None:
            src[p[0] : p[1]].sum()

        each(copy)  # fault every page in before timing
        return {
            "copy": 2 * size / _best(lambda: each(copy)) / 1e9,
            "fill": size / _best(lambda: each(fill)) / 1e9,
            "sum": size / _best(lambda: each(read)) / 1e9,
        }


def zero_fill_bandwidth(threads: int, mib: int = 512) -> float:
    """GB/s of the kernels' parallel zero_fill (the stats stage's refill) on `threads` threads."""
    import numba

    from saelineage.stats import kernels as kn

    numba.set_num_threads(threads)
    a = np.ones(mib * 2**20 // 8)
    kn.zero_fill(a)  # compile, fault in
    return a.nbytes / _best(lambda: kn.zero_fill(a)) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--d", type=int, default=24576)
    ap.add_argument("--l0", type=float, default=50)
    ap.add_argument("--memory-limit", default="8G")
    ap.add_argument(
        "--threads", default=None, help="Comma list (default: 1, powers of 2 and all the CPUs this process may use)."
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None, help="Keep the synthetic run here (default: a temp dir).")
    a = ap.parse_args()
    cpus = usable_cpus()
    if a.threads:
        counts = [int(x) for x in a.threads.split(",")]
    else:
        counts = sorted({1, cpus} | {2**k for k in range(1, 8) if 2**k < cpus})
    limit = parse_size(a.memory_limit)
    tmp, run, took = synthetic_run(a.dir, "bench_threads_", a.tokens, a.layers, a.d, a.l0)
    print(
        f"synthetic run: {a.tokens:,} tokens x {a.layers} layers x {a.d:,} latents, L0 ~ {a.l0:g} "
        f"({took:.0f}s to generate); {cpus} usable CPU(s); limit {limit / 2**30:.1f} GiB"
    )

    print("\nmemory bandwidth (GB/s = 1e9 bytes/s; copy counts read + write):")
    bw = {}
    for n in sorted({1, max(counts)}):
        bw[n] = bandwidth(n) | {"zero_fill": zero_fill_bandwidth(n)}
        print(
            f"  {n:>2} thread(s): copy {bw[n]['copy']:.1f}, fill {bw[n]['fill']:.1f}, sum {bw[n]['sum']:.1f}, "
            f"kernels' zero_fill {bw[n]['zero_fill']:.1f}"
        )

    warm_up(Path(tmp.name) / "warm")
    res: dict[int, list[dict]] = {n: [] for n in counts}
    for _ in range(a.repeats):
        for n in counts:
            res[n].append(stats_child(run, limit, n, a.d))
    s = res[counts[0]][0]["summary"]
    n_tok, incr, passes = s["n_tokens"], s["increments"], s["passes"]
    best = {n: {p: min(r["summary"]["timings"].get(p, 0.0) for r in rs) for p in PHASES} for n, rs in res.items()}
    for n, rs in res.items():
        best[n]["total"] = min(r["seconds"] for r in rs)
        best[n]["row_work"] = min(r["model"]["row_work_s"] for r in rs)
        best[n]["others"] = min(r["others"] for r in rs)
    print(
        f"\nstats: {n_tok:,} tokens, {s['pairs']} pairs, {passes} pass(es), {incr:,} increments, "
        f"accumulators {s['accumulator_bytes'] / 2**30:.2f} GiB; fastest of {a.repeats} per phase (s):"
    )
    cols = [*PHASES, "total"]
    print("  threads " + "".join(f"{c:>13}" for c in cols) + f"{'row_work':>11}{'others':>9}")
    for n in counts:
        print(
            f"  {n:>7} "
            + "".join(f"{best[n][c]:>13.2f}" for c in cols)
            + f"{best[n]['row_work']:>11.2f}{best[n]['others']:>9.2f}"
        )
    print(
        "  (row_work: the serial part of accumulate; others: CPUs that other processes kept busy during the "
        "quietest repeat; above ~0.1 the timings are those of a shared machine)"
    )
    base = counts[0]
    for n in counts[1:]:
        ratio = {c: best[base][c] / best[n][c] if best[n][c] > 0 else float("nan") for c in cols}
        print(f"  speed-up {n} vs {base}: " + ", ".join(f"{c} {ratio[c]:.2f}x" for c in cols))

    m = res[counts[0]][0]["model"]
    moved = m["row_bytes"] + m["entry_bytes"]
    top = max(counts)
    peak = max(bw[max(bw)]["copy"], bw[max(bw)]["fill"], bw[max(bw)]["sum"])
    print(
        f"\naccumulate traffic (model in the docstring): {moved / 1e9:.1f} GB "
        f"({m['row_bytes'] / 1e9:.1f} GB accumulator rows in and out, {m['entry_bytes'] / 1e9:.1f} GB "
        f"destination entries; {m['rows']:,} row visits in {m['batch_units']} unit-batches)"
    )
    for n in counts:
        acc = best[n]["accumulate"] - best[n]["row_work"]
        print(
            f"  {n:>2} thread(s): accumulate kernels {acc:.2f}s -> {moved / acc / 1e9:.1f} GB/s, "
            f"{moved / acc / 1e9 / peak:.0%} of the best measured bandwidth ({peak:.1f} GB/s); "
            f"{incr / acc / n / 1e6:,.0f}M increments/s per thread"
        )
    refill, swept = refill_bytes(run, limit)
    for n in counts:
        z, fin = best[n]["zero"], best[n]["finalize"]
        rate = refill / max(z, 1e-9) / 1e9  # a tiny run refills in no measurable time
        print(
            f"  {n:>2} thread(s): zero phase refills {refill / 1e9:.1f} GB in {z:.2f}s ({rate:.1f} GB/s); "
            f"finalize reads the {swept / 1e9:.1f} GB of accumulators once in {fin:.2f}s ({swept / fin / 1e9:.1f} GB/s)"
        )
    print(
        f"  serial row_work (accumulate phase, 1 thread whatever --workers): {best[top]['row_work']:.2f}s of "
        f"{best[top]['accumulate']:.2f}s at {top} thread(s)"
    )


if __name__ == "__main__":
    main()
