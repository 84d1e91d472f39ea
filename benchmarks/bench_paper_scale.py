"""Paper scale end to end: stats → analyze → serve on 12 layers × 24,576 latents, and stats on Ray
with 1 and 2 workers.

The run is synthetic, written through the store API (`write_shard`, then the collect stage's own
summary reduction for features/examples): power-law densities, L0 ~ 50, 70% of a token's features
carried to a fixed partner in the next layer (bench_stats.py's generator). Every stage runs in a
child process; its peak memory is the largest summed RSS of that process tree (for Ray: the
driver, the raylet and its workers), sampled every 0.2 s. Prints, from one run:

  * each stage's wall time and peak memory, and the browser's p95 (bench_serve.py over real HTTP);
  * `stats --ray local` with 1 and 2 workers: wall time, parallel efficiency, and whether
    edges.parquet / feature_links.parquet are byte-identical to the single-process stage;
  * an extrapolation to 10M and 100M tokens (stats: per-token phases scale with tokens, finalize
    and write do not; analyze and serve depend on the edges, which saturate).

    python benchmarks/bench_paper_scale.py                         # 1M tokens, 8G limit (~30 min here)
    python benchmarks/bench_paper_scale.py --tokens 200000 --layers 4   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import make_run, warm_up  # noqa: E402

from saelineage import contract  # noqa: E402
from saelineage.config import usable_cpus  # noqa: E402
from saelineage.data.finalize import summarize_run  # noqa: E402
from saelineage.run import RunDir  # noqa: E402
from saelineage.stats.config import parse_size  # noqa: E402

STATS_CHILD = """
import json, sys
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
kw = json.loads(sys.argv[2])
run_stats(sys.argv[1], StatsConfig(**kw), progress=False, force=True)
"""

ANALYZE_CHILD = """
import sys
from saelineage.lineage.stage import run_analyze
run_analyze(sys.argv[1], progress=False, force=True)
"""

RAY_CHILD = """
import json, sys, ray
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
ray.init(num_cpus=int(sys.argv[3]), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
kw = json.loads(sys.argv[2])
run_stats(sys.argv[1], StatsConfig(**kw), progress=False, force=True)
ray.shutdown()
"""


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # a child exited while the tree was listed: count what is left
        tree = [proc]
    for p in tree:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_child(code: str, *args: str) -> dict:
    """Run `code` in a child Python; wall seconds and the peak summed RSS of its process tree."""
    t = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE, text=True)
    proc, peak, done = psutil.Process(child.pid), 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = child.communicate()
    done.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"child failed ({child.returncode}):\n{err[-4000:]}")
    return {"seconds": time.perf_counter() - t, "peak": peak}


def digest(run: RunDir) -> str:
    h = hashlib.sha256()
    for f in (contract.EDGES, contract.FEATURE_LINKS):
        h.update(run.file(f).read_bytes())
    return h.hexdigest()


def plan_at(layers: int, d: int, tokens: int, limit: int) -> tuple[int, int]:
    """(passes, layer reads) the single-machine engine would make under `limit`."""
    from saelineage.stats.edges import EdgeOptions
    from saelineage.stats.engine import Layout, Pair, plan

    layout = Layout(
        [], list(range(layers)), dict.fromkeys(range(layers), d), [Pair(l, l + 1, 1) for l in range(layers - 1)],
        {}, True, False, True, tokens,
    )  # fmt: skip
    passes = plan(layout, EdgeOptions(), limit).passes
    return len(passes), sum(len({x for u in p for x in (u.pair, u.pair + 1)}) for p in passes)


def gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d", type=int, default=24576)
    ap.add_argument("--l0", type=float, default=50)
    ap.add_argument("--memory-limit", default="8G", help="Single process: this; Ray: this split over the workers.")
    ap.add_argument(
        "--workers", type=int, default=usable_cpus(), help="Threads of the single-process stats (default: all CPUs)."
    )
    ap.add_argument("--no-ray", action="store_true", help="Skip the 1- and 2-worker Ray runs.")
    ap.add_argument("--dir", type=Path, default=None, help="Keep (and reuse) the synthetic run here.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    a = ap.parse_args()
    limit = parse_size(a.memory_limit)
    tmp = tempfile.TemporaryDirectory(prefix="bench_paper_")
    path = a.dir or Path(tmp.name) / "run"
    out: dict = {"tokens": a.tokens, "layers": a.layers, "d": a.d, "memory_limit": limit}

    t = time.perf_counter()
    if a.dir and RunDir(path).is_complete("collect") and RunDir(path).file(contract.FEATURES).is_file():
        run = RunDir(path)
    else:
        shutil.rmtree(path, ignore_errors=True)
        run = make_run(path, a.tokens, a.layers, a.d, a.l0)
        summarize_run(run, 20)
    size = sum(p.stat().st_size for p in run.file(contract.ACTIVATIONS).rglob("*") if p.is_file())
    print(
        f"synthetic run: {a.tokens:,} tokens x {a.layers} layers x {a.d:,} latents, L0 ~ {a.l0:g}, "
        f"{size / 2**30:.1f} GiB of shards ({time.perf_counter() - t:.0f} s to generate and summarise)"
    )
    warm_up(Path(tmp.name) / "warm")

    kw = {"memory_limit": limit, "workers": a.workers}
    st = run_child(STATS_CHILD, str(run.path), json.dumps(kw))
    s = json.loads(run.file(contract.STATS_SUMMARY).read_text())
    single = digest(run)
    out["stats"] = st | {k: s[k] for k in ("n_tokens", "pairs", "passes", "edges", "increments", "timings")}
    tm = s["timings"]
    print(
        f"\nstats (1 process, {a.workers} threads, limit {gib(limit)}): {st['seconds']:.0f} s, peak {gib(st['peak'])}, "
        f"{s['passes']} passes, {s['edges']:,} edges; memory {tm.get('reserve', 0) + tm.get('zero', 0):.0f} s, "
        f"read+prepare {tm['read_prepare']:.0f} s, accumulate "
        f"{tm['accumulate']:.0f} s, finalize {tm['finalize']:.0f} s, write {tm['write']:.0f} s"
    )
    print(
        f"  increments/s per core (accumulate phase): {s['increments'] / tm['accumulate'] / a.workers / 1e6:,.0f}M "
        f"(target >= 200M)"
    )

    if not a.no_ray:
        ray_runs = {}
        for n in (1, 2):
            rkw = {"memory_limit": limit // n, "ray": "local", "ray_workers": n}
            r = run_child(RAY_CHILD, str(run.path), json.dumps(rkw), str(n))
            rs = json.loads(run.file(contract.STATS_SUMMARY).read_text())
            r |= {"identical": digest(run) == single, "units": run.load().stage("stats")["ray"]["units"]}
            ray_runs[n] = r
            print(
                f"stats --ray local, {n} worker(s), {gib(limit // n)} each: {r['seconds']:.0f} s, "
                f"peak {gib(r['peak'])}, "
                f"{r['units']} units, outputs identical to one process: {r['identical']} "
                f"(accumulate {rs['timings']['accumulate']:.0f} s, read+prepare {rs['timings']['read_prepare']:.0f} s "
                f"summed over tasks)"
            )
        eff = ray_runs[1]["seconds"] / (2 * ray_runs[2]["seconds"])
        print(f"  parallel efficiency, 2 workers vs 1: {eff:.2f} (speed-up {2 * eff:.2f}x)")
        out["ray"] = {str(k): v for k, v in ray_runs.items()} | {"efficiency": eff}
        # analyze below reads the 2-worker outputs: identical to one process's when the check holds

    an = run_child(ANALYZE_CHILD, str(run.path))
    out["analyze"] = an
    print(f"analyze: {an['seconds']:.0f} s, peak {gib(an['peak'])}")

    from bench_serve import main as serve_main

    serve_json = Path(tmp.name) / "serve.json"
    serve_main(["--run", str(run.path), "-n", "100", "--json", str(serve_json)])
    served = json.loads(serve_json.read_text())["results"]
    out["serve"] = served
    p95 = {k: served[k]["p95_ms"] for k in ("feature", "neighbours", "graph")}
    print("browser p95: " + ", ".join(f"{k} {v:.1f} ms" for k, v in p95.items()))

    per_token = (tm["read_prepare"] + tm["accumulate"]) / s["n_tokens"]
    fixed = tm["finalize"] + tm["write"] + tm.get("reserve", 0) + tm.get("zero", 0)
    to_paper = 11 / s["pairs"]  # 12 layers: 11 adjacent pairs
    print(
        "\nextrapolated to 12 layers (stats: per-token phases x tokens + memory/finalize/write; analyze as measured):"
    )
    for n_tok in (10_000_000, 100_000_000):
        t_stats = (per_token * n_tok + fixed) * to_paper
        line = f"  {n_tok / 1e6:,.0f}M tokens: stats {t_stats / 60:,.0f} min on 1 machine"
        if not a.no_ray:
            line += f", {t_stats / 60 / (2 * eff):,.0f} min on 2 Ray workers at the measured efficiency"
        print(line + f"; analyze ~{an['seconds'] / 60:.1f} min")
        out[f"extrapolated_{n_tok}"] = {"stats_seconds": t_stats}
    print(f"\nwidths under {gib(limit)} per machine or worker (accumulators: 12 bytes per cell of a layer pair):")
    for name, layers, d in (
        ("GPT-2 small / res-jb", 12, 24576),
        ("Gemma Scope 2B, 65k", 26, 65536),
        ("Llama Scope 8B, 131k", 32, 131072),
    ):
        passes, reads = plan_at(layers, d, 10_000_000, limit)
        print(
            f"  {name:<22} {layers} layers x {d:>7,}: {d * d * 12 / 2**30:6.1f} GiB per pair, {passes:>4} passes "
            f"reading {reads:>5} layer-copies of the corpus"
        )
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
