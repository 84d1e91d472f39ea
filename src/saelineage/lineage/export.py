"""Exports of the feature graph: node-link JSON (networkx, D3), GraphML (Gephi), Parquet; of
the joined per-feature table (format "features"); and of labels and feature lists in the formats
Neuronpedia imports ("neuronpedia": explanation records; "neuronpedia-list": a feature list with a
quick-list URL; formats and mapping in `query.neuronpedia`); and of prompt graphs as node-link JSON
(`prompt_nodelink`: the `saelineage prompt` command's --json, analyze's prompt_graphs.json).

Nodes are the live features, with id "L_F" (layer_feature), layer, feature, explanation (imported
labels, labels.parquet), community and lifecycle; links are the kept edges whose `measure` is
≥ min_value, with that value as `similarity`. Written without networkx (a test-only dependency)
and atomically.

"features" writes `feature_table.read_features`: collect's features.parquet with analyze's and
ablate's per-feature columns, for readers that looked for `lifecycle` in features.parquet before
each stage got its own table.

Read the node-link file with networkx as ``nx.node_link_graph(data, edges="links")``
(networkx ≥ 3.4 defaults to the key "edges"; the file uses the classic "links").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pyarrow as pa

from saelineage import contract
from saelineage.errors import SaelineageError
from saelineage.feature_table import explanations, read_features
from saelineage.query.prompt_graph import Codes, FeatureGraph, PromptGraph, prompt_graph
from saelineage.run import RunDir, atomic_write_bytes, parquet_file, write_json, write_parquet

FORMATS = ("nodelink", "graphml", "parquet", "features", "neuronpedia", "neuronpedia-list")
NEURONPEDIA_FILES = {"neuronpedia": "neuronpedia-explanations.json", "neuronpedia-list": "neuronpedia-list.json"}


def graph_tables(
    run_dir: str | Path, measure: str = "jaccard", min_value: float | None = None
) -> tuple[pa.Table, pa.Table]:
    """(nodes, links) tables of the run's feature graph (see module doc)."""
    run = RunDir(run_dir)
    run.require("stats")
    feats = read_features(run, columns=["n_active", "density", "community", "lifecycle"])
    names = feats.column_names
    live = feats.column("n_active").to_numpy() > 0
    layer = feats.column("layer").to_numpy().astype(np.int64)
    fid = feats.column("feature").to_numpy().astype(np.int64)
    expl = explanations(run, feats)
    comm = feats.column("community").to_pylist() if "community" in names else [None] * feats.num_rows
    life = feats.column("lifecycle").to_pylist() if "lifecycle" in names else [None] * feats.num_rows
    sel = np.nonzero(live)[0]
    nodes = pa.table(
        {
            "id": pa.array([f"{a}_{b}" for a, b in zip(layer[sel].tolist(), fid[sel].tolist())], pa.string()),
            "layer": pa.array(layer[sel], pa.int64()),
            "feature": pa.array(fid[sel], pa.int64()),
            "explanation": pa.array([None if expl is None else expl[i] for i in sel.tolist()], pa.string()),
            "community": pa.array([comm[i] for i in sel.tolist()], pa.int64()),
            "lifecycle": pa.array([life[i] for i in sel.tolist()], pa.string()),
            "density": feats.column("density").take(pa.array(sel))
            if "density" in names
            else pa.array([None] * len(sel), pa.float64()),
        }
    )
    f = parquet_file(run.file(contract.EDGES))  # one verified read: schema and columns from its bytes
    if measure not in f.schema_arrow.names:
        names = [n for n in f.schema_arrow.names if n not in ("src_layer", "src", "dst_layer", "dst")]
        raise SaelineageError(f"edges.parquet has no column {measure!r}.", f"choose one of {', '.join(names)}.")
    e = f.read(columns=["src_layer", "src", "dst_layer", "dst", measure])
    v = e.column(measure).to_numpy(zero_copy_only=False).astype(np.float64)
    keep = np.isfinite(v) if min_value is None else (np.isfinite(v) & (v >= min_value))
    idx = np.nonzero(keep)[0]
    s_l, s_f = e.column("src_layer").to_numpy()[idx], e.column("src").to_numpy()[idx]
    d_l, d_f = e.column("dst_layer").to_numpy()[idx], e.column("dst").to_numpy()[idx]
    links = pa.table(
        {
            "source": pa.array([f"{a}_{b}" for a, b in zip(s_l.tolist(), s_f.tolist())], pa.string()),
            "target": pa.array([f"{a}_{b}" for a, b in zip(d_l.tolist(), d_f.tolist())], pa.string()),
            "similarity": pa.array(v[idx], pa.float64()),
        }
    )
    return nodes, links


def _clean(x: Any) -> Any:
    return None if isinstance(x, float) and not np.isfinite(x) else x


def nodelink(nodes: pa.Table, links: pa.Table, meta: dict[str, Any]) -> dict[str, Any]:
    """The networkx node-link structure (directed; links use the key "links")."""
    return {
        "directed": True,
        "multigraph": False,
        "graph": meta,
        "nodes": [{k: _clean(v) for k, v in r.items()} for r in nodes.to_pylist()],
        "links": [{k: _clean(v) for k, v in r.items()} for r in links.to_pylist()],
    }


def graphml_bytes(nodes: pa.Table, links: pa.Table, meta: dict[str, Any]) -> bytes:
    """GraphML for Gephi: node attributes as <data>, edge `similarity` (also as `weight`)."""
    n_attrs = [
        ("layer", "int"),
        ("feature", "int"),
        ("explanation", "string"),
        ("community", "int"),
        ("lifecycle", "string"),
        ("density", "double"),
    ]
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
        'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">\n',
    ]
    for name, typ in n_attrs:
        parts.append(f'  <key id="{name}" for="node" attr.name="{name}" attr.type="{typ}"/>\n')
    parts.append('  <key id="similarity" for="edge" attr.name="similarity" attr.type="double"/>\n')
    parts.append('  <key id="weight" for="edge" attr.name="weight" attr.type="double"/>\n')
    parts.append(f'  <graph id={quoteattr(str(meta.get("run", "saelineage")))} edgedefault="directed">\n')
    cols = {name: nodes.column(name).to_pylist() for name, _ in n_attrs}
    for i, nid in enumerate(nodes.column("id").to_pylist()):
        data = "".join(
            f'<data key="{name}">{escape(str(cols[name][i]))}</data>'
            for name, _ in n_attrs
            if _clean(cols[name][i]) is not None
        )
        parts.append(f'    <node id="{nid}">{data}</node>\n')
    for k, (s, t, v) in enumerate(
        zip(
            links.column("source").to_pylist(),
            links.column("target").to_pylist(),
            links.column("similarity").to_pylist(),
        )
    ):
        data = "" if _clean(v) is None else f'<data key="similarity">{v!r}</data><data key="weight">{v!r}</data>'
        parts.append(f'    <edge id="e{k}" source="{s}" target="{t}">{data}</edge>\n')
    parts.append("  </graph>\n</graphml>\n")
    return "".join(parts).encode()


def prompt_nodelink(graph: PromptGraph, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A prompt graph as node-link JSON: nodes {id "L_F", layer, feature, activation, rel_activation,
    community, explanation}, links {source, target, similarity}, and `graph` {measure, rel, min_value,
    truncated} with `meta` appended."""
    ids = [f"{a}_{b}" for a, b in zip(graph.layer.tolist(), graph.feature.tolist())]
    expl = graph.explanation
    nodes = [
        {
            "id": ids[k],
            "layer": int(graph.layer[k]),
            "feature": int(graph.feature[k]),
            "activation": a,
            "rel_activation": r if np.isfinite(r) else None,
            "community": c if c >= 0 else None,
            "explanation": None if expl is None or expl[k] is None else str(expl[k]),
        }
        for k, (a, r, c) in enumerate(
            zip(graph.activation.tolist(), graph.rel_activation.tolist(), graph.community.tolist())
        )
    ]
    links = [
        {"source": ids[s], "target": ids[t], "similarity": v if np.isfinite(v) else None}
        for s, t, v in zip(graph.src.tolist(), graph.dst.tolist(), graph.value.tolist())
    ]
    about = {"measure": graph.measure, "rel": graph.rel, "min_value": graph.min_value, "truncated": graph.truncated}
    return {"directed": True, "multigraph": False, "graph": about | (meta or {}), "nodes": nodes, "links": links}


def sample_graphs(
    samples: list[dict[str, Any]],
    ctx: FeatureGraph,
    vocab: list[str] | None,
    *,
    rel: float = 0.1,
    measure: str = "jaccard",
    max_nodes: int | None = 256,
) -> list[dict[str, Any]]:
    """Node-link graphs of sampled corpus tokens (validate.Counts.samples: window, pos, token, raw codes)."""
    out = []
    for s in samples:
        t = s["token"]
        codes: Codes = s["codes"]
        graph = prompt_graph(codes, ctx, rel=rel, measure=measure, max_nodes=max_nodes)
        token = vocab[t] if vocab and 0 <= t < len(vocab) else str(t)
        out.append(prompt_nodelink(graph, {"window": s["window"], "position": s["pos"], "token": token}))
    return out


def neuronpedia_export(
    run: RunDir, fmt: str, features: str = "", community: int | None = None, neuronpedia_id: str | None = None
) -> Any:
    """The records of format "neuronpedia" (a list) or "neuronpedia-list" (a dict), with the labels the
    browser shows: imported explanations, else the feature's top tokens. Features: `features` (ids), or
    a `community`'s members, or (explanations only) every live feature."""
    from saelineage.feature_table import parse_feature_ids
    from saelineage.query.neuronpedia import neuronpedia_explanations, neuronpedia_list
    from saelineage.query.run_data import RunData

    manifest = run.require("collect")
    g = RunData(run.path).g
    if features:
        rows = []
        for layer, feature in parse_feature_ids(features, g.layers):
            i = g.idx(layer, feature)
            if i is None:
                raise SaelineageError(f"feature {layer}:{feature} is not in the run.", "check the ids in --features.")
            rows.append(i)
    elif community is not None:
        rows = sorted(g.members(int(community)).tolist())
        if not rows:
            raise SaelineageError(f"community {community} is not in this run.", "see `saelineage analyze` output.")
    elif fmt == "neuronpedia":
        rows = np.flatnonzero(g.n_active > 0).tolist()
    else:
        raise SaelineageError("a Neuronpedia list needs its features.", "pass --features 3:17,4:2 or --community N.")
    if fmt == "neuronpedia":
        labels = [
            (
                int(g.layer[i]),
                int(g.feature[i]),
                g.label[i],
                "imported" if g.label_src[i] == "imported" else "top-tokens",
            )
            for i in rows
            if g.label[i]
        ]
        return neuronpedia_explanations(manifest.saes, labels, neuronpedia_id)
    name = f"{run.path.name}: " + (f"community {community}" if community is not None and not features else "features")
    return neuronpedia_list(
        manifest.saes, [(int(g.layer[i]), int(g.feature[i]), g.label[i]) for i in rows], name, neuronpedia_id
    )


def export(
    run_dir: str | Path,
    fmt: str = "nodelink",
    out: str | Path | None = None,
    measure: str = "jaccard",
    min_value: float | None = None,
    *,
    features: str = "",
    community: int | None = None,
    neuronpedia_id: str | None = None,
) -> Path:
    """Write the feature graph of a run in `fmt`, or (fmt "features") its joined per-feature table;
    returns the file (or folder, for parquet) written.

    Default `out`: RUN/export/graph.json (nodelink), RUN/export/graph.graphml, RUN/export/ (parquet:
    nodes.parquet + links.parquet), RUN/export/features.parquet (features; measure and min_value
    do not apply), RUN/export/neuronpedia-explanations.json, RUN/export/neuronpedia-list.json
    (`features`, `community`, `neuronpedia_id`: see `neuronpedia_export`).
    """
    if fmt not in FORMATS:
        raise SaelineageError(f"unknown export format {fmt!r}.", f"choose one of {', '.join(FORMATS)}.")
    run = RunDir(run_dir)
    if fmt in NEURONPEDIA_FILES:
        target = Path(out) if out is not None else run.file("export") / NEURONPEDIA_FILES[fmt]
        payload = neuronpedia_export(run, fmt, features, community, neuronpedia_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, payload, indent=None, allow_nan=False)
        return target
    if fmt == "features":
        run.require("collect")
        target = Path(out) if out is not None else run.file("export") / contract.FEATURES
        target.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(target, read_features(run))
        return target
    nodes, links = graph_tables(run.path, measure, min_value)
    meta = {"run": run.path.name, "measure": measure, "min_value": min_value}
    default = {"nodelink": "graph.json", "graphml": "graph.graphml", "parquet": ""}[fmt]
    target = Path(out) if out is not None else run.file("export") / default
    if fmt == "parquet":
        target.mkdir(parents=True, exist_ok=True)
        write_parquet(target / "nodes.parquet", nodes)
        write_parquet(target / "links.parquet", links)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "nodelink":
        write_json(target, nodelink(nodes, links, meta), indent=None, allow_nan=False)
    else:
        atomic_write_bytes(target, graphml_bytes(nodes, links, meta))
    return target
