"""The accumulation pass: every layer pair at once, in bounded memory.

A *unit* is a block of source rows [lo, hi) of one layer pair; its accumulators are
cnt (int32, or int64 past 2^31 tokens) and psum (float64), both [hi-lo, d_dst] (dense), or
the same cells stored per row, touched cells only (sparse: a pair whose rows touch few of their
d_dst cells, as wide SAEs' do; a census pass over the shards bounds each row's cells). Units are
packed into *passes* so that each pass fits the memory budget; when everything fits
there is one pass over the shards. Each pass streams the shards in order, gathers them
into batches of about `batch_bytes` of buffers (large batches let an accumulator row
stay in cache for many tokens), and runs the compiled kernels on every unit. Marginals
of a layer are taken in the first pass that reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple, cast

import numba
import numpy as np
import psutil

from saelineage.errors import SaelineageError
from saelineage.stats import kernels as kn
from saelineage.stats import kernels_scan as ks
from saelineage.stats.batch import (
    POS_DTYPE,
    PTR_DTYPE,
    VAL_DTYPE,
    Batch,
    BufferPool,
    LayerBuffer,
    batches,
    read_layers,
)
from saelineage.stats.edges import EdgeOptions, PairResult, PairState, result_bytes, spilled_bytes, state_bytes
from saelineage.stats.measures import Marginals, side

SPARSE_CELL_BYTES = 4 + 8  # a sparse cell's column (int32) and sum (float64), besides its count
SPARSE_ROW_BYTES = 2 * 8  # a sparse row's start and length
SPARSE_GAIN = 2  # auto: a pair is stored sparse when that takes this many times less memory
BATCH_MAX = 1536 << 20  # larger batches: fewer accumulator-row streams (see batch.py)
BATCH_MIN_ENTRIES = 1 << 16
BATCH_MIN_TOKENS = 1 << 12
BATCH_MIN_L0 = 8  # entries per token that a batch's token capacity assumes (L0 is rarely lower)
CHUNKS_PER_THREAD = 8  # row chunks of equal work per accumulation thread: slack for uneven timing
SLACK_MAX = 192 << 20
"""Room left for the scans' and output tables' temporaries and the shard staging areas."""


class Pair(NamedTuple):
    src: int
    dst: int
    span: int


class Unit(NamedTuple):
    pair: int  # index into the pair list
    lo: int
    hi: int


@dataclass
class Layout:
    """Everything the pass needs to know about the run."""

    shards: list[Path]
    layers: list[int]
    d: dict[int, int]
    pairs: list[Pair]
    theta: dict[int, np.ndarray]  # per-feature active threshold, float64 [d]
    bos: bool
    include_bos: bool
    all_active: bool  # threshold 0: every stored entry > 0 is active
    n_tokens_hint: int
    work: dict[int, np.ndarray] | None = None
    """{pair index: int64 [d_src]} the census: increments of each source row over the kept tokens,
    which bound the cells a sparse row can touch (`census`); None before it is taken."""


@dataclass
class Budget:
    limit: int
    batch_bytes: int
    count_dtype: type
    passes: list[list[Unit]] = field(default_factory=list)
    caps: dict[int, np.ndarray] = field(default_factory=dict)
    """{pair index: int64 [d_src]} cells each source row may hold, for the pairs stored sparse"""
    needed: int = 0
    """bytes the plan needs at least (one row of its widest pair beside the state); over `limit`:
    no plan fits (`check_fits`)"""
    sparse_cell: int = 0
    """bytes of a sparse cell (`sparse_row_bytes`)"""
    sparse_row: int = 0
    """bytes of a sparse row besides its cells"""
    census_seconds: float = 0.0
    """time the census took (`plan_run`)"""

    @property
    def cell_bytes(self) -> int:
        return np.dtype(self.count_dtype).itemsize + kn.PSUM_DTYPE.itemsize

    def unit_cells(self, layout: Layout, u: Unit) -> tuple[int, int]:
        """(dense cells, sparse cells) of a unit's accumulators."""
        cap = self.caps.get(u.pair)
        if cap is not None:
            return 0, int(cap[u.lo : u.hi].sum())
        return (u.hi - u.lo) * layout.d[layout.pairs[u.pair].dst], 0

    def pass_cells(self, layout: Layout, units: list[Unit]) -> tuple[int, int]:
        """(dense cells, sparse cells) of one pass's units."""
        cells = [self.unit_cells(layout, u) for u in units]
        return sum(c[0] for c in cells), sum(c[1] for c in cells)

    def pass_bytes(self, layout: Layout, units: list[Unit]) -> int:
        """Accumulator bytes of one pass (the arena holds the largest)."""
        dense, sparse = self.pass_cells(layout, units)
        rows = sum(u.hi - u.lo for u in units if u.pair in self.caps)
        return dense * self.cell_bytes + sparse * self.sparse_cell + rows * self.sparse_row

    def accumulator_bytes(self, layout: Layout) -> int:
        """Accumulator bytes of every unit of every pass."""
        return sum(self.pass_bytes(layout, units) for units in self.passes)


KERNELS_BYTES = 160 << 20
"""Resident memory that the compiled kernels, their thread pool and the output writers add
once loaded (measured: 130 MiB after a tiny run)."""


def process_baseline() -> int:
    """Resident memory of this process before the stage allocates (at least 256 MiB), plus
    what loading the kernels will add."""
    return max(256 << 20, psutil.Process().memory_info().rss) + KERNELS_BYTES


def sparse_row_bytes(count_dtype: type, opts: EdgeOptions) -> tuple[int, int]:
    """(bytes per cell, bytes per row) of a sparse unit: the cell (column, count, sum); the row's
    start, length and scan results."""
    cell = SPARSE_CELL_BYTES + np.dtype(count_dtype).itemsize
    row = SPARSE_ROW_BYTES + 4 * (ks.N_MEASURES + opts.top_k * len(opts.primary)) + 8
    return cell, row


def scratch_bytes(d_m: int) -> int:
    """Per-thread scratch of sparse accumulation and scans (dense row, marks, id list, the column
    walks' masks) for d_m columns."""
    threads = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]  # set at import
    return threads * d_m * (8 + kn.PSUM_DTYPE.itemsize + 1 + 4 + 1 + 2 * 8)


def plan(
    layout: Layout, opts: EdgeOptions, memory_limit: int, baseline: int | None = None, accumulate: str = "dense"
) -> Budget:
    """Split the pairs into units and passes that fit `memory_limit` bytes of process memory.

    accumulate: 'dense', 'sparse' (the pairs whose census is known, `layout.work`), or 'auto'
    (those of them that take SPARSE_GAIN times less memory sparse than dense).

    Accumulators get limit - (baseline: the process's resident memory now, at least
    256 MiB, and the kernels'; batch buffers: 15%, capped at 1.5 GiB; slack: 5%, capped at
    SLACK_MAX; the state and kept edges of each pair in the pass; the best-partner arrays of the
    pairs finished in earlier passes, whose edges `run_passes` spills). At least one source row
    per unit, so a tiny limit still runs (slowly, many passes) with identical results; batches
    never go below 64k entries, so limits under ~50 MB bound the accumulators only.
    """
    count_dtype = np.int32 if layout.n_tokens_hint < np.iinfo(np.int32).max else np.int64
    if baseline is None:
        baseline = process_baseline()
    limit, memory_limit = memory_limit, max(memory_limit - baseline, 0)
    batch_bytes = _batch_bytes(memory_limit)
    budget = Budget(limit, batch_bytes, count_dtype)
    held = [
        state_bytes(layout.d[p.src], layout.d[p.dst], opts, p.span == 1)
        + result_bytes(layout.d[p.src], layout.d[p.dst], opts)
        for p in layout.pairs
    ]
    finished = [spilled_bytes(layout.d[p.src], layout.d[p.dst]) for p in layout.pairs]
    row_bytes = []
    cell_b, row_b = budget.sparse_cell, budget.sparse_row = sparse_row_bytes(count_dtype, opts)
    for k, p in enumerate(layout.pairs):
        dense = np.full(layout.d[p.src], layout.d[p.dst] * budget.cell_bytes, np.int64)
        work = (layout.work or {}).get(k)
        if accumulate != "dense" and work is not None:
            cap = np.minimum(work, layout.d[p.dst])
            sparse = cap * cell_b + row_b
            if accumulate == "sparse" or SPARSE_GAIN * int(sparse.sum()) < int(dense.sum()):
                budget.caps[k], dense = cap, sparse
                held[k] += scratch_bytes(layout.d[p.dst])
        row_bytes.append(np.cumsum(dense))
    free0 = memory_limit - batch_bytes - int(min(SLACK_MAX, 0.05 * memory_limit))
    state = max((held[k] + sum(finished[:k]) for k in range(len(layout.pairs))), default=0)
    first_row = max((int(c[0]) for c in row_bytes), default=0)
    budget.needed = baseline + _room_for(state + first_row)
    if budget.needed > limit:  # nothing fits (`check_fits` refuses it): one source row per pass
        budget.passes = [[Unit(k, r, r + 1)] for k, p in enumerate(layout.pairs) for r in range(layout.d[p.src])]
        return budget
    # The accumulators are one Arena sized for the largest pass and kept through every pass, so
    # every pass gets the room left beside the most state any pass holds: refill until it does.
    for _ in range(8):
        budget.passes = _fill(layout, row_bytes, held, free0 - state)
        most = max((_pass_state(units, held, finished) for units in budget.passes), default=0)
        if most <= state:
            break
        state = most
    return budget


def _batch_bytes(room: int) -> int:
    """The batch buffers' share of the memory past the baseline."""
    return int(min(BATCH_MAX, 0.15 * room))


def _room_for(state: int) -> int:
    """The memory past the baseline whose share left after batch buffers and slack (as `plan`
    takes them) holds `state` bytes."""
    x = state / 0.8
    for _ in range(4):  # the caps only lower the shares: iterate to the fixed point from above
        x = state + min(BATCH_MAX, 0.15 * x) + min(SLACK_MAX, 0.05 * x)
    return int(x) + 1


def _pass_state(units: list[Unit], held: list[int], finished: list[int]) -> int:
    """Bytes beside the accumulators during a pass: its pairs' states and finished pairs' remains."""
    ks = {u.pair for u in units}
    return sum(held[k] for k in ks) + sum(finished[: min(ks)])


def _fill(layout: Layout, row_bytes: list[np.ndarray], held: list[int], room: int) -> list[list[Unit]]:
    """Units packed greedily into passes of at most `room` bytes of accumulators; a pair that joins
    a pass begun by another also takes its state from that room.

    row_bytes[k]: cumulative bytes of pair k's source rows (int64 [d_src])."""
    passes: list[list[Unit]] = []
    current: list[Unit] = []
    free = room
    for k, p in enumerate(layout.pairs):
        cum = row_bytes[k]
        lo, d_src = 0, layout.d[p.src]
        if current:
            free -= held[k]
        while lo < d_src:
            base = int(cum[lo - 1]) if lo else 0
            rows = min(d_src - lo, int(np.searchsorted(cum[lo:], base + max(0, free), side="right")))
            if rows == 0 and current:
                passes.append(current)
                free, current = room, []
                continue
            rows = max(rows, 1)
            current.append(Unit(k, lo, lo + rows))
            free -= int(cum[lo + rows - 1]) - base
            lo += rows
    if current:
        passes.append(current)
    return passes


class Accumulated(NamedTuple):
    n: int
    marginals: dict[int, Marginals]
    results: list[PairResult]
    increments: int
    timings: dict[str, float]


def _batch_shape(layout: Layout, layers: list[int], src: set[int], batch_bytes: int) -> tuple[int, int]:
    """(entries per layer, tokens) of a batch of these layers whose pool block (Batch.nbytes)
    fits batch_bytes. Tokens: one per BATCH_MIN_L0 entries."""
    need_act = not layout.all_active
    per_entry: float = sum(LayerBuffer.entry_bytes(VAL_DTYPE, need_act, l in src) for l in layers)
    per_token = PTR_DTYPE.itemsize * len(layers) + POS_DTYPE.itemsize  # token pointers of each layer, position
    per_entry += per_token / BATCH_MIN_L0
    fixed = Batch.nbytes(layers, src, layout.d, 0, 0, need_act)
    ecap = max(BATCH_MIN_ENTRIES, int(max(0, batch_bytes - fixed) // per_entry))
    return ecap, max(ecap // BATCH_MIN_L0, BATCH_MIN_TOKENS)


def _pass_layers(layout: Layout, units: list[Unit]) -> tuple[list[int], set[int]]:
    """The layers a pass reads, and which of them are sources."""
    src = {layout.pairs[u.pair].src for u in units}
    return sorted(src | {layout.pairs[u.pair].dst for u in units}), src


def _batch_for(layout: Layout, layers: list[int], src: set[int], batch_bytes: int, pool: BufferPool) -> Batch:
    ecap, tcap = _batch_shape(layout, layers, src, batch_bytes)
    return Batch(layers, src, layout.d, ecap, tcap, not layout.all_active, pool)


def _prepare(
    batch: Batch, layout: Layout, keep: np.ndarray, fresh: dict[int, Marginals], rows: dict[int, tuple[int, int]]
) -> None:
    """Clean every layer of the batch in place, add first-pass marginals, transpose sources
    (only their rows[layer] = (lo, hi) feature range, which the pass's units read).

    Layers are cleaned on parallel threads (the kernels release the GIL); within a layer the
    marginals are summed in token order, so the result does not depend on the threads."""
    d, empty_i, empty_f = layout.d, np.zeros(0, np.int64), np.zeros(0)

    def clean(l: int) -> tuple[int, int, int]:
        b, m = batch.buf[l], fresh.get(l)
        mg = m if m is not None else Marginals(empty_i, empty_i, empty_f, empty_f, empty_f, empty_f)
        return kn.prepare_inplace(
            b.ptr, b.idx, b.val, batch.n_tok, keep, layout.theta[l], d[l], m is not None, *mg, b.need_act, b.act
        )

    layers = list(batch.buf)
    threads = min(len(layers), numba.get_num_threads())
    if threads > 1:
        with ThreadPoolExecutor(threads) as ex:
            cleaned = list(ex.map(clean, layers))
    else:
        cleaned = [clean(l) for l in layers]
    for l, (nnz, lo_id, hi_id) in zip(layers, cleaned, strict=True):
        if lo_id < 0 or hi_id >= d[l]:
            raise SaelineageError(
                f"layer {l} codes hold feature id {hi_id if hi_id >= d[l] else lo_id} outside 0..{d[l] - 1} (d_sae).",
                "the shards do not match the manifest: re-run `saelineage collect --force`.",
            )
        batch.buf[l].nnz = nnz
    for l, b in batch.buf.items():
        if b.is_src:
            kn.transpose_into(
                b.ptr,
                b.idx,
                b.val,
                b.act,
                batch.n_tok,
                keep,
                d[l],
                b.need_act,
                b.colptr,
                b.tok,
                b.cval,
                b.cact,
                *rows[l],
                numba.get_num_threads(),
            )


SparseRows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Empty sparse rows from `Arena.take`: (ptr, nnz, j, cnt, psum), the leading fields of ks.SparseBlock."""


class Arena:
    """Accumulator memory kept across passes (and tasks) and refilled with zeros for each.

    A fresh allocation pays one page fault per page on first write, 0.7–1.4 GB/s on a
    virtual machine, as slow as the accumulation itself when a pass sees few batches; a
    refill runs at memory bandwidth (~17 GB/s).
    """

    def __init__(self, count_dtype: type = np.int32):
        self.cnt: np.ndarray = np.zeros(0, count_dtype)
        self.psum = np.zeros(0, kn.PSUM_DTYPE)
        self.j = np.zeros(0, np.int32)  # sparse cells' columns
        self.used = 0  # cells handed out since the last refill reached them: every cell past them is zero

    def reserve(self, cells: int, count_dtype: type, sparse: int = 0) -> None:
        """Hold at least `cells` cells of count_dtype, `sparse` of them with a column; a larger need
        reallocates and faults the new pages in on every thread (zeroed)."""
        if len(self.cnt) < cells or self.cnt.dtype != np.dtype(count_dtype):
            self.cnt = self.psum = None  # type: ignore[assignment]  # free before the new allocation
            self.cnt = np.empty(cells, count_dtype)
            self.psum = np.empty(cells, kn.PSUM_DTYPE)
            kn.zero_fill(self.cnt)
            kn.zero_fill(self.psum)
            self.used = 0
        if len(self.j) < sparse:
            self.j = None  # type: ignore[assignment]
            self.j = np.empty(sparse, np.int32)
            kn.zero_fill(self.j)

    def take(
        self, shapes: list[tuple[int, int]], caps: list[np.ndarray], count_dtype: type
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[SparseRows]]:
        """Zeroed (cnt, psum) views of each dense [rows, cols] shape, laid out one after another,
        then empty sparse rows of each capacity array caps (int64 [rows]): (ptr, nnz, j, cnt, psum)
        with nnz zero (their cells are not refilled: a sparse row reads only its first nnz). Only
        the cells a previous take handed out are refilled."""
        dense = sum(r * c for r, c in shapes)
        sparse = sum(int(c.sum()) for c in caps)
        self.reserve(dense + sparse, count_dtype, sparse)
        kn.zero_fill(self.cnt[: min(self.used, dense)])
        kn.zero_fill(self.psum[: min(self.used, dense)])
        self.used = max(self.used, dense + sparse)  # cells past the dense ones stay as they were
        out, at = [], 0
        for r, c in shapes:
            out.append((self.cnt[at : at + r * c].reshape(r, c), self.psum[at : at + r * c].reshape(r, c)))
            at += r * c
        rows, at_j = [], 0
        for cap in caps:
            ptr = np.zeros(len(cap) + 1, np.int64)
            np.cumsum(cap, out=ptr[1:])
            n = int(ptr[-1])
            rows.append(
                (
                    ptr,
                    np.zeros(len(cap), np.int64),
                    self.j[at_j : at_j + n],
                    self.cnt[at : at + n],
                    self.psum[at : at + n],
                )
            )
            at, at_j = at + n, at_j + n
        return out, rows


class PassResult(NamedTuple):
    """One pass over the shards: kept tokens, the accumulators of each unit, and the work done."""

    n: int
    acc: dict[Unit, ks.Block | ks.SparseBlock]
    increments: int


def accumulate_pass(
    layout: Layout,
    budget: Budget,
    units: list[Unit],
    fresh: dict[int, Marginals],
    pool: BufferPool,
    tm: dict[str, float],
    on_batch: Callable[[int, int], None] | None = None,
    arena: Arena | None = None,
) -> PassResult:
    """Stream every shard once and accumulate cnt/psum [hi-lo, d_dst] of each unit.

    fresh: {layer: zeroed Marginals} for layers whose marginals this pass takes (filled in place).
    Per cell, additions happen in global token order whatever the batching, so a unit's
    accumulators are the same in any pass and on any worker. on_batch(n_shards, increments).
    arena: where the accumulators live (views into it, valid until its next `take`)."""
    d, pairs = layout.d, layout.pairs
    layers, src = _pass_layers(layout, units)
    rows = {
        l: (min(u.lo for u in units if pairs[u.pair].src == l), max(u.hi for u in units if pairs[u.pair].src == l))
        for l in src
    }
    t_zero = time.perf_counter()
    acc = _take(layout, budget, units, arena or Arena())
    sparse_d = [d[pairs[u.pair].dst] for u in units if u.pair in budget.caps]
    threads = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]  # set at import
    scratch = tuple(
        np.zeros((threads, max(sparse_d, default=0)), dt)
        for dt in (budget.count_dtype, kn.PSUM_DTYPE, np.uint8, np.int32)
    )
    full = np.zeros(1, np.uint8)
    tm["zero"] += time.perf_counter() - t_zero
    n_pass, increments = 0, 0
    t0 = time.perf_counter()
    buffers = _batch_for(layout, layers, src, budget.batch_bytes, pool)
    for batch in batches(layout.shards, buffers):
        keep = batch.keep(layout.bos, layout.include_bos)
        n_pass += int(keep.sum())
        _prepare(batch, layout, keep, fresh, rows)
        t1 = time.perf_counter()
        tm["read_prepare"] += t1 - t0
        for u in units:
            s, m = batch.buf[pairs[u.pair].src], batch.buf[pairs[u.pair].dst]
            work = kn.row_work(s.colptr, s.tok, m.ptr, u.lo, u.hi)
            bounds = kn.chunk_bounds(work, u.lo, CHUNKS_PER_THREAD * numba.get_num_threads())
            args = (bounds, u.lo, s.colptr, s.tok, s.cval, s.cact, m.ptr, m.idx, m.val, m.act, layout.all_active)
            blk = acc[u]
            if isinstance(blk, ks.SparseBlock):
                kn.accumulate_sparse(*args, (blk.ptr, blk.nnz, blk.j), blk.cnt, blk.psum, scratch, full)
            else:
                kn.accumulate(*args, blk.cnt, blk.psum)
            increments += int(work.sum())
        t0 = time.perf_counter()
        tm["accumulate"] += t0 - t1
        if on_batch:
            on_batch(batch.n_shards, increments)
    buffers.release()
    if full[0]:
        raise SaelineageError("the shards changed while stats was reading them.", "re-run `saelineage stats`.")
    return PassResult(n_pass, acc, increments)


def _take(layout: Layout, budget: Budget, units: list[Unit], arena: Arena) -> dict[Unit, ks.Block | ks.SparseBlock]:
    """Each unit's accumulators, from the arena: zeroed dense blocks, empty sparse rows."""
    d, pairs, caps = layout.d, layout.pairs, budget.caps
    dense = [u for u in units if u.pair not in caps]
    sparse = [u for u in units if u.pair in caps]
    blocks, rows = arena.take(
        [(u.hi - u.lo, d[pairs[u.pair].dst]) for u in dense],
        [caps[u.pair][u.lo : u.hi] for u in sparse],
        budget.count_dtype,
    )
    acc: dict[Unit, ks.Block | ks.SparseBlock] = {u: ks.Block(*b, u.lo) for u, b in zip(dense, blocks, strict=True)}
    for u, (ptr, nnz, j, cnt, psum) in zip(sparse, rows, strict=True):
        acc[u] = ks.SparseBlock(ptr, nnz, j, cnt, psum, u.lo, d[pairs[u.pair].dst])
    return acc


def census(layout: Layout, batch_bytes: int, pool: BufferPool | None = None) -> dict[int, np.ndarray]:
    """{pair index: int64 [d_src]}: each source row's increments over the kept tokens (one read of
    the shards, `kn.census`), which bound the cells a sparse row touches (`plan`)."""
    d, pairs = layout.d, layout.pairs
    work = {k: np.zeros(d[p.src], np.int64) for k, p in enumerate(pairs)}
    pool = pool or BufferPool()
    layers = sorted({p.src for p in pairs} | {p.dst for p in pairs})
    buffers = _batch_for(layout, layers, set(), batch_bytes, pool)
    for batch in batches(layout.shards, buffers):
        keep = batch.keep(layout.bos, layout.include_bos)
        _prepare(batch, layout, keep, {}, {})
        for k, p in enumerate(pairs):
            s, m = batch.buf[p.src], batch.buf[p.dst]
            kn.census(s.ptr, s.idx, batch.n_tok, keep, m.ptr, work[k])
    buffers.release()
    return work


def plan_run(
    layout: Layout, opts: EdgeOptions, memory_limit: int, accumulate: str = "auto", workers: int = 1
) -> Budget:
    """The plan of a run: dense when that fits one pass ('auto') or is asked for; otherwise the
    census is taken (into layout.work) and the pairs that gain from it are stored sparse. 'auto'
    first takes the census of the first shard, scaled to the run: when even that shows no pair
    gaining, the run stays dense without reading the rest. Refuses a plan that cannot fit
    (`check_fits`)."""
    budget = plan(layout, opts, memory_limit) if accumulate != "sparse" else None
    if budget is None or (accumulate == "auto" and len(budget.passes) > 1):
        t0 = time.perf_counter()
        batch = _batch_bytes(max(memory_limit - process_baseline(), 0))
        if budget is not None and layout.work is None and not _sparse_may_pay(layout, opts, memory_limit, batch):
            budget.census_seconds = time.perf_counter() - t0
            check_fits(budget, opts, workers)
            return budget
        if layout.work is None:
            layout.work = census(layout, batch)
        took = time.perf_counter() - t0
        budget = plan(layout, opts, memory_limit, accumulate=accumulate)
        budget.census_seconds = took
    check_fits(budget, opts, workers)
    return budget


def _sparse_may_pay(layout: Layout, opts: EdgeOptions, memory_limit: int, batch_bytes: int) -> bool:
    """Whether the census of the first shard, scaled to the run's tokens, stores any pair sparse.

    Scaling a shard's increments by the token ratio estimates the run's; a row the estimate
    saturates is saturated (its increments only grow with tokens), so 'no pair gains' is safe to
    act on up to the estimate's sampling error, which only decides between two exact paths."""
    first = replace(layout, shards=layout.shards[:1], work=None)
    sample = census(first, batch_bytes)
    tokens = _kept_tokens(layout.shards[0])
    if tokens == 0:
        return True
    scale = layout.n_tokens_hint / tokens
    first.work = {k: np.ceil(w * scale).astype(np.int64) for k, w in sample.items()}
    return bool(plan(first, opts, memory_limit, accumulate="auto").caps)


def _kept_tokens(shard: Path) -> int:
    """Tokens of one shard (its positions' count; a bound on the kept ones)."""
    pos, _ = read_layers(shard, [])
    return len(pos)


def check_fits(budget: Budget, opts: EdgeOptions, workers: int) -> None:
    """Refuse a plan that cannot fit its memory limit, even one source row per pass."""
    if budget.needed <= budget.limit:
        return
    gib = 1 << 30
    raise SaelineageError(
        f"stats needs at least {budget.needed / gib:.1f} GiB under this plan (one source row of the widest pair "
        f"beside its running state: top-{opts.top_k} lists of {len(opts.primary)} measures per feature, per "
        f"thread scratch, the batch buffers), more than --memory-limit {budget.limit / gib:.1f} GiB.",
        f"raise --memory-limit to {-(-budget.needed // gib)}G or more, or shrink the state: --top-k "
        f"{max(1, opts.top_k // 2)}, fewer --primary measures, --workers 1 (now {workers}); or spread the pairs "
        "over machines with --ray.",
    )


def new_timings() -> dict[str, float]:
    return {"reserve": 0.0, "read_prepare": 0.0, "zero": 0.0, "accumulate": 0.0, "finalize": 0.0}


def new_marginals(d: int) -> Marginals:
    """Zeroed marginals of a layer of d features, for `accumulate_pass` to fill."""
    return Marginals(
        np.zeros(d, np.int64), np.zeros(d, np.int64), np.zeros(d), np.zeros(d), np.full(d, np.inf), np.zeros(d)
    )


def run_passes(
    layout: Layout,
    budget: Budget,
    opts: EdgeOptions,
    workers: int,
    on_shards: Callable[[int, int, int], None] | None = None,
    forced: Mapping[int, np.ndarray] | None = None,
    spill: Path | None = None,
) -> Accumulated:
    """Run every pass; return the token count, layer marginals and each pair's results.

    forced: {pair index: int [d_src]} partners kept as edges whatever their counts (-1: none).
    spill: a folder where finished pairs' edges wait, memory-mapped (`PairResult.spill`); the
    plan counts on it. None keeps them in memory (small runs)."""
    numba.set_num_threads(max(1, min(workers, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]  # set at import
    d, pairs = layout.d, layout.pairs
    marg: dict[int, Marginals] = {}
    n_tokens = None
    results: list[PairResult | None] = [None] * len(pairs)
    states: dict[int, PairState] = {}
    increments = 0
    tm = new_timings()
    pool = BufferPool()
    arena = Arena(budget.count_dtype)
    t0 = time.perf_counter()  # sized for the largest pass, so that no later pass reallocates
    cells = [budget.pass_cells(layout, units) for units in budget.passes]
    arena.reserve(max((a + b for a, b in cells), default=0), budget.count_dtype, max((b for _, b in cells), default=0))
    pool.reserve(budget.batch_bytes)
    tm["reserve"] += time.perf_counter() - t0
    for pass_no, units in enumerate(budget.passes):
        fresh = {l: new_marginals(d[l]) for l in _pass_layers(layout, units)[0] if l not in marg}
        before = increments

        def tick(n_sh: int, incr: int, pass_no=pass_no, before=before) -> None:
            if on_shards:
                on_shards(pass_no, n_sh, before + incr)

        done = accumulate_pass(layout, budget, units, fresh, pool, tm, tick, arena)
        increments += done.increments
        n_pass, acc = done.n, done.acc
        if n_tokens is None:
            n_tokens = n_pass
        elif n_tokens != n_pass:
            raise SaelineageError("the shards changed while stats was reading them.", "re-run `saelineage stats`.")
        marg.update(fresh)
        t0 = time.perf_counter()
        for u in units:
            p = pairs[u.pair]
            st = states.get(u.pair) or states.setdefault(
                u.pair, PairState(d[p.src], d[p.dst], opts, p.span == 1, (forced or {}).get(u.pair))
            )
            st.add_block(acc.pop(u), n_tokens, side(n_tokens, marg[p.src]), side(n_tokens, marg[p.dst]))
            if st.rows_done == d[p.src]:
                res = st.finish(n_tokens, side(n_tokens, marg[p.src]), side(n_tokens, marg[p.dst]))
                results[u.pair] = res.spill(spill / f"pair{u.pair:03d}") if spill is not None else res
                del states[u.pair]
        tm["finalize"] += time.perf_counter() - t0
    assert all(r is not None for r in results)
    return Accumulated(int(n_tokens or 0), marg, cast(list[PairResult], results), increments, tm)
