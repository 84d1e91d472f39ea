"""Real shapes: collect → stats → analyze → ablate → serve on published models and SAEs at full size.

Three set-ups, with random weights at the published sizes, written offline in the exact on-hub
formats the real loaders read (a Hugging Face hub cache read under HF_HUB_OFFLINE=1, built by
`saelineage.testing.hub.build_full_size_cache`; the stages load them through transformers and
sae_lens as they would the real ones, `saelineage collect --saes RELEASE`):

  gpt2         GPT-2 small (768 wide, 12 layers, vocab 50,257, the real BPE) + gpt2-small-res-jb:
               12 ReLU SAEs of 24,576 latents on resid_pre 0-11
  gemma3       Gemma 3 270M (640 wide, 18 layers, vocab 262,144; a byte-level tokenizer) + Gemma
               Scope 2 (gemma-scope-2-270m-pt-res-all, l0_big): 18 JumpReLU SAEs of 16,384 latents
  gemma3-262k  the same model + Gemma Scope 2 at 262,144 latents on layers 5, 9, 12 and 15 only

Each SAE's biases or thresholds are set on the model's own residuals so that about the release's
published L0 latents fire per token (10-70 for res-jb, 60-120 for the l0_big variant); the
weights are random, so the SAEs do not reconstruct and the lineage found means nothing: this
measures costs, not science. The cache (and each set-up's run) stays under --dir, so a rerun
reuses it (262k: 5.4 GB of SAEs; everything: ~10 GB).

On --tokens of the bundled English text (`--corpus default`) each stage runs as `saelineage STAGE`
in its own child process. Printed per stage: wall time, CPU time and peak resident memory (the
ru_maxrss that wait4 returns for the stage's process: the largest process of its tree, not a sum);
for collect the tokens/s (inside the stage, and over the whole process with its loading) against
its FLOP bound: 2 · (weight-matrix parameters of the blocks collect runs) · tokens for the model
(it stops after the deepest hook: no later blocks, no LM head; attention scores and the embedding
lookup are not counted) plus 2 · d_in · d_sae · layers · tokens for the SAE encoders, at the
fp32 matmul rate of a torch.mm measured in the same run. ablate runs on a small sample of edges
(--ablate-args); serve starts the browser on 127.0.0.1, requests the overview and feature pages
(--serve-requests times each) and shuts it down. Last, each stage extrapolated to 10M tokens:
collect linear in tokens (past its loading), stats' per-token phases (census, read+prepare,
accumulate) linear and the rest as measured, analyze at least as measured (its tables follow the
edges, which saturate; its gate checks re-read the codes, which grows with tokens and is not
modelled); ablate's sample and serve's latency do not grow with tokens. From a few thousand
tokens the per-token phases still hold fixed costs (kernel compilation, page faults): measure
>= 100k tokens before trusting the extrapolation.

    python benchmarks/bench_real_shapes.py                                    # all three, 100k tokens (hours)
    python benchmarks/bench_real_shapes.py --setup gpt2 --tokens 2048         # a quick check
    python benchmarks/bench_real_shapes.py --setup gemma3-262k --stages collect --dir /data/real_shapes
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

SETUPS = ("gpt2", "gemma3", "gemma3-262k")
STAGES = ("collect", "stats", "analyze", "ablate", "serve")
NEEDS = {"collect": None, "stats": "collect", "analyze": "stats", "ablate": "stats", "serve": "collect"}
TARGET_TOKENS = 10_000_000
DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "saelineage" / "bench_real_shapes"
# A few hundred ablated edges: one measure, 5 similarity bins x up to 4 edges per layer pair (GPT-2: 11 pairs, <= 220)
ABLATE_ARGS = "--measures jaccard --bins 5 --per-bin 4 --windows-per-pair 4 --hidden-windows 64 --no-plot"

CLI = "import sys; sys.argv[0] = 'saelineage'; from saelineage.cli import main; main()"
BUILD = """
import dataclasses, json, sys, time
from saelineage.testing.hub import build_full_size_cache
t = time.perf_counter()
c = build_full_size_cache(sys.argv[1], sys.argv[2], seed=int(sys.argv[3]))
d = dataclasses.asdict(c) | {"path": str(c.path), "collect_args": c.collect_args()}
print("BUILD " + json.dumps(d | {"seconds": time.perf_counter() - t}))
"""


# ---------------------------------------------------------------- child processes


def run_child(argv: list[str], env: dict[str, str], log: Path, timeout: float | None) -> dict[str, Any]:
    """Run argv (output to `log`); wall and CPU seconds, peak RSS (wait4's ru_maxrss) and exit status."""
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        status, ru, timed_out = _wait(proc, None if timeout is None else t + timeout)
    res = {
        "seconds": time.perf_counter() - t,
        "cpu": ru.ru_utime + ru.ru_stime,
        "rss": ru.ru_maxrss * 1024,
        "rc": status,
        "timed_out": timed_out,
        "log": str(log),
    }
    if status != 0 or timed_out:
        res["error"] = _tail(log)
    return res


def _wait(proc: subprocess.Popen, deadline: float | None) -> tuple[int, Any, bool]:
    """Reap `proc` with wait4 (its rusage; Popen.wait would discard it); kill its process group at `deadline`."""
    timed_out = False
    try:
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, ru, timed_out
            if deadline is not None and time.perf_counter() > deadline and not timed_out:
                timed_out = True
                _kill(proc)
            time.sleep(0.05)
    except BaseException:  # interrupted: the stage runs in its own session, so Ctrl-C did not reach it
        _kill(proc)
        raise


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the stage's own session: the child this benchmark started and its children."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(log: Path, lines: int = 15) -> str:
    """The last non-blank lines of a child's output (progress bars' carriage returns as line ends)."""
    kept = [line for line in log.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])[-4000:]


def cli(*args: object) -> list[str]:
    return [sys.executable, "-c", CLI, *map(str, args)]


# ---------------------------------------------------------------- measurements


def matmul_rate(d_in: int, d_sae: int, n: int = 2048, rounds: int = 5) -> tuple[float, str]:
    """fp32 GFLOP/s of a torch.mm shaped like an SAE encoder batch ([n, d_in] @ [d_in, ≤16384]): the best of
    `rounds` rounds of ~0.3 s (a bound is what the machine can do, not what it did while busy)."""
    import torch

    m = min(d_sae, 16384)
    a, b = torch.randn(n, d_in), torch.randn(d_in, m)
    torch.mm(a, b)
    best = 0.0
    for _ in range(rounds):
        reps, t = 0, time.perf_counter()
        while reps < 2 or time.perf_counter() - t < 0.3:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * n * d_in * m * reps / (time.perf_counter() - t) / 1e9)
    return best, f"torch.mm [{n}, {d_in}] @ [{d_in}, {m}], best of {rounds}, {torch.get_num_threads()} thread(s)"


def model_params(cache: dict, hub: Path) -> dict[str, int]:
    """Parameter counts of the cached model (built on the meta device: no memory) and of the blocks collect runs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from saelineage.models.adapter import find_blocks
    from saelineage.models.hooks import parse_hook
    from saelineage.testing.hub import use_hub_cache

    with use_hub_cache(hub):
        cfg = AutoConfig.from_pretrained(cache["model_id"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    blocks = find_blocks(model)
    n_run = math.ceil(max(parse_hook(h).order for h in cache["hooks"]))  # resid_post l: blocks 0..l
    emb = model.get_input_embeddings().weight.numel()
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "embedding": emb,
        "blocks": len(blocks),
        "blocks_run": n_run,
        "block_matmul": sum(p.numel() for b in list(blocks)[:n_run] for p in b.parameters() if p.dim() >= 2),
    }


def measured_l0(run_path: Path) -> dict[int, float]:
    """Mean active latents per (counted) token of each layer, from collect's features.parquet."""
    import pyarrow.parquet as pq

    t = pq.read_table(run_path / "features.parquet", columns=["layer", "density"]).to_pandas()
    return {int(k): float(v) for k, v in t.groupby("layer")["density"].sum().items()}


def live_features(run_path: Path, n: int, seed: int = 0) -> list[tuple[int, int]]:
    import pyarrow.parquet as pq

    t = pq.read_table(run_path / "features.parquet", columns=["layer", "feature", "n_active"]).to_pandas()
    t = t[t["n_active"] > 0]
    rows = t.sample(n=min(n, len(t)), random_state=seed) if len(t) else t
    return [(int(a), int(b)) for a, b in zip(rows["layer"], rows["feature"])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_stage(run_path: Path, env: dict[str, str], log: Path, n: int, timeout: float | None) -> dict[str, Any]:
    """`saelineage serve` on 127.0.0.1: time to the first accepted connection, then p50/p95 of the
    overview and of feature pages (n requests each, one keep-alive connection), then SIGTERM."""
    port = _free_port()
    t0 = time.perf_counter()
    deadline = t0 + (timeout or 1800)
    res: dict[str, Any] = {"log": str(log)}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cli("serve", run_path, "--host", "127.0.0.1", "--port", port),
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.perf_counter() > deadline:
                        raise RuntimeError("the server did not start") from None
                    time.sleep(0.1)
            res["startup"] = time.perf_counter() - t0
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

            def get(path: str) -> float:
                t = time.perf_counter()
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise RuntimeError(f"GET {path}: HTTP {r.status}")
                return (time.perf_counter() - t) * 1000

            res["first_overview_ms"] = get("/api/overview")
            feats = live_features(run_path, n + 1)
            if not feats:
                raise RuntimeError("no live feature to request")
            res["first_feature_ms"] = get(f"/api/features/{feats[0][0]}/{feats[0][1]}")
            over = [get("/api/overview") for _ in range(n)]
            rest = feats[1:] or feats  # features not requested yet (a page no earlier request touched)
            page = [get("/api/features/{}/{}".format(*rest[i % len(rest)])) for i in range(n)]
            conn.close()
            for name, ms in (("overview", over), ("feature", page)):
                res[name] = {
                    "n": len(ms),
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p95_ms": float(np.percentile(ms, 95)),
                }
        except Exception as exc:  # reported with the server's log
            res["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            status, ru, _ = _wait(proc, time.perf_counter() + 30)
    res |= {"seconds": time.perf_counter() - t0, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss * 1024}
    res["rc"] = status
    if "error" in res:
        res["error"] += "\n" + _tail(log)
    return res


# ---------------------------------------------------------------- one set-up


def gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def dur(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def run_setup(setup: str, a: argparse.Namespace, stages: list[str]) -> dict[str, Any]:
    from saelineage.run import RunDir
    from saelineage.testing.hub import hub_env

    hub, run_path, logs = a.dir / "hub", a.dir / "runs" / setup, a.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_path.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | hub_env(hub) | {"PYTHONUNBUFFERED": "1"}
    out: dict[str, Any] = {"setup": setup, "stages": {}}

    b = run_child([sys.executable, "-c", BUILD, str(hub), setup, str(a.seed)], env, logs / f"{setup}-build.log", None)
    if b["rc"]:
        print(f"\n== {setup}: building the hub cache failed:\n{b['error']}")
        return out | {"build": b}
    cache = json.loads(next(x for x in Path(b["log"]).read_text().splitlines() if x.startswith("BUILD "))[6:])
    out["build"] = b | {"cache": cache}
    params = model_params(cache, hub)
    d_in, d_sae, n_sae = cache["d_model"], cache["d_sae"], len(cache["layers"])
    l0s = cache["expected_l0"]
    print(
        f"\n== {setup}: {cache['model_id']} ({params['total'] / 1e6:.1f}M params, {params['embedding'] / 1e6:.1f}M of "
        f"them embedding; {cache['n_layers']} layers x {d_in}, vocab {cache['vocab_size']:,}) + {cache['release']}: "
        f"{n_sae} SAEs x {d_sae:,} latents at layers {','.join(map(str, cache['layers']))}, "
        f"target L0 {min(l0s):g}-{max(l0s):g}"
    )
    print(f"   hub cache {hub}: {dur(b['seconds'])} to build or reuse (peak {gib(b['rss'])})")
    rate, how = matmul_rate(d_in, d_sae)
    out["matmul_gflops"] = rate
    flop_model = 2 * params["block_matmul"]
    flop_enc = 2 * d_in * d_sae * n_sae
    bound = rate * 1e9 / (flop_model + flop_enc)
    print(f"   matmul rate {rate:.1f} GFLOP/s fp32 ({how})")
    print(
        f"   FLOPs per token {(flop_model + flop_enc) / 1e6:,.0f}M: model {flop_model / 1e6:,.0f}M "
        f"({params['blocks_run']} of {params['blocks']} blocks, {params['block_matmul'] / 1e6:.1f}M matmul params) + "
        f"SAE encode {flop_enc / 1e6:,.0f}M -> FLOP bound {bound:,.0f} tokens/s"
    )
    sae_match = a.sae_match if a.sae_match != "auto" else ("greedy" if d_sae <= 65536 else "off")

    run = RunDir(run_path)
    rows: list[tuple[str, dict, str]] = []
    for stage in stages:
        need = NEEDS[stage]
        if need and not (run.exists() and run.is_complete(need)):
            rows.append((stage, {}, f"skipped: no complete {need} stage in {run_path}"))
            continue
        log = logs / f"{setup}-{stage}.log"
        note = ""
        if stage == "collect":
            argv = cli("collect", run_path, "--force", "--corpus", "default", "--max-tokens", a.tokens)
            argv += ["--dtype", a.dtype, "--device", "cpu", *cache["collect_args"]]
            r = run_child(argv, env, log, a.timeout)
            if not r["rc"] and not r["timed_out"]:
                m = run.load()
                n_tok = int(m.n_tokens)
                tps = float(m.stage("collect").get("tokens_per_second") or n_tok / r["seconds"])
                got = measured_l0(run_path)
                r |= {"n_tokens": n_tok, "tokens_per_second": tps, "flop_bound": bound, "l0": got}
                note = (
                    f"{n_tok:,} tokens: {tps:,.0f} tok/s in the stage ({n_tok / r['seconds']:,.0f} over the process) "
                    f"= {tps / bound:.0%} of the FLOP bound; L0 per token {np.mean(list(got.values())):.0f} "
                    f"(layers {min(got.values()):.0f}-{max(got.values()):.0f}; target {np.mean(l0s):.0f})"
                )
        elif stage == "stats":
            argv = cli("stats", run_path, "--force", "--memory-limit", a.memory_limit, "--sae-match", sae_match)
            r = run_child(argv, env, log, a.timeout)
            if not r["rc"] and not r["timed_out"]:
                s = json.loads(run.file("stats_summary.json").read_text())
                r["summary"] = {k: s.get(k) for k in ("n_tokens", "pairs", "passes", "edges", "increments", "timings")}
                tm = s.get("timings", {})
                note = (
                    f"{s.get('edges', 0):,} edges, {s.get('passes')} pass(es) under {a.memory_limit}, "
                    f"sae-match {sae_match} {tm.get('sae_match', 0):.1f} s; "
                    f"accumulate {tm.get('accumulate', 0):.1f} s, finalize {tm.get('finalize', 0):.1f} s"
                )
        elif stage == "analyze":
            r = run_child(cli("analyze", run_path, "--force"), env, log, a.timeout)
        elif stage == "ablate":
            r = run_child(cli("ablate", run_path, "--force", *shlex.split(a.ablate_args)), env, log, a.timeout)
            if not r["rc"] and not r["timed_out"]:
                import pyarrow.parquet as pq

                r["rows"] = pq.read_metadata(run.file("ablations.parquet")).num_rows
                note = f"{r['rows']:,} sampled edges ablated ({a.ablate_args})"
        else:
            r = serve_stage(run_path, env, log, a.serve_requests, a.timeout)
            if "error" not in r:
                note = (
                    f"startup {r['startup']:.1f} s, first overview {r['first_overview_ms']:.0f} ms; p95 (p50) over "
                    f"{r['overview']['n']} requests each: overview {r['overview']['p95_ms']:.1f} "
                    f"({r['overview']['p50_ms']:.1f}) ms, feature {r['feature']['p95_ms']:.1f} "
                    f"({r['feature']['p50_ms']:.1f}) ms"
                )
        if r.get("timed_out"):
            note = f"TIMED OUT after {a.timeout:g} s (killed); last output:\n{r['error']}"
        elif r.get("error"):
            note = f"FAILED (exit {r.get('rc')}); last output:\n{r['error']}"
        out["stages"][stage] = r
        rows.append((stage, r, note))

    print(f"   {'stage':<8} {'wall':>9} {'CPU':>9} {'peak RSS':>10}   notes")
    for stage, r, note in rows:
        if not r:
            print(f"   {stage:<8} {'':>9} {'':>9} {'':>10}   {note}")
            continue
        print(f"   {stage:<8} {dur(r['seconds']):>9} {dur(r['cpu']):>9} {gib(r['rss']):>10}   {note}")
    out["extrapolated"] = ex = extrapolate(out["stages"])
    if ex:
        print(f"   extrapolated to {TARGET_TOKENS / 1e6:.0f}M tokens: " + "; ".join(ex["lines"]))
        if ex["from_tokens"] < 50_000:
            print(
                f"   (from {ex['from_tokens']:,} tokens the per-token phases still hold fixed costs such as kernel "
                "compilation and page faults: an upper bound; measure >= 100k tokens for a real extrapolation)"
            )
    return out


def extrapolate(st: dict[str, dict]) -> dict[str, Any]:
    """Each measured stage at TARGET_TOKENS (see the module's docstring for the model of each)."""
    ok = {k: v for k, v in st.items() if not v.get("error") and not v.get("timed_out")}
    n = (ok.get("collect") or {}).get("n_tokens") or ((ok.get("stats") or {}).get("summary") or {}).get("n_tokens")
    if not n:
        return {}
    scale = TARGET_TOKENS / n
    res: dict[str, Any] = {"from_tokens": n, "lines": []}
    if "collect" in ok:
        c = ok["collect"]
        per = n / c["tokens_per_second"]
        res["collect"] = t = c["seconds"] - per + per * scale
        res["lines"].append(f"collect {dur(t)} (linear)")
    if "stats" in ok:
        s = ok["stats"]
        tm = s["summary"].get("timings") or {}
        per = sum(tm.get(k, 0.0) for k in ("census", "read_prepare", "accumulate"))
        res["stats"] = t = s["seconds"] - per + per * scale
        res["lines"].append(f"stats {dur(t)} (census+read+accumulate linear, {dur(s['seconds'] - per)} fixed)")
    if "analyze" in ok:
        t0 = ok["analyze"]["seconds"]
        res["analyze"] = [t0, t0 * scale]
        res["lines"].append(f"analyze >= {dur(t0)} (as measured: it follows the edges; its code re-reads grow)")
    if "ablate" in ok:
        res["ablate"] = ok["ablate"]["seconds"]
        res["lines"].append(f"ablate {dur(ok['ablate']['seconds'])} (the same sample)")
    if "serve" in ok:
        res["serve"] = ok["serve"]["feature"]["p95_ms"]
        res["lines"].append(f"serve p95 as measured ({ok['serve']['feature']['p95_ms']:.1f} ms feature page)")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", choices=[*SETUPS, "all"], default="all")
    ap.add_argument("--tokens", type=int, default=100_000, help="Tokens to collect (whole 128-token windows).")
    ap.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"Hub cache, runs and logs, kept for reruns (default {DEFAULT_DIR}).",
    )
    ap.add_argument("--stages", default=",".join(STAGES), help=f"Comma list, a subset of {','.join(STAGES)}.")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--memory-limit", default="8G", help="stats --memory-limit (the README's timings use 8G).")
    ap.add_argument(
        "--sae-match",
        default="auto",
        choices=["auto", "exact", "greedy", "off"],
        help="stats --sae-match; auto: greedy up to 65,536 latents, off above (greedy is d²·d_in: ~an hour per "
        "pair at 262k on a CPU).",
    )
    ap.add_argument("--ablate-args", default=ABLATE_ARGS, help=f"Options of ablate (default: {ABLATE_ARGS!r}).")
    ap.add_argument("--serve-requests", type=int, default=30, help="Requests of the overview and of feature pages.")
    ap.add_argument("--timeout", type=float, default=None, help="Kill a stage that runs longer (seconds).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    a = ap.parse_args()
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    if bad := [s for s in stages if s not in STAGES]:
        ap.error(f"unknown stage(s) {bad}; choose from {','.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    a.dir = a.dir.resolve()
    setups = list(SETUPS) if a.setup == "all" else [a.setup]
    print(f"bench_real_shapes: {', '.join(setups)}; {a.tokens:,} tokens; stages {','.join(stages)}; dir {a.dir}")
    results = [run_setup(s, a, stages) for s in setups]
    if a.json:
        a.json.write_text(json.dumps({"tokens": a.tokens, "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
