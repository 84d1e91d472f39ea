"""Compiled (numba) kernels of the accumulation pass.

The work is one increment per co-active pair of latents per token. For one shard and one
layer pair (l → m) the source layer is transposed to feature-major lists (the tokens of each
source feature i, in token order); then, one source feature at a time, every token of i
adds its destination row (≈ L0 entries) into accumulator row i. Row i of the accumulators
(d_m · 12 bytes, ≈ 300 KB at 24,576 latents) stays in the core's L2 cache for all of i's
tokens, which is what makes this fast. Threads own disjoint source rows, so each cell is
summed by one thread in global token order: the result does not depend on the number of
workers or on the shard size.
"""

from __future__ import annotations

from typing import Literal, TypedDict

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic


class _JitOptions(TypedDict):
    """The keyword arguments every kernel passes to `numba.njit` (typed for its overloads)."""

    cache: bool
    nogil: bool
    error_model: Literal["python", "numpy"]


_JIT: _JitOptions = {"cache": True, "nogil": True, "error_model": "numpy"}
PREFETCH_AHEAD = 4  # tokens; hides the DRAM latency of the next destination rows
PREFETCH_ENTRIES = 64  # of a destination row: about two L0s, enough for most tokens
CACHE_LINE = 64  # bytes; one prefetch or touch per line
TYPICAL_L0 = 32  # destination entries per token, to guess a row's batch work from its tokens
ZERO_FILL_CHUNK = 1 << 20  # items per parallel task of zero_fill
PSUM_DTYPE = np.dtype(np.float64)
"""Accumulated sums p_ij: products of float32 codes are exact in float64, and so the sums are
the same in any batching (they are added in global token order)."""
# A row whose batch work exceeds this fraction of its length is first read sequentially:
# streaming it into cache at memory bandwidth beats one cache miss per first touch.
TOUCH_FRACTION = 0.25


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to load arr[idx] into cache (llvm.prefetch; no effect on results)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [i8p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(inline="always")
def _prefetch_row(m_indptr, m_idx, m_val, t):
    """Prefetch destination token row t (indices and values, up to PREFETCH_ENTRIES entries)."""
    f = m_indptr[t]
    n = m_indptr[t + 1]
    step = CACHE_LINE // m_idx.itemsize  # a line of indices per step; float32 values are as wide
    while f < n and f < m_indptr[t] + PREFETCH_ENTRIES:
        _prefetch(m_idx, f)
        _prefetch(m_val, f)
        f += step


@numba.njit(**_JIT)
def prepare_inplace(ptr, idx, val, n_tok, keep, theta, d, do_marg, count, nonzero, s, q, vmin, vmax, do_act, act):
    """Clean one layer's batch CSR in place; optionally add marginals and active flags.

    ptr int64[>=T+1], idx int32[>=nnz], val float32/float64 [>=nnz] hold T = n_tok tokens.
    Entries with a value <= 0 (or NaN) are dropped in place (stored zeros are "not active,
    no activation"). With do_marg, the kept tokens' entries add to the per-feature marginal
    arrays [d] (float64 sums in token order). With do_act, act[e] = (value > theta[f]).
    Returns (nnz after cleaning, smallest id, largest id); ids outside 0..d-1 are reported,
    not used.
    """
    k = 0
    lo_id = 0
    hi_id = -1
    start = ptr[0]
    for t in range(n_tok):
        end = ptr[t + 1]
        for e in range(start, end):
            f = idx[e]
            if f < lo_id:
                lo_id = f
            if f > hi_id:
                hi_id = f
            v = np.float64(val[e])
            if not v > 0.0 or f < 0 or f >= d:
                continue
            if k != e:
                idx[k] = f
                val[k] = val[e]
            if do_act:
                act[k] = v > theta[f]
            if do_marg and keep[t]:
                nonzero[f] += 1
                count[f] += v > theta[f]
                s[f] += v
                q[f] += v * v
                if v < vmin[f]:
                    vmin[f] = v
                if v > vmax[f]:
                    vmax[f] = v
            k += 1
        start = end
        ptr[t + 1] = k
    return k, lo_id, hi_id


@numba.njit(parallel=True, **_JIT)
def transpose_into(ptr, idx, val, act, n_tok, keep, d, has_act, colptr, tok, cval, cact, flo=0, fhi=-1, nch=1):
    """Feature-major copy (CSC) of the kept tokens' entries, tokens ascending per feature.

    Input: a cleaned batch CSR (T = n_tok). Output buffers: colptr int64[d+1], tok int32,
    cval, cact (uint8, only written when has_act) of length >= nnz. Only features
    flo..fhi-1 (fhi < 0: all) are copied; the others get empty lists, since a pass whose
    units cover part of a source layer reads no other rows. Threads take consecutive token
    ranges and write each feature's list at offsets counted beforehand, so the output is
    the same for any number of threads (nch token ranges, one per thread).
    """
    if fhi < 0:
        fhi = d
    tb = np.searchsorted(ptr[: n_tok + 1], (np.arange(nch + 1) * ptr[n_tok]) // nch)
    tb[0], tb[nch] = 0, n_tok
    start = np.zeros((nch, d), np.int64)
    for c in prange(nch):
        cnt = start[c]
        for t in range(tb[c], tb[c + 1]):
            if keep[t]:
                for e in range(ptr[t], ptr[t + 1]):
                    f = idx[e]
                    if flo <= f < fhi:
                        cnt[f] += 1
    at = 0
    for f in range(d):
        colptr[f] = at
        for c in range(nch):
            n = start[c, f]
            start[c, f] = at
            at += n
    colptr[d] = at
    for c in prange(nch):
        fill = start[c]
        for t in range(tb[c], tb[c + 1]):
            if keep[t]:
                for e in range(ptr[t], ptr[t + 1]):
                    f = idx[e]
                    if f < flo or f >= fhi:
                        continue
                    w = fill[f]
                    tok[w] = t
                    cval[w] = val[e]
                    if has_act:
                        cact[w] = act[e]
                    fill[f] = w + 1


@numba.njit(parallel=True, **_JIT)
def zero_fill(a):
    """a[:] = 0 (1-D) on every thread: faults fresh pages in parallel, and refills reused
    memory at memory bandwidth."""
    n = a.shape[0]
    step = ZERO_FILL_CHUNK
    for c in prange((n + step - 1) // step):
        a[c * step : min(n, (c + 1) * step)] = 0


@numba.njit(**_JIT)
def row_work(colptr, tok, m_indptr, lo, hi):
    """int64[hi-lo]: increments each source row lo..hi-1 will do against layer m."""
    work = np.zeros(hi - lo, np.int64)
    for i in range(lo, hi):
        w = 0
        for e in range(colptr[i], colptr[i + 1]):
            t = tok[e]
            w += m_indptr[t + 1] - m_indptr[t]
        work[i - lo] = w
    return work


def chunk_bounds(work: np.ndarray, lo: int, n_chunks: int) -> np.ndarray:
    """int64[C+1] absolute row bounds splitting rows lo.. into chunks of about equal work."""
    cum = np.cumsum(work)
    total = int(cum[-1]) if len(cum) else 0
    if total == 0 or n_chunks <= 1:
        return np.array([lo, lo + len(work)], np.int64)
    targets = (np.arange(1, n_chunks) * total) // n_chunks
    cuts = np.searchsorted(cum, targets, side="right")
    return np.unique(np.concatenate([[0], cuts, [len(work)]])).astype(np.int64) + lo


@numba.njit(**_JIT)
def _touch(crow, prow):
    """Read a row sequentially so the hardware streams it into cache."""
    x = 0
    for j in range(0, crow.shape[0], CACHE_LINE // crow.itemsize):
        x += crow[j]
    for j in range(0, prow.shape[0], CACHE_LINE // prow.itemsize):
        x += prow[j] != 0.0
    return x


@numba.njit(parallel=True, **_JIT)
def accumulate(bounds, lo, colptr, tok, val, act, m_indptr, m_idx, m_val, m_act, all_active, cnt, psum):
    """Add one batch's co-activations of source rows bounds[0]..bounds[-1] into the block.

    cnt int32/int64 [B, d_m] and psum float64 [B, d_m] hold rows lo..lo+B-1. For every
    token t of source feature i and every stored entry j of token t in layer m:
    psum[i, j] += a_i(t)·a_j(t) (float64 product of float32 inputs: exact) and, when both
    are active, cnt[i, j] += 1. `all_active`: every stored entry is active (threshold 0),
    so the flag arrays are not read.
    """
    for ch in prange(bounds.shape[0] - 1):
        for i in range(bounds[ch], bounds[ch + 1]):
            crow = cnt[i - lo]
            prow = psum[i - lo]
            e0 = colptr[i]
            e1 = colptr[i + 1]
            if (e1 - e0) * TYPICAL_L0 > TOUCH_FRACTION * crow.shape[0]:
                if _touch(crow, prow) < 0:  # never true; keeps the compiler from dropping the reads
                    crow[0] = 0
            for e in range(e0, e1):
                if e + PREFETCH_AHEAD < e1:
                    _prefetch_row(m_indptr, m_idx, m_val, tok[e + PREFETCH_AHEAD])
                t = tok[e]
                a = np.float64(val[e])
                f0 = m_indptr[t]
                f1 = m_indptr[t + 1]
                if all_active:
                    for f in range(f0, f1):
                        j = m_idx[f]
                        crow[j] += 1
                        prow[j] += a * np.float64(m_val[f])
                elif act[e]:
                    for f in range(f0, f1):
                        j = m_idx[f]
                        crow[j] += m_act[f]
                        prow[j] += a * np.float64(m_val[f])
                else:
                    for f in range(f0, f1):
                        prow[m_idx[f]] += a * np.float64(m_val[f])


SWEEP_RATIO = 32
"""A sparse row touching more than d_m / SWEEP_RATIO cells is written back by one sweep over its
marks (sequential bytes) instead of sorting its new cells (n log n random work)."""


@numba.njit(**_JIT)
def census(ptr, idx, n_tok, keep, m_indptr, work):
    """work[f] += Σ over the kept tokens t where feature f is stored of layer m's entries at t.

    ptr/idx: a cleaned batch CSR of the source layer; m_indptr: the destination layer's token
    pointers (cleaned). work int64 [d_l] then bounds, per source row, the increments of a pass and
    so the cells a sparse row can touch (engine.plan)."""
    for t in range(n_tok):
        if keep[t]:
            w = m_indptr[t + 1] - m_indptr[t]
            for e in range(ptr[t], ptr[t + 1]):
                work[idx[e]] += w


@numba.njit(parallel=True, **_JIT)
def accumulate_sparse(
    bounds, lo, colptr, tok, val, act, m_indptr, m_idx, m_val, m_act, all_active, rows, cnt, psum, scratch, full
):
    """`accumulate` into rows stored sparse: the same additions, in the same order, per cell.

    rows = (ptr int64 [B+1], nnz int64 [B], j int32): row r's cells are j[ptr[r] : ptr[r] + nnz[r]]
    (ascending) with counts cnt and sums psum at the same positions; it may grow to ptr[r+1] -
    ptr[r] cells (the census bound). Each row is expanded into its thread's dense scratch
    (scratch = (c [T, d_m], p [T, d_m], mark uint8 [T, d_m], list int32 [T, d_m]); c, p and
    mark zero and left zero), the batch's increments are added there, and its touched cells written back in
    ascending j. A row that would outgrow its capacity (the shards changed since the census) sets
    full[0] = 1 and is left as it was.
    """
    ptr, nnz, js = rows
    sc_c, sc_p, sc_m, sc_l = scratch
    dm = sc_c.shape[1]
    for ch in prange(bounds.shape[0] - 1):
        th = numba.get_thread_id()
        crow = sc_c[th]
        prow = sc_p[th]
        mk = sc_m[th]
        ls = sc_l[th]
        for i in range(bounds[ch], bounds[ch + 1]):
            e0 = colptr[i]
            e1 = colptr[i + 1]
            if e0 == e1:
                continue
            r = i - lo
            s0 = ptr[r]
            u = nnz[r]
            for x in range(u):
                j = js[s0 + x]
                crow[j] = cnt[s0 + x]
                prow[j] = psum[s0 + x]
                mk[j] = 1
                ls[x] = j
            nl = u
            for e in range(e0, e1):
                if e + PREFETCH_AHEAD < e1:
                    _prefetch_row(m_indptr, m_idx, m_val, tok[e + PREFETCH_AHEAD])
                t = tok[e]
                a = np.float64(val[e])
                both = all_active or act[e]
                for f in range(m_indptr[t], m_indptr[t + 1]):
                    j = m_idx[f]
                    if mk[j] == 0:
                        mk[j] = 1
                        ls[nl] = j
                        nl += 1
                    if both:
                        crow[j] += 1 if all_active else m_act[f]
                    prow[j] += a * np.float64(m_val[f])
            ok = nl <= ptr[r + 1] - s0
            if not ok:
                full[0] = 1
            if nl * SWEEP_RATIO > dm:
                w = 0
                for j in range(dm):
                    if mk[j]:
                        ls[w] = j
                        w += 1
            elif nl > u:
                ls[u:nl].sort()
                if u > 0:  # merge the old (sorted) and new (sorted) ids, from the back, in place
                    a_ = u - 1
                    b_ = nl - 1
                    tmp = ls[u:nl].copy()
                    for w in range(nl - 1, -1, -1):
                        if b_ < u or (a_ >= 0 and ls[a_] > tmp[b_ - u]):
                            ls[w] = ls[a_]
                            a_ -= 1
                        else:
                            ls[w] = tmp[b_ - u]
                            b_ -= 1
                        if b_ < u:
                            break
            for x in range(nl):
                j = ls[x]
                if ok:
                    js[s0 + x] = j
                    cnt[s0 + x] = crow[j]
                    psum[s0 + x] = prow[j]
                crow[j] = 0
                prow[j] = 0.0
                mk[j] = 0
            if ok:
                nnz[r] = nl


@numba.njit(**_JIT)
def dec_cosine(w_src, w_dst, src, dst):
    """float64[K]: cosine of decoder rows w_src[src[k]] and w_dst[dst[k]] (float64 sums).

    w_* are float32 [d_sae, d_in]; NaN when either row has zero norm.
    """
    d_in = w_src.shape[1]
    out = np.empty(src.shape[0], np.float64)
    for k in range(src.shape[0]):
        a = w_src[src[k]]
        b = w_dst[dst[k]]
        ab = 0.0
        aa = 0.0
        bb = 0.0
        for x in range(d_in):
            u = np.float64(a[x])
            v = np.float64(b[x])
            ab += u * v
            aa += u * u
            bb += v * v
        out[k] = ab / np.sqrt(aa * bb) if aa > 0.0 and bb > 0.0 else np.nan
    return out
