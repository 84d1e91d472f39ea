"""The accumulation pass: every layer pair at once, in bounded memory.

A *unit* is a block of source rows [lo, hi) of one layer pair; its accumulators are
cnt (int32, or int64 past 2^31 tokens) and psum (float64), both [hi-lo, d_dst]. Units are
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, cast

import numba
import numpy as np
import psutil

from saelineage.errors import SaelineageError
from saelineage.stats import kernels as kn
from saelineage.stats.batch import POS_DTYPE, PTR_DTYPE, VAL_DTYPE, Batch, BufferPool, LayerBuffer, batches
from saelineage.stats.edges import EdgeOptions, PairResult, PairState, result_bytes, spilled_bytes, state_bytes
from saelineage.stats.measures import Marginals, side

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


@dataclass
class Budget:
    limit: int
    batch_bytes: int
    count_dtype: type
    passes: list[list[Unit]] = field(default_factory=list)

    @property
    def cell_bytes(self) -> int:
        return np.dtype(self.count_dtype).itemsize + kn.PSUM_DTYPE.itemsize


KERNELS_BYTES = 160 << 20
"""Resident memory that the compiled kernels, their thread pool and the output writers add
once loaded (measured: 130 MiB after a tiny run)."""


def process_baseline() -> int:
    """Resident memory of this process before the stage allocates (at least 256 MiB), plus
    what loading the kernels will add."""
    return max(256 << 20, psutil.Process().memory_info().rss) + KERNELS_BYTES


def plan(layout: Layout, opts: EdgeOptions, memory_limit: int, baseline: int | None = None) -> Budget:
    """Split the pairs into units and passes that fit `memory_limit` bytes of process memory.

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
    batch_bytes = int(min(BATCH_MAX, 0.15 * memory_limit))
    budget = Budget(limit, batch_bytes, count_dtype)
    held = [
        state_bytes(layout.d[p.src], layout.d[p.dst], opts, p.span == 1)
        + result_bytes(layout.d[p.src], layout.d[p.dst], opts)
        for p in layout.pairs
    ]
    finished = [spilled_bytes(layout.d[p.src], layout.d[p.dst]) for p in layout.pairs]
    free0 = memory_limit - batch_bytes - int(min(SLACK_MAX, 0.05 * memory_limit))
    # The accumulators are one Arena sized for the largest pass and kept through every pass, so
    # the largest pass plus the most state any pass holds must fit: refill until it does.
    room = free0
    for _ in range(8):
        budget.passes = _fill(layout, budget.cell_bytes, held, finished, room)
        arena = max((pass_cells(layout, units) for units in budget.passes), default=0) * budget.cell_bytes
        over = arena + max((_pass_state(units, held, finished) for units in budget.passes), default=0) - free0
        if over <= 0:
            break
        room -= over
    return budget


def _pass_state(units: list[Unit], held: list[int], finished: list[int]) -> int:
    """Bytes beside the accumulators during a pass: its pairs' states and finished pairs' remains."""
    ks = {u.pair for u in units}
    return sum(held[k] for k in ks) + sum(finished[: min(ks)])


def _fill(layout: Layout, cell_bytes: int, held: list[int], finished: list[int], room: int) -> list[list[Unit]]:
    """Units packed greedily into passes of at most `room` bytes of accumulators and state."""
    passes: list[list[Unit]] = []
    current: list[Unit] = []
    free = room
    for k, p in enumerate(layout.pairs):
        row = layout.d[p.dst] * cell_bytes
        lo, d_src = 0, layout.d[p.src]
        free -= held[k]
        while lo < d_src:
            rows = min(d_src - lo, max(0, free) // row)
            if rows == 0 and current:
                passes.append(current)
                free, current = room - sum(finished[:k]) - held[k], []
                continue
            rows = max(rows, 1)
            current.append(Unit(k, lo, lo + rows))
            free -= rows * row
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


class Arena:
    """Accumulator memory kept across passes (and tasks) and refilled with zeros for each.

    A fresh allocation pays one page fault per page on first write, 0.7–1.4 GB/s on a
    virtual machine, as slow as the accumulation itself when a pass sees few batches; a
    refill runs at memory bandwidth (~17 GB/s).
    """

    def __init__(self, count_dtype: type = np.int32):
        self.cnt: np.ndarray = np.zeros(0, count_dtype)
        self.psum = np.zeros(0, kn.PSUM_DTYPE)
        self.used = 0  # cells the last take handed out; every cell past them is zero

    def reserve(self, cells: int, count_dtype: type) -> None:
        """Hold at least `cells` cells of count_dtype; a larger need reallocates and faults the
        new pages in on every thread (zeroed)."""
        if len(self.cnt) < cells or self.cnt.dtype != np.dtype(count_dtype):
            self.cnt = self.psum = None  # type: ignore[assignment]  # free before the new allocation
            self.cnt = np.empty(cells, count_dtype)
            self.psum = np.empty(cells, kn.PSUM_DTYPE)
            kn.zero_fill(self.cnt)
            kn.zero_fill(self.psum)
            self.used = 0

    def take(self, shapes: list[tuple[int, int]], count_dtype: type) -> list[tuple[np.ndarray, np.ndarray]]:
        """Zeroed (cnt, psum) views of each [rows, cols] shape, laid out one after another;
        only the cells a previous take handed out are refilled."""
        total = sum(r * c for r, c in shapes)
        self.reserve(total, count_dtype)
        kn.zero_fill(self.cnt[: self.used])
        kn.zero_fill(self.psum[: self.used])
        self.used = total
        out, at = [], 0
        for r, c in shapes:
            out.append((self.cnt[at : at + r * c].reshape(r, c), self.psum[at : at + r * c].reshape(r, c)))
            at += r * c
        return out


def pass_cells(layout: Layout, units: list[Unit]) -> int:
    """Accumulator cells of one pass's units."""
    return sum((u.hi - u.lo) * layout.d[layout.pairs[u.pair].dst] for u in units)


class PassResult(NamedTuple):
    """One pass over the shards: kept tokens, the accumulators of each unit, and the work done."""

    n: int
    acc: dict[Unit, tuple[np.ndarray, np.ndarray]]
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
    shapes = [(u.hi - u.lo, d[pairs[u.pair].dst]) for u in units]
    acc = dict(zip(units, (arena or Arena()).take(shapes, budget.count_dtype), strict=True))
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
            kn.accumulate(
                bounds,
                u.lo,
                s.colptr,
                s.tok,
                s.cval,
                s.cact,
                m.ptr,
                m.idx,
                m.val,
                m.act,
                layout.all_active,
                *acc[u],
            )
            increments += int(work.sum())
        t0 = time.perf_counter()
        tm["accumulate"] += t0 - t1
        if on_batch:
            on_batch(batch.n_shards, increments)
    buffers.release()
    return PassResult(n_pass, acc, increments)


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
    arena.reserve(max((pass_cells(layout, units) for units in budget.passes), default=0), budget.count_dtype)
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
            cnt, psum = acc.pop(u)
            st.add_block(cnt, psum, u.lo, n_tokens, side(n_tokens, marg[p.src]), side(n_tokens, marg[p.dst]))
            del cnt, psum
            if st.rows_done == d[p.src]:
                res = st.finish(n_tokens, side(n_tokens, marg[p.src]), side(n_tokens, marg[p.dst]))
                results[u.pair] = res.spill(spill / f"pair{u.pair:03d}") if spill is not None else res
                del states[u.pair]
        tm["finalize"] += time.perf_counter() - t0
    assert all(r is not None for r in results)
    return Accumulated(int(n_tokens or 0), marg, cast(list[PairResult], results), increments, tm)
