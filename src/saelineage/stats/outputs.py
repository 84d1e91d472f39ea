"""Writing the stats outputs: edges.parquet, feature_links.parquet, stats_summary.json.

Every file is written under a temporary name and renamed (atomic), so a reader never sees
a half-written file under its final name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from saelineage import contract
from saelineage.run import temp_name
from saelineage.stats import kernels as kn
from saelineage.stats import kernels_scan as ks
from saelineage.stats.edges import HIST_BINS, PairResult
from saelineage.stats.engine import Pair
from saelineage.stats.measures import MEASURE_RANGE, MEASURES, Marginals, Side, pair_measures, side
from saelineage.stats.sae_match import Match

ROW_GROUP = 1 << 20

Decoders = Callable[[int], "np.ndarray | None"]


def _edge_table(
    pairs: list[Pair],
    results: list[PairResult],
    idx: list[int],
    n: int,
    sides: dict[int, Side],
    decoder: Decoders,
    hists: dict[int, dict],
    matches: dict[int, Match],
) -> pa.Table:
    """Edges of the pairs `idx` (all with the same source layer), sorted (src, dst_layer, dst).

    Also stores each pair's histograms of its kept edges in `hists[pair index]`. sae_match is the
    folded similarity where an edge is its source's data-free match (`matches`), NaN elsewhere.
    """
    cols: dict[str, list[np.ndarray]] = {c: [] for c in contract.EDGE_COLUMNS}
    for k in idx:
        p, r = pairs[k], results[k]
        K = len(r.src)
        vals = pair_measures(n, r.n_co, r.p, sides[p.src], sides[p.dst], r.src, r.dst)
        w_src, w_dst = decoder(p.src), decoder(p.dst)
        dec = (
            kn.dec_cosine(w_src, w_dst, r.src, r.dst) if w_src is not None and w_dst is not None else np.full(K, np.nan)
        )
        cols["src_layer"].append(np.full(K, p.src, np.int32))
        cols["src"].append(r.src.astype(np.int32))
        cols["dst_layer"].append(np.full(K, p.dst, np.int32))
        cols["dst"].append(r.dst.astype(np.int32))
        cols["n_co"].append(r.n_co.astype(np.int64))
        cols["dec_cosine"].append(dec)
        sm = np.full(K, np.nan)
        m = matches.get(k)
        if m is not None and K:
            hit = m.partner[r.src] == r.dst
            sm[hit] = m.similarity[r.src[hit]]
        cols["sae_match"].append(sm)
        cols["p_sum"].append(r.p)
        for name, v in vals.items():
            cols[name].append(v)
        hists[k] = {m: histogram(vals[m], m) for m in MEASURES}
    arrays = {c: np.concatenate(v) for c, v in cols.items()}
    order = np.lexsort((arrays["dst"], arrays["dst_layer"], arrays["src"]))
    return pa.table({c: pa.array(arrays[c][order]) for c in contract.EDGE_COLUMNS})


def write_edges(
    path: Path,
    pairs: list[Pair],
    results: list[PairResult],
    n: int,
    sides: dict[int, Side],
    decoder: Decoders,
    matches: dict[int, Match] | None = None,
) -> tuple[int, dict[int, dict]]:
    """Write edges.parquet sorted by (src_layer, src, dst_layer, dst).

    Returns the row count and, per pair index, the histograms of its kept edges.

    One source layer at a time (bounded memory), row groups of <= 1M rows with statistics,
    so readers (duckdb, pyarrow filters) skip to a (src_layer, src) range.
    """
    tmp = temp_name(path)
    schema = pa.schema(
        [
            (
                c,
                pa.int32()
                if c in ("src_layer", "src", "dst_layer", "dst")
                else pa.int64()
                if c == "n_co"
                else pa.float64(),
            )
            for c in contract.EDGE_COLUMNS
        ]
    )
    total = 0
    hists: dict[int, dict] = {}
    sorting = [pq.SortingColumn(schema.get_field_index(c)) for c in ("src_layer", "src", "dst_layer", "dst")]
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd", sorting_columns=sorting) as w:
            for layer in sorted({p.src for p in pairs}):
                idx = [k for k, p in enumerate(pairs) if p.src == layer]
                t = _edge_table(pairs, results, idx, n, sides, decoder, hists, matches or {})
                if t.num_rows:
                    w.write_table(t, row_group_size=ROW_GROUP)
                total += t.num_rows
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)  # Arrow's ENOSPC names no file
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return total, hists


def feature_links(
    layers: Sequence[int],
    d: dict[int, int],
    pairs: list[Pair],
    results: list[PairResult],
    n: int,
    marg: dict[int, Marginals],
    matches: dict[int, Match] | None = None,
) -> pa.Table:
    """One row per (layer, feature): best predecessor / successor under each measure (span 1), and
    the data-free match's partner in the previous / next layer (`sae_match_pred_id` /
    `sae_match_succ_id`, -1 when none)."""
    sides = {l: side(n, marg[l]) for l in layers}
    span1 = {(p.src, p.dst): k for k, p in enumerate(pairs) if p.span == 1}
    parts = []
    for pos, layer in enumerate(layers):
        dl = d[layer]
        cols: dict[str, np.ndarray] = {
            "layer": np.full(dl, layer, np.int32),
            "feature": np.arange(dl, dtype=np.int32),
            "active_count": marg[layer].count.copy(),
        }
        for direction, other, key in (
            ("pred", layers[pos - 1] if pos else None, "pred_j"),
            ("succ", layers[pos + 1] if pos + 1 < len(layers) else None, "succ"),
        ):
            best = None
            if other is not None:
                r = results[span1[(other, layer) if direction == "pred" else (layer, other)]]
                best = getattr(r, key)
            for mi, mname in enumerate(MEASURES):
                val, ids = np.full(dl, np.nan), np.full(dl, -1, np.int32)
                if best is not None:
                    assert other is not None  # best comes from the neighbour layer's pair
                    bid, bc, bp = best[0][:, mi], best[1][:, mi], best[2][:, mi]
                    ok = bid >= 0
                    me = np.arange(dl)[ok]
                    partner = bid[ok].astype(np.int64)
                    src_i, dst_j, s_src, s_dst = (
                        (partner, me, sides[other], sides[layer])
                        if direction == "pred"
                        else (me, partner, sides[layer], sides[other])
                    )
                    val[ok] = pair_measures(n, bc[ok], bp[ok], s_src, s_dst, src_i, dst_j)[mname]
                    ids[ok] = bid[ok]
                cols[f"best_{direction}_{mname}"] = val
                cols[f"best_{direction}_{mname}_id"] = ids
        for direction, other in (
            ("pred", layers[pos - 1] if pos else None),
            ("succ", layers[pos + 1] if pos + 1 < len(layers) else None),
        ):
            ids = np.full(dl, -1, np.int32)
            m = (
                None
                if other is None
                else (matches or {}).get(span1[(other, layer) if direction == "pred" else (layer, other)])
            )
            if m is not None and direction == "succ":
                ids[:] = m.partner
            elif m is not None:
                ok = m.partner >= 0
                ids[m.partner[ok]] = np.flatnonzero(ok)
            cols[f"sae_match_{direction}_id"] = ids
        parts.append(pa.table(cols))
    return pa.concat_tables(parts)


def histogram(values: np.ndarray, measure: str) -> list[int]:
    lo, hi = MEASURE_RANGE[measure]
    v = values[~np.isnan(values)]
    b = np.clip(((v - lo) / (hi - lo) * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)
    return np.bincount(b, minlength=HIST_BINS).tolist()


def pair_summary(p: Pair, r: PairResult, d: dict[int, int], hist_kept: dict | None) -> dict:
    """Per layer pair: pairs seen / supported / kept and histograms of each measure over the kept edges."""
    out = {
        "src_layer": p.src,
        "dst_layer": p.dst,
        "span": p.span,
        "candidate_pairs": d[p.src] * d[p.dst],
        "pairs_seen": int(r.counters[ks.SEEN]),  # c_ij >= 1
        "pairs_touched": int(r.counters[ks.TOUCHED]),  # c_ij >= 1 or p_ij > 0 (differs with a threshold)
        "pairs_supported": int(r.counters[ks.SUPPORTED]),  # c_ij >= min_support
        "pairs_kept": len(r.src),
        "hist_bins": {m: list(MEASURE_RANGE[m]) + [HIST_BINS] for m in MEASURES},  # [lo, hi, bins]
    }
    if hist_kept is not None:
        out["hist_kept"] = hist_kept
    return out
