"""Plotly figures of layered feature graphs, for notebooks.

Takes the graph dictionaries the browser draws (`query.graph.graph` for the run's graph, the prompt
service for a token's graph): nodes as columns with a row (layer) and a position in the row, edges as
node positions. The same row order (crossing-reduced) as the browser, first layer at the bottom.
"""

from __future__ import annotations

import html
from typing import Any

COMMUNITY_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1",
)  # fmt: skip
NO_COMMUNITY = "#999999"


def community_colour(c: int | None) -> str:
    """A stable colour per community id (grey for none)."""
    return NO_COMMUNITY if c is None or c < 0 else COMMUNITY_COLOURS[int(c) % len(COMMUNITY_COLOURS)]


def layered_figure(g: dict[str, Any], title: str | None = None, height: int | None = None) -> Any:
    """A plotly Figure of a layered graph (rows = layers, nodes coloured by community, edge width by
    the measure). Hover shows each feature's id, label (escaped: plotly reads a few HTML tags in hover
    text), community and, for a prompt's graph, its activation."""
    import plotly.graph_objects as go

    n, e = g["nodes"], g["edges"]
    count = len(n["layer"])
    x = [(p + 0.5) / max(k, 1) for p, k in zip(n["pos"], n["n_row"])]
    y = list(n["row"])
    fig = go.Figure()
    values = list(e["value"])
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    buckets: dict[int, tuple[list, list]] = {}
    for s, d, v in zip(e["src"], e["dst"], values):  # edges bucketed by width: a few traces, not thousands
        b = 0 if hi <= lo else int(round(3 * (v - lo) / (hi - lo)))
        xs, ys = buckets.setdefault(b, ([], []))
        xs += [x[s], x[d], None]
        ys += [y[s], y[d], None]
    for b, (xs, ys) in sorted(buckets.items()):
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                line={"width": 0.5 + 0.8 * b, "color": "rgba(90,90,110,0.35)"},
            )
        )  # fmt: skip
    act = n.get("activation")
    hover = []
    for i in range(count):
        parts = [
            f"L{n['layer'][i]}:{n['feature'][i]}",
            html.escape(n["label"][i] or "(no label)"),
            f"community {n['community'][i] if n['community'][i] is not None else 'none'} · {n['lifecycle'][i] or ''}",
        ]
        if act is not None:
            parts.append(f"activation {act[i]:.3g}")
        hover.append("<br>".join(parts))
    fig.add_trace(
        go.Scatter(
            x=x, y=y, mode="markers", hovertext=hover, hoverinfo="text", showlegend=False,
            marker={"size": 9, "color": [community_colour(c) for c in n["community"]],
                    "line": {"width": 0.5, "color": "#333"}},
            customdata=list(zip(n["layer"], n["feature"])),
        )
    )  # fmt: skip
    layers = g.get("layers") or []
    fig.update_layout(
        title=title,
        height=height or max(300, 60 * max(len(layers), 1) + 80),
        margin={"l": 50, "r": 10, "t": 40 if title else 10, "b": 30},
        plot_bgcolor="white",
        xaxis={"visible": False, "range": [0, 1]},
        yaxis={
            "tickmode": "array", "tickvals": list(range(len(layers))), "ticktext": [f"L{l}" for l in layers],
            "range": [-0.5, len(layers) - 0.5], "gridcolor": "#eee",
        },
    )  # fmt: skip
    return fig
