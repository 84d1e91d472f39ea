"""Ablation results as numbers and pictures: Spearman correlations, a table, an HTML plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

CORR_COLUMNS = ("measure", "src_layer", "dst_layer", "n_pairs", "spearman_drop", "p_value", "spearman_rel_drop")


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(rho, two-sided p) over finite pairs; NaN when fewer than 3 or a side is constant."""
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    r = spearmanr(x, y)
    return float(r.statistic), float(r.pvalue)


def correlations(ablations: pa.Table) -> list[dict]:
    """Spearman correlation between similarity and effect, per measure and layer pair, plus a
    pooled row per measure (src_layer = dst_layer = None). Pairs measured on no token are left out."""
    if ablations.num_rows == 0:
        return []
    meas = np.asarray(ablations.column("measure").to_pylist(), dtype=object)
    sl = ablations.column("src_layer").to_numpy()
    dl = ablations.column("dst_layer").to_numpy()
    sim = ablations.column("similarity").to_numpy().astype(np.float64)
    drop = ablations.column("mean_drop").to_numpy(zero_copy_only=False).astype(np.float64)
    rel = ablations.column("rel_drop").to_numpy(zero_copy_only=False).astype(np.float64)
    measured = ablations.column("n_tokens").to_numpy() > 0
    out = []
    for m in dict.fromkeys(meas.tolist()):
        groups = sorted(set(zip(sl[meas == m].tolist(), dl[meas == m].tolist())))
        for g in groups + [None]:
            sel = (meas == m) & measured
            if g is not None:
                sel &= (sl == g[0]) & (dl == g[1])
            rho, p = _spearman(sim[sel], drop[sel])
            rho_rel, _ = _spearman(sim[sel], rel[sel])
            out.append(
                {
                    "measure": m,
                    "src_layer": None if g is None else int(g[0]),
                    "dst_layer": None if g is None else int(g[1]),
                    "n_pairs": int(sel.sum()),
                    "spearman_drop": rho,
                    "p_value": p,
                    "spearman_rel_drop": rho_rel,
                }
            )
    return out


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:+.3f}"


def print_correlations(rows: list[dict], console=None, pooled_only: bool = False) -> None:
    """A rich table of the correlations (pooled rows in bold)."""
    from rich.table import Table

    if console is None:
        from saelineage.progress import console
    t = Table(title="ablation effect vs similarity (Spearman ρ over sampled pairs)")
    for c in ("measure", "layers", "pairs", "ρ(sim, mean drop)", "p", "ρ(sim, rel. drop)"):
        t.add_column(c, justify="left" if c in ("measure", "layers") else "right")
    for r in rows:
        pooled = r["src_layer"] is None
        if pooled_only and not pooled:
            continue
        layers = "all" if pooled else f"{r['src_layer']}→{r['dst_layer']}"
        p = r["p_value"]
        cells = [
            r["measure"],
            layers,
            str(r["n_pairs"]),
            _fmt(r["spearman_drop"]),
            "—" if not np.isfinite(p) else f"{p:.1e}",
            _fmt(r["spearman_rel_drop"]),
        ]
        t.add_row(*[f"[bold]{c}[/]" if pooled else c for c in cells])
    console.print(t)


def write_plot(ablations: pa.Table, path: Path, title: str = "") -> Path:
    """Self-contained HTML (plotly.js inlined, works offline): mean drop vs similarity, one panel per
    measure, points coloured by layer pair, with the per-bin mean drop as a line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from saelineage.run import atomic_write_bytes

    meas = list(dict.fromkeys(ablations.column("measure").to_pylist()))
    n = max(1, len(meas))
    ncol = min(3, n)
    nrow = -(-n // ncol)
    fig = make_subplots(
        rows=nrow, cols=ncol, subplot_titles=meas or ["(no pairs)"], horizontal_spacing=0.07, vertical_spacing=0.12
    )
    d = {c: np.asarray(ablations.column(c).to_pylist(), dtype=object) for c in ablations.column_names}
    layer_pairs = sorted(set(zip(d["src_layer"].tolist(), d["dst_layer"].tolist()))) if ablations.num_rows else []
    palette = [
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#bcbd22",
        "#17becf",
    ]
    for k, m in enumerate(meas):
        row, col = k // ncol + 1, k % ncol + 1
        for c, lp in enumerate(layer_pairs):
            sel = (d["measure"] == m) & (d["src_layer"] == lp[0]) & (d["dst_layer"] == lp[1]) & (d["n_tokens"] > 0)
            if not sel.any():
                continue
            hover = [
                f"{sl}/{s} → {dl}/{t}<br>sim {x:.3f}<br>mean drop {y:.4g} (rel {r:.3g})<br>{n} tokens"
                for sl, s, dl, t, x, y, r, n in zip(
                    d["src_layer"][sel],
                    d["src"][sel],
                    d["dst_layer"][sel],
                    d["dst"][sel],
                    d["similarity"][sel],
                    d["mean_drop"][sel],
                    d["rel_drop"][sel],
                    d["n_tokens"][sel],
                )
            ]
            fig.add_trace(
                go.Scatter(
                    x=d["similarity"][sel].astype(float),
                    y=d["mean_drop"][sel].astype(float),
                    mode="markers",
                    marker={"size": 6, "opacity": 0.7, "color": palette[c % len(palette)]},
                    name=f"layers {lp[0]}→{lp[1]}",
                    legendgroup=f"{lp}",
                    showlegend=k == 0,
                    hovertext=hover,
                    hoverinfo="text",
                ),
                row=row,
                col=col,
            )
        sel = (d["measure"] == m) & (d["n_tokens"] > 0)
        if sel.any():
            bins = d["bin"][sel].astype(int)
            xs, ys = [], []
            for b in sorted(set(bins.tolist())):
                xs.append(float(np.mean(d["similarity"][sel][bins == b].astype(float))))
                ys.append(float(np.mean(d["mean_drop"][sel][bins == b].astype(float))))
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    line={"color": "black", "width": 2},
                    name="bin mean (all layers)",
                    legendgroup="binmean",
                    showlegend=k == 0,
                ),
                row=row,
                col=col,
            )
        fig.update_xaxes(title_text=m, row=row, col=col)
        fig.update_yaxes(title_text="mean drop of downstream activation", row=row, col=col)
    fig.update_layout(title=title or "Ablation effect vs similarity", height=360 * nrow + 80, template="plotly_white")
    # a fixed div id: plotly's default is a random uuid, and a resumed run must write the same bytes
    html = fig.to_html(include_plotlyjs=True, full_html=True, div_id="ablations")
    atomic_write_bytes(Path(path), html.encode())
    return Path(path)
