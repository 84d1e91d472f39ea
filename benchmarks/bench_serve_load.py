"""The feature browser under sustained load: C concurrent clients for T seconds over every route.

    python benchmarks/bench_serve_load.py                      # runs/demo, 50 clients, 60 s
    python benchmarks/bench_serve_load.py RUN -c 50 -t 60      # any run directory
    python benchmarks/bench_serve_load.py --sample -t 10       # quick self-check: a synthetic run, no model

The server runs as `saelineage serve` does (its own process, 127.0.0.1, a free port; bench_serve's
`start_server`). The requests are planned from the app's own route table (`app.routes`), so a route
added later is loaded too, or the benchmark stops and names it: every API GET with valid parameters
(real feature and community ids), the HTML pages, every static asset, and the live-prompt POSTs.
Each client cycles through the route kinds in turn, so every kind gets the same share of requests,
and sends the next request as soon as the last one is answered (a 503 too: no client backs off).

Reported per kind: requests, p50/p99 latency of the answers (refusals of a full prompt queue
excluded: they are counted apart), non-2xx answers by status, and errors (exceptions, timeouts).
A live prompt answered 503 without Retry-After (a run without its model) is the documented
"unavailable" answer and counted apart from errors; with Retry-After it is the queue's "busy".
The server's resident memory is sampled every second, all of it (RSS) and its anonymous part (RSS
less the touched pages of memory-mapped files): first, last and max, and the slope over the second
half of the run (MB per minute), which stays near 0 when nothing leaks.

Exit status 0 when no request failed (no exception or timeout, and no status the route does not
document for a valid request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import start_server, stop_server  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "The cat sat on the mat because it was warm.",
    "Paris is the capital of France, and Berlin is",
    "def add(a, b):\n    return a + b",
    "In 1969 the first humans walked on the Moon.",
]


@dataclass
class Req:
    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass
class Tally:
    """What one route kind got during the timed run."""

    ms: list[float] = field(default_factory=list)  # answered requests (busy refusals excluded)
    status: Counter = field(default_factory=Counter)  # non-2xx answers by status
    busy: int = 0  # 503 with Retry-After: the prompt queue was full
    unavailable: int = 0  # 503 without Retry-After on a live prompt: the run has no model
    errors: Counter = field(default_factory=Counter)  # exceptions and timeouts, by type

    @property
    def n(self) -> int:
        return len(self.ms) + self.busy + sum(self.errors.values())


def flat_routes(routes: list[Any], prefix: str = "") -> list[Any]:
    """(methods, path, route) of every route, routers included by `include_router` flattened (FastAPI
    keeps them as one entry holding the router)."""
    out = []
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            out += flat_routes(inner.routes, prefix + r.include_context.prefix)
        else:
            out.append((set(getattr(r, "methods", None) or ()) - {"HEAD"}, prefix + r.path, r))
    return out


def kind_of(method: str, path: str) -> str:
    """Short name of a route kind for the table (28 characters fit)."""
    name = path.replace("{layer}/{feature}", "L/F").replace("{community}", "C")
    return ("POST " if method == "POST" else "") + name


def plan(app: Any, rng: random.Random) -> dict[str, list[Req]]:
    """Valid requests for every route of `app`, by kind. Stops naming a route it cannot fill."""
    data = app.state.data
    g = data.g
    live = np.nonzero(g.n_active > 0)[0]
    feats = [(int(g.layer[i]), int(g.feature[i])) for i in rng.sample(list(live), min(40, len(live)))]
    comms = [row["community"] for row in data.communities(50, 0, 1)["rows"]] or [0]
    layers = g.layers
    tokens = [g.token_text(int(t)) for t in range(1, 50)]
    words = [w.strip() for w in tokens if w.strip().isalpha()][:10] or ["the"]
    fills = {
        "{layer}/{feature}": [f"{l}/{f}" for l, f in feats],
        "{community}": [str(c) for c in comms],
    }
    measures = ["jaccard", "sufficiency", "necessity", "pearson"]
    lo, hi = layers[0], layers[min(3, len(layers) - 1)]
    queries: dict[str, list[str]] = {
        "/api/features/{layer}/{feature}": ["", "?examples=5"],
        "/api/features/{layer}/{feature}/neighbours": ["", "?sort=necessity&limit=20", "?direction=up"],
        "/api/graph": [f"?measure={m}&min_value=0.1&max_nodes=400" for m in measures]
        + ["?max_nodes=2000", "?edges_per_node=3", f"?layer_min={lo}&layer_max={hi}&max_nodes=1000"]
        + [f"?community={c}&max_nodes=2000&min_value=0" for c in comms[:5]],
        "/api/communities": ["", "?offset=100&min_size=2"],
        "/api/gates": ["", "?kind=and", f"?layer={layers[-1]}"],
        "/api/splits": ["", f"?layer={layers[0]}"],
        "/api/search": [f"?q={q}" for q in [*words, "carried", f"{feats[0][0]}:{feats[0][1]}"]],
        "/feature/{layer}/{feature}": ["", "?sort=pearson"],
        "/communities": ["", "?offset=100"],
        "/gates": ["", "?kind=or"],
        "/search": [f"?q={q}" for q in words],
    }
    bodies: dict[str, list[dict[str, Any]]] = {
        "/api/prompt/tokens": [{"text": t} for t in PROMPTS],
        # as the prompt page asks: a token's graph with each feature's 3 strongest links
        "/api/prompt/graph": [{"text": t, "position": 3, "edges_per_node": 3} for t in PROMPTS],
    }
    out: dict[str, list[Req]] = {}
    for methods, path, route in flat_routes(app.routes):
        directory = getattr(getattr(route, "app", None), "directory", None)
        if directory is not None:  # a StaticFiles mount: every file in it
            files = sorted(p.relative_to(directory).as_posix() for p in Path(directory).rglob("*") if p.is_file())
            out[path + "/*"] = [Req("GET", f"{path}/{f}") for f in files]
            continue
        for method in sorted(methods):
            if method == "POST":
                if path not in bodies:
                    raise SystemExit(f"no request body planned for POST {path}: add one to bench_serve_load.plan")
                out[kind_of(method, path)] = [Req("POST", path, b) for b in bodies[path]]
                continue
            paths = [path]
            for param, values in fills.items():
                if param in path:
                    paths = [p.replace(param, v) for p in paths for v in values]
            if "{" in path and paths == [path]:
                raise SystemExit(f"no value planned for the parameters of GET {path}: add one to bench_serve_load.plan")
            out[kind_of(method, path)] = [Req("GET", p + q) for p in paths for q in queries.get(path, [""])]
    return out


def rss_sampler(pid: int, samples: list[tuple[float, float, float]], stop: threading.Event) -> None:
    """(seconds, RSS MB, anonymous RSS MB) of the server, every second until `stop`.

    RSS counts the pages of the memory-mapped query cache and Parquet files the requests have
    touched so far, which grows towards the size of those files and is given back under memory
    pressure; the anonymous part (heap, model, arrays) is what a leak would grow. /proc gives
    both on Linux; elsewhere psutil gives RSS alone (anonymous: NaN)."""
    status = Path(f"/proc/{pid}/status")

    def read() -> tuple[float, float]:
        if status.exists():
            kb = dict(re.findall(r"^(VmRSS|RssAnon):\s+(\d+)", status.read_text(), re.M))
            return int(kb["VmRSS"]) / 1024, int(kb.get("RssAnon", "nan")) / 1024
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20, float("nan")

    t0 = time.perf_counter()
    while not stop.is_set():
        try:
            samples.append((time.perf_counter() - t0, *read()))
        except Exception:  # noqa: BLE001 - the server exited; the run reports it
            return
        stop.wait(1.0)


async def load(
    base: str, kinds: dict[str, list[Req]], clients: int, seconds: float, timeout: float
) -> dict[str, Tally]:
    import httpx

    names = list(kinds)
    tally: dict[str, Tally] = defaultdict(Tally)
    token = os.environ.get("SAELINEAGE_AUTH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits, headers=headers) as c:
        deadline = time.perf_counter() + seconds

        async def client(i: int) -> None:
            rng = random.Random(i)
            n = i  # clients start at different kinds, so that each kind is always being asked for
            while time.perf_counter() < deadline:
                kind = names[n % len(names)]
                n += 1
                req = rng.choice(kinds[kind])
                t = tally[kind]
                start = time.perf_counter()
                try:
                    r = await c.request(req.method, req.path, json=req.body)
                    await r.aread()
                except Exception as exc:  # noqa: BLE001 - counted: exceptions and timeouts are the errors
                    t.errors[type(exc).__name__] += 1
                    continue
                ms = (time.perf_counter() - start) * 1000
                if r.status_code == 503 and "retry-after" in r.headers:
                    t.busy += 1
                    continue
                t.ms.append(ms)
                if r.status_code == 503 and req.method == "POST":
                    t.unavailable += 1
                elif not 200 <= r.status_code < 300:
                    t.status[r.status_code] += 1

        await asyncio.gather(*(client(i) for i in range(clients)))
    return tally


def wait_ready(base: str, timeout: float = 600) -> str:
    """Wait for the background model load (`serve` preloads it): the timed run starts with it done."""
    import httpx

    deadline = time.time() + timeout
    while True:
        state = httpx.get(f"{base}/api/prompt/status", timeout=30).json()["state"]
        if state not in ("idle", "loading") or time.time() > deadline:
            return state
        time.sleep(0.5)


def warm(base: str, kinds: dict[str, list[Req]]) -> None:
    """One request of every kind, not counted: first touch of the cache's pages, the jitted code, the model."""
    import httpx

    with httpx.Client(base_url=base, timeout=300) as c:
        for reqs in kinds.values():
            c.request(reqs[0].method, reqs[0].path, json=reqs[0].body)


def slope(t: np.ndarray, mb: np.ndarray) -> float:
    """MB per minute over the second half of the samples (least squares)."""
    h = len(t) // 2
    return float(np.polyfit(t[h:] / 60, mb[h:], 1)[0]) if len(t) - h >= 3 else float("nan")


def report(
    tally: dict[str, Tally], kinds: dict[str, list[Req]], rss: list[tuple[float, float, float]], seconds: float
) -> dict[str, Any]:
    rows, total = {}, Tally()
    print(f"\n{'kind':<29}{'n':>6}{'p50 ms':>8}{'p99 ms':>8}  non-2xx, busy, errors")
    for kind in kinds:
        t = tally.get(kind, Tally())
        ms = np.array(t.ms) if t.ms else np.array([np.nan])
        p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        notes = [f"{code}:{n}" for code, n in sorted(t.status.items())]
        notes += [f"unavail:{t.unavailable}"] if t.unavailable else []
        notes += [f"busy:{t.busy}"] if t.busy else []
        notes += [f"{e}:{n}" for e, n in t.errors.items()]
        line = f"{kind[:28]:<29}{t.n:>6}{p50:>8.1f}{p99:>8.1f}  {' '.join(notes) or '-'}"
        print(line[:80])
        rows[kind] = {
            "n": t.n,
            "p50_ms": round(p50, 1),
            "p99_ms": round(p99, 1),
            "non_2xx": dict(t.status),
            "unavailable": t.unavailable,
            "busy": t.busy,
            "errors": dict(t.errors),
        }
        total.ms += t.ms
        total.status.update(t.status)
        total.errors.update(t.errors)
        total.busy += t.busy
        total.unavailable += t.unavailable
    n_err, n_bad = sum(total.errors.values()), sum(total.status.values())
    print(
        f"\n{total.n:,} requests in {seconds:.0f} s ({total.n / seconds:.0f}/s); errors {n_err}, "
        f"other non-2xx {n_bad}, busy 503 {total.busy}, unavailable 503 {total.unavailable}"
    )
    t, mb, anon = np.array(rss, dtype=float).reshape(-1, 3).T
    if not len(t):
        t = mb = anon = np.array([np.nan])
    mem = {}
    for name, v in (("RSS", mb), ("anon", anon)):
        mem[name] = {"first": v[0], "last": v[-1], "max": np.max(v), "slope_mb_per_min": slope(t, v)}
        print(
            f"server {name:<4} MB: first {v[0]:.0f}, last {v[-1]:.0f}, max {np.max(v):.0f}; "
            f"2nd-half slope {mem[name]['slope_mb_per_min']:+.0f} MB/min"
        )
    step = max(1, len(t) // 7)
    print("RSS/anon MB: " + ", ".join(f"{a:.0f}s {b:.0f}/{c:.0f}" for a, b, c in rss[::step])[:67])
    return {
        "kinds": rows,
        "requests": total.n,
        "per_second": round(total.n / seconds, 1),
        "errors": n_err,
        "other_non_2xx": n_bad,
        "busy_503": total.busy,
        "unavailable_503": total.unavailable,
        "memory_mb": mem | {"samples": rss},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?", default=Path("runs/demo"), help="run directory (default runs/demo)")
    ap.add_argument("--sample", action="store_true", help="serve a synthetic sample run instead (no model)")
    ap.add_argument("-c", "--clients", type=int, default=50, help="concurrent clients")
    ap.add_argument("-t", "--seconds", type=float, default=60, help="length of the timed run")
    ap.add_argument("--timeout", type=float, default=120, help="per-request timeout (counted as an error)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)

    from saelineage.web.app import create_app

    tmp = None
    run = a.run
    if a.sample:
        from saelineage.testing.sample_run import build_sample_run

        tmp = tempfile.TemporaryDirectory(prefix="bench-load-")
        run = build_sample_run(Path(tmp.name) / "run").path
    elif not (run / "manifest.json").is_file():
        raise SystemExit(f"{run} is not a run directory (make one with `saelineage demo`, or pass --sample)")
    # the app here builds the query cache the server then reuses, and lists the routes to load
    kinds = plan(create_app(run, allowed_hosts=None), random.Random(0))
    print(f"{run}: {len(kinds)} route kinds, {sum(map(len, kinds.values()))} distinct requests")
    server, base = start_server(run)
    try:
        state = wait_ready(base)
        print(f"server {base} (pid {server.pid}); live prompts: {state}")
        warm(base, kinds)
        rss: list[tuple[float, float, float]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=rss_sampler, args=(server.pid, rss, stop), daemon=True)
        sampler.start()
        t = time.perf_counter()
        tally = asyncio.run(load(base, kinds, a.clients, a.seconds, a.timeout))
        took = time.perf_counter() - t
        stop.set()
        sampler.join()
        alive = server.poll() is None
    finally:
        stop_server(server)
    print(f"{a.clients} clients, {took:.0f} s (last answers included); server alive at the end: {alive}")
    res = report(tally, kinds, rss, took)
    res |= {"run": str(run), "clients": a.clients, "seconds": took, "prompt_state": state, "server_alive": alive}
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if alive and res["errors"] == 0 and res["other_non_2xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
