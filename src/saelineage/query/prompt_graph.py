"""Per-prompt graphs: the features active on one token, and the kept edges among them.

`prompt_graph` is a pure function of the per-layer codes at one token, so it serves the
live `saelineage prompt` command (codes from the run's model and SAEs), the precomputed
graphs of sampled corpus windows (codes read from the store during analyze) and tests
without a model. A feature is kept when its activation is > 0 and ≥ rel × its maximum over
the corpus (the reference work, arXiv:2410.08869, used 0.1); links are the run's kept edges between kept features,
valued by one measure; nodes carry their global community.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from saelineage import contract
from saelineage.data.finalize import read_vocab
from saelineage.errors import SaelineageError
from saelineage.feature_table import read_features
from saelineage.run import RunDir

KEY = np.int64(1) << 32  # (layer, feature) → one int64 key


@dataclass
class GraphContext:
    """Run-wide data the graphs need, aligned with features.parquet rows.

    layer, feature: int64 [N]; act_max: float64 [N]; community: int64 [N] (−1: none);
    explanation: object [N] or None; edges: columns of edges.parquet as arrays.
    """

    layer: np.ndarray
    feature: np.ndarray
    act_max: np.ndarray
    community: np.ndarray
    explanation: np.ndarray | None
    edges: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.key = self.layer.astype(np.int64) * KEY + self.feature
        self.order = np.argsort(self.key, kind="stable")
        self.src_key = self.edges["src_layer"].astype(np.int64) * KEY + self.edges["src"]
        self.dst_key = self.edges["dst_layer"].astype(np.int64) * KEY + self.edges["dst"]
        self.src_order = np.argsort(self.src_key, kind="stable")
        self.src_sorted = self.src_key[self.src_order]

    def edges_among(self, keys: np.ndarray) -> np.ndarray:
        """Rows of the edges whose two ends are both in `keys` (sorted int64), in edges order."""
        lo = np.searchsorted(self.src_sorted, keys, "left")
        hi = np.searchsorted(self.src_sorted, keys, "right")
        n = hi - lo
        # the positions lo[k] .. hi[k]-1 for every k, without a Python loop
        pos = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))
        rows = self.src_order[pos]
        return np.sort(rows[np.isin(self.dst_key[rows], keys)])

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """features rows of (layer, feature) keys; −1 where unknown."""
        out = np.full(len(keys), -1, np.int64)
        if len(self.order) == 0 or len(keys) == 0:
            return out
        sk = self.key[self.order]
        pos = np.minimum(np.searchsorted(sk, keys), len(sk) - 1)
        hit = sk[pos] == keys
        out[hit] = self.order[pos[hit]]
        return out


def prompt_graph(
    codes: dict[int, tuple[np.ndarray, np.ndarray]],
    ctx: GraphContext,
    *,
    rel: float = 0.1,
    measure: str = "jaccard",
    min_value: float | None = None,
    max_nodes: int | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Node-link graph of the features active at one token.

    codes: {layer: (feature ids int [k], activations float [k])} at that token.
    Returns {"directed", "multigraph", "graph", "nodes", "links"}: nodes {id "L_F", layer,
    feature, activation, rel_activation, community, explanation}, links {source, target,
    similarity} (kept edges with both ends kept; similarity = `measure`, ≥ min_value if given).
    With max_nodes, the strongest nodes by rel_activation are kept.
    """
    if measure not in ctx.edges:
        raise SaelineageError(f"edges.parquet has no column {measure!r}.", "choose a measure of the edges table.")
    keys, acts = [], []
    for layer, (fid, val) in sorted(codes.items()):
        fid, val = np.asarray(fid, np.int64), np.asarray(val, np.float64)
        keys.append(int(layer) * KEY + fid)
        acts.append(val)
    keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    acts = np.concatenate(acts) if acts else np.zeros(0)
    rows = ctx.rows(keys)
    mx = np.where(rows >= 0, ctx.act_max[np.maximum(rows, 0)], 0.0) if len(rows) else np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        relv = np.where(mx > 0, acts / mx, np.inf)
    keep = (acts > 0) & (rows >= 0) & ((mx <= 0) | (acts >= rel * mx))
    keys, acts, rows, relv = keys[keep], acts[keep], rows[keep], relv[keep]
    truncated = False
    if max_nodes is not None and len(keys) > max_nodes:
        top = np.lexsort((keys, -acts, -relv))[:max_nodes]
        keys, acts, rows, relv = keys[top], acts[top], rows[top], relv[top]
        truncated = True
    o = np.argsort(keys)
    keys, acts, rows, relv = keys[o], acts[o], rows[o], relv[o]
    e_idx = ctx.edges_among(keys)
    sim = np.asarray(ctx.edges[measure], np.float64)
    if min_value is not None:
        with np.errstate(invalid="ignore"):
            e_idx = e_idx[sim[e_idx] >= min_value]

    def nid(k: np.ndarray) -> list[str]:
        return [f"{a}_{b}" for a, b in zip((k // KEY).tolist(), (k % KEY).tolist())]

    ids = nid(keys)
    expl = ctx.explanation
    nodes = [
        {
            "id": i,
            "layer": int(k // KEY),
            "feature": int(k % KEY),
            "activation": float(a),
            "rel_activation": None if not np.isfinite(r) else float(r),
            "community": None if ctx.community[row] < 0 else int(ctx.community[row]),
            "explanation": None if expl is None or expl[row] is None else str(expl[row]),
        }
        for i, k, a, r, row in zip(ids, keys.tolist(), acts.tolist(), relv.tolist(), rows.tolist())
    ]
    links = [
        {"source": s, "target": t, "similarity": None if not np.isfinite(v) else float(v)}
        for s, t, v in zip(nid(ctx.src_key[e_idx]), nid(ctx.dst_key[e_idx]), sim[e_idx].tolist())
    ]
    graph = {"measure": measure, "rel": rel, "min_value": min_value, "truncated": truncated} | (meta or {})
    return {"directed": True, "multigraph": False, "graph": graph, "nodes": nodes, "links": links}


def load_context(run: RunDir) -> GraphContext:
    """GraphContext of an analysed run (communities from analyze; imported explanations if any)."""
    import pyarrow.parquet as pq

    run.require("stats")
    feats = read_features(run, columns=["act_max", "community"])
    names = feats.column_names
    comm = (
        np.asarray(feats.column("community").fill_null(-1).to_numpy(), np.int64)
        if "community" in names
        else np.full(feats.num_rows, -1, np.int64)
    )
    from saelineage.lineage.export import explanations

    edges = pq.read_table(run.file(contract.EDGES))
    return GraphContext(
        feats.column("layer").to_numpy().astype(np.int64),
        feats.column("feature").to_numpy().astype(np.int64),
        feats.column("act_max").to_numpy().astype(np.float64),
        comm,
        explanations(run, feats),
        {c: edges.column(c).to_numpy(zero_copy_only=False) for c in edges.column_names},
    )


def encode_text(run: RunDir, text: str, model=None) -> tuple[list[int], dict[int, Any]]:
    """Token ids of `text` (BOS first when the run's windows start with BOS) and per-layer codes
    {layer: LayerCodes [S rows]} from the run's model and SAEs (`saelineage.run_model`)."""
    import torch

    from saelineage.run_model import load_run_model

    manifest = run.load()
    rm = model if model is not None else load_run_model(run)
    tok = rm.adapter.tokenizer
    ids = [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
    if manifest.bos and getattr(tok, "bos_token_id", None) is not None:
        ids = [int(tok.bos_token_id)] + ids
    if not ids:
        raise SaelineageError("the prompt has no tokens.", "pass some text.")
    layers = sorted(int(l) for l in rm.saes)
    with torch.no_grad():
        res = rm.adapter.residuals(torch.tensor([ids], dtype=torch.long), [rm.saes[l].hook for l in layers])
        codes = {
            l: rm.saes[l].encode_sparse(res[rm.saes[l].hook].reshape(len(ids), -1).to(rm.saes[l].W_enc.dtype))
            for l in layers
        }
    return ids, codes


def codes_at(codes: dict[int, Any], position: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Row `position` of CSR codes {layer: LayerCodes} as {layer: (features, values)}."""
    out = {}
    for l, c in codes.items():
        lo, hi = int(c.indptr[position]), int(c.indptr[position + 1])
        out[l] = (np.asarray(c.indices[lo:hi], np.int64), np.asarray(c.values[lo:hi], np.float64))
    return out


def prompt(
    run_dir: str | Path,
    text: str,
    position: int = -1,
    *,
    rel: float = 0.1,
    measure: str = "jaccard",
    min_value: float | None = None,
    max_nodes: int | None = None,
    model=None,
) -> dict[str, Any]:
    """Run the run's model + SAEs on `text` and return the graph at token `position` (−1: last)."""
    run = RunDir(run_dir)
    ctx = load_context(run)
    ids, codes = encode_text(run, text, model)
    p = position if position >= 0 else len(ids) + position
    if not 0 <= p < len(ids):
        raise SaelineageError(
            f"token position {position} is outside the prompt ({len(ids)} tokens).",
            f"choose a position between {-len(ids)} and {len(ids) - 1}.",
        )
    vocab = read_vocab(run)
    tokens = [vocab[i] if vocab and 0 <= i < len(vocab) else str(i) for i in ids]
    return prompt_graph(
        codes_at(codes, p),
        ctx,
        rel=rel,
        measure=measure,
        min_value=min_value,
        max_nodes=max_nodes,
        meta={"text": text, "position": p, "token": tokens[p], "tokens": tokens},
    )


def sample_graphs(
    samples: list[dict],
    ctx: GraphContext,
    vocab: list[str] | None,
    *,
    rel: float = 0.1,
    measure: str = "jaccard",
    max_nodes: int | None = 256,
) -> list[dict[str, Any]]:
    """Graphs of sampled corpus tokens (validate.Counts.samples: window, pos, token, raw codes)."""
    out = []
    for s in samples:
        t = s["token"]
        token = vocab[t] if vocab and 0 <= t < len(vocab) else str(t)
        out.append(
            prompt_graph(
                s["codes"],
                ctx,
                rel=rel,
                measure=measure,
                max_nodes=max_nodes,
                meta={"window": s["window"], "position": s["pos"], "token": token},
            )
        )
    return out


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def summary_table(graph: dict[str, Any], top: int = 5) -> Table:
    """Terminal summary: per layer, kept features, links out, strongest features with community."""
    g = graph["graph"]
    title = f"features on token {g.get('token')!r} (position {g.get('position')}), activation ≥ {g['rel']:g} × max"
    t = Table(title=title)
    for c in ("layer", "features", "links to later layers", "communities", "strongest (feature: rel. act, community)"):
        t.add_column(c)
    by_layer: dict[int, list] = {}
    for n in graph["nodes"]:
        by_layer.setdefault(n["layer"], []).append(n)
    out_links: dict[int, int] = {}
    for e in graph["links"]:
        out_links[int(e["source"].split("_")[0])] = out_links.get(int(e["source"].split("_")[0]), 0) + 1
    for layer in sorted(by_layer):
        ns = sorted(by_layer[layer], key=lambda n: -(n["rel_activation"] or np.inf))
        comms = {n["community"] for n in ns if n["community"] is not None}
        strongest = ", ".join(f"{n['feature']}: {_fmt(n['rel_activation'])} c{_fmt(n['community'])}" for n in ns[:top])
        t.add_row(str(layer), str(len(ns)), str(out_links.get(layer, 0)), str(len(comms)), strongest)
    t.caption = f"{len(graph['nodes'])} features, {len(graph['links'])} links ({g['measure']})"
    return t
