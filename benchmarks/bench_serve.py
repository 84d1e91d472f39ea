"""Feature browser latency: p50/p95 of the JSON API over real HTTP (server process + keep-alive client).

    python benchmarks/bench_serve.py                  # runs/demo when it has edges, else a demo-sized synthetic run
    python benchmarks/bench_serve.py --run RUN        # any run directory
    python benchmarks/bench_serve.py --layers 30 --d-sae 4608 --json out.json

Target: p95 <= 50 ms for the feature, neighbours and graph endpoints (after one warm-up request
per graph kind and measure). Features are sampled at random, so feature/neighbours requests
mostly touch pages no earlier request touched. The synthetic run has
the demo's shape (30 layers, 200k tokens, 20 examples per feature, ~top-16 edges per
feature and layer pair) with random numbers; it exercises sizes, not science.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def synthetic_scale_run(path: Path, layers: int, d_sae: int, n_tokens: int, window: int = 128, seed: int = 0) -> Path:
    """Write a run with the files of every stage at the given scale (random values, valid columns)."""
    import pyarrow as pa

    from saelineage.contract import new_manifest
    from saelineage.data.store import LayerCodes, write_shard
    from saelineage.run import RunDir, config_hash, write_parquet

    rng = np.random.default_rng(seed)
    run = RunDir(path)
    n_win = n_tokens // window
    shard_windows = 64
    vocab = [f" w{i}" for i in range(5000)]
    hooks = {l: f"blocks.{l}.hook_resid_post" for l in range(layers)}
    run.save(
        new_manifest(
            model={"spec": "synthetic-scale"},
            layers=list(range(layers)),
            saes={l: {"hook_name": hooks[l], "d_sae": d_sae} for l in range(layers)},
            d_sae={l: d_sae for l in range(layers)},
            hooks=hooks,
            corpus={"spec": "synthetic"},
            window=window,
            bos=True,
            n_windows=n_win,
            shard_windows=shard_windows,
            config_hash=config_hash(
                {"synthetic-scale": True, "layers": layers, "d_sae": d_sae, "n": n_tokens, "seed": seed}
            ),
            stages={s: {"status": "complete"} for s in ("collect", "stats", "analyze")},
        )
    )
    (path / "vocab.json").write_text(json.dumps({"tokens": vocab, "decoded": vocab}))
    empty = LayerCodes(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    for i, w0 in enumerate(range(0, n_win, shard_windows)):
        w = np.arange(w0, min(w0 + shard_windows, n_win), dtype=np.int32)
        t = len(w) * window
        write_shard(
            run,
            i,
            rng.integers(0, len(vocab), t, dtype=np.int32),
            np.repeat(w, window),
            np.tile(np.arange(window, dtype=np.int32), len(w)),
            {0: empty._replace(indptr=np.zeros(t + 1, np.int64))},
        )
    n_f = layers * d_sae
    n_act = rng.integers(0, 2000, n_f)
    comm = rng.integers(0, n_f // 40, n_f)
    key = {"layer": np.repeat(np.arange(layers), d_sae).astype(np.int64), "feature": np.tile(np.arange(d_sae), layers)}
    write_parquet(
        run.file("features.parquet"),
        pa.table(
            {
                **key,
                "n_active": n_act,
                "density": n_act / n_tokens,
                "act_sum": n_act * 2.0,
                "act_sumsq": n_act * 5.0,
                "act_max": rng.random(n_f) * 10,
            }
        ),
    )
    write_parquet(
        run.file("feature_analysis.parquet"),
        pa.table(
            {
                **key,
                "lifecycle": rng.choice(["new", "carried", "ending", "dead"], n_f),
                "has_pred": rng.random(n_f) < 0.5,
                "has_succ": rng.random(n_f) < 0.5,
                "community": comm,
            }
        ),
    )
    k = 20
    write_parquet(
        run.file("examples.parquet"),
        pa.table(
            {
                "layer": np.repeat(np.arange(layers), d_sae * k),
                "feature": np.tile(np.repeat(np.arange(d_sae), k), layers),
                "rank": np.tile(np.arange(k), n_f),
                "value": rng.random(n_f * k),
                "window": rng.integers(0, n_win, n_f * k).astype(np.int32),
                "pos": rng.integers(1, window, n_f * k).astype(np.int32),
            }
        ),
    )
    parts = []
    for l in range(layers - 1):
        m = d_sae * 16
        src = np.sort(rng.integers(0, d_sae, m))
        jac = rng.beta(0.5, 4, m)
        parts.append(
            pa.table(
                {
                    "src_layer": np.full(m, l, np.int64),
                    "src": src,
                    "dst_layer": np.full(m, l + 1, np.int64),
                    "dst": rng.integers(0, d_sae, m),
                    "n_co": rng.integers(5, 500, m),
                    "jaccard": jac,
                    **{
                        c: np.clip(jac + rng.normal(0, 0.1, m), 0, 1)
                        for c in (
                            "sufficiency",
                            "necessity",
                            "mutual_info",
                            "pearson",
                            "act_cosine",
                            "dec_cosine",
                            "sufficiency_lo",
                            "necessity_lo",
                        )
                    },
                }
            )
        )
    write_parquet(run.file("edges.parquet"), pa.concat_tables(parts))
    g = 5000
    write_parquet(
        run.file("gates.parquet"),
        pa.table(
            {
                "kind": rng.choice(["and", "or"], g),
                "layer": rng.integers(1, layers, g),
                "feature": rng.integers(0, d_sae, g),
                "parent_layer": np.zeros(g, np.int64),
                "parent_a": rng.integers(0, d_sae, g),
                "parent_b": rng.integers(0, d_sae, g),
                "support": rng.integers(5, 100, g),
                "score_forward": rng.random(g),
                "score_backward": rng.random(g),
            }
        ),
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """`serve(run)` on 127.0.0.1 and a free port, in its own process as `saelineage serve` runs (no GIL
    shared with the client); returns the process and its base URL once it accepts connections."""
    port = _free_port()
    code = (
        "import sys; from saelineage.web.app import serve; from saelineage.web.config import ServeConfig; "
        f"serve({str(run)!r}, ServeConfig(port={port}), progress=False)"
    )
    server = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise SystemExit("the server did not start") from None
            time.sleep(0.2)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a stuck shutdown must not outlive the benchmark
        server.kill()
        server.wait()


def measure(base: str, paths: list[str]) -> np.ndarray:
    import httpx

    out = []
    with httpx.Client(base_url=base, timeout=30) as c:
        c.get(paths[0])  # connection + first-use costs
        for p in paths:
            t = time.perf_counter()
            r = c.get(p)
            out.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
    return np.array(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("-n", type=int, default=200, help="requests per endpoint")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)

    from saelineage.query.run_data import RunData
    from saelineage.web.app import create_app

    run = a.run
    tmp = None
    if run is None:
        demo = Path("runs/demo")
        if (demo / "edges.parquet").is_file():
            run = demo
        else:
            tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
            t = time.perf_counter()
            run = synthetic_scale_run(Path(tmp.name) / "run", a.layers, a.d_sae, a.tokens)
            print(
                f"synthetic run ({a.layers} layers x {a.d_sae} features, {a.tokens:,} tokens) written in "
                f"{time.perf_counter() - t:.1f} s"
            )
    t = time.perf_counter()
    app = create_app(run, allowed_hosts=None)
    print(f"app ready (cache built or reused) in {time.perf_counter() - t:.1f} s: {run}")
    data: RunData = app.state.data
    g = data.g
    rng = np.random.default_rng(0)
    live = np.nonzero(g.n_active > 0)[0]
    pick = rng.choice(live, a.n)
    feats = [(int(g.layer[i]), int(g.feature[i])) for i in pick]
    comms = np.unique(g.community[g.community >= 0])
    layers = g.layers
    measures = ["jaccard", "sufficiency", "necessity", "pearson"]
    graph_kinds: dict[str, list[str]] = {"graph 400": [], "graph 2000": [], "graph range": [], "graph community": []}
    for i in range(a.n):
        lo = int(rng.integers(0, max(1, len(layers) - 3)))
        m = measures[i % 4]
        graph_kinds["graph 400"].append(f"/api/graph?measure={m}&min_value=0.1&max_nodes=400")
        graph_kinds["graph 2000"].append(f"/api/graph?measure={m}&max_nodes=2000")
        graph_kinds["graph range"].append(
            f"/api/graph?measure={m}&layer_min={layers[lo]}"
            f"&layer_max={layers[min(lo + 3, len(layers) - 1)]}&max_nodes=1000"
        )
        c = int(comms[i % len(comms)]) if len(comms) else 0
        graph_kinds["graph community"].append(f"/api/graph?community={c}&max_nodes=2000&min_value=0")
    q = max(1, a.n // 4)
    graph_paths = [p for k in graph_kinds.values() for p in k[:q]]
    suites = {
        "feature": [f"/api/features/{l}/{f}" for l, f in feats],
        "neighbours": [f"/api/features/{l}/{f}/neighbours?limit=50" for l, f in feats],
        "graph": graph_paths,
        **{k: v[:q] for k, v in graph_kinds.items()},
        "search": [f"/api/search?q={q}" for q in (["w1", "carried", "3:17", "w42"] * a.n)[: a.n]],
        "overview": ["/api/overview"] * max(10, a.n // 10),
    }
    server, base = start_server(run)
    # one warm-up request per graph kind and measure: first touch of its memory-mapped pages
    measure(base, [p for k in graph_kinds.values() for p in k[:4]])
    results = {}
    print(f"\n{'endpoint':<17}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for name, paths in suites.items():
        ms = measure(base, paths)
        results[name] = {
            "n": len(ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "max_ms": round(float(ms.max()), 2),
        }
        r = results[name]
        print(f"{name:<17}{r['n']:>6}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}{r['max_ms']:>10.1f}")
    stop_server(server)
    ok = all(results[k]["p95_ms"] <= 50 for k in ("feature", "neighbours", "graph"))
    print(f"\ntarget p95 <= 50 ms for feature, neighbours, graph: {'met' if ok else 'NOT met'}")
    if a.json:
        a.json.write_text(json.dumps({"run": str(run), "results": results, "target_met": ok}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
