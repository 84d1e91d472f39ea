"""Edge selection and best partners for one layer pair, block of source rows by block.

A pair's accumulators may arrive in several blocks of source rows (memory limit). Row-wise
results (best successor, top-k partners of i, threshold cells) are complete within a block;
column-wise results (best predecessor, top-k partners of j) are folded into a running pair
state with a total order (value desc, id asc), so the outcome does not depend on how rows
were blocked, how many threads ran, or how the corpus was sharded (counts are exact
integers; sums are float64 in global token order).

Edge rule (docs/design.md §4): c_ij >= min_support and (among the top-k supported partners of i or
of j by any primary measure, or any measure >= its keep threshold). Pairs given as `forced` (the
data-free match, stats/sae_match.py) are kept whatever their counts, read from the same
accumulator cells as every other edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np

from saelineage.stats import kernels_scan as ks
from saelineage.stats.measures import MEASURE_INDEX, PRIMARY, Side, mutual_info

HIST_BINS = 20


@dataclass
class EdgeOptions:
    """What to keep. primary: measures ranked for top-k; keep: measure -> threshold."""

    min_support: int = 5
    top_k: int = 16
    primary: tuple[str, ...] = PRIMARY
    keep: dict[str, float] = field(default_factory=dict)

    def prim_index(self) -> np.ndarray:
        return np.array([MEASURE_INDEX[m] for m in self.primary], np.int64)

    def thresholds(self) -> np.ndarray:
        thr = np.full(ks.N_MEASURES, np.nan)
        for m, t in self.keep.items():
            thr[MEASURE_INDEX[m]] = t
        return thr


def _threads() -> int:
    return int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]  # set at import


class RowBest(NamedTuple):
    """Best partner of each feature per measure (arrays [d, N_MEASURES]): partner id (-1: none)
    and the pair's c_ij, p_ij. A pair keeps one for its source rows (best successors) and, once
    finished, one for its target columns (best predecessors)."""

    j: np.ndarray
    """int32"""
    c: np.ndarray
    """int64"""
    p: np.ndarray
    """float64"""

    @staticmethod
    def spec(d: int) -> dict[str, ks.ArraySpec]:
        shape = (d, ks.N_MEASURES)
        return {"j": (shape, np.int32, -1), "c": (shape, np.int64, 0), "p": (shape, np.float64, 0.0)}


def state_bytes(d_l: int, d_m: int, opts: EdgeOptions, do_best: bool) -> int:
    """Bytes held by a PairState plus the per-thread scratch of one block scan."""
    P, k = len(opts.primary), opts.top_k
    pair = ks.nbytes(ks.ColumnState, P, d_m, k, do_best)
    if do_best:
        pair += ks.nbytes(RowBest, d_l) + ks.nbytes(ks.Walk, d_m)
    return pair + ks.nbytes(ks.ColumnScratch, _threads(), P, d_m, k, do_best)


def result_bytes(d_l: int, d_m: int, opts: EdgeOptions) -> int:
    """Bytes of a pair's kept edges while it is in progress (`ks.Edges`, held once in the block
    parts and once more while `finish` joins them), bounded by the top-k partners of every row
    and column under each primary measure plus the forced partners. Edges kept by --keep
    thresholds come on top and are not bounded. A finished pair keeps only its best-partner
    arrays in memory (PairResult.spill)."""
    return 2 * ks.nbytes(ks.Edges, (d_l + d_m) * opts.top_k * len(opts.primary) + d_l)


def spilled_bytes(d_l: int, d_m: int) -> int:
    """Bytes a finished pair keeps in memory once its edges are spilled: the best-partner
    arrays of rows and columns."""
    return ks.nbytes(RowBest, d_l + d_m)


class PairState:
    """Running results of one layer pair (l -> m) over blocks of source rows."""

    def __init__(self, d_l: int, d_m: int, opts: EdgeOptions, do_best: bool, forced: np.ndarray | None = None):
        """forced: int [d_l], a partner in layer m kept as an edge for each source row (-1: none)."""
        self.d_l, self.d_m, self.opts, self.do_best = d_l, d_m, opts, do_best
        self.forced = forced
        self.cols = ks.new(ks.ColumnState, len(opts.primary), d_m, opts.top_k, do_best)
        self.succ = ks.new(RowBest, d_l if do_best else 0)  # best successors: span-1 pairs only
        self.counters = np.zeros(ks.N_COUNTERS, np.int64)
        self.parts: list[ks.Edges] = []
        self.rows_done = 0
        self._col_walk: ks.Walk | None = None  # the target layer's marginals are the same for every block
        self._row_bands: tuple[np.ndarray, np.ndarray] | None = None  # and so are the source layer's
        self._scratch: ks.ColumnScratch | None = None  # one block scan's column results
        self._col_bits: np.ndarray | None = None  # sparse scans: the target walks' first columns

    def add_block(self, block: ks.Block | ks.SparseBlock, n: int, src: Side, dst: Side) -> None:
        """Scan a block of accumulator rows lo..lo+B-1 (dense or sparse) and fold them in."""
        lo, dm, B = block.lo, self.d_m, block.n_rows
        o = self.opts
        rules = ks.Rules(np.int64(n), o.min_support, o.prim_index(), o.thresholds(), self.do_best)
        P, k = len(rules.prim), o.top_k
        rows = ks.new(ks.RowResults, B, P, k, self.do_best)
        shape = (_threads(), P, dm, k, self.do_best)
        if self._scratch is None:  # kept for the pair's next blocks: refilling beats page-faulting a new one
            self._scratch = ks.new(ks.ColumnScratch, *shape)
        cols = ks.refill(self._scratch, *shape)
        if self.do_best:
            cols.best_mie[:] = np.expm1(self.cols.pb_v[ks.MI])  # MI pruning starts from the pair's column best
            if self._col_walk is None:
                self._col_walk, self._row_bands = ks.Walk.of(dst), ks.Walk.bands(src)
            col_walk, row_walk = self._col_walk, ks.Walk.of(src, lo, lo + B, self._row_bands)
        else:
            col_walk = row_walk = ks.Walk.none()
        floor = self.cols.floor(rules.prim)
        if isinstance(block, ks.SparseBlock):
            marks = np.zeros((2, _threads(), dm), np.uint8)
            masks = np.zeros((2, _threads(), dm), np.uint64)
            chunks, width = scan_tiles(block.nnz, P, k, _threads())
            bits = walk_bits(row_walk, B)
            pair_mi = self.cols.pb_v[ks.MI] if self.do_best else np.zeros(0)
            with np.errstate(divide="ignore"):
                cj = dst.count.astype(np.float64)
                inv = np.stack([1.0 / cj, 1.0 / (n - cj), np.log(cj)])
            if self._col_bits is None:
                self._col_bits = walk_bits(col_walk, dm) if self.do_best else np.zeros((2, 0), np.uint64)
            args = (chunks, width, bits, masks, pair_mi, inv, self._col_bits, _LOGS)
            ks.scan_sparse(block, src, dst, rules, col_walk, floor, rows, cols, marks, *args)
            if self.do_best:
                ks.untouched_sparse(block, rules.n, src, dst, row_walk, cols, masks)
        else:
            ks.scan_block(block, src, dst, rules, col_walk, floor, rows, cols, np.zeros((2, _threads(), 0), np.uint8))
            if self.do_best:
                ks.untouched_columns(block, rules.n, src, dst, row_walk, cols)
        ks.merge_columns(block, self.do_best, cols, self.cols)
        self.counters += cols.counters.sum(0)
        if self.do_best:
            ok = rows.best >= 0
            r_at = np.broadcast_to(np.arange(B, dtype=np.int64)[:, None], ok.shape).ravel()
            c_at, p_at = ks.cells(block, r_at, np.where(ok, rows.best, 0).astype(np.int64).ravel())
            self.succ.j[lo : lo + B] = rows.best
            self.succ.c[lo : lo + B] = np.where(ok, c_at.reshape(ok.shape), 0)
            self.succ.p[lo : lo + B] = np.where(ok, p_at.reshape(ok.shape), 0.0)
        # kept cells of these rows: count, then fill
        gather = ks.gather_sparse if isinstance(block, ks.SparseBlock) else ks.gather_rows
        offsets = np.zeros(B + 1, np.int64)
        gather(block, src, dst, rules, rows, offsets, ks.new(ks.Edges, 0), True)
        np.cumsum(offsets, out=offsets)
        out = ks.new(ks.Edges, int(offsets[-1]))
        gather(block, src, dst, rules, rows, offsets, out, False)
        self.parts.append(out)
        if self.forced is not None:
            # the matched cells of these rows, whatever their counts; duplicates of kept cells
            # carry the same values and are dropped in `finish`
            r = np.flatnonzero(self.forced[lo : lo + B] >= 0)
            j = self.forced[lo + r].astype(np.int64)
            self.parts.append(_edges(lo + r, j, *ks.cells(block, r.astype(np.int64), j)))
        self.rows_done += B

    PART_KEYS = tuple(f"part_{f}" for f in ("src", "dst", "c", "p"))  # block_arrays' names of the Edges fields

    def block_arrays(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        """The state after folding only rows lo..hi-1, as arrays (for another process to `merge`)."""
        assert self.rows_done == hi - lo, (self.rows_done, lo, hi)
        out = self.cols._asdict() | {"counters": self.counters}
        out |= {f"rb_{f}": x[lo:hi] for f, x in self.succ._asdict().items()}
        parts = self.parts or [ks.new(ks.Edges, 0)]
        for x, name in enumerate(self.PART_KEYS):
            out[name] = np.concatenate([p[x] for p in parts])
        out["rows"] = np.array([lo, hi], np.int64)
        return out

    def merge(self, block: dict[str, np.ndarray]) -> None:
        """Fold in the state of a block of rows folded on its own (`block_arrays`).

        Every column result keeps the best under the total order (value desc, id asc), as
        `add_block` does, so folding blocks on separate workers and merging their states gives
        the state of one worker folding them all, in any order."""
        lo, hi = (int(v) for v in block["rows"])
        st = self.cols
        if self.do_best:
            ov, oi = block["pb_v"], block["pb_i"]
            take = (ov > st.pb_v) | ((ov == st.pb_v) & (oi < st.pb_i))
            for f in ("pb_v", "pb_i", "pb_c", "pb_p"):
                getattr(st, f)[take] = block[f][take]
            oc, oi = block["pz_c"], block["pz_i"]
            take = (oi != ks.NO_ID) & ((oc > st.pz_c) | ((oc == st.pz_c) & (oi < st.pz_i)))
            st.pz_c[take] = oc[take]
            st.pz_i[take] = oi[take]
            for f, x in self.succ._asdict().items():
                x[lo:hi] = block[f"rb_{f}"]
        k = st.pt_v.shape[2]
        # ids of two blocks never coincide, so (value desc, id asc) orders the 2k entries strictly
        v = np.concatenate([st.pt_v, block["pt_v"]], axis=2)
        order = np.lexsort((np.concatenate([st.pt_i, block["pt_i"]], axis=2), -v), axis=2)[:, :, :k]
        tops = ("pt_v", "pt_i", "pt_c", "pt_p")
        self.cols = st._replace(
            **{f: np.take_along_axis(np.concatenate([getattr(st, f), block[f]], axis=2), order, axis=2) for f in tops}
        )
        self.counters = self.counters + block["counters"]
        self.parts.append(ks.Edges(*(block[name] for name in self.PART_KEYS)))
        self.rows_done += hi - lo

    def finish(self, n: int, src: Side, dst: Side) -> PairResult:
        """Combine blocks: kept edges (sorted by src, dst) and best predecessors per measure."""
        assert self.rows_done == self.d_l, (self.rows_done, self.d_l)
        st = self.cols
        P, dm, k = st.pt_i.shape
        ok = st.pt_i != ks.NO_ID
        jj = np.broadcast_to(np.arange(dm)[None, :, None], (P, dm, k))
        parts = self.parts + [_edges(st.pt_i[ok], jj[ok], st.pt_c[ok], st.pt_p[ok])]
        src_i = np.concatenate([p.src for p in parts])
        dst_j = np.concatenate([p.dst for p in parts])
        key = src_i.astype(np.int64) * dm + dst_j
        _, first = np.unique(key, return_index=True)  # sorted by (src, dst), one row per pair
        e = ks.Edges(*(np.concatenate([p[x] for p in parts])[first] for x in range(len(ks.Edges._fields))))
        self.parts = []
        self._scratch = None
        pred = None
        if self.do_best:
            pred = self._best_pred(n, src, dst)
        succ = (self.succ.j, self.succ.c, self.succ.p) if self.do_best else None
        return PairResult(e.src, e.dst, e.n_co, e.p, pred_j=pred, counters=self.counters, succ=succ)

    def _best_pred(self, n: int, src: Side, dst: Side) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best source row of each column per measure: (ids, c, p) [d_m, N_MEASURES], -1 where none."""
        st = self.cols
        ids, c, p = st.pb_i.T.copy(), st.pb_c.T.copy(), st.pb_p.T.copy()
        none = ids == ks.NO_ID
        # no positive value in a column: the best is 0 at the lowest row where it is defined
        # (see kernels_scan.zero_best; the roles of sufficiency and necessity swap here)
        live_j, q_j = dst.count > 0, ~np.isnan(dst.irq)
        first_live_i, first_q_i = ks.first_index(src.count > 0), ks.first_index(~np.isnan(src.irq))
        zero = {
            ks.JACCARD: np.where(live_j, 0, first_live_i),
            ks.SUFFICIENCY: np.full(self.d_m, first_live_i),
            ks.NECESSITY: np.where(live_j, 0, -1),
            ks.ACT_COSINE: np.where(q_j, first_q_i, -1),
        }
        for m, cand in zero.items():
            ids[none[:, m], m] = cand[none[:, m]]
            c[none[:, m], m] = 0
            p[none[:, m], m] = 0.0
        # MI of never co-active pairs: the column's zero-count candidate (see kernels_scan)
        cand = np.where(live_j, st.pz_i, 0)
        has = cand != ks.NO_ID
        mi0 = mutual_info(n, np.zeros(self.d_m, np.int64), src.count[np.where(has, cand, 0)], dst.count)
        cur_v, cur_i = st.pb_v[ks.MI], st.pb_i[ks.MI]
        take = has & ((mi0 > cur_v) | ((mi0 == cur_v) & (cand < cur_i)))
        ids[take, ks.MI] = cand[take]
        c[take, ks.MI] = 0
        p[take, ks.MI] = 0.0
        ids[ids == ks.NO_ID] = -1
        return ids, c, p


_LOGS = ks.log_table()

ROW_CHUNK = 128
"""Rows per chunk of a sparse scan at most (`scan_tiles`): their running results stay in cache."""
TILE_BYTES = 1 << 20
"""Column results per tile of a sparse scan (about half of a 2 MiB L2 per core)."""


def scan_tiles(nnz: np.ndarray, n_prim: int, k: int, threads: int) -> tuple[np.ndarray, int]:
    """(row chunk bounds int64, tile width) of `ks.scan_sparse` for rows with nnz [B] touched cells:
    chunks of at most ROW_CHUNK rows and of about equal cells (8 per thread at least), and tiles of
    the columns whose per-thread results (top-k lists, bests, masks, marginals) take TILE_BYTES."""
    B = len(nnz)
    work = np.cumsum(nnz + 16)  # a row also costs its cursor and results
    n_eq = 8 * threads
    eq = np.searchsorted(work, np.arange(1, n_eq) * (work[-1] / n_eq)) if B else np.zeros(0, np.int64)
    chunks = np.union1d(np.union1d(eq, np.arange(0, B, ROW_CHUNK)), [0, B]).astype(np.int64)
    per_col = ks.N_MEASURES * 12 + 8 + n_prim * (k * 12 + 8) + 8 + 16 + 32
    return chunks, max(256, TILE_BYTES // per_col)


def walk_bits(walk: ks.Walk, B: int) -> np.ndarray:
    """uint64 [2, B]: each block row's bit in the column masks of `ks.scan_sparse`: 1 << its position
    in walk.order, resp. walk.by_count, for the first ks.MASK_BITS positions, else 0."""
    bits = np.zeros((2, B), np.uint64)
    for w, order in enumerate((walk.order, walk.by_count)):
        t = min(len(order), ks.MASK_BITS)
        bits[w, order[:t]] = np.left_shift(np.uint64(1), np.arange(t, dtype=np.uint64))
    return bits


def _edges(src: np.ndarray, dst: np.ndarray, n_co: np.ndarray, p: np.ndarray) -> ks.Edges:
    """An `Edges` of these cells, in its dtypes."""
    return ks.Edges(*(np.asarray(x).astype(dt) for x, dt in zip((src, dst, n_co, p), ks.EDGE_DTYPES.values())))


@dataclass
class PairResult:
    """One layer pair's kept edges (arrays [K], sorted by src then dst) and best partners."""

    src: np.ndarray
    dst: np.ndarray
    n_co: np.ndarray
    p: np.ndarray
    pred_j: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    counters: np.ndarray
    succ: tuple[np.ndarray, np.ndarray, np.ndarray] | None

    def spill(self, folder: Path) -> PairResult:
        """The same result with its edge arrays written to `folder` and memory-mapped back.

        A finished pair's edges wait in memory until every pair is done; spilled, they take
        page cache instead of the accumulators' room (at 131k latents and 32 layers they would
        exceed any per-machine limit), and the output writers read them back one source layer
        at a time."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for name in ("src", "dst", "n_co", "p"):
            path = folder / f"{name}.npy"
            np.save(path, getattr(self, name))
            arrays[name] = np.load(path, mmap_mode="r")
        return replace(self, **arrays)
