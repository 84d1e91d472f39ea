"""Feature lifecycle across layers: dead / new / carried / ending (docs/design.md §4).

A live feature is *carried* (has a predecessor) when its best match in the previous layer
under measure M reaches τ, *new* otherwise; it *continues* when its best match in the next
layer reaches τ, and is *ending* otherwise. "Best" is over ALL pairs of the two layers
(feature_links.parquet from the stats stage), not only the kept edges, so a feature is
never called new or ending just because its partner's edge was not kept.

Dead features (never active) are reported apart and excluded from the rates; the per-layer
table also gives the rates counted the reference's way (arXiv:2410.08869), with dead features counted as both
new and ending, side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.table import Table

from saelineage import contract
from saelineage.errors import SaelineageError
from saelineage.feature_table import feature_rows
from saelineage.lineage import bootstrap
from saelineage.lineage.config import AnalyzeConfig
from saelineage.run import RunDir, read_parquet

LIFECYCLE_MEASURES = contract.DATA_MEASURES
"""Measures a lifecycle can be classified by (feature_links holds the best match for each)."""
DEFAULT_MEASURE = AnalyzeConfig.measure
DEFAULT_THRESHOLD = AnalyzeConfig.threshold
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
LABELS = ("dead", "new", "carried", "ending", "new+ending", "unstable")
"""unstable: no successor, and no partner in a second training of its own layer either (seed_ceiling.parquet):
its "ending" says more about the SAE than about the model."""
NA = -1  # "not applicable": no previous layer (first) or no next layer (last)


class Lifecycle:
    """Per-feature lifecycle in the row order of features.parquet.

    has_pred, has_succ, stable: int8 [N] in {1, 0, NA} (stable: has a same-layer partner in a second
    SAE training; NA where the layer was not measured); live: bool [N]; label: object [N] (LABELS).
    """

    def __init__(
        self,
        layer: np.ndarray,
        live: np.ndarray,
        has_pred: np.ndarray,
        has_succ: np.ndarray,
        stable: np.ndarray | None = None,
    ):
        self.layer, self.live, self.has_pred, self.has_succ = layer, live, has_pred, has_succ
        self.stable = np.full(len(layer), NA, np.int8) if stable is None else stable
        label = np.full(len(layer), "carried", dtype=object)
        # succ not applicable (last layer): carried/new by the predecessor alone; pred not
        # applicable (first layer): carried/ending by the successor alone
        label[(has_pred == 0) & (has_succ != 0)] = "new"
        label[(has_pred != 0) & (has_succ == 0)] = "ending"
        label[(has_pred == 0) & (has_succ == 0)] = "new+ending"
        label[(has_succ == 0) & (self.stable == 0)] = "unstable"
        label[~live] = "dead"
        self.label = label


def classify(
    features: pa.Table,
    links: pa.Table,
    layers: list[int],
    measure: str = DEFAULT_MEASURE,
    threshold: float = DEFAULT_THRESHOLD,
    ceiling: pa.Table | None = None,
) -> Lifecycle:
    """Lifecycle of every feature of `features` (rows: layer, feature, n_active, ...).

    links: feature_links.parquet (best_pred_{M}, best_succ_{M} per (layer, feature)); ceiling:
    seed_ceiling.parquet (best_{M}: best same-layer partner in a second training), when measured.
    NaN best values (dead or constant features, undefined Pearson) never reach τ.
    """
    if measure not in LIFECYCLE_MEASURES:
        raise SaelineageError(
            f"unknown lifecycle measure {measure!r}.", f"choose one of {', '.join(LIFECYCLE_MEASURES)}."
        )
    for col in (f"best_pred_{measure}", f"best_succ_{measure}"):
        if col not in links.column_names:
            raise SaelineageError(
                f"feature_links.parquet has no column {col}.",
                "re-run `saelineage stats RUN --force` with this version.",
            )
    f_layer = features.column("layer").to_numpy().astype(np.int64)
    f_id = features.column("feature").to_numpy().astype(np.int64)
    live = features.column("n_active").to_numpy() > 0
    # align links to features rows (both are one row per (layer, feature), maybe ordered differently)
    pred = np.full(len(f_layer), np.nan)
    succ = np.full(len(f_layer), np.nan)
    rows = feature_rows(f_layer, f_id)(links.column("layer").to_numpy(), links.column("feature").to_numpy())
    ok = rows >= 0
    rows = rows[ok]
    pred[rows] = links.column(f"best_pred_{measure}").to_numpy(zero_copy_only=False)[ok]
    succ[rows] = links.column(f"best_succ_{measure}").to_numpy(zero_copy_only=False)[ok]
    with np.errstate(invalid="ignore"):
        has_pred = (pred >= threshold).astype(np.int8)
        has_succ = (succ >= threshold).astype(np.int8)
    has_pred[f_layer == layers[0]] = NA
    has_succ[f_layer == layers[-1]] = NA
    stable = np.full(len(f_layer), NA, np.int8)
    if ceiling is not None and ceiling.num_rows:
        rows = feature_rows(f_layer, f_id)(ceiling.column("layer").to_numpy(), ceiling.column("feature").to_numpy())
        ok = rows >= 0
        best = ceiling.column(f"best_{measure}").to_numpy(zero_copy_only=False)[ok]
        with np.errstate(invalid="ignore"):
            stable[rows[ok]] = (best >= threshold).astype(np.int8)
    return Lifecycle(f_layer, live, has_pred, has_succ, stable)


LIFECYCLE_COLUMNS = (
    "measure", "threshold", "chosen", "layer", "n_features", "n_dead", "n_live", "n_new", "n_carried",
    "n_ending", "n_continuing", "n_new_and_ending", "share_new", "share_carried", "share_ending",
    "share_continuing", "ref_share_new", "ref_share_ending",
    "share_new_lo", "share_new_hi", "share_carried_lo", "share_carried_hi", "share_ending_lo", "share_ending_hi",
    "share_continuing_lo", "share_continuing_hi", "seed_ceiling", "share_continuing_normalised", "n_unstable",
)  # fmt: skip
LIFECYCLE_SCHEMA = pa.schema([
    (c, pa.string() if c == "measure" else pa.bool_() if c == "chosen"
     else pa.int64() if c == "layer" or c.startswith("n_") else pa.float64())
    for c in LIFECYCLE_COLUMNS
])  # fmt: skip
"""lifecycle.parquet's columns: counts are int64 (null where not applicable), shares float64."""


def layer_table(
    features: pa.Table,
    links: pa.Table,
    layers: list[int],
    measure: str = DEFAULT_MEASURE,
    threshold: float = DEFAULT_THRESHOLD,
    sweep: tuple[float, ...] = SWEEP,
    replicates: dict[int, dict[str, np.ndarray]] | None = None,
    ceiling: pa.Table | None = None,
) -> pa.Table:
    """lifecycle.parquet: one row per (threshold, layer); `chosen` marks the analysis threshold.

    replicates: {layer: {"new" | "ending": float [B]}} bootstrap replicates of the chosen threshold's
    shares, whose intervals (recentred on the share, `bootstrap.interval`) are share_*_lo / _hi;
    carried and continuing take their complements; null elsewhere.
    ceiling: seed_ceiling.parquet. For each measured layer, seed_ceiling is the share of its live
    features with a same-layer partner (≥ the row's threshold) in a second SAE training, the most
    pass-through such SAEs can show; share_continuing_normalised = share_continuing / seed_ceiling;
    n_unstable counts live features without successor and without such a partner (null: not measured).

    n_new / n_carried count live features without / with a predecessor, n_ending /
    n_continuing those without / with a successor (a feature can be new and ending:
    n_new_and_ending). share_* are fractions of live features (null where not applicable:
    new/carried at the first layer, ending/continuing at the last); ref_share_* count dead
    features as new and ending, out of all features, as the reference did.
    """
    records = []
    for t in sorted(set(sweep) | {threshold}):
        lc = classify(features, links, layers, measure, t, ceiling)
        for l in layers:
            sel = lc.layer == l
            live = sel & lc.live
            n, nl = int(sel.sum()), int(live.sum())
            nd = n - nl
            first, last = l == layers[0], l == layers[-1]
            n_new = None if first else int((live & (lc.has_pred == 0)).sum())
            n_car = None if first else int((live & (lc.has_pred == 1)).sum())
            n_end = None if last else int((live & (lc.has_succ == 0)).sum())
            n_con = None if last else int((live & (lc.has_succ == 1)).sum())
            n_ne = None if first or last else int((live & (lc.has_pred == 0) & (lc.has_succ == 0)).sum())

            def share(x, d=nl):
                return None if x is None or d == 0 else x / d

            records.append({
                "measure": measure, "threshold": float(t), "chosen": bool(t == threshold), "layer": l,
                "n_features": n, "n_dead": nd, "n_live": nl, "n_new": n_new, "n_carried": n_car,
                "n_ending": n_end, "n_continuing": n_con, "n_new_and_ending": n_ne,
                "share_new": share(n_new), "share_carried": share(n_car), "share_ending": share(n_end),
                "share_continuing": share(n_con),
                "ref_share_new": None if n_new is None or n == 0 else (n_new + nd) / n,
                "ref_share_ending": None if n_end is None or n == 0 else (n_end + nd) / n,
            })  # fmt: skip
            measured = sel & (lc.stable != NA)
            n_meas = int((measured & lc.live).sum())
            ceil = int((measured & lc.live & (lc.stable == 1)).sum()) / n_meas if n_meas else None
            records[-1]["seed_ceiling"] = ceil
            records[-1]["share_continuing_normalised"] = (
                None if ceil is None or not ceil or records[-1]["share_continuing"] is None
                else records[-1]["share_continuing"] / ceil
            )  # fmt: skip
            records[-1]["n_unstable"] = None if not n_meas else int((live & (lc.label == "unstable")).sum())
            reps = (replicates or {}).get(l, {}) if t == threshold else {}
            for name, other, value in (("new", "carried", n_new), ("ending", "continuing", n_end)):
                lo = hi = None
                if value is not None and name in reps and nl:
                    lo, hi = bootstrap.interval(reps[name], value / nl)
                    lo, hi = (None, None) if np.isnan(lo) else (max(0.0, lo), min(1.0, hi))
                records[-1].update({
                    f"share_{name}_lo": lo, f"share_{name}_hi": hi,
                    f"share_{other}_lo": None if hi is None else 1 - hi,
                    f"share_{other}_hi": None if lo is None else 1 - lo,
                })  # fmt: skip
    return pa.table({k: [r[k] for r in records] for k in LIFECYCLE_COLUMNS}, schema=LIFECYCLE_SCHEMA)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _n_pct(n, share, lo=None, hi=None) -> str:
    """Count and share, with the share's interval on a second line: side by side, the interval
    made the cell too wide for an 80-column terminal, which cut it into fragments. Both bounds are
    kept (a median-shifted interval need not be symmetric, so `±` would misreport it)."""
    if n is None:
        return "—"
    ci = "" if lo is None or hi is None else f"\n[dim]{100 * lo:.1f}–{100 * hi:.1f}[/]"
    return f"{n:,} {_pct(share)}{ci}"


def lifecycle_rich_table(table: pa.Table) -> Table:
    """A rich table of the chosen threshold's per-layer rows of lifecycle.parquet, whole at 80 columns.

    new / ending: count and share of live features (carried = live − new), the share's bootstrap
    interval under them; ref: shares of all features counting dead ones as new and as ending (the
    reference's way), side by side.
    """
    from rich import box

    rows = [r for r in table.to_pylist() if r["chosen"]]
    m, t = (rows[0]["measure"], rows[0]["threshold"]) if rows else ("?", float("nan"))
    out = Table(
        title=f"Feature lifecycle per layer ({m} ≥ {t:g})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,  # two spaces between columns, not three: the ceiling columns fit in 80
    )
    caption = "% of live features (carried = live − new); under it, its 95% bootstrap interval over windows"
    has_ceiling = any(r.get("seed_ceiling") is not None for r in rows)
    names = ["layer", "dead", "live", "new", "ending"]
    if has_ceiling:
        names += ["ceiling", "cont÷ceil", "unstable"]
        caption += (
            "; ceiling: % of live features a second SAE training of the same layer reproduces, the most "
            "pass-through these SAEs can show; cont÷ceil: continuing share ÷ ceiling; unstable: ending and "
            "not reproduced (the reference's shares, counting dead features, are in lifecycle.parquet)"
        )
    else:  # the reference's shares give way to the ceiling columns (80 columns hold one set)
        names += ["new †", "end †"]
        caption += "; †: % of all features, dead ones counted as new and ending (the reference's way)"
    out.caption = caption
    for name in names:  # no cell wraps: each line of a cell is one whole number or interval
        out.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        cells = [
            str(r["layer"]),
            f"{r['n_dead']:,}",
            f"{r['n_live']:,}",
            _n_pct(r["n_new"], r["share_new"], r.get("share_new_lo"), r.get("share_new_hi")),
            _n_pct(r["n_ending"], r["share_ending"], r.get("share_ending_lo"), r.get("share_ending_hi")),
        ]
        if has_ceiling:
            cells += [_pct(r.get("seed_ceiling")), _pct(r.get("share_continuing_normalised")),
                      "—" if r.get("n_unstable") is None else f"{r['n_unstable']:,}"]  # fmt: skip
        else:
            cells += [_pct(r["ref_share_new"]), _pct(r["ref_share_ending"])]
        out.add_row(*cells)
    return out


def print_lifecycle(run_dir: str | Path, console=None) -> Table:
    """Print the per-layer lifecycle table of an analysed run (used by `make demo`)."""
    from saelineage.progress import console as default_console

    run = RunDir(run_dir)
    run.require("analyze")
    table = lifecycle_rich_table(read_parquet(run.file(contract.LIFECYCLE)))
    (console or default_console).print(table)
    return table
