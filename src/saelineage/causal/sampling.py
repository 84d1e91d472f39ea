"""Which edges to ablate: a stratified sample per measure, layer pair and similarity bin.

For every measure M and layer pair (l, m) present in edges.parquet, the finite values of M
are cut into `bins` bins (equal width between their min and max, as in the reference work, arXiv:2410.08869,
or equal-count quantile bins) and up to `per_bin` edges are drawn from each bin without
replacement. The draw is seeded per (seed, measure, l, m), so adding a measure or a layer
pair never changes the pairs drawn for another, and the sample does not depend on the
order of rows in edges.parquet (rows are sorted by (src, dst) before drawing).

One sampled row = one (measure, bin, pair). The same pair may be drawn for several
measures; the ablation stage runs each distinct pair once and joins the effect back onto
every row that holds it, so no row is lost or overwritten.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from saelineage import contract
from saelineage.errors import SaelineageError

MEASURES = contract.SIMILARITY_MEASURES
"""Similarity measures of edges.parquet that can be sampled (docs/design.md §4)."""

SAMPLE_COLUMNS = ("measure", "src_layer", "src", "dst_layer", "dst", "bin", "bin_lo", "bin_hi", "similarity", "n_co")


def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


def bin_edges(values: np.ndarray, bins: int, binning: str = "width") -> np.ndarray:
    """float64 [bins+1] edges covering `values` (finite, non-empty).

    'width': equal-width bins from min to max; 'quantile': equal-count bins (edges may repeat
    when values tie; such empty bins simply draw nothing)."""
    if binning == "width":
        lo, hi = float(values.min()), float(values.max())
        return np.linspace(lo, hi, bins + 1)
    if binning == "quantile":
        return np.quantile(values.astype(np.float64), np.linspace(0, 1, bins + 1))
    raise SaelineageError(f"unknown binning '{binning}'.", "use --binning width or --binning quantile.")


def assign_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """int64 bin index of each value in [0, len(edges)-2]; the top edge belongs to the last bin."""
    nb = len(edges) - 1
    b = np.searchsorted(edges, values, side="right") - 1
    return np.clip(b, 0, nb - 1)


def sample_edges(
    edges: pa.Table,
    measures: Sequence[str] | None = None,
    bins: int = 10,
    per_bin: int = 10,
    seed: int = 0,
    binning: str = "width",
    layer_pairs: Sequence[tuple[int, int]] | None = None,
) -> pa.Table:
    """Stratified sample of `edges` (columns src_layer, src, dst_layer, dst and the measures).

    Returns a table with SAMPLE_COLUMNS: one row per drawn (measure, pair), sorted by
    (measure order, src_layer, dst_layer, bin, src, dst); n_co is the edge's co-activation
    count (-1 when edges.parquet has no n_co column). `measures=None` takes every measure
    of MEASURES that edges has. NaN values (e.g. pearson of a constant feature) are never drawn.
    """
    if bins < 1 or per_bin < 1:
        raise SaelineageError(f"--bins {bins} and --per-bin {per_bin} must be at least 1.", "pass positive numbers.")
    cols = set(edges.column_names)
    if measures is None:
        measures = [m for m in MEASURES if m in cols]
    missing = [m for m in measures if m not in cols]
    if missing:
        raise SaelineageError(
            f"edges.parquet has no column(s) {missing}.",
            f"choose --measures among {[m for m in MEASURES if m in cols]}.",
        )
    src_layer = edges.column("src_layer").to_numpy().astype(np.int64)
    dst_layer = edges.column("dst_layer").to_numpy().astype(np.int64)
    src = edges.column("src").to_numpy().astype(np.int64)
    dst = edges.column("dst").to_numpy().astype(np.int64)
    n_co = edges.column("n_co").to_numpy().astype(np.int64) if "n_co" in cols else np.full(edges.num_rows, -1, np.int64)
    pairs = sorted(set(zip(src_layer.tolist(), dst_layer.tolist())))
    if layer_pairs is not None:
        want = {(int(a), int(b)) for a, b in layer_pairs}
        unknown = sorted(want - set(pairs))
        if unknown:
            raise SaelineageError(f"edges.parquet has no edges for layer pairs {unknown}.", f"choose among {pairs}.")
        pairs = [p for p in pairs if p in want]
    out: dict[str, list] = {c: [] for c in SAMPLE_COLUMNS}
    for measure in measures:
        vals_all = edges.column(measure).to_numpy(zero_copy_only=False).astype(np.float64)
        for lp in pairs:
            rows = np.flatnonzero((src_layer == lp[0]) & (dst_layer == lp[1]) & np.isfinite(vals_all))
            if len(rows) == 0:
                continue
            rows = rows[np.lexsort((dst[rows], src[rows]))]  # independent of the file's row order
            vals = vals_all[rows]
            e = bin_edges(vals, bins, binning)
            b = assign_bins(vals, e)
            rng = np.random.default_rng([int(seed), _stable(measure), lp[0], lp[1]])
            for k in range(bins):
                members = np.flatnonzero(b == k)
                if len(members) == 0:
                    continue
                take = np.sort(rng.choice(members, size=min(per_bin, len(members)), replace=False))
                r = rows[take]
                n = len(r)
                out["measure"] += [measure] * n
                out["src_layer"] += [lp[0]] * n
                out["dst_layer"] += [lp[1]] * n
                out["bin"] += [k] * n
                out["bin_lo"] += [float(e[k])] * n
                out["bin_hi"] += [float(e[k + 1])] * n
                out["similarity"] += vals[take].tolist()
                out["src"] += src[r].tolist()
                out["dst"] += dst[r].tolist()
                out["n_co"] += n_co[r].tolist()
    types = {
        "measure": pa.string(),
        "src_layer": pa.int32(),
        "dst_layer": pa.int32(),
        "bin": pa.int32(),
        "bin_lo": pa.float64(),
        "bin_hi": pa.float64(),
        "similarity": pa.float64(),
        "src": pa.int32(),
        "dst": pa.int32(),
        "n_co": pa.int64(),
    }
    return pa.table({c: pa.array(out[c], types[c]) for c in SAMPLE_COLUMNS})


def unique_pairs(sample: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs of a sample and the row -> pair index.

    Returns (pairs int64 [P, 4] with columns src_layer, src, dst_layer, dst, sorted;
    inverse int64 [rows] such that row r's pair is pairs[inverse[r]])."""
    keys = (
        np.stack(
            [sample.column(c).to_numpy().astype(np.int64) for c in ("src_layer", "src", "dst_layer", "dst")], axis=1
        )
        if sample.num_rows
        else np.zeros((0, 4), np.int64)
    )
    if len(keys) == 0:
        return keys, np.zeros(0, np.int64)
    pairs, inverse = np.unique(keys, axis=0, return_inverse=True)
    return pairs, inverse.reshape(-1)
