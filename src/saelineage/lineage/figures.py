"""Lifecycle figure: a Sankey diagram of features flowing through the layers, as one
self-contained HTML file (plotly.js embedded, so it opens offline).

For each consecutive pair of analysed layers l → m: "layer l" flows into "layer m" with the
number of m's live features that have a predecessor (carried), into "ending after layer l"
with the number of l's live features without a successor, and "new in layer m" flows into
"layer m" with m's live features without a predecessor. Every label names its layer
explicitly, from the lifecycle table itself (the plot labels of the reference code for
arXiv:2410.08869 were shifted by one layer). A second chart shows the share of ending features
per layer at every threshold.
"""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import pyarrow as pa
from plotly.colors import sample_colorscale

from saelineage.run import atomic_write_bytes


def sankey_parts(table: pa.Table) -> dict:
    """Nodes (labels, x, y) and links (source, target, value, label) for the chosen threshold."""
    rows = sorted((r for r in table.to_pylist() if r["chosen"]), key=lambda r: r["layer"])
    labels, xs, ys = [], [], []
    src, dst, val, lab = [], [], [], []
    n = len(rows)

    def node(text: str, x: float, y: float) -> int:
        labels.append(text)
        xs.append(min(max(x, 0.001), 0.999))
        ys.append(y)
        return len(labels) - 1

    layer_node = {}
    for i, r in enumerate(rows):
        layer_node[r["layer"]] = node(
            f"layer {r['layer']}: {r['n_live']:,} live ({r['n_dead']:,} dead)", i / max(n - 1, 1), 0.45
        )
    for i in range(n - 1):
        a, b = rows[i], rows[i + 1]
        x_mid = (i + 0.5) / max(n - 1, 1)
        if b["n_carried"]:
            src.append(layer_node[a["layer"]])
            dst.append(layer_node[b["layer"]])
            val.append(b["n_carried"])
            lab.append(f"{b['n_carried']:,} features of layer {b['layer']} carried from layer {a['layer']}")
        if a["n_ending"]:
            e = node(f"ending after layer {a['layer']}: {a['n_ending']:,}", x_mid, 0.95)
            src.append(layer_node[a["layer"]])
            dst.append(e)
            val.append(a["n_ending"])
            lab.append(f"{a['n_ending']:,} features of layer {a['layer']} with no successor in layer {b['layer']}")
        if b["n_new"]:
            nw = node(f"new in layer {b['layer']}: {b['n_new']:,}", x_mid, 0.05)
            src.append(nw)
            dst.append(layer_node[b["layer"]])
            val.append(b["n_new"])
            lab.append(f"{b['n_new']:,} features of layer {b['layer']} with no predecessor in layer {a['layer']}")
    return {"labels": labels, "x": xs, "y": ys, "source": src, "target": dst, "value": val, "link_labels": lab}


def lifecycle_html(table: pa.Table, title: str = "Feature lifecycle") -> str:
    """Self-contained HTML with the Sankey diagram and the share-ending chart."""
    p = sankey_parts(table)
    chosen = [r for r in table.to_pylist() if r["chosen"]]
    measure = chosen[0]["measure"] if chosen else "?"
    thr = chosen[0]["threshold"] if chosen else float("nan")
    sankey = go.Figure(
        go.Sankey(
            arrangement="snap",
            node={"label": p["labels"], "x": p["x"], "y": p["y"], "pad": 12, "thickness": 14},
            link={
                "source": p["source"],
                "target": p["target"],
                "value": p["value"],
                "label": p["link_labels"],
                "hovertemplate": "%{label}<extra></extra>",
            },
        )
    )
    sankey.update_layout(title=f"{title}: {measure} ≥ {thr:g} (live features)", height=600)
    lines = go.Figure()
    thresholds = sorted({r["threshold"] for r in table.to_pylist()})
    # one colour per threshold along a sequential scale (plotly's default palette repeats after 10)
    colours = sample_colorscale("Viridis", [i / max(len(thresholds) - 1, 1) for i in range(len(thresholds))])
    for t, colour in zip(thresholds, colours):
        rs = sorted(
            (r for r in table.to_pylist() if r["threshold"] == t and r["share_ending"] is not None),
            key=lambda r: r["layer"],
        )
        is_chosen = bool(rs and rs[0]["chosen"])
        lines.add_trace(
            go.Scatter(
                x=[r["layer"] for r in rs],
                y=[100 * r["share_ending"] for r in rs],
                mode="lines+markers",
                name=f"τ = {t:g}" + (" (chosen)" if is_chosen else ""),
                line={"width": 4 if is_chosen else 1.5, "color": colour},
            )
        )
        if is_chosen:
            lines.add_trace(
                go.Scatter(
                    x=[r["layer"] for r in rs],
                    y=[100 * r["ref_share_ending"] for r in rs],
                    mode="lines",
                    name=f"τ = {t:g}, dead counted as ending (reference)",
                    line={"dash": "dash", "color": colour},
                )
            )
    lines.update_layout(
        title=f"Share of features with no successor in the next layer ({measure})",
        xaxis_title="layer",
        yaxis_title="% of live features",
        height=450,
    )
    lines.update_xaxes(tickmode="array", tickvals=sorted({r["layer"] for r in table.to_pylist()}))
    # fixed div ids: the same table always gives the same bytes (plotly's default ids are random)
    body = sankey.to_html(full_html=False, include_plotlyjs=True, div_id="lifecycle-sankey") + lines.to_html(
        full_html=False, include_plotlyjs=False, div_id="lifecycle-ending"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body>{body}</body></html>\n"
    )


def write_lifecycle_html(table: pa.Table, path: str | Path, title: str = "Feature lifecycle") -> Path:
    path = Path(path)
    atomic_write_bytes(path, lifecycle_html(table, title).encode())
    return path
