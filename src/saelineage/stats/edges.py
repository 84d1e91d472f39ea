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

import numba
import numpy as np

from saelineage.stats import kernels_scan as ks
from saelineage.stats.measures import MEASURE_INDEX, MEASURES, PRIMARY, Side, mutual_info

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
        thr = np.full(len(MEASURES), np.nan)
        for m, t in self.keep.items():
            thr[MEASURE_INDEX[m]] = t
        return thr


def _threads() -> int:
    return int(numba.config.NUMBA_NUM_THREADS)


def state_bytes(d_l: int, d_m: int, opts: EdgeOptions, do_best: bool) -> int:
    """Bytes held by a PairState plus the per-thread scratch of one block scan."""
    P, k = len(opts.primary), opts.top_k
    pair = P * d_m * k * 28 + (6 * d_m * 24 + d_m * 24 + d_l * 6 * 20 if do_best else 0)
    scratch = _threads() * (P * d_m * k * 12 + (6 * d_m * 12 + d_m * 16 if do_best else 0))
    return pair + scratch


def result_bytes(d_l: int, d_m: int, opts: EdgeOptions) -> int:
    """Bytes of a pair's kept edges while it is in progress (24 each: src, dst int32, n_co int64,
    p float64, held once in the block parts and once more while `finish` joins them), bounded
    by the top-k partners of every row and column under each primary measure plus the forced
    partners. Edges kept by --keep thresholds come on top and are not bounded. A finished pair
    keeps only its best-partner arrays in memory (PairResult.spill)."""
    return 2 * 24 * ((d_l + d_m) * opts.top_k * len(opts.primary) + d_l)


def spilled_bytes(d_l: int, d_m: int) -> int:
    """Bytes a finished pair keeps in memory once its edges are spilled: the best-partner
    arrays of rows and columns (id, count, sum per measure)."""
    return (d_l + d_m) * 6 * 20


class PairState:
    """Running results of one layer pair (l -> m) over blocks of source rows."""

    def __init__(self, d_l: int, d_m: int, opts: EdgeOptions, do_best: bool, forced: np.ndarray | None = None):
        """forced: int [d_l], a partner in layer m kept as an edge for each source row (-1: none)."""
        self.d_l, self.d_m, self.opts, self.do_best = d_l, d_m, opts, do_best
        self.forced = forced
        P, k = len(opts.primary), opts.top_k
        nb = 1 if do_best else 0  # column-best arrays are only needed for span-1 pairs
        self.pb_v = np.full((6 * nb, d_m), -np.inf)
        self.pb_i = np.full((6 * nb, d_m), ks.NO_ID, np.int32)
        self.pb_c = np.zeros((6 * nb, d_m), np.int64)
        self.pb_p = np.zeros((6 * nb, d_m), np.float64)
        self.pz_c = np.full(d_m * nb, -1, np.int64)
        self.pz_i = np.full(d_m * nb, ks.NO_ID, np.int32)
        self.pt_v = np.full((P, d_m, k), -np.inf)
        self.pt_i = np.full((P, d_m, k), ks.NO_ID, np.int32)
        self.pt_c = np.zeros((P, d_m, k), np.int64)
        self.pt_p = np.zeros((P, d_m, k), np.float64)
        # best successor of each source feature: partner id and its c_ij, p_ij, per measure
        self.rb_j = np.full((d_l * nb, 6), -1, np.int32)
        self.rb_c = np.zeros((d_l * nb, 6), np.int64)
        self.rb_p = np.zeros((d_l * nb, 6), np.float64)
        self.counters = np.zeros(3, np.int64)  # seen (c>0), touched (c>0 or p>0), supported
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.rows_done = 0
        self._col_orders: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add_block(self, cnt: np.ndarray, psum: np.ndarray, lo: int, n: int, src: Side, dst: Side) -> None:
        """Scan accumulator rows lo..lo+B-1 (cnt, psum [B, d_m]) and fold them in."""
        B, dm = cnt.shape
        o = self.opts
        prim, thr = o.prim_index(), o.thresholds()
        P, k, T = len(prim), o.top_k, _threads()
        db = dm if self.do_best else 0  # column-best state only for span-1 pairs
        rbest = np.full((B if self.do_best else 0, 6), -1, np.int32)
        rtop = np.full((B, P, k), -1, np.int32)
        rkeep = np.zeros(B, np.int64)
        cbest_v = np.full((T, 6, db), -np.inf)
        cbest_i = np.full((T, 6, db), ks.NO_ID, np.int32)
        # MI pruning starts from the pair's current column best (see kernels_scan)
        cb_mie = np.tile(np.expm1(self.pb_v[3]), (T, 1)) if self.do_best else np.zeros((T, 0))
        zc = np.full((T, db), -1, np.int64)
        zi = np.full((T, db), ks.NO_ID, np.int32)
        ctop_v = np.full((T, P, dm, k), -np.inf)
        ctop_i = np.full((T, P, dm, k), ks.NO_ID, np.int32)
        ckth = np.full((T, P, dm), -np.inf)
        ck_mie = np.full((T, dm), -1.0)
        floor_v, floor_i = self.pt_v[:, :, k - 1].copy(), self.pt_i[:, :, k - 1].copy()
        q_mi = [q for q, m in enumerate(prim) if m == 3]
        floor_mie = np.expm1(floor_v[q_mi[0]]) if q_mi else np.zeros(dm)
        counters = np.zeros((T, 3), np.int64)
        n = np.int64(n)
        if self.do_best:  # the orders of the untouched-cell walks (kernels_scan._best_untouched)
            if self._col_orders is None:  # the target layer's marginals are the same for every block
                self._col_orders = (*_finite_order(dst.s * dst.isd), np.lexsort((np.arange(dm), -dst.count)))
            h_order, h_val, cz_order = self._col_orders
            g_order, g_val = _finite_order(src.s[lo : lo + B] * src.isd[lo : lo + B])
            rz_order = np.lexsort((np.arange(B), -src.count[lo : lo + B]))
        else:
            h_order = cz_order = g_order = rz_order = np.zeros(0, np.int64)
            h_val = g_val = np.zeros(0)
        ks.scan_block(
            cnt,
            psum,
            lo,
            n,
            src.count,
            src.s,
            src.isd,
            src.irq,
            dst.count,
            dst.s,
            dst.isd,
            dst.irq,
            _first(dst.count > 0),
            _first(~np.isnan(dst.irq)),
            self.do_best,
            prim,
            o.min_support,
            thr,
            floor_v,
            floor_i,
            floor_mie,
            rbest,
            rtop,
            rkeep,
            cbest_v,
            cbest_i,
            cb_mie,
            zc,
            zi,
            ctop_v,
            ctop_i,
            ckth,
            ck_mie,
            counters,
            h_order,
            h_val,
            cz_order,
        )
        if self.do_best:
            ks.untouched_columns(
                cnt, psum, lo, np.float64(n), src.count, src.s, src.isd, dst.s, dst.isd, g_order, g_val, rz_order,
                cbest_v[:, 4, :], cbest_i[:, 4, :], zc, zi,
            )  # fmt: skip
        ks.merge_columns(
            cnt,
            psum,
            lo,
            self.do_best,
            cbest_v,
            cbest_i,
            zc,
            zi,
            ctop_v,
            ctop_i,
            self.pb_v,
            self.pb_i,
            self.pb_c,
            self.pb_p,
            self.pz_c,
            self.pz_i,
            self.pt_v,
            self.pt_i,
            self.pt_c,
            self.pt_p,
        )
        self.counters += counters.sum(0)
        if self.do_best:
            rows = np.arange(B)[:, None]
            ok = rbest >= 0
            safe = np.where(ok, rbest, 0)
            self.rb_j[lo : lo + B] = rbest
            self.rb_c[lo : lo + B] = np.where(ok, cnt[rows, safe], 0)
            self.rb_p[lo : lo + B] = np.where(ok, psum[rows, safe], 0.0)
        # kept cells of these rows: count, then fill
        args = (
            cnt,
            psum,
            lo,
            n,
            src.count,
            src.s,
            src.isd,
            src.irq,
            dst.count,
            dst.s,
            dst.isd,
            dst.irq,
            o.min_support,
            thr,
            rtop,
            rkeep,
        )
        offsets = np.zeros(B + 1, np.int64)
        empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float64)
        ks.gather_rows(*args, offsets, empty_i, empty_i, np.zeros(0, np.int64), empty_f, True)
        np.cumsum(offsets, out=offsets)
        K = int(offsets[-1])
        out = (np.empty(K, np.int32), np.empty(K, np.int32), np.empty(K, np.int64), np.empty(K, np.float64))
        ks.gather_rows(*args, offsets, *out, False)
        self.parts.append(out)
        if self.forced is not None:
            # the matched cells of these rows, whatever their counts; duplicates of kept cells
            # carry the same values and are dropped in `finish`
            r = np.flatnonzero(self.forced[lo : lo + B] >= 0)
            j = self.forced[lo + r].astype(np.int64)
            self.parts.append(
                (
                    (lo + r).astype(np.int32),
                    j.astype(np.int32),
                    cnt[r, j].astype(np.int64),
                    psum[r, j].astype(np.float64),
                )
            )
        self.rows_done += B

    STATE_FIELDS = ("pb_v", "pb_i", "pb_c", "pb_p", "pz_c", "pz_i", "pt_v", "pt_i", "pt_c", "pt_p", "counters")

    def block_arrays(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        """The state after folding only rows lo..hi-1, as arrays (for another process to `merge`)."""
        assert self.rows_done == hi - lo, (self.rows_done, lo, hi)
        out = {f: getattr(self, f) for f in self.STATE_FIELDS}
        out |= {"rb_j": self.rb_j[lo:hi], "rb_c": self.rb_c[lo:hi], "rb_p": self.rb_p[lo:hi]}
        parts = self.parts or [(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0))]
        for x, name in enumerate(("part_src", "part_dst", "part_c", "part_p")):
            out[name] = np.concatenate([p[x] for p in parts])
        out["rows"] = np.array([lo, hi], np.int64)
        return out

    def merge(self, block: dict[str, np.ndarray]) -> None:
        """Fold in the state of a block of rows folded on its own (`block_arrays`).

        Every column result keeps the best under the total order (value desc, id asc), as
        `add_block` does, so folding blocks on separate workers and merging their states gives
        the state of one worker folding them all, in any order."""
        lo, hi = (int(v) for v in block["rows"])
        if self.do_best:
            ov, oi = block["pb_v"], block["pb_i"]
            take = (ov > self.pb_v) | ((ov == self.pb_v) & (oi < self.pb_i))
            for f in ("pb_v", "pb_i", "pb_c", "pb_p"):
                getattr(self, f)[take] = block[f][take]
            oc, oi = block["pz_c"], block["pz_i"]
            take = (oi != ks.NO_ID) & ((oc > self.pz_c) | ((oc == self.pz_c) & (oi < self.pz_i)))
            self.pz_c[take] = oc[take]
            self.pz_i[take] = oi[take]
            self.rb_j[lo:hi], self.rb_c[lo:hi], self.rb_p[lo:hi] = block["rb_j"], block["rb_c"], block["rb_p"]
        k = self.pt_v.shape[2]
        v = np.concatenate([self.pt_v, block["pt_v"]], axis=2)
        i = np.concatenate([self.pt_i, block["pt_i"]], axis=2)
        # ids of two blocks never coincide, so (value desc, id asc) orders the 2k entries strictly
        order = np.lexsort((i, -v), axis=2)[:, :, :k]
        for f, both in (("pt_v", v), ("pt_i", i)):
            setattr(self, f, np.take_along_axis(both, order, axis=2))
        for f in ("pt_c", "pt_p"):
            both = np.concatenate([getattr(self, f), block[f]], axis=2)
            setattr(self, f, np.take_along_axis(both, order, axis=2))
        self.counters = self.counters + block["counters"]
        self.parts.append((block["part_src"], block["part_dst"], block["part_c"], block["part_p"]))
        self.rows_done += hi - lo

    def finish(self, n: int, src: Side, dst: Side) -> PairResult:
        """Combine blocks: kept edges (sorted by src, dst) and best predecessors per measure."""
        assert self.rows_done == self.d_l, (self.rows_done, self.d_l)
        P, dm, k = self.pt_i.shape
        ok = self.pt_i != ks.NO_ID
        jj = np.broadcast_to(np.arange(dm)[None, :, None], (P, dm, k))
        parts = self.parts + [(self.pt_i[ok], jj[ok].astype(np.int32), self.pt_c[ok], self.pt_p[ok])]
        src_i = np.concatenate([p[0] for p in parts])
        dst_j = np.concatenate([p[1] for p in parts])
        key = src_i.astype(np.int64) * dm + dst_j
        _, first = np.unique(key, return_index=True)  # sorted by (src, dst), one row per pair
        edges = tuple(np.concatenate([p[x] for p in parts])[first] for x in range(4))
        self.parts = []
        pred = None
        if self.do_best:
            pred = self._best_pred(n, src, dst)
        return PairResult(
            *edges,
            pred_j=pred,
            counters=self.counters,
            succ=(self.rb_j, self.rb_c, self.rb_p) if self.do_best else None,
        )

    def _best_pred(self, n: int, src: Side, dst: Side):
        """Best source row of each column per measure: (ids, c, p) [d_m, 6], -1 where none."""
        ids, c, p = self.pb_i.T.copy(), self.pb_c.T.copy(), self.pb_p.T.copy()
        none = ids == ks.NO_ID
        # no positive value in a column: the best is 0 at the lowest row where it is defined
        # (see kernels_scan.zero_best; the roles of sufficiency and necessity swap here)
        live_j, q_j = dst.count > 0, ~np.isnan(dst.irq)
        first_live_i, first_q_i = _first(src.count > 0), _first(~np.isnan(src.irq))
        zero = {
            0: np.where(live_j, 0, first_live_i),
            1: np.full(self.d_m, first_live_i),
            2: np.where(live_j, 0, -1),
            5: np.where(q_j, first_q_i, -1),
        }
        for m, cand in zero.items():
            ids[none[:, m], m] = cand[none[:, m]]
            c[none[:, m], m] = 0
            p[none[:, m], m] = 0.0
        # MI of never co-active pairs: the column's zero-count candidate (see kernels_scan)
        cand = np.where(live_j, self.pz_i, 0)
        has = cand != ks.NO_ID
        mi0 = mutual_info(n, np.zeros(self.d_m, np.int64), src.count[np.where(has, cand, 0)], dst.count)
        cur_v, cur_i = self.pb_v[3], self.pb_i[3]
        take = has & ((mi0 > cur_v) | ((mi0 == cur_v) & (cand < cur_i)))
        ids[take, 3] = cand[take]
        c[take, 3] = 0
        p[take, 3] = 0.0
        ids[ids == ks.NO_ID] = -1
        return ids, c, p


def _finite_order(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the finite entries of h by value ascending (ties: index ascending), and their values."""
    idx = np.flatnonzero(np.isfinite(h))
    idx = idx[np.argsort(h[idx], kind="stable")]
    return idx.astype(np.int64), h[idx].astype(np.float64)


def _first(mask: np.ndarray) -> int:
    """Lowest index where mask is True, -1 if none."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else -1


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
