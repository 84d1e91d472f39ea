"""Batches of consecutive shards in reusable buffers.

The accumulation kernel wants large batches (an accumulator row is streamed into cache
once per batch, so more tokens per batch means more increments per streamed row). All
buffers are allocated once and reused across batches and passes: a fresh allocation costs
a page fault per 4 KiB, which on a virtual machine is as slow as the work itself. numpy
allocations of this size are also eligible for transparent huge pages, which cuts TLB
misses on the random destination-row reads.

A shard is read whole with `readinto` into a staging buffer the first time a process reads it,
checked against collect's checksum, and its tensors copied out of the safetensors layout (8-byte
header size, JSON header, raw little-endian data) into staging buffers; later passes read only
the header and their tensors straight into the staging buffers. In a background thread.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from saelineage import checksum
from saelineage.data.store import read_into, token_mask
from saelineage.errors import SaelineageError
from saelineage.run import check
from saelineage.stats.kernels import zero_fill

_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}
_HEADER_SIZE = struct.Struct("<Q")  # safetensors: the JSON header's length, little-endian u64
# the batch buffers' dtypes, which the kernels (kernels.py) and the pool's sizes both follow
PTR_DTYPE = np.dtype(np.int64)  # CSR row pointers (ptr, colptr)
ID_DTYPE = np.dtype(np.int32)  # feature ids of a token's entries (idx), token ids of a feature's (tok)
VAL_DTYPE = np.dtype(np.float32)  # codes: float16 shards widen exactly; float64 ones widen the layer (Batch.add)
ACT_DTYPE = np.dtype(np.uint8)  # active flags
POS_DTYPE = np.dtype(np.int32)  # token positions in their windows


def _bad_shard(path: Path, why: str) -> SaelineageError:
    from saelineage.hints import damaged_shard

    return damaged_shard(path, why)


def _grab(stage: dict, key: str, n: int, dtype) -> np.ndarray:
    """A reusable staging array of at least n items."""
    buf = stage.get(key)
    if buf is None or buf.dtype != dtype or len(buf) < n:
        buf = stage[key] = np.empty(max(n, int(1.25 * n)), dtype)
    return buf[:n]


def read_layers(path: Path, layers: list[int], stage: dict | None = None):
    """pos int32[T] and {layer: (indptr, indices, values)} of one shard, only those tensors.

    With `stage` (a dict), the arrays are views into reusable buffers kept there, one per
    tensor slot (the k-th listed layer's indices use the same buffer whatever the layer).

    The first read of a shard in a process reads it whole, into the "file" staging buffer: its
    checksum covers every byte (a tensor this pass skips included), and the tensors are copied out
    of the same bytes, so verifying costs no second read. Once verified (checksum.verified: the
    file unchanged since, its record too), or when nothing is recorded for it, only the header and
    the requested tensors are read.
    """
    stage = {} if stage is None else stage
    try:
        with open(path, "rb", buffering=0) as fh:
            st = os.fstat(fh.fileno())  # before reading: a change while reading changes it
            size_all = st.st_size
            known = checksum.expected(path)
            whole = known is not None and not checksum.verified(path, st, known[1])
            if whole:
                raw = _grab(stage, "file", size_all, np.uint8)
                read_into(fh, raw, 0, "file shorter than its size")

                def fill(out: np.ndarray, offset: int) -> None:
                    out[:] = raw[offset : offset + len(out)]

                head = raw[: _HEADER_SIZE.size].tobytes()
            else:

                def fill(out: np.ndarray, offset: int) -> None:
                    read_into(fh, out, offset)

                fh.seek(0)
                head = fh.read(_HEADER_SIZE.size) or b""
            (size,) = _HEADER_SIZE.unpack_from(head, 0)
            text = np.empty(max(0, min(size, size_all - _HEADER_SIZE.size)), np.uint8)
            fill(text, _HEADER_SIZE.size)
            header = json.loads(text.tobytes())
            base = _HEADER_SIZE.size + size

            def get(name: str, slot: str) -> np.ndarray:
                if name not in header:
                    raise KeyError(name)
                meta = header[name]
                dtype = _DTYPES[meta["dtype"]]
                begin, end = meta["data_offsets"]
                if base + end > size_all:
                    raise ValueError("file shorter than its header says")
                n = (end - begin) // np.dtype(dtype).itemsize
                out = _grab(stage, slot, n, dtype)
                fill(out.view(np.uint8), base + begin)
                return out

            pos = get("pos", "pos")
            out = {
                l: tuple(get(f"l{l}.{part}", f"{k}.{part}") for part in ("indptr", "indices", "values"))
                for k, l in enumerate(layers)
            }
            if whole:
                assert known is not None
                # after parsing, so a truncated file is reported as one (hints.damaged_shard)
                check(path, raw.data.cast("B"))
                checksum.mark_verified(path, st, known[1])
    except KeyError as exc:
        raise _bad_shard(path, f"no tensor {exc}: it lacks layers among {layers}, which the manifest lists") from exc
    except (OSError, ValueError, struct.error) as exc:
        raise _bad_shard(path, str(exc)) from exc
    for l, (ptr, idx, val) in out.items():
        if len(ptr) != len(pos) + 1 or (len(ptr) and int(ptr[-1] - ptr[0]) != len(idx)) or len(idx) != len(val):
            raise _bad_shard(path, f"layer {l}: CSR arrays do not match its {len(pos)} tokens")
    return pos, out


class LayerBuffer:
    """One layer's batch CSR (ptr, idx, val, act) and, for a source layer, its transpose."""

    MAX_ARRAYS = 8  # a source layer's: ptr, idx, val, act, colptr, tok, cval, cact

    def __init__(self, tcap: int, ecap: int, vdtype, d: int, need_act: bool, is_src: bool, pool=None):
        """pool: a BufferPool to carve the arrays from (None: allocate them)."""
        self.d, self.need_act, self.is_src, self.vdtype = d, need_act, is_src, np.dtype(vdtype)
        new = pool.array if pool is not None else np.empty
        self.ptr = new(tcap + 1, PTR_DTYPE)
        self.ptr[0] = 0
        self.idx = new(ecap, ID_DTYPE)
        self.val = new(ecap, vdtype)
        self.act = new(ecap if need_act else 0, ACT_DTYPE)
        if is_src:
            self.colptr = new(d + 1, PTR_DTYPE)
            self.tok = new(ecap, ID_DTYPE)
            self.cval = new(ecap, vdtype)
            self.cact = new(ecap if need_act else 0, ACT_DTYPE)
        self.nnz = 0

    @property
    def ecap(self) -> int:
        return len(self.idx)

    @staticmethod
    def nbytes(tcap: int, ecap: int, vdtype, d: int, need_act: bool, is_src: bool) -> int:
        """Bytes a BufferPool gives one LayerBuffer (with alignment padding, at most ALIGN per array)."""
        one = LayerBuffer.entry_bytes(vdtype, need_act, is_src) * ecap
        ptrs = PTR_DTYPE.itemsize * ((tcap + 1) + ((d + 1) if is_src else 0))
        return one + ptrs + LayerBuffer.MAX_ARRAYS * BufferPool.ALIGN

    @staticmethod
    def entry_bytes(vdtype, need_act: bool, is_src: bool) -> int:
        """Bytes per stored entry: id, value and flag, twice for a source layer (its transpose)."""
        one = ID_DTYPE.itemsize + np.dtype(vdtype).itemsize + (ACT_DTYPE.itemsize if need_act else 0)
        return one * (2 if is_src else 1)


class BufferPool:
    """One block of memory that every pass's batch buffers are carved from.

    One allocation of the planned size, faulted in on every thread at once and kept for the
    whole stage: a page fault per page on first write is, on a virtual machine, as slow as
    the work itself (0.7–1.4 GB/s). The shard staging areas are kept likewise.
    """

    ALIGN = 64

    def __init__(self) -> None:
        self.mem = np.zeros(0, np.uint8)
        self.at = 0
        self.stages: list[dict] = [{}, {}]  # shard staging areas of `batches`, kept likewise

    def free(self) -> None:
        """Return the block (arrays carved from it must no longer be used)."""
        self.mem = np.zeros(0, np.uint8)
        self.at = 0

    def reserve(self, nbytes: int) -> None:
        """Start carving anew from a block of at least nbytes (a larger need reallocates)."""
        if len(self.mem) < nbytes:
            self.free()  # before the new allocation
            self.mem = np.empty(nbytes, np.uint8)
            zero_fill(self.mem)  # take the page faults now, on every thread
        self.at = 0

    def array(self, n: int, dtype) -> np.ndarray:
        """An uninitialised array of n items of dtype from the block (allocated if it is full)."""
        dtype = np.dtype(dtype)
        start = -(-self.at // self.ALIGN) * self.ALIGN
        end = start + n * dtype.itemsize
        if end > len(self.mem):
            return np.empty(n, dtype)
        self.at = end
        return self.mem[start:end].view(dtype)


class Batch:
    """Tokens of consecutive shards: n_tok tokens, keep mask, per-layer buffers."""

    def __init__(
        self,
        layers: list[int],
        src: set[int],
        d: dict[int, int],
        ecap: int,
        tcap: int,
        need_act: bool,
        pool: BufferPool | None = None,
    ):
        self.layers, self.src, self.d, self.need_act = layers, src, d, need_act
        self.tcap, self.ecap = tcap, ecap
        self.pool = pool or BufferPool()
        self.pool.reserve(Batch.nbytes(layers, src, d, ecap, tcap, need_act))
        self.pos = self.pool.array(tcap, POS_DTYPE)
        self.buf = {l: LayerBuffer(tcap, ecap, VAL_DTYPE, d[l], need_act, l in src, self.pool) for l in layers}
        self.n_tok = 0
        self.n_shards = 0

    @staticmethod
    def nbytes(layers: list[int], src: set[int], d: dict[int, int], ecap: int, tcap: int, need_act: bool) -> int:
        """Pool bytes that a batch of these layers and capacities takes."""
        pos = POS_DTYPE.itemsize * tcap + BufferPool.ALIGN
        return pos + sum(LayerBuffer.nbytes(tcap, ecap, VAL_DTYPE, d[l], need_act, l in src) for l in layers)

    def release(self) -> None:
        """Stop using the pool's memory (the next pass's batch carves it again)."""
        self.buf = {}

    def reset(self) -> None:
        self.n_tok = self.n_shards = 0
        for b in self.buf.values():
            b.nnz = 0

    def fits(self, pos: np.ndarray, codes: dict) -> bool:
        return self.n_tok + len(pos) <= self.tcap and all(
            self.buf[l].nnz + len(codes[l][1]) <= self.buf[l].ecap for l in self.layers
        )

    def grow(self, pos: np.ndarray, codes: dict) -> None:
        """Make an empty batch big enough for one shard (a shard larger than the planned batch)."""
        self.tcap = max(self.tcap, len(pos))
        self.pos = np.empty(self.tcap, POS_DTYPE)
        for l in self.layers:
            b = self.buf[l]
            self.buf[l] = LayerBuffer(self.tcap, max(b.ecap, len(codes[l][1])), b.vdtype, b.d, b.need_act, b.is_src)

    def add(self, pos: np.ndarray, codes: dict) -> None:
        t0, t = self.n_tok, len(pos)
        self.pos[t0 : t0 + t] = pos
        for l in self.layers:
            ptr, idx, val = codes[l]
            b = self.buf[l]
            if val.dtype == np.float64 and b.vdtype != np.float64:  # keep float64 codes exact
                self._widen(l)
                b = self.buf[l]
            e0, n = b.nnz, len(idx)
            np.subtract(ptr[1:], ptr[0] - e0, out=b.ptr[t0 + 1 : t0 + t + 1])
            b.idx[e0 : e0 + n] = idx
            b.val[e0 : e0 + n] = val  # float16 -> float32 is exact
            b.nnz += n
        self.n_tok += t
        self.n_shards += 1

    def _widen(self, layer: int) -> None:
        old = self.buf[layer]
        new = LayerBuffer(self.tcap, old.ecap, np.float64, old.d, old.need_act, old.is_src)
        new.ptr[:] = old.ptr
        new.idx[: old.nnz] = old.idx[: old.nnz]
        new.val[: old.nnz] = old.val[: old.nnz]
        new.nnz = old.nnz
        self.buf[layer] = new

    def keep(self, bos: bool, include_bos: bool) -> np.ndarray:
        return token_mask(self.pos[: self.n_tok], bos, include_bos)


def batches(shards: list[Path], batch: Batch) -> Iterator[Batch]:
    """Fill `batch` with consecutive shards and yield it each time it is full (then reuse it).

    The next shard is read into the other of two staging areas in a background thread
    while the caller computes; a staging area is refilled only after it was copied.
    """
    if not shards:
        return
    stages = batch.pool.stages
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut: Future[Any] | None = pool.submit(read_layers, shards[0], batch.layers, stages[0])
        batch.reset()
        for k in range(len(shards)):
            assert fut is not None  # None only after the last shard
            pos, codes = fut.result()
            fut = (
                pool.submit(read_layers, shards[k + 1], batch.layers, stages[(k + 1) % 2])
                if k + 1 < len(shards)
                else None
            )
            if not batch.fits(pos, codes):
                if batch.n_tok:
                    yield batch
                    batch.reset()
                if not batch.fits(pos, codes):
                    batch.grow(pos, codes)
            batch.add(pos, codes)
        if batch.n_tok:
            yield batch
