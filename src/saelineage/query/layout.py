"""Row order of the layered graph: edge-crossing counts and the barycentre heuristic (jitted).

Nodes sit on rows (layers); every edge joins row r to row r+1. `order_rows` starts from a
given order (the browser uses community, then feature id), then sweeps down and up: each
node moves to the mean position of its neighbours in the row just swept (positions scaled
to [0, 1] so rows of different sizes compare), ties keep the current order. It keeps the
order with the fewest crossings seen and stops after two sweeps without improvement.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _group(keys: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - jit
    """CSR grouping of items by integer key: (ptr [n_groups+1], items ordered by key)."""
    ptr = np.zeros(n_groups + 1, np.int64)
    for k in keys:
        ptr[k + 1] += 1
    for g in range(n_groups):
        ptr[g + 1] += ptr[g]
    fill = ptr[:-1].copy()
    items = np.empty(len(keys), np.int64)
    for i in range(len(keys)):
        items[fill[keys[i]]] = i
        fill[keys[i]] += 1
    return ptr, items


@numba.njit(cache=True, nogil=True)
def _cross(pos, row, eu, ev, eptr, elist, size) -> int:  # pragma: no cover - jit
    """Crossing edge pairs, row pair by row pair: sort by (pu, pv), Fenwick-count inversions in pv."""
    total = 0
    for r in range(len(size) - 1):
        a, b = eptr[r], eptr[r + 1]
        m = b - a
        if m < 2:
            continue
        w = size[r + 1] + 1
        keys = np.empty(m, np.int64)
        for k in range(m):
            e = elist[a + k]
            keys[k] = pos[eu[e]] * w + pos[ev[e]]
        keys.sort()
        tree = np.zeros(w + 1, np.int64)
        seen = 0
        i = 0
        while i < m:
            j = i
            while j < m and keys[j] // w == keys[i] // w:
                j += 1
            for k in range(i, j):  # earlier edges (smaller pu) ending right of this one cross it
                x = keys[k] % w + 1
                s = 0
                while x > 0:
                    s += tree[x]
                    x -= x & -x
                total += seen - s
            for k in range(i, j):
                x = keys[k] % w + 1
                while x <= w:
                    tree[x] += 1
                    x += x & -x
                seen += 1
            i = j
    return total


@numba.njit(cache=True, nogil=True)
def _place(r, pos, row, rptr, rnodes, nptr, nidx, size) -> None:  # pragma: no cover - jit
    a, b = rptr[r], rptr[r + 1]
    m = b - a
    if m < 2:
        return
    cur = np.empty(m, np.int64)  # row r's nodes in their current order
    for k in range(a, b):
        cur[pos[rnodes[k]]] = rnodes[k]
    keys = np.empty(m, np.float64)
    for j in range(m):
        i = cur[j]
        s = 0.0
        c = 0
        for q in range(nptr[i], nptr[i + 1]):
            t = nidx[q]
            s += (pos[t] + 0.5) / size[row[t]]
            c += 1
        keys[j] = s / c if c > 0 else (j + 0.5) / m
    o = np.argsort(keys, kind="mergesort")  # stable: ties keep the current order
    for j in range(m):
        pos[cur[o[j]]] = j


@numba.njit(cache=True, nogil=True)
def _barycenter(pos, row, eu, ev, n_rows, sweeps):  # pragma: no cover - jit
    size = np.zeros(n_rows, np.int64)
    for r in row:
        size[r] += 1
    rptr, rnodes = _group(row, n_rows)
    eptr, elist = _group(row[eu], n_rows)
    uptr, uitem = _group(ev, len(row))  # neighbours above (in row - 1) of each node
    dptr, ditem = _group(eu, len(row))  # neighbours below (in row + 1)
    up = eu[uitem]
    dn = ev[ditem]
    best = pos.copy()
    best_c = _cross(pos, row, eu, ev, eptr, elist, size)
    stale = 0
    for _ in range(sweeps):
        if best_c == 0:
            break
        for r in range(1, n_rows):
            _place(r, pos, row, rptr, rnodes, uptr, up, size)
        for r in range(n_rows - 2, -1, -1):
            _place(r, pos, row, rptr, rnodes, dptr, dn, size)
        c = _cross(pos, row, eu, ev, eptr, elist, size)
        if c < best_c:
            best[:] = pos
            best_c = c
            stale = 0
        else:
            stale += 1
            if stale >= 2:
                break
    return best


def crossings(row: np.ndarray, pos: np.ndarray, eu: np.ndarray, ev: np.ndarray) -> int:
    """Number of crossing edge pairs; edges go from row r (eu) to row r+1 (ev), pos = rank in row."""
    if len(eu) < 2:
        return 0
    row, pos = np.asarray(row, np.int64), np.asarray(pos, np.int64)
    eu, ev = np.asarray(eu, np.int64), np.asarray(ev, np.int64)
    n_rows = int(row.max()) + 1
    size = np.bincount(row, minlength=n_rows).astype(np.int64)
    eptr, elist = _group(row[eu], n_rows)
    return int(_cross(pos, row, eu, ev, eptr, elist, size))


def order_rows(
    row: np.ndarray, start_key: np.ndarray, eu: np.ndarray, ev: np.ndarray, mode: str = "barycenter", sweeps: int = 8
) -> np.ndarray:
    """Rank of every node inside its row (0 = left). `start_key` gives the initial order."""
    row = np.asarray(row, np.int64)
    pos = np.zeros(len(row), np.int64)
    if len(row) == 0:
        return pos
    o = np.lexsort((start_key, row))  # by row, then start key
    starts = np.searchsorted(row[o], row[o], "left")
    pos[o] = np.arange(len(row)) - starts
    if mode != "barycenter" or len(eu) == 0:
        return pos
    return _barycenter(pos, row, np.asarray(eu, np.int64), np.asarray(ev, np.int64), int(row.max()) + 1, sweeps)


def warm_up() -> None:
    """Compile (or load from numba's cache) the jitted functions now rather than on a first request."""
    row = np.array([0, 0, 1, 1], np.int64)
    order_rows(row, np.arange(4.0), np.array([0, 1], np.int64), np.array([3, 2], np.int64))
