"""A small synthetic run with planted structure, for the browser's tests and benchmark.

Layer-0 features detect tokens; each later layer carries some features on, forms AND / OR
gates of two parents, splits a parent by the next token, adds new features and leaves some
dead. Codes go through the store API (`write_run`), then the real `stats` / `analyze`
stages when this build has them.

FIXTURE FALLBACK (marked below): while a stage is missing from the build, its output files
are written here directly, following the column contract of DESIGN §3 with brute-force
formulas. This is test scaffolding, not an implementation of those stages.
"""

from __future__ import annotations

import importlib
import os
import string
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from saelineage.run import RunDir

HOSTILE_LABEL = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def _vocab(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    words = {" the", " of", " and", ",", ".", "\n", " cat", " dog", " Paris", " 1999"}
    while len(words) < n:
        k = int(rng.integers(2, 7))
        words.add((" " if rng.random() < 0.7 else "") + "".join(rng.choice(list(string.ascii_lowercase), k)))
    return sorted(words)


def synthetic_codes(n_layers: int = 4, d_sae: int = 48, n_windows: int = 64, window: int = 32,
                    vocab_size: int = 120, seed: int = 0) -> tuple[dict[int, sp.csr_matrix], np.ndarray, list[str]]:
    """Planted codes {layer: csr [T, d_sae]}, token ids [T] and vocab strings."""
    rng = np.random.default_rng(seed)
    t = n_windows * window
    tokens = rng.integers(1, vocab_size, t).astype(np.int32)
    tokens[::window] = 0  # BOS
    acts = np.zeros((n_layers, t, d_sae), np.float32)
    for f in range(d_sae - 2):  # layer 0: token detectors; the last two features are dead
        ids = rng.choice(np.arange(1, vocab_size), 2, replace=False)
        on = np.isin(tokens, ids)
        acts[0, on, f] = 1 + rng.random(on.sum()).astype(np.float32) * 4
    nxt = np.roll(tokens, -1)
    for layer in range(1, n_layers):
        prev = acts[layer - 1]
        for f in range(d_sae - 2):
            kind = f % 6
            a, b = rng.choice(d_sae - 2, 2, replace=False)
            if kind in (0, 1):  # carried, with some noise
                keep = rng.random(t) < 0.93
                acts[layer, :, f] = prev[:, a] * keep * (0.8 + 0.4 * rng.random())
            elif kind == 2:  # AND gate of a and b, widened so it has support
                both = (prev[:, a] > 0) | (prev[:, b] > 0)
                acts[layer, both & (rng.random(t) < 0.5), f] = 2.0
                acts[layer, (prev[:, a] > 0) & (prev[:, b] > 0), f] = 3.0
            elif kind == 3:  # OR gate
                acts[layer, :, f] = np.maximum(prev[:, a], prev[:, b])
            elif kind == 4:  # split of parent a by the parity of the next token
                acts[layer, :, f] = prev[:, a] * (nxt % 2 == (f // 6) % 2)
            else:  # new feature
                ids = rng.choice(np.arange(1, vocab_size), 3, replace=False)
                on = np.isin(tokens, ids)
                acts[layer, on, f] = 0.5 + rng.random(on.sum()).astype(np.float32)
    codes = {l: sp.csr_matrix(acts[l]) for l in range(n_layers)}
    return codes, tokens, ["<bos>"] + _vocab(vocab_size - 1)


def _stage(module: str, attr: str) -> Optional[Callable]:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ModuleNotFoundError, AttributeError):
        return None


def build_sample_run(path: str | Path, n_layers: int = 4, d_sae: int = 48, n_windows: int = 64, window: int = 32,
                     seed: int = 0, hostile_label: bool = True, use_real_stages: bool | None = None) -> RunDir:
    """Write a complete synthetic run to `path` (collect + stats + analyze outputs).

    The real stats/analyze stages run when this build has them, unless `use_real_stages` is
    False (or, when it is None, the environment sets SAELINEAGE_FIXTURE_STAGES=1)."""
    if use_real_stages is None:
        use_real_stages = os.environ.get("SAELINEAGE_FIXTURE_STAGES", "") != "1"
    from saelineage.data.importer import write_run

    codes, tokens, vocab = synthetic_codes(n_layers, d_sae, n_windows, window, seed=seed)
    rng = np.random.default_rng(seed + 1)
    decoders = {l: rng.standard_normal((d_sae, 16)).astype(np.float32) for l in codes}
    run = write_run(path, codes, tokens, window_len=window, bos=True, vocab=vocab, decoders=decoders,
                    model={"spec": "imported", "name": "synthetic"}, shard_windows=16, examples_k=10, force=True)
    compute_stats = _stage("saelineage.stats", "compute_stats") if use_real_stages else None
    analyze = _stage("saelineage.lineage", "analyze") if use_real_stages else None
    if compute_stats is not None:
        compute_stats(run.path)
    else:
        _fixture_stats(run, codes, decoders)
    if analyze is not None and compute_stats is not None:
        analyze(run.path)
    else:
        _fixture_analyze(run)
    if hostile_label:
        _plant_hostile_label(run)
    return run


def _plant_hostile_label(run: RunDir) -> None:
    """Give feature (0, 0) a label that would run script if it were ever injected as HTML."""
    from saelineage.data.finalize import write_parquet

    write_parquet(run.file("labels.parquet"), pa.table({
        "layer": pa.array([0], pa.int64()), "feature": pa.array([0], pa.int64()),
        "explanation": [HOSTILE_LABEL], "source": ["test"]}))


# ---- FIXTURE FALLBACK: stand-ins for the stats / analyze stages (column contract only) ----

def _wilson_lo(k: np.ndarray, n: np.ndarray, z: float = 1.96) -> np.ndarray:
    n = np.maximum(n, 1)
    p = k / n
    d = 1 + z * z / n
    return (p + z * z / (2 * n) - z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / d


def _fixture_stats(run: RunDir, codes: dict[int, sp.csr_matrix], dec: dict[int, np.ndarray]) -> None:
    from saelineage.data.finalize import write_parquet

    m = run.load()
    mask = np.arange(m["n_tokens"]) % m["window"] != 0
    layers, rows = sorted(codes), []
    for l, nl in zip(layers[:-1], layers[1:]):
        a, b = codes[l].toarray()[mask].astype(np.float64), codes[nl].toarray()[mask].astype(np.float64)
        n, ba, bb = len(a), (a > 0).astype(np.float64), (b > 0).astype(np.float64)
        ci, cj, cij = ba.sum(0)[:, None], bb.sum(0)[None, :], ba.T @ bb
        si, sj, qi, qj, p = a.sum(0)[:, None], b.sum(0)[None, :], (a * a).sum(0)[:, None], (b * b).sum(0)[None, :], a.T @ b
        with np.errstate(all="ignore"):
            jac = cij / (ci + cj - cij)
            suf, nec = cij / ci, cij / cj
            pear = (n * p - si * sj) / np.sqrt((n * qi - si ** 2) * (n * qj - sj ** 2))
            cos = p / np.sqrt(qi * qj)
            mi = np.zeros_like(cij)
            for n_ab, pa_, pb_ in ((cij, ci, cj), (ci - cij, ci, n - cj), (cj - cij, n - ci, cj),
                                   (n - ci - cj + cij, n - ci, n - cj)):
                mi += np.where(n_ab > 0, n_ab / n * np.log(n_ab * n / (pa_ * pb_)), 0.0)
        da = dec[l] / np.linalg.norm(dec[l], axis=1, keepdims=True)
        db = dec[nl] / np.linalg.norm(dec[nl], axis=1, keepdims=True)
        i, j = np.nonzero(cij >= 3)
        rows.append(pa.table({
            "src_layer": np.full(len(i), l, np.int64), "src": i.astype(np.int64),
            "dst_layer": np.full(len(i), nl, np.int64), "dst": j.astype(np.int64),
            "n_co": cij[i, j].astype(np.int64), "jaccard": jac[i, j], "sufficiency": suf[i, j],
            "necessity": nec[i, j], "mutual_info": mi[i, j], "pearson": pear[i, j], "act_cosine": cos[i, j],
            "dec_cosine": (da @ db.T)[i, j], "sufficiency_lo": _wilson_lo(cij, ci + 0 * cj)[i, j],
            "necessity_lo": _wilson_lo(cij, cj + 0 * ci)[i, j]}))
    write_parquet(run.file("edges.parquet"), pa.concat_tables(rows))
    run.set_stage("stats", "complete", seconds=0.0, fixture=True)


def _leiden(key: list, live: dict, strong: list, edges: dict) -> list:
    """Communities: weighted Leiden (modularity, seed 42) over live features joined by strong edges."""
    import igraph as ig
    import leidenalg as la

    at = {k: i for i, k in enumerate(key)}
    w = {(a, b, c, d): j for a, b, c, d, j in zip(edges["src_layer"], edges["src"], edges["dst_layer"],
                                                   edges["dst"], edges["jaccard"])}
    g = ig.Graph(n=len(key), edges=[(at[(a, b)], at[(c, d)]) for a, b, c, d in strong])
    part = la.find_partition(g, la.ModularityVertexPartition, weights=[w[e] for e in strong], seed=42)
    return [int(m) if live[k] else None for k, m in zip(key, part.membership)]


def _fixture_analyze(run: RunDir) -> None:
    import pyarrow.parquet as pq

    from saelineage.data.finalize import write_parquet
    from saelineage.feature_table import ANALYSIS_FILE

    feats = pq.read_table(run.file("features.parquet"))
    edges = pq.read_table(run.file("edges.parquet")).to_pydict()
    layers = sorted(set(feats.column("layer").to_pylist()))
    key = list(zip(feats.column("layer").to_pylist(), feats.column("feature").to_pylist()))
    live = dict(zip(key, (n > 0 for n in feats.column("n_active").to_pylist())))
    strong = [(a, b, c, d) for a, b, c, d, j in zip(edges["src_layer"], edges["src"], edges["dst_layer"],
                                                       edges["dst"], edges["jaccard"]) if j >= 0.3]
    has_pred = {(c, d) for a, b, c, d in strong}
    has_succ = {(a, b) for a, b, c, d in strong}
    life = []
    for k in key:
        if not live[k]:
            life.append("dead")
        elif k[0] != layers[0] and k not in has_pred:
            life.append("new" if k[0] == layers[-1] or k in has_succ else "new+ending")
        else:
            life.append("carried" if k[0] == layers[-1] or k in has_succ else "ending")
    comm = _leiden(key, live, strong, edges)
    write_parquet(run.file(ANALYSIS_FILE), pa.table({
        "layer": feats.column("layer"), "feature": feats.column("feature"), "lifecycle": pa.array(life, pa.string()),
        "has_pred": pa.array([None if k[0] == layers[0] else k in has_pred for k in key], pa.bool_()),
        "has_succ": pa.array([None if k[0] == layers[-1] else k in has_succ for k in key], pa.bool_()),
        "community": pa.array(comm, pa.int64())}))
    rates: dict[str, list] = {k: [] for k in ("layer", "chosen", "share_new", "share_ending", "ref_share_new",
                                               "ref_share_ending")}
    for l in layers:
        lab = [x for (ll, _), x in zip(key, life) if ll == l]
        live_n, dead = sum(x != "dead" for x in lab), sum(x == "dead" for x in lab)
        new = sum(x in ("new", "new+ending") for x in lab)
        end = sum(x in ("ending", "new+ending") for x in lab)
        for k, v in (("layer", l), ("chosen", True), ("share_new", new / live_n), ("share_ending", end / live_n),
                     ("ref_share_new", (new + dead) / len(lab)), ("ref_share_ending", (end + dead) / len(lab))):
            rates[k].append(v)
    write_parquet(run.file("lifecycle.parquet"), pa.table(rates))
    sizes: dict[int, int] = {}
    for c in comm:
        if c is not None:
            sizes[c] = sizes.get(c, 0) + 1
    write_parquet(run.file("communities.parquet"), pa.table({
        "community": pa.array(list(sizes), pa.int64()), "size": pa.array(list(sizes.values()), pa.int64())}))
    suf = {(a, b, c, d): (s, n, k) for a, b, c, d, s, n, k in zip(edges["src_layer"], edges["src"], edges["dst_layer"],
                                                                  edges["dst"], edges["sufficiency"], edges["necessity"],
                                                                  edges["n_co"])}
    gates, splits = [], []
    by_child: dict[tuple, list] = {}
    for (a, b, c, d), v in suf.items():
        by_child.setdefault((c, d), []).append((a, b, v))
    for (c, d), ps in sorted(by_child.items()):
        for kind, idx in (("and", 1), ("or", 0)):
            good = sorted([p for p in ps if p[2][idx] >= 0.9], key=lambda p: -p[2][2])[:2]
            if len(good) == 2:
                gates.append((kind, c, d, good[0][0], good[0][1], good[1][1], min(good[0][2][2], good[1][2][2]),
                              0.9, 0.95))
    by_parent: dict[tuple, list] = {}
    for (a, b, c, d), v in suf.items():
        if v[1] >= 0.95:
            by_parent.setdefault((a, b), []).append((c, d, v[2]))
    for (a, b), ch in sorted(by_parent.items()):
        if len(ch) >= 2:
            splits.append((a, b, ch[0][0], [x[1] for x in ch[:4]], 0.5))
    cols = ["kind", "layer", "feature", "parent_layer", "parent_a", "parent_b", "support", "score_forward",
            "score_backward"]
    write_parquet(run.file("gates.parquet"), pa.table({c: [g[i] for g in gates] for i, c in enumerate(cols)},
                  schema=pa.schema([(c, pa.string() if c == "kind" else pa.float64() if c.startswith("score")
                                     else pa.int64()) for c in cols])))
    write_parquet(run.file("splits.parquet"), pa.table({
        "layer": pa.array([s[0] for s in splits], pa.int64()), "feature": pa.array([s[1] for s in splits], pa.int64()),
        "child_layer": pa.array([s[2] for s in splits], pa.int64()),
        "children": pa.array([s[3] for s in splits], pa.list_(pa.int64())),
        "coverage": pa.array([s[4] for s in splits], pa.float64())}))
    run.set_stage("analyze", "complete", seconds=0.0, fixture=True)
