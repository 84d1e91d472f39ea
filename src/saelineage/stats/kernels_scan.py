"""Compiled (numba) kernels that turn a finished accumulator block into results.

One parallel scan over every cell (i, j) of a block of source rows evaluates all measures
(the same expressions as `measures.py`) and collects, in one go:
  - per row: the best partner under each measure over *all* j (span-1 pairs only) and the
    top-k supported partners under each primary measure;
  - per column (per thread, merged later): the best source row under each measure and the
    top-k supported source rows, so that blocks of rows can be combined exactly;
  - counters for the summary (histograms are taken over the kept edges when written).

Ranking order everywhere: higher value first, then lower partner id; NaN never ranks.

Mutual information of a pair that is never co-active (c_ij = 0) is not evaluated per cell:
for a live feature i (0 < c_i) MI(c_ij=0; c_i, c_j) is strictly increasing in c_j, so the
best such partner is the one with the largest c_j (lowest id on ties); when c_i = 0 every
partner has MI 0 and the lowest id wins. The scan records those candidates instead.

Mutual information costs four logarithms; it is evaluated only where it could matter. By
Jensen, MI = KL(joint || product) <= log(1 + chi2/n) with chi2/n = r = D² / (c_i c_j (n-c_i)
(n-c_j)), D = n c_ij - c_i c_j (a few multiplications). A cell whose bound is below every
value it could displace (row best, column best, the k-th of the row and column top-k lists,
the keep threshold) is skipped: r < expm1(that value), with a 1e-9 relative margin.

The kernels take their arrays in bundles (NamedTuples, which numba passes as tuples of
arrays): `Block` (the accumulators), `measures.Side` (per-feature marginals of each layer),
`Rules` (what to keep), `Walk` (orders of the untouched-cell walks), `Floor` (what a column
entry must beat), `RowResults` and `ColumnScratch` (one scan's outputs), `ColumnState` (a
pair's running column results) and `Edges` (kept cells). Bundles of allocated arrays describe
their arrays once, in `spec`; `new` allocates them and `nbytes` sizes them for the memory plan.

numba (0.68) drops writes made through a bundle's attribute inside a `prange` loop (reads are
fine), so the parallel kernels bind every array they write to a local name before the loop.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, Protocol, TypedDict, TypeVar

import numba
import numpy as np
from numba import prange
from numba.extending import overload

from saelineage.stats.measures import MEASURE_INDEX, MEASURES, Side


class _JitOptions(TypedDict):
    """The keyword arguments every kernel passes to `numba.njit` (typed for its overloads)."""

    cache: bool
    nogil: bool
    error_model: Literal["python", "numpy"]


_JIT: _JitOptions = {"cache": True, "nogil": True, "error_model": "numpy"}
N_MEASURES = len(MEASURES)
# measure indices (measures.MEASURES order), frozen into the kernels at compile time
JACCARD = MEASURE_INDEX["jaccard"]
SUFFICIENCY = MEASURE_INDEX["sufficiency"]
NECESSITY = MEASURE_INDEX["necessity"]
MI = MEASURE_INDEX["mutual_info"]
PEARSON = MEASURE_INDEX["pearson"]
ACT_COSINE = MEASURE_INDEX["act_cosine"]
# measures that are 0 or NaN on a never co-active pair (c = p = 0): their zero bests come in
# closed form (zero_best), so the scan only ranks their positive values
ZERO_IF_UNTOUCHED = (JACCARD, SUFFICIENCY, NECESSITY, ACT_COSINE)
COUNTERS = ("seen", "touched", "supported")  # cells with c > 0; c > 0 or p > 0; c >= min_support
SEEN, TOUCHED, SUPPORTED = range(len(COUNTERS))
N_COUNTERS = len(COUNTERS)
NO_ID = np.iinfo(np.int32).max  # "no row yet" in column states: loses every id tie

ArraySpec = tuple[tuple[int, ...], type, float | int | None]
"""One array of a bundle: (shape, dtype, initial value; None: uninitialised)."""


class Bundle(Protocol):
    """A NamedTuple of arrays whose static `spec` gives each array's (shape, dtype, fill)."""

    _fields: Any
    """the NamedTuple's field names (mypy types each class's as its own fixed-length tuple)"""

    @staticmethod
    def spec(*shape_args: Any, **kwargs: Any) -> dict[str, ArraySpec]: ...


BundleT = TypeVar("BundleT", bound=Bundle)


def new(bundle: type[BundleT], *shape_args: int | bool) -> BundleT:
    """A bundle with every array of `bundle.spec(*shape_args)` allocated and filled."""

    def make(shape: tuple[int, ...], dtype: type, fill: float | int | None) -> np.ndarray:
        if fill is None:
            return np.empty(shape, dtype)
        return np.zeros(shape, dtype) if fill == 0 else np.full(shape, fill, dtype)

    spec = bundle.spec(*shape_args)
    fields: tuple[str, ...] = bundle._fields
    return bundle(**{f: make(*spec[f]) for f in fields})


def refill(b: BundleT, *shape_args: int | bool) -> BundleT:
    """`b` (made by `new(type(b), *shape_args)`) filled again as `new` fills it, in place: reusing
    large scratch avoids the page faults of a fresh allocation."""
    spec = type(b).spec(*shape_args)
    for f in type(b)._fields:
        fill = spec[f][2]
        if fill is not None:
            getattr(b, f).fill(fill)
    return b


def nbytes(bundle: type[Bundle], *shape_args: int | bool) -> int:
    """Bytes that `new(bundle, *shape_args)` allocates."""
    return sum(math.prod(shape) * np.dtype(dt).itemsize for shape, dt, _ in bundle.spec(*shape_args).values())


class Block(NamedTuple):
    """Accumulator rows lo..lo+B-1 of one layer pair (engine.py)."""

    cnt: np.ndarray
    """int32 or int64 [B, d_m]: c_ij"""
    psum: np.ndarray
    """float64 [B, d_m]: p_ij"""
    lo: int
    """the block's first source row"""

    @property
    def n_rows(self) -> int:
        """B"""
        return int(self.cnt.shape[0])


class SparseBlock(NamedTuple):
    """Accumulator rows lo..lo+B-1 of one layer pair stored sparse (engine.py: pairs whose rows
    touch few of their cells): row r's touched cells are j[ptr[r] : ptr[r] + nnz[r]], ascending,
    with their c_ij and p_ij at the same positions. Untouched cells are c = p = 0, as in a `Block`."""

    ptr: np.ndarray
    """int64 [B+1]: where each row's cells start (rows may hold spare room up to the next start)"""
    nnz: np.ndarray
    """int64 [B]: touched cells of each row"""
    j: np.ndarray
    """int32: their columns"""
    cnt: np.ndarray
    """int32 or int64: c_ij"""
    psum: np.ndarray
    """float64: p_ij"""
    lo: int
    """the block's first source row"""
    d_m: int
    """columns"""

    @property
    def n_rows(self) -> int:
        """B"""
        return len(self.nnz)


def _is_sparse(block: Any) -> bool:
    """At compile time: the numba type of `block` is a SparseBlock's."""
    return getattr(block, "instance_class", None) is SparseBlock


# The scan kernels take a Block or a SparseBlock; these helpers are the only places that tell the
# two apart (numba compiles each kernel once per block type, so the dense code is unchanged).
def n_cols(block):
    """d_m of a block."""
    raise NotImplementedError  # numba only (overloaded below)


def cell(block, r, j):
    """(c_ij, p_ij) of block row r, column j (0, 0.0 when untouched)."""
    raise NotImplementedError


def row_cells(block, r, mc, mp):
    """(counts, sums) of row r indexable by j [d_m], for the walks (`_best_untouched`, `_first_zero`):
    a sparse row marks mc where c > 0 and mp where touched (c > 0 or p > 0)."""
    raise NotImplementedError


def clear_row(block, r, mc, mp):
    """Undo `row_cells`'s marks."""
    raise NotImplementedError


@overload(n_cols, inline="always")
def _ov_n_cols(block):
    if _is_sparse(block):
        return lambda block: block.d_m
    return lambda block: block.cnt.shape[1]


@overload(cell, inline="always")
def _ov_cell(block, r, j):
    if _is_sparse(block):

        def sparse(block, r, j):
            a = block.ptr[r]
            b = a + block.nnz[r]
            x = a + np.searchsorted(block.j[a:b], j)
            if x < b and block.j[x] == j:
                return np.int64(block.cnt[x]), block.psum[x]
            return np.int64(0), 0.0

        return sparse
    return lambda block, r, j: (np.int64(block.cnt[r, j]), block.psum[r, j])


@overload(row_cells, inline="always")
def _ov_row_cells(block, r, mc, mp):
    if _is_sparse(block):

        def sparse(block, r, mc, mp):
            for x in range(block.ptr[r], block.ptr[r] + block.nnz[r]):
                mc[block.j[x]] = block.cnt[x] != 0
                mp[block.j[x]] = 1
            return mc, mp

        return sparse
    return lambda block, r, mc, mp: (block.cnt[r], block.psum[r])


@overload(clear_row, inline="always")
def _ov_clear_row(block, r, mc, mp):
    if _is_sparse(block):

        def sparse(block, r, mc, mp):
            for x in range(block.ptr[r], block.ptr[r] + block.nnz[r]):
                mc[block.j[x]] = 0
                mp[block.j[x]] = 0

        return sparse
    return lambda block, r, mc, mp: None


@numba.njit(parallel=True, **_JIT)
def cells(block, r, j):
    """(c [K], p [K]) of block rows r[k], columns j[k] (either block type)."""
    c = np.zeros(r.shape[0], np.int64)
    p = np.zeros(r.shape[0])
    for k in prange(r.shape[0]):
        c[k], p[k] = cell(block, r[k], j[k])
    return c, p


class Rules(NamedTuple):
    """What a scan ranks and keeps (edges.EdgeOptions, as kernel inputs)."""

    n: np.int64
    """tokens"""
    min_support: int
    prim: np.ndarray
    """int64 [P]: measure indices ranked for the top-k lists"""
    thr: np.ndarray
    """float64 [N_MEASURES]: keep thresholds (NaN: none)"""
    do_best: bool
    """also find best partners over all cells (span-1 pairs)"""


class Walk(NamedTuple):
    """Features lo..hi-1 of one side, ordered for the untouched-cell walks (`_best_untouched`,
    `_first_zero`); indices count from lo.

    Untouched pearson is −g_i·g_j mathematically (g = s·isd), so the best untouched partner has
    the smallest g. Features whose g lie within BAND of each other form a *band* (over the whole
    side, so that every block of rows sees the same bands): their untouched values differ only by
    rounding (a layer's singletons all have g = 1/sqrt(n-1)), so a band ranks as one value, the
    expression at its first feature, and its lowest index wins. A walk then stops at its first
    untouched feature, whatever the size of the band."""

    order: np.ndarray
    """int64: the features with a finite g, by band (g ascending), then index ascending"""
    rep: np.ndarray
    """int64: for each of them, the feature (index on the whole side) whose s and isd value its band"""
    by_count: np.ndarray
    """int64 [d]: every feature by count descending, index ascending"""
    first_live: int
    """lowest feature with count > 0 (-1: none)"""
    first_q: int
    """lowest feature with q > 0, i.e. a finite irq (-1: none)"""

    @staticmethod
    def bands(side: Side) -> tuple[np.ndarray, np.ndarray]:
        """(band number, the band's first feature) of every feature of the side, int64 [d] each
        (-1 where g is not finite); bands are numbered by g ascending."""
        g = side.s * side.isd
        idx = np.flatnonzero(np.isfinite(g))
        idx = idx[np.argsort(g[idx], kind="stable")].astype(np.int64)
        band, first = np.full(len(g), -1, np.int64), np.full(len(g), -1, np.int64)
        _bands(g, idx, band, first)
        return band, first

    @staticmethod
    def of(side: Side, lo: int = 0, hi: int | None = None, bands: tuple[np.ndarray, np.ndarray] | None = None) -> Walk:
        """The walk of features lo..hi-1 (default: all); bands: `Walk.bands(side)`, when known."""
        hi = len(side.count) if hi is None else hi
        band, first = bands if bands is not None else Walk.bands(side)
        idx = lo + np.flatnonzero(band[lo:hi] >= 0)
        idx = idx[np.lexsort((idx, band[idx]))]
        count = side.count[lo:hi]
        return Walk(
            (idx - lo).astype(np.int64),
            first[idx],
            np.lexsort((np.arange(len(count)), -count)).astype(np.int64),
            first_index(count > 0),
            first_index(~np.isnan(side.irq[lo:hi])),
        )

    @staticmethod
    def spec(d: int) -> dict[str, ArraySpec]:
        """The arrays' largest shapes (for the memory plan; `of` computes a walk)."""
        return {"order": ((d,), np.int64, None), "rep": ((d,), np.int64, None), "by_count": ((d,), np.int64, None)}

    @staticmethod
    def none() -> Walk:
        """For span > 1 pairs, which take no walks."""
        empty = np.zeros(0, np.int64)
        return Walk(empty, empty, empty, -1, -1)


BAND = 1.0 + 5e-13
"""Features whose g = s·isd lie within this factor of their band's first share one untouched
pearson (`Walk`); 5e-13 leaves the values of a band within 1e-12 of each other after rounding."""


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _bands(g, idx, band, first):
    """Number the bands along idx (features by g ascending): a band starts at a feature whose g
    exceeds BAND times the current band's first g."""
    b = -1
    start = 0.0
    f0 = -1
    for t in range(idx.shape[0]):
        f = idx[t]
        if b < 0 or g[f] > start * BAND:
            b += 1
            start = g[f]
            f0 = f
        band[f] = b
        first[f] = f0


def first_index(mask: np.ndarray) -> int:
    """Lowest index where mask is True, -1 if none."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else -1


class Floor(NamedTuple):
    """Per column, the pair's current k-th best of each top-k list: an entry that does not beat
    it cannot enter."""

    v: np.ndarray
    """float64 [P, d_m]"""
    i: np.ndarray
    """int32 [P, d_m]"""
    mie: np.ndarray
    """float64 [d_m]: expm1 of the MI list's floor (zeros when MI is not primary)"""


class RowResults(NamedTuple):
    """What one scan finds per block row."""

    best: np.ndarray
    """int32 [B, N_MEASURES]: best partner j per measure (-1: none; [0, N_MEASURES] without do_best)"""
    top: np.ndarray
    """int32 [B, P, k]: top-k supported partners per primary measure (-1 padded)"""
    keep: np.ndarray
    """int64 [B]: supported cells passing a keep threshold"""

    @staticmethod
    def spec(rows: int, n_prim: int, k: int, do_best: bool) -> dict[str, ArraySpec]:
        return {
            "best": ((rows if do_best else 0, N_MEASURES), np.int32, -1),
            "top": ((rows, n_prim, k), np.int32, -1),
            "keep": ((rows,), np.int64, 0),
        }


class ColumnScratch(NamedTuple):
    """Each thread's column results of one scan, merged into the pair's `ColumnState` after it.

    Per thread th: column bests per measure (positive values only, except pearson and MI; empty
    [.., 0, ..] arrays without do_best), zero-count MI candidates, column top-k lists with their k-th
    value, and the counters."""

    best_v: np.ndarray
    """float64 [T, d_m, N_MEASURES] (a column's bests share cache lines)"""
    best_i: np.ndarray
    """int32 [T, d_m, N_MEASURES]"""
    best_mie: np.ndarray
    """float64 [T, d_m]: expm1(column best MI); the caller starts it at the pair's best"""
    zc: np.ndarray
    """int64 [T, d_m]: c_i of the zero-count MI candidate"""
    zi: np.ndarray
    """int32 [T, d_m]: its row"""
    top_v: np.ndarray
    """float64 [T, P, d_m, k]"""
    top_i: np.ndarray
    """int32 [T, P, d_m, k]"""
    kth: np.ndarray
    """float64 [T, P, d_m]: top_v[..., k-1]"""
    k_mie: np.ndarray
    """float64 [T, d_m]: expm1(kth) of the MI list"""
    counters: np.ndarray
    """int64 [T, N_COUNTERS]"""

    @staticmethod
    def spec(threads: int, n_prim: int, d_m: int, k: int, do_best: bool) -> dict[str, ArraySpec]:
        db = d_m if do_best else 0  # column bests only for span-1 pairs
        return {
            "best_v": ((threads, db, N_MEASURES), np.float64, -np.inf),
            "best_i": ((threads, db, N_MEASURES), np.int32, NO_ID),
            "best_mie": ((threads, db), np.float64, 0.0),
            "zc": ((threads, db), np.int64, -1),
            "zi": ((threads, db), np.int32, NO_ID),
            "top_v": ((threads, n_prim, d_m, k), np.float64, -np.inf),
            "top_i": ((threads, n_prim, d_m, k), np.int32, NO_ID),
            "kth": ((threads, n_prim, d_m), np.float64, -np.inf),
            "k_mie": ((threads, d_m), np.float64, -1.0),
            "counters": ((threads, N_COUNTERS), np.int64, 0),
        }


class ColumnState(NamedTuple):
    """A pair's running column results over the blocks folded so far. Field names are also the
    keys of `edges.PairState.block_arrays`."""

    pb_v: np.ndarray
    """float64 [N_MEASURES, d_m]: best row per measure (empty [0, d_m] without do_best)"""
    pb_i: np.ndarray
    """int32 [N_MEASURES, d_m]: its id (NO_ID: none)"""
    pb_c: np.ndarray
    """int64 [N_MEASURES, d_m]: its c_ij"""
    pb_p: np.ndarray
    """float64 [N_MEASURES, d_m]: its p_ij"""
    pz_c: np.ndarray
    """int64 [d_m]: c_i of the zero-count MI candidate"""
    pz_i: np.ndarray
    """int32 [d_m]: its row (NO_ID: none)"""
    pt_v: np.ndarray
    """float64 [P, d_m, k]: column top-k lists"""
    pt_i: np.ndarray
    """int32 [P, d_m, k]"""
    pt_c: np.ndarray
    """int64 [P, d_m, k]"""
    pt_p: np.ndarray
    """float64 [P, d_m, k]"""

    @staticmethod
    def spec(n_prim: int, d_m: int, k: int, do_best: bool) -> dict[str, ArraySpec]:
        nb = 1 if do_best else 0  # column bests only for span-1 pairs
        return {
            "pb_v": ((N_MEASURES * nb, d_m), np.float64, -np.inf),
            "pb_i": ((N_MEASURES * nb, d_m), np.int32, NO_ID),
            "pb_c": ((N_MEASURES * nb, d_m), np.int64, 0),
            "pb_p": ((N_MEASURES * nb, d_m), np.float64, 0.0),
            "pz_c": ((d_m * nb,), np.int64, -1),
            "pz_i": ((d_m * nb,), np.int32, NO_ID),
            "pt_v": ((n_prim, d_m, k), np.float64, -np.inf),
            "pt_i": ((n_prim, d_m, k), np.int32, NO_ID),
            "pt_c": ((n_prim, d_m, k), np.int64, 0),
            "pt_p": ((n_prim, d_m, k), np.float64, 0.0),
        }

    def floor(self, prim: np.ndarray) -> Floor:
        """The k-th entries of the top-k lists (copies: merging a block moves them)."""
        v, i = self.pt_v[:, :, -1].copy(), self.pt_i[:, :, -1].copy()
        q_mi = np.flatnonzero(prim == MI)
        return Floor(v, i, np.expm1(v[q_mi[0]]) if len(q_mi) else np.zeros(v.shape[1]))


EDGE_DTYPES = {"src": np.int32, "dst": np.int32, "n_co": np.int64, "p": np.float64}


class Edges(NamedTuple):
    """Kept cells (arrays [K]): the columns of edges.parquet that come from the accumulators."""

    src: np.ndarray
    """int32"""
    dst: np.ndarray
    """int32"""
    n_co: np.ndarray
    """int64: c_ij"""
    p: np.ndarray
    """float64: p_ij"""

    @staticmethod
    def spec(count: int) -> dict[str, ArraySpec]:
        return {f: ((count,), dt, None) for f, dt in EDGE_DTYPES.items()}


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def mi_scalar(n, c, ci, cj):
    """measures.mutual_info on int64 scalars (same operations, same order)."""
    d = n * c - ci * cj
    fd = np.float64(d)
    fci = np.float64(ci)
    fcj = np.float64(cj)
    fni = np.float64(n - ci)
    fnj = np.float64(n - cj)
    out = 0.0
    if c > 0:
        out = out + c * np.log1p(fd / (fci * fcj))
    if ci - c > 0:
        out = out + (ci - c) * np.log1p(-fd / (fci * fnj))
    if cj - c > 0:
        out = out + (cj - c) * np.log1p(-fd / (fni * fcj))
    if n - ci - cj + c > 0:
        out = out + (n - ci - cj + c) * np.log1p(fd / (fni * fnj))
    return max(out / np.float64(n), 0.0)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def cell_values(v, n, c, p, ci, si, isdi, irqi, cj, sj, isdj, irqj, with_mi):
    """Fill v[N_MEASURES] with the measures of one cell (measures.MEASURES order; MI NaN unless asked)."""
    fc = np.float64(c)
    v[JACCARD] = fc / np.float64(ci + cj - c)
    v[SUFFICIENCY] = fc / np.float64(ci)
    v[NECESSITY] = fc / np.float64(cj)
    v[MI] = mi_scalar(n, c, ci, cj) if with_mi else np.nan
    v[PEARSON] = (np.float64(n) * p - si * sj) * isdi * isdj
    v[ACT_COSINE] = p * irqi * irqj


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def passes(v, thr):
    """True when any measure reaches its keep threshold (NaN threshold = none)."""
    for m in range(N_MEASURES):
        if v[m] >= thr[m]:
            return True
    return False


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def cell_passes(n, c, p, ci, si, isdi, irqi, cj, sj, isdj, irqj, thr, thr_mie):
    """passes(cell_values(...), thr), computing only the measures that have a threshold
    (mutual information only when its bound can reach the threshold)."""
    fc = np.float64(c)
    if thr[JACCARD] == thr[JACCARD] and fc / np.float64(ci + cj - c) >= thr[JACCARD]:
        return True
    if thr[SUFFICIENCY] == thr[SUFFICIENCY] and fc / np.float64(ci) >= thr[SUFFICIENCY]:
        return True
    if thr[NECESSITY] == thr[NECESSITY] and fc / np.float64(cj) >= thr[NECESSITY]:
        return True
    if thr[PEARSON] == thr[PEARSON] and (np.float64(n) * p - si * sj) * isdi * isdj >= thr[PEARSON]:
        return True
    if thr[ACT_COSINE] == thr[ACT_COSINE] and p * irqi * irqj >= thr[ACT_COSINE]:
        return True
    if thr[MI] == thr[MI] and c > 0 and mi_bound(n, c, ci, cj) / MARGIN >= thr_mie:
        return mi_scalar(n, c, ci, cj) >= thr[MI]
    return False


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _insert_desc(vals, ids, x, e):
    """Insert (x, e) into a full-length sorted top list (value desc, id asc) if it ranks."""
    k = vals.shape[0]
    last = k - 1
    if not (x > vals[last] or (x == vals[last] and e < ids[last])):
        return
    s = last
    while s > 0 and (vals[s - 1] < x or (vals[s - 1] == x and ids[s - 1] > e)):
        vals[s] = vals[s - 1]
        ids[s] = ids[s - 1]
        s -= 1
    vals[s] = x
    ids[s] = e


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def zero_best(m, own_count, own_q_pos, first_live, first_q):
    """Partner of the best value 0 of a count measure / act_cosine when no pair is positive.

    With no positive value every pair has c_ij = 0 (p_ij = 0 for act_cosine), so the best
    is 0 at the lowest partner for which the measure is defined, or none (-1: all NaN).
    m: measure index (one of ZERO_IF_UNTOUCHED); own_count, own_q_pos: this feature's count
    and q > 0; first_live / first_q: lowest partner with count > 0 / q > 0. Jaccard and the
    "own-side" ratio need own_count > 0 or a live partner; the "partner-side" ratio needs a
    live partner.
    """
    if m == JACCARD:  # c_i + c_j > 0
        return 0 if own_count > 0 else first_live
    if m == SUFFICIENCY:  # c / own count
        return 0 if own_count > 0 else -1
    if m == NECESSITY:  # c / partner count
        return first_live
    return first_q if own_q_pos else -1  # act_cosine: q_i > 0 and q_j > 0


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _untouched_pearson(fn, s_own, isd_own, s_other, isd_other):
    """pearson of a cell with c = p = 0, the same expression as cell_values with p = 0."""
    return (fn * 0.0 - s_own * s_other) * isd_own * isd_other


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _best_untouched(cells_c, cells_p, walk, fn, s_own, isd_own, s_other, isd_other, own_is_row):
    """The best untouched pearson along one row or one column: (value, index into cells), -1 for none.

    cells_c/cells_p: the row's (or the column's) counts and sums; walk: a `Walk` over the
    cells' indices; s_other/isd_other: the partner side's whole arrays. The first untouched
    feature of the walk is the best (see `Walk`), valued by its band's first feature. The walk
    skips only touched cells: its cost is proportional to the touched cells, not to the length."""
    order = walk.order
    if isd_own == isd_own:
        for t in range(order.shape[0]):
            k = order[t]
            if cells_c[k] != 0 or cells_p[k] != 0.0:
                continue
            o = walk.rep[t]
            if own_is_row:  # the cell's expression with the row's factors first, as in cell_values
                return _untouched_pearson(fn, s_own, isd_own, s_other[o], isd_other[o]), k
            return _untouched_pearson(fn, s_other[o], isd_other[o], s_own, isd_own), k
    return -np.inf, -1


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _first_zero(cells_c, walk):
    """First index in walk.by_count (count descending, index ascending) whose cell count is 0
    (-1 if none): the zero-count MI candidate."""
    order = walk.by_count
    for t in range(order.shape[0]):
        if cells_c[order[t]] == 0:
            return order[t]
    return -1


@numba.njit(parallel=True, **_JIT)
def untouched_columns(block, n, src, dst, rows, cols):
    """Per column of a dense block (a `Block`; a `SparseBlock` goes through `untouched_sparse`):
    the best pearson over untouched cells and the zero-count MI candidate (c_ij = 0: largest c_i,
    lowest i), folded into this thread's column state (`ColumnScratch` cols: best_v/best_i of pearson, zc/zi).

    src, dst: the pair's `Side`s; rows: the `Walk` of the block's rows (indices 0..B-1 of
    src's rows lo..lo+B-1)."""
    lo = block.lo
    fn = np.float64(n)
    ci = src.count
    cb_v = cols.best_v[:, :, PEARSON]
    cb_i = cols.best_i[:, :, PEARSON]
    zc = cols.zc
    zi = cols.zi
    for j in prange(block.cnt.shape[1]):
        th = numba.get_thread_id()
        cc, cp = block.cnt[:, j], block.psum[:, j]
        best, r = _best_untouched(cc, cp, rows, fn, dst.s[j], dst.isd[j], src.s, src.isd, False)
        if r >= 0 and (best > cb_v[th, j] or (best == cb_v[th, j] and lo + r < cb_i[th, j])):
            cb_v[th, j] = best
            cb_i[th, j] = lo + r
        r = _first_zero(cc, rows)
        if r >= 0:
            c = np.int64(ci[lo + r])
            if c > zc[th, j] or (c == zc[th, j] and lo + r < zi[th, j]):
                zc[th, j] = c
                zi[th, j] = lo + r


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def mi_bound(n, c, ci, cj):
    """chi2 / n of the 2x2 table: MI <= log1p(this) (see the module docstring).

    A constant variable (c_i or c_j in {0, n}) has MI exactly 0: the bound is then 0.
    """
    den = np.float64(ci) * np.float64(cj) * np.float64(n - ci) * np.float64(n - cj)
    if den == 0.0:
        return 0.0
    d = np.float64(n * c - ci * cj)
    return d * d / den


MARGIN = 1.0 - 1e-9  # safety margin on the MI bound test (rounding of r and of expm1)


LOG_TABLE = 4096
"""`mi_upper_logs` reads log c from a table below this count."""


def log_table() -> np.ndarray:
    """float64 [LOG_TABLE]: log c (log 0 = -inf, never read)."""
    with np.errstate(divide="ignore"):
        return np.log(np.arange(LOG_TABLE, dtype=np.float64))


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def mi_upper_logs(c, fd, fn, log_n, inv_n, inv_ci, inv_nci, log_ci, inv_cj, inv_ncj, log_cj, logs):
    """An upper bound on MI (nats, as `mi_scalar`) that stays tight for rare features, where the
    chi2 bound (`mi_bound`) is loose by orders of magnitude (c = 4 of c_i = c_j = 100 in 10^6
    tokens: log1p(chi2/n) is 100 times the MI; this, 1.004 times), without a logarithm per cell.

    n·MI = Σ n_xy log(n_xy / e_xy) over the 2x2 table (e: the counts expected under independence).
    The co-active cell's term is kept exact, with log(c / e_11) = log c + log n - log c_i - log c_j
    from logarithms computed beforehand (logs: `log_table()`; log_ci, log_cj of the row and the
    column). Each other term obeys n_xy log(n_xy/e_xy) <= (n_xy - e_xy) n_xy / e_xy, and with
    δ = c - e_11 (the other cells deviate by ±δ) those sum to δ²(1/e_12 + 1/e_21 + 1/e_22) - δ.
    A 1e-9 relative margin on the terms, and 1e-12 of c times the logarithms' sum (they cancel
    when c is near e_11), cover the rounding of both sides.

    For 0 < c_i, c_j < n and c > 0; fd = n·c - c_i·c_j (exact in int64); inv_*: 1/n, 1/c_i,
    1/(n - c_i), 1/c_j, 1/(n - c_j)."""
    fc = np.float64(c)
    lc = logs[c] if c < logs.shape[0] else np.log(fc)
    t1 = fc * (lc + log_n - log_ci - log_cj)
    d = fd * inv_n
    quad = d * d * fn * (inv_ci * inv_ncj + inv_nci * (inv_cj + inv_ncj))
    err = 1e-9 * (abs(t1) + abs(d) + quad) + 1e-12 * fc * (lc + log_n + log_ci + log_cj)
    return (t1 - d + quad + err) * inv_n + 1e-300


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _col_best(cb_v, cb_i, m, x, i, j):
    """Column best (value desc, id asc); True when it changed."""
    if x > cb_v[j, m] or (x == cb_v[j, m] and i < cb_i[j, m]):
        cb_v[j, m] = x
        cb_i[j, m] = i
        return True
    return False


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _col_top(ctop_v, ctop_i, ckth, ck_mie, floor_v, floor_i, th, q, q_mi, x, i, j):
    """Offer source row i with value x to this thread's top-k list of column j under primary q
    (`ColumnScratch` arrays, passed one by one: see the module docstring on prange writes)."""
    k = ctop_v.shape[3]
    if x >= ckth[th, q, j] and (x > floor_v[q, j] or (x == floor_v[q, j] and i < floor_i[q, j])):
        _insert_desc(ctop_v[th, q, j], ctop_i[th, q, j], x, i)
        ckth[th, q, j] = ctop_v[th, q, j, k - 1]
        if q == q_mi:
            ck_mie[th, j] = np.expm1(ckth[th, q, j])


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _offer(v, prim, q_mi, tv, tj, top_mie, ctop_v, ctop_i, ckth, ck_mie, floor_v, floor_i, th, i, j):
    """Offer a supported cell (row i, column j, measures v) to its row's top-k lists (tv, tj [P, k])
    and to this thread's column lists; returns expm1 of the row's MI list floor (top_mie)."""
    k = tv.shape[1]
    for q in range(prim.shape[0]):
        x = v[prim[q]]
        if not x == x:
            continue
        if x > tv[q, k - 1]:  # j ascends along the row: ties keep the earlier j
            _insert_desc(tv[q], tj[q], x, j)
            if q == q_mi:
                top_mie = np.expm1(tv[q, k - 1])
        _col_top(ctop_v, ctop_i, ckth, ck_mie, floor_v, floor_i, th, q, q_mi, x, i, j)
    return top_mie


@numba.njit(parallel=True, **_JIT)
def scan_block(block, src, dst, rules, walk, floor, rows, cols, marks):
    """Scan the rows of a dense `block` (a `Block`: rows lo..lo+B-1, cnt/psum [B, d_m]; a
    `SparseBlock` goes through `scan_sparse`); see the module docstring. marks: uint8 [2, T, 0]
    (dense rows need none).

    src, dst: `Side`s of the pair's layers ([d_l], [d_m]); rules: `Rules`; walk: the `Walk` of
    dst's features (do_best only; its first_live / first_q resolve zero bests); floor: the
    pair's `Floor`. Writes `RowResults` rows (best: do_best only) and this thread's part of
    the `ColumnScratch` cols.

    Untouched cells (c = p = 0) are skipped: every measure but pearson is 0 or NaN there
    (resolved in closed form), and their pearson row and column bests come from the ordered walks
    of `_best_untouched` / `untouched_columns` (the column walk runs after this scan). Past one
    sequential sweep that finds the touched cells, the cost is proportional to the touched cells.
    """
    lo, cnt, psum = block.lo, block.cnt, block.psum
    ci, si, isdi, irqi = src.count, src.s, src.isd, src.irq
    cj, sj, isdj, irqj = dst.count, dst.s, dst.isd, dst.irq
    n, min_support, prim, thr, do_best = rules
    floor_v = floor.v
    floor_i = floor.i
    floor_mie = floor.mie
    rbest = rows.best
    rtop = rows.top
    rkeep = rows.keep
    cbest_v = cols.best_v
    cbest_i = cols.best_i
    cb_mie = cols.best_mie
    ctop_v = cols.top_v
    ctop_i = cols.top_i
    ckth = cols.kth
    ck_mie = cols.k_mie
    counters = cols.counters
    B = rtop.shape[0]
    P = prim.shape[0]
    k = rtop.shape[2]
    fn = np.float64(n)
    q_mi = -1
    for q in range(P):
        if prim[q] == MI:
            q_mi = q
    any_thr = False
    for m in range(N_MEASURES):
        any_thr = any_thr or thr[m] == thr[m]
    thr_mie = np.expm1(thr[MI]) if thr[MI] == thr[MI] else np.inf
    for r in prange(B):
        th = numba.get_thread_id()
        i = lo + r
        ci_ = np.int64(ci[i])
        si_, isdi_, irqi_ = si[i], isdi[i], irqi[i]
        cb_v = cbest_v[th]  # [d_m, N_MEASURES], or [0, N_MEASURES] for span > 1 pairs (never read then)
        cb_i = cbest_i[th]
        v = np.empty(N_MEASURES)
        bv = np.full(N_MEASURES, -np.inf)
        bj = np.full(N_MEASURES, -1, np.int32)
        tv = np.full((P, k), -np.inf)
        tj = np.full((P, k), np.int32(NO_ID), np.int32)
        row_mie = -1.0  # expm1 of the row's best MI so far
        top_mie = -1.0  # expm1 of the k-th of the row's MI top list
        zmax_j = -1
        tb = -np.inf  # pearson row best over touched cells (j ascending: ties keep the earlier j)
        tbj = -1
        ub = -np.inf
        ubj = -1
        if do_best:
            rc, rp = row_cells(block, r, marks[0, th], marks[1, th])
            ub, ubj = _best_untouched(rc, rp, walk, fn, si_, isdi_, sj, isdj, True)
            zmax_j = _first_zero(rc, walk)
            clear_row(block, r, marks[0, th], marks[1, th])
        seen = 0
        touched = 0
        supported = 0
        n_thr = 0
        for j in range(cnt.shape[1]):
            c = np.int64(cnt[r, j])
            p = psum[r, j]
            if c == 0 and p == 0.0:
                continue
            touched += 1
            cjj = np.int64(cj[j])
            sup = c >= min_support
            # the measures, as measures.py computes them (MI below, only where it can matter)
            cell_values(v, n, c, p, ci_, si_, isdi_, irqi_, cjj, sj[j], isdj[j], irqj[j], False)
            if c > 0:
                seen += 1
                rb = mi_bound(n, c, ci_, cjj) / MARGIN
                need = do_best and (rb >= row_mie or rb >= cb_mie[th, j])
                if sup and not need:
                    need = rb >= thr_mie or (
                        q_mi >= 0 and (rb >= top_mie or (rb >= ck_mie[th, j] and rb >= floor_mie[j]))
                    )
                if need:
                    v[MI] = mi_scalar(n, c, ci_, cjj)
            if do_best:
                for m in ZERO_IF_UNTOUCHED:
                    if v[m] > 0.0:  # zeros are resolved in closed form (zero_best)
                        if v[m] > bv[m]:  # j ascends along the row: ties keep the earlier j
                            bv[m] = v[m]
                            bj[m] = j
                        _col_best(cb_v, cb_i, m, v[m], i, j)
                x = v[PEARSON]
                if x > tb:
                    tb = x
                    tbj = j
                _col_best(cb_v, cb_i, PEARSON, x, i, j)
                if v[MI] == v[MI]:
                    if v[MI] > bv[MI]:
                        row_mie = np.expm1(v[MI])
                        bv[MI] = v[MI]
                        bj[MI] = j
                    if _col_best(cb_v, cb_i, MI, v[MI], i, j):
                        cb_mie[th, j] = np.expm1(v[MI])
            if not sup:
                continue
            supported += 1
            top_mie = _offer(v, prim, q_mi, tv, tj, top_mie, ctop_v, ctop_i, ckth, ck_mie, floor_v, floor_i, th, i, j)
            if any_thr and passes(v, thr):
                n_thr += 1
        if do_best:
            if ubj >= 0 and (ub > tb or (ub == tb and ubj < tbj)):
                tb = ub
                tbj = ubj
            bv[PEARSON] = tb
            bj[PEARSON] = tbj
            for m in ZERO_IF_UNTOUCHED:
                if bj[m] < 0:
                    bj[m] = zero_best(m, ci_, irqi_ == irqi_, walk.first_live, walk.first_q)
            cand = zmax_j if ci_ > 0 else 0  # c_i = 0: every partner has MI 0, lowest id wins
            if cand >= 0 and cand < n_cols(block):
                x = mi_scalar(n, np.int64(0), ci_, np.int64(cj[cand]))
                if x > bv[MI] or (x == bv[MI] and cand < bj[MI]):
                    bv[MI] = x
                    bj[MI] = cand
            for m in range(N_MEASURES):
                rbest[r, m] = bj[m]
        for q in range(P):
            for s in range(k):
                rtop[r, q, s] = tj[q, s] if tj[q, s] != NO_ID else -1
        rkeep[r] = n_thr
        counters[th, SEEN] += seen
        counters[th, TOUCHED] += touched
        counters[th, SUPPORTED] += supported


@numba.njit(parallel=True, **_JIT)
def merge_columns(block, do_best, cols, state):
    """Fold the per-thread column results of one block (`ColumnScratch` cols) into the pair's
    running `ColumnState` state.

    The order (value desc, id asc) is total, so the result is independent of block and thread
    order. c_ij and p_ij of newly taken rows are read from the block's accumulators (either type).
    """
    lo = block.lo
    cbest_v = cols.best_v  # empty without do_best
    cbest_i = cols.best_i
    zc = cols.zc
    zi = cols.zi
    ctop_v = cols.top_v
    ctop_i = cols.top_i
    pb_v, pb_i, pb_c, pb_p = state.pb_v, state.pb_i, state.pb_c, state.pb_p
    pz_c, pz_i = state.pz_c, state.pz_i
    pt_v, pt_i, pt_c, pt_p = state.pt_v, state.pt_i, state.pt_c, state.pt_p
    T = ctop_v.shape[0]
    P = ctop_v.shape[1]
    dm = n_cols(block)
    k = ctop_v.shape[3]
    for j in prange(dm):
        for th in range(T):
            if do_best:
                for m in range(N_MEASURES):
                    x = cbest_v[th, j, m]
                    i = cbest_i[th, j, m]
                    if i != NO_ID and (x > pb_v[m, j] or (x == pb_v[m, j] and i < pb_i[m, j])):
                        pb_v[m, j] = x
                        pb_i[m, j] = i
                        pb_c[m, j], pb_p[m, j] = cell(block, i - lo, j)
                i = zi[th, j]
                if i != NO_ID and (zc[th, j] > pz_c[j] or (zc[th, j] == pz_c[j] and i < pz_i[j])):
                    pz_c[j] = zc[th, j]
                    pz_i[j] = i
            for q in range(P):
                for s in range(k):
                    x = ctop_v[th, q, j, s]
                    i = ctop_i[th, q, j, s]
                    if i == NO_ID:
                        break
                    if not (x > pt_v[q, j, k - 1] or (x == pt_v[q, j, k - 1] and i < pt_i[q, j, k - 1])):
                        break  # thread lists are sorted: nothing further can enter
                    u = k - 1
                    while u > 0 and (pt_v[q, j, u - 1] < x or (pt_v[q, j, u - 1] == x and pt_i[q, j, u - 1] > i)):
                        pt_v[q, j, u] = pt_v[q, j, u - 1]
                        pt_i[q, j, u] = pt_i[q, j, u - 1]
                        pt_c[q, j, u] = pt_c[q, j, u - 1]
                        pt_p[q, j, u] = pt_p[q, j, u - 1]
                        u -= 1
                    pt_v[q, j, u] = x
                    pt_i[q, j, u] = i
                    pt_c[q, j, u], pt_p[q, j, u] = cell(block, i - lo, j)


@numba.njit(parallel=True, **_JIT)
def gather_rows(block, src, dst, rules, rows, offsets, out, count_only):
    """Kept cells of each block row: its top-k partners (any primary measure: rows.top) and the
    supported cells that pass a keep threshold (rows.keep > 0), ascending j, without duplicates.

    With count_only, writes the number of kept cells of row r into offsets[r + 1] (int64 [B+1]);
    otherwise fills the `Edges` out ([K]) from offsets (exclusive prefix sums of those counts).
    """
    cnt, psum, lo = block.cnt, block.psum, block.lo
    ci, si, isdi, irqi = src.count, src.s, src.isd, src.irq
    cj, sj, isdj, irqj = dst.count, dst.s, dst.isd, dst.irq
    n, min_support, _, thr, _ = rules
    rtop = rows.top
    rkeep = rows.keep
    out_i, out_j, out_c, out_p = out.src, out.dst, out.n_co, out.p
    B, dm = cnt.shape
    thr_mie = np.expm1(thr[MI]) if thr[MI] == thr[MI] else np.inf
    for r in prange(B):
        i = lo + r
        ids = np.sort(rtop[r].ravel())
        w = offsets[r]
        u = 0
        prev = -1
        nxt = 0  # next unread position in ids
        while nxt < ids.shape[0] and ids[nxt] < 0:
            nxt += 1
        scan = rkeep[r] > 0
        j = 0
        while True:
            # next candidate: the smaller of the next top-k id and the next threshold cell
            cand = ids[nxt] if nxt < ids.shape[0] else dm
            if scan:
                while j < cand:
                    c = np.int64(cnt[r, j])
                    if c >= min_support:
                        if cell_passes(
                            n,
                            c,
                            psum[r, j],
                            np.int64(ci[i]),
                            si[i],
                            isdi[i],
                            irqi[i],
                            np.int64(cj[j]),
                            sj[j],
                            isdj[j],
                            irqj[j],
                            thr,
                            thr_mie,
                        ):
                            break
                    j += 1
                if j < cand:
                    cand = j
            if cand >= dm:
                break
            if cand != prev:
                if not count_only:
                    out_i[w + u] = i
                    out_j[w + u] = cand
                    out_c[w + u] = cnt[r, cand]
                    out_p[w + u] = psum[r, cand]
                u += 1
                prev = cand
            if nxt < ids.shape[0] and ids[nxt] == cand:
                nxt += 1
            j = max(j, cand + 1)
        if count_only:
            offsets[r + 1] = u


@numba.njit(parallel=True, **_JIT)
def gather_sparse(block, src, dst, rules, rows, offsets, out, count_only):
    """`gather_rows` for a `SparseBlock`: the same cells (top-k partners and threshold cells,
    ascending j), visiting only the touched cells of each row (every top-k partner is supported,
    so touched)."""
    ptr, nnz, js, cnt, psum, lo = block.ptr, block.nnz, block.j, block.cnt, block.psum, block.lo
    ci, si, isdi, irqi = src.count, src.s, src.isd, src.irq
    cj, sj, isdj, irqj = dst.count, dst.s, dst.isd, dst.irq
    n, min_support, _, thr, _ = rules
    rtop = rows.top
    rkeep = rows.keep
    out_i, out_j, out_c, out_p = out.src, out.dst, out.n_co, out.p
    thr_mie = np.expm1(thr[MI]) if thr[MI] == thr[MI] else np.inf
    for r in prange(nnz.shape[0]):
        i = lo + r
        ids = np.sort(rtop[r].ravel())
        nxt = 0
        while nxt < ids.shape[0] and ids[nxt] < 0:
            nxt += 1
        scan = rkeep[r] > 0
        w = offsets[r]
        u = 0
        if not scan:  # only the top-k partners: look each up instead of walking the row
            a = ptr[r]
            row_j = js[a : a + nnz[r]]
            prev = -1
            for t in range(nxt, ids.shape[0]):
                j = ids[t]
                if j == prev:
                    continue
                prev = j
                x = a + np.searchsorted(row_j, j)
                if not count_only:
                    out_i[w + u] = i
                    out_j[w + u] = j
                    out_c[w + u] = cnt[x]
                    out_p[w + u] = psum[x]
                u += 1
            if count_only:
                offsets[r + 1] = u
            continue
        for x in range(ptr[r], ptr[r] + nnz[r]):
            j = js[x]
            c = np.int64(cnt[x])
            top = False
            while nxt < ids.shape[0] and ids[nxt] <= j:
                top = top or ids[nxt] == j
                nxt += 1
            if not top:
                if not scan or c < min_support:
                    continue
                if not cell_passes(
                    n,
                    c,
                    psum[x],
                    np.int64(ci[i]),
                    si[i],
                    isdi[i],
                    irqi[i],
                    np.int64(cj[j]),
                    sj[j],
                    isdj[j],
                    irqj[j],
                    thr,
                    thr_mie,
                ):
                    continue
            if not count_only:
                out_i[w + u] = i
                out_j[w + u] = j
                out_c[w + u] = c
                out_p[w + u] = psum[x]
            u += 1
        if count_only:
            offsets[r + 1] = u


MASK_BITS = 64
"""Column walks of a sparse block (`untouched_sparse`) read the first MASK_BITS rows of each walk
from per-column bit masks that the scan fills (one uint64 per column, thread and walk); a column
whose first MASK_BITS rows are all touched walks on with binary searches in the rows."""


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _low_zero(m, length):
    """Lowest bit position t < min(length, 64) that is 0 in the uint64 m; -1 if none."""
    top = min(length, MASK_BITS)
    t = 0
    one = np.uint64(1)
    while t < top:
        if (m >> np.uint64(t)) & one == np.uint64(0):
            return t
        t += 1
    return -1


@numba.njit(parallel=True, **_JIT)
def scan_sparse(
    block, src, dst, rules, walk, floor, rows, cols, marks, chunks, width, bits, masks, pair_mi, inv, col_bits, logs
):
    """`scan_block` for a `SparseBlock`, rows and columns in one pass: each touched cell is
    evaluated once and updates both its row's and its column's results.

    Threads take chunks of rows (chunks: int64 bounds, block rows); a chunk sweeps the columns
    in tiles of `width`, each row's cells of the tile read through a cursor (rows are sorted by
    column), so that the tile's column results (this thread's `ColumnScratch`) and the chunk's
    row results both stay in cache. Along each row the columns still ascend, so row ties keep
    the earlier j as in the dense scan; column results use the total order (value desc, id asc)
    and do not depend on the visiting order.

    bits: uint64 [2, B]: 1 << (row's position in the block rows' `Walk`.order, resp. .by_count)
    for the first MASK_BITS positions, else 0 (do_best; zeros otherwise). masks: uint64 [2, T,
    d_m] zeros: each touched cell ORs its row's bits into its column (the second only where
    c > 0), for `untouched_sparse`. marks: uint8 [2, T, >= d_m] zeros, left zero. pair_mi: float64
    [d_m], the pair's column best MI so far (`ColumnState.pb_v[MI]`; empty without do_best): a cell
    whose `mi_upper_logs` is below both its row's and its column's best MI is not evaluated. inv:
    float64 [3, d_m], 1/c_j, 1/(n - c_j) and log c_j; logs: `log_table()`. col_bits: uint64 [2, d_m],
    as bits for the columns in `walk` (do_best): each row ORs the bits of its touched columns, and
    its own walks read their first MASK_BITS steps from those masks; a row touching all of them
    walks its marks."""
    lo = block.lo
    ptr, nnz, js, cnt, psum = block.ptr, block.nnz, block.j, block.cnt, block.psum
    ci, si, isdi, irqi = src.count, src.s, src.isd, src.irq
    cj, sj, isdj, irqj = dst.count, dst.s, dst.isd, dst.irq
    n, min_support, prim, thr, do_best = rules
    floor_v = floor.v
    floor_i = floor.i
    floor_mie = floor.mie
    rbest = rows.best
    rtop = rows.top
    rkeep = rows.keep
    cbest_v = cols.best_v
    cbest_i = cols.best_i
    ctop_v = cols.top_v
    ctop_i = cols.top_i
    ckth = cols.kth
    ck_mie = cols.k_mie
    counters = cols.counters
    mask_o = masks[0]
    mask_c = masks[1]
    bit_o = bits[0]
    bit_c = bits[1]
    P = prim.shape[0]
    k = rtop.shape[2]
    dm = block.d_m
    fn = np.float64(n)
    inv_n = 1.0 / fn
    log_n = np.log(fn)
    inv_cj, inv_ncj, log_cj = inv[0], inv[1], inv[2]
    q_mi = -1
    for q in range(P):
        if prim[q] == MI:
            q_mi = q
    any_thr = False
    for m in range(N_MEASURES):
        any_thr = any_thr or thr[m] == thr[m]
    thr_mie = np.expm1(thr[MI]) if thr[MI] == thr[MI] else np.inf
    mi_lists = q_mi >= 0 or thr[MI] == thr[MI]  # MI ranks in top-k lists or has a keep threshold
    zero = np.uint64(0)
    for ch in prange(chunks.shape[0] - 1):
        th = numba.get_thread_id()
        r0 = chunks[ch]
        R = chunks[ch + 1] - r0
        cur = np.empty(R, np.int64)
        for a in range(R):
            cur[a] = ptr[r0 + a]
        bv = np.full((R, N_MEASURES), -np.inf)
        bj = np.full((R, N_MEASURES), -1, np.int32)
        tv = np.full((R, P, k), -np.inf)
        tj = np.full((R, P, k), np.int32(NO_ID), np.int32)
        top_mie = np.full(R, -1.0)  # expm1 of the k-th of each row's MI top list
        tb = np.full(R, -np.inf)  # pearson row best over touched cells
        tbj = np.full(R, -1, np.int64)
        tally = np.zeros((R, 4), np.int64)  # seen, touched, supported, passing a threshold
        row_mask = np.zeros((R, 2), np.uint64)
        cb_v = cbest_v[th]
        cb_i = cbest_i[th]
        mo = mask_o[th]
        mc = mask_c[th]
        v = np.empty(N_MEASURES)
        for t0 in range(0, dm, width):
            t1 = min(t0 + width, dm)
            for a in range(R):
                r = r0 + a
                x = cur[a]
                stop = ptr[r] + nnz[r]
                if x >= stop or js[x] >= t1:
                    continue
                i = lo + r
                ci_ = np.int64(ci[i])
                fci = np.float64(ci_)
                inv_ci, inv_nci, log_ci = 1.0 / fci, 1.0 / (fn - fci), np.log(fci)
                si_, isdi_, irqi_ = si[i], isdi[i], irqi[i]
                bo = bit_o[r]
                bc = bit_c[r]
                n_seen = n_touched = n_sup = n_thr = 0
                while x < stop:
                    j = np.int64(js[x])
                    if j >= t1:
                        break
                    c = np.int64(cnt[x])
                    p = psum[x]
                    x += 1
                    if c == 0 and p == 0.0:
                        continue
                    n_touched += 1
                    if bo != zero:
                        mo[j] |= bo
                    if do_best:
                        row_mask[a, 0] |= col_bits[0, j]
                        if c != 0:
                            row_mask[a, 1] |= col_bits[1, j]
                    cjj = np.int64(cj[j])
                    sup = c >= min_support
                    cell_values(v, n, c, p, ci_, si_, isdi_, irqi_, cjj, sj[j], isdj[j], irqj[j], False)
                    if c > 0:
                        if bc != zero:
                            mc[j] |= bc
                        n_seen += 1
                        need = False
                        if do_best:
                            if ci_ < n and cjj < n:
                                # against the row's and the column's best MI so far: the chi2 bound
                                # (mi_bound) is loose for rare features, these two are not
                                fd = np.float64(n * c - ci_ * cjj)
                                ub = mi_upper_logs(
                                    c,
                                    fd,
                                    fn,
                                    log_n,
                                    inv_n,
                                    inv_ci,
                                    inv_nci,
                                    log_ci,
                                    inv_cj[j],
                                    inv_ncj[j],
                                    log_cj[j],
                                    logs,
                                )
                                need = ub >= bv[a, MI] or (ub >= cb_v[j, MI] and ub >= pair_mi[j])
                            else:
                                need = True  # a constant feature: MI 0, which may still rank
                        if sup and not need and mi_lists:
                            rb = mi_bound(n, c, ci_, cjj) / MARGIN
                            need = rb >= thr_mie or (
                                q_mi >= 0 and (rb >= top_mie[a] or (rb >= ck_mie[th, j] and rb >= floor_mie[j]))
                            )
                        if need:
                            v[MI] = mi_scalar(n, c, ci_, cjj)
                    if do_best:
                        for m in ZERO_IF_UNTOUCHED:
                            if v[m] > 0.0:  # zeros are resolved in closed form (zero_best)
                                if v[m] > bv[a, m]:  # j ascends along the row: ties keep the earlier j
                                    bv[a, m] = v[m]
                                    bj[a, m] = j
                                _col_best(cb_v, cb_i, m, v[m], i, j)
                        y = v[PEARSON]
                        if y > tb[a]:
                            tb[a] = y
                            tbj[a] = j
                        _col_best(cb_v, cb_i, PEARSON, y, i, j)
                        if v[MI] == v[MI]:
                            if v[MI] > bv[a, MI]:
                                bv[a, MI] = v[MI]
                                bj[a, MI] = j
                            _col_best(cb_v, cb_i, MI, v[MI], i, j)
                    if not sup:
                        continue
                    n_sup += 1
                    top_mie[a] = _offer(
                        v,
                        prim,
                        q_mi,
                        tv[a],
                        tj[a],
                        top_mie[a],
                        ctop_v,
                        ctop_i,
                        ckth,
                        ck_mie,
                        floor_v,
                        floor_i,
                        th,
                        i,
                        j,
                    )
                    if any_thr and passes(v, thr):
                        n_thr += 1
                cur[a] = x
                tally[a, 0] += n_seen
                tally[a, 1] += n_touched
                tally[a, 2] += n_sup
                tally[a, 3] += n_thr
        for a in range(R):
            r = r0 + a
            if do_best:
                i = lo + r
                ci_ = np.int64(ci[i])
                irqi_ = irqi[i]
                t = _low_zero(row_mask[a, 0], walk.order.shape[0])
                tz = _low_zero(row_mask[a, 1], walk.by_count.shape[0])
                if (t < 0 and walk.order.shape[0] > MASK_BITS) or (tz < 0 and walk.by_count.shape[0] > MASK_BITS):
                    rc, rp = row_cells(block, r, marks[0, th], marks[1, th])
                    ub, ubj = _best_untouched(rc, rp, walk, fn, si[i], isdi[i], sj, isdj, True)
                    zmax_j = _first_zero(rc, walk)
                    clear_row(block, r, marks[0, th], marks[1, th])
                else:  # both walks end within the masks
                    ub, ubj = -np.inf, -1
                    if t >= 0 and isdi[i] == isdi[i]:
                        o = walk.rep[t]
                        ub, ubj = _untouched_pearson(fn, si[i], isdi[i], sj[o], isdj[o]), walk.order[t]
                    zmax_j = walk.by_count[tz] if tz >= 0 else -1
                if ubj >= 0 and (ub > tb[a] or (ub == tb[a] and ubj < tbj[a])):
                    tb[a] = ub
                    tbj[a] = ubj
                bv[a, PEARSON] = tb[a]
                bj[a, PEARSON] = tbj[a]
                for m in ZERO_IF_UNTOUCHED:
                    if bj[a, m] < 0:
                        bj[a, m] = zero_best(m, ci_, irqi_ == irqi_, walk.first_live, walk.first_q)
                cand = zmax_j if ci_ > 0 else 0  # c_i = 0: every partner has MI 0, lowest id wins
                if cand >= 0 and cand < dm:
                    y = mi_scalar(n, np.int64(0), ci_, np.int64(cj[cand]))
                    if y > bv[a, MI] or (y == bv[a, MI] and cand < bj[a, MI]):
                        bv[a, MI] = y
                        bj[a, MI] = cand
                for m in range(N_MEASURES):
                    rbest[r, m] = bj[a, m]
            for q in range(P):
                for s in range(k):
                    rtop[r, q, s] = tj[a, q, s] if tj[a, q, s] != NO_ID else -1
            rkeep[r] = tally[a, 3]
            counters[th, SEEN] += tally[a, 0]
            counters[th, TOUCHED] += tally[a, 1]
            counters[th, SUPPORTED] += tally[a, 2]


@numba.njit(parallel=True, **_JIT)
def untouched_sparse(block, n, src, dst, rows, cols, masks):
    """`untouched_columns` for a `SparseBlock`, from the column masks that `scan_sparse` filled:
    a column's first untouched row of each walk is the lowest 0 bit of its masks (ORed over the
    threads); past MASK_BITS touched rows, the walk goes on with a binary search per row."""
    lo = block.lo
    fn = np.float64(n)
    ci = src.count
    cb_v = cols.best_v[:, :, PEARSON]
    cb_i = cols.best_i[:, :, PEARSON]
    zc = cols.zc
    zi = cols.zi
    order, rep, by_count = rows.order, rows.rep, rows.by_count
    T = masks.shape[1]
    for j in prange(block.d_m):
        th = numba.get_thread_id()
        m_o = np.uint64(0)
        m_c = np.uint64(0)
        for t in range(T):
            m_o |= masks[0, t, j]
            m_c |= masks[1, t, j]
        if dst.isd[j] == dst.isd[j]:
            t = _low_zero(m_o, order.shape[0])
            if t < 0 and order.shape[0] > MASK_BITS:
                for u in range(MASK_BITS, order.shape[0]):
                    c, p = cell(block, order[u], j)
                    if c == 0 and p == 0.0:
                        t = u
                        break
            if t >= 0:
                r = order[t]
                o = rep[t]
                best = _untouched_pearson(fn, src.s[o], src.isd[o], dst.s[j], dst.isd[j])
                if best > cb_v[th, j] or (best == cb_v[th, j] and lo + r < cb_i[th, j]):
                    cb_v[th, j] = best
                    cb_i[th, j] = lo + r
        t = _low_zero(m_c, by_count.shape[0])
        if t < 0 and by_count.shape[0] > MASK_BITS:
            for u in range(MASK_BITS, by_count.shape[0]):
                c, p = cell(block, by_count[u], j)
                if c == 0:
                    t = u
                    break
        if t >= 0:
            r = by_count[t]
            c = np.int64(ci[lo + r])
            if c > zc[th, j] or (c == zc[th, j] and lo + r < zi[th, j]):
                zc[th, j] = c
                zi[th, j] = lo + r
