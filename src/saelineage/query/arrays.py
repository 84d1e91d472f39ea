"""Per-feature lookups as memory-mapped arrays: a feature's edges and top examples in O(1).

Edges are stored in source order with CSR offsets per source feature, plus a permutation
(and offsets) for target order; examples in (feature, rank) order with offsets. Features
are numbered by their row in the (layer, feature)-sorted features table, the same numbering
as `Generation`'s index. The arrays are `.npy` files opened with `mmap_mode="r"`: a request
touches only the pages of the rows it returns, and the server's memory stays small.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np

from saelineage.feature_table import feature_rows

KEY_SHIFT = 32


def _key(layer: np.ndarray, feature: np.ndarray) -> np.ndarray:
    return np.asarray(layer, np.int64) << KEY_SHIFT | np.asarray(feature, np.int64)


def _ptr(sorted_rows: np.ndarray, n: int) -> np.ndarray:
    """CSR offsets [n + 1] of sorted feature rows; rows of unknown features (−1) sort first and fall
    before offset 0, so no feature's range holds them."""
    return np.searchsorted(sorted_rows, np.arange(n + 1)).astype(np.int64)


def write_arrays(con: duckdb.DuckDBPyConnection, folder: Path, tables: set[str]) -> None:
    """Write the lookup arrays from the cache's DuckDB tables into `folder` (one column at a time)."""
    folder.mkdir(parents=True, exist_ok=True)
    if "features" not in tables:
        return
    f = con.execute("SELECT layer, feature FROM features ORDER BY layer, feature").fetchnumpy()
    np.save(folder / "feat_key.npy", _key(f["layer"], f["feature"]))
    n = len(f["layer"])
    rows_of = feature_rows(f["layer"], f["feature"])
    if "edges_dn" in tables:
        k = con.execute("SELECT src_layer, src, dst_layer, dst FROM edges_dn").fetchnumpy()
        src = rows_of(k["src_layer"], k["src"])
        dst = rows_of(k["dst_layer"], k["dst"])
        order = np.argsort(src, kind="stable")
        np.save(folder / "e_src_ptr.npy", _ptr(src[order], n))
        perm = np.argsort(dst[order], kind="stable")  # positions in the source-ordered arrays
        np.save(folder / "e_dst_perm.npy", perm.astype(np.int64))
        np.save(folder / "e_dst_ptr.npy", _ptr(dst[order][perm], n))
        cols = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'edges_dn' ORDER BY ordinal_position"
            ).fetchall()
        ]
        for c in cols:
            v = con.execute(f'SELECT "{c}" AS v FROM edges_dn').fetchnumpy()["v"]
            v = np.ma.filled(v.astype(np.float64), np.nan) if np.ma.isMaskedArray(v) else np.asarray(v)
            np.save(folder / f"e_{c}.npy", v[order])
    if "examples" in tables:
        x = con.execute('SELECT layer, feature, rank, value, "window", pos, token FROM examples').fetchnumpy()
        rows = rows_of(x["layer"], x["feature"])
        order = np.lexsort((np.asarray(x["rank"]), rows))
        np.save(folder / "x_ptr.npy", _ptr(rows[order], n))
        for c in ("rank", "value", "window", "pos", "token"):
            np.save(folder / f"x_{c}.npy", np.asarray(x[c])[order])


class Arrays:
    """The lookup arrays of one cache generation, memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.edge_cols = sorted(
            p.name[2:-4]
            for p in folder.glob("e_*.npy")
            if p.name not in ("e_src_ptr.npy", "e_dst_ptr.npy", "e_dst_perm.npy")
        )
        self.has_edges = (folder / "e_src_ptr.npy").is_file()
        self.has_examples = (folder / "x_ptr.npy").is_file()

    def _load(self, name: str) -> np.ndarray:
        arr = getattr(self, "_" + name, None)
        if arr is None:
            arr = np.load(self.folder / f"{name}.npy", mmap_mode="r")
            setattr(self, "_" + name, arr)
        return arr

    def col(self, name: str) -> np.ndarray:
        return self._load(f"e_{name}")

    def ptr(self, direction: str) -> np.ndarray:
        """CSR offsets [n_features + 1] of the edges out of (`down`) or into (`up`) each feature row."""
        return self._load("e_dst_ptr" if direction == "up" else "e_src_ptr")

    def edge_rows(self, i: int, direction: str) -> np.ndarray:
        """Rows (in the edge arrays) of the edges out of (`down`) or into (`up`) feature row `i`."""
        if not self.has_edges:
            return np.zeros(0, np.int64)
        if direction == "up":
            ptr = self._load("e_dst_ptr")
            return np.asarray(self._load("e_dst_perm")[ptr[i] : ptr[i + 1]])
        ptr = self._load("e_src_ptr")
        return np.arange(ptr[i], ptr[i + 1])

    def examples(self, i: int) -> dict[str, np.ndarray]:
        """Top examples of feature row `i`, in rank order: rank, value, window, pos, token."""
        if not self.has_examples:
            return {c: np.zeros(0) for c in ("rank", "value", "window", "pos", "token")}
        ptr = self._load("x_ptr")
        a, b = int(ptr[i]), int(ptr[i + 1])
        return {c: np.asarray(self._load(f"x_{c}")[a:b]) for c in ("rank", "value", "window", "pos", "token")}
