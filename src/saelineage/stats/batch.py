"""Batches of consecutive shards in reusable buffers.

The accumulation kernel wants large batches (an accumulator row is streamed into cache
once per batch, so more tokens per batch means more increments per streamed row). The
buffers are allocated once and reused: fresh allocations cost a page fault per 4 KiB,
which on a virtual machine is as slow as the work itself. numpy allocations of this size
are also eligible for transparent huge pages, which cuts TLB misses on the random
destination-row reads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
from safetensors import SafetensorError, safe_open

from saelineage.data.store import token_mask
from saelineage.errors import SaelineageError


def read_layers(path: Path, layers: list[int]) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, ...]]]:
    """pos int32[T] and {layer: (indptr, indices, values)} of one shard, reading only those tensors."""
    try:
        with safe_open(str(path), "numpy") as fh:
            pos = fh.get_tensor("pos")
            out = {l: (fh.get_tensor(f"l{l}.indptr"), fh.get_tensor(f"l{l}.indices"), fh.get_tensor(f"l{l}.values"))
                   for l in layers}
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaelineageError(f"activation shard {path} is unreadable, truncated or lacks layers {layers} ({exc}).",
                              "re-run `saelineage collect RUN` (it recomputes missing shards), or --force.") from exc
    for l, (ptr, idx, val) in out.items():
        if len(ptr) != len(pos) + 1 or int(ptr[-1] - ptr[0]) != len(idx) or len(idx) != len(val):
            raise SaelineageError(f"shard {path} layer {l}: CSR arrays do not match its {len(pos)} tokens.",
                                  "delete that shard and re-run `saelineage collect RUN`.")
    return pos, out


class LayerBuffer:
    """One layer's batch CSR (ptr, idx, val, act) and, for a source layer, its transpose."""

    def __init__(self, tcap: int, ecap: int, vdtype, d: int, need_act: bool, is_src: bool):
        self.d, self.need_act, self.is_src, self.vdtype = d, need_act, is_src, np.dtype(vdtype)
        self.ptr = np.zeros(tcap + 1, np.int64)
        self.idx = np.empty(ecap, np.int32)
        self.val = np.empty(ecap, vdtype)
        self.act = np.empty(ecap if need_act else 0, np.uint8)
        if is_src:
            self.colptr = np.zeros(d + 1, np.int64)
            self.tok = np.empty(ecap, np.int32)
            self.cval = np.empty(ecap, vdtype)
            self.cact = np.empty(ecap if need_act else 0, np.uint8)
        self.nnz = 0

    @property
    def ecap(self) -> int:
        return len(self.idx)

    @staticmethod
    def entry_bytes(vdtype, need_act: bool, is_src: bool) -> int:
        one = 4 + np.dtype(vdtype).itemsize + (1 if need_act else 0)
        return one * (2 if is_src else 1)


class Batch:
    """Tokens of consecutive shards: n_tok tokens, keep mask, per-layer buffers."""

    def __init__(self, layers: list[int], src: set[int], d: dict[int, int], ecap: int, tcap: int, need_act: bool):
        self.layers, self.src, self.d, self.need_act = layers, src, d, need_act
        self.tcap, self.ecap = tcap, ecap
        self.pos = np.empty(tcap, np.int32)
        self.buf = {l: LayerBuffer(tcap, ecap, np.float32, d[l], need_act, l in src) for l in layers}
        self.n_tok = 0
        self.n_shards = 0

    def reset(self) -> None:
        self.n_tok = self.n_shards = 0
        for b in self.buf.values():
            b.nnz = 0

    def fits(self, pos: np.ndarray, codes: dict) -> bool:
        return self.n_tok + len(pos) <= self.tcap and all(
            self.buf[l].nnz + len(codes[l][1]) <= self.buf[l].ecap for l in self.layers)

    def grow(self, pos: np.ndarray, codes: dict) -> None:
        """Make an empty batch big enough for one shard (a shard larger than the planned batch)."""
        self.tcap = max(self.tcap, len(pos))
        self.pos = np.empty(self.tcap, np.int32)
        for l in self.layers:
            b = self.buf[l]
            self.buf[l] = LayerBuffer(self.tcap, max(b.ecap, len(codes[l][1])), b.vdtype, b.d, b.need_act, b.is_src)

    def add(self, pos: np.ndarray, codes: dict) -> None:
        t0, t = self.n_tok, len(pos)
        self.pos[t0:t0 + t] = pos
        for l in self.layers:
            ptr, idx, val = codes[l]
            b = self.buf[l]
            if val.dtype == np.float64 and b.vdtype != np.float64:  # keep float64 codes exact
                self._widen(l)
                b = self.buf[l]
            e0, n = b.nnz, len(idx)
            b.ptr[t0 + 1:t0 + t + 1] = ptr[1:] - ptr[0] + e0
            b.idx[e0:e0 + n] = idx
            b.val[e0:e0 + n] = val  # float16 -> float32 is exact
            b.nnz += n
        self.n_tok += t
        self.n_shards += 1

    def _widen(self, layer: int) -> None:
        old = self.buf[layer]
        new = LayerBuffer(self.tcap, old.ecap, np.float64, old.d, old.need_act, old.is_src)
        new.ptr[:] = old.ptr
        new.idx[:old.nnz] = old.idx[:old.nnz]
        new.val[:old.nnz] = old.val[:old.nnz]
        new.nnz = old.nnz
        self.buf[layer] = new

    def keep(self, bos: bool, include_bos: bool) -> np.ndarray:
        return token_mask(self.pos[:self.n_tok], bos, include_bos)


def batches(shards: list[Path], batch: Batch) -> Iterator[Batch]:
    """Fill `batch` with consecutive shards and yield it each time it is full (then reuse it).

    The next shard is read in a background thread while the caller computes.
    """
    if not shards:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(read_layers, shards[0], batch.layers)
        batch.reset()
        for k in range(len(shards)):
            pos, codes = fut.result()
            fut = pool.submit(read_layers, shards[k + 1], batch.layers) if k + 1 < len(shards) else None
            if not batch.fits(pos, codes):
                if batch.n_tok:
                    yield batch
                    batch.reset()
                if not batch.fits(pos, codes):
                    batch.grow(pos, codes)
            batch.add(pos, codes)
        if batch.n_tok:
            yield batch
