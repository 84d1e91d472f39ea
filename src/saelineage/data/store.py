"""The activation store: sharded sparse codes on disk (docs/design.md §3).

A shard holds whole windows. Per shard: ``tokens``, ``window``, ``pos`` (int32[T]) and per
layer ``l{l}.indptr`` (int64[T+1]), ``l{l}.indices`` (int32[nnz]), ``l{l}.values``
(float32 or float16 [nnz]) — a CSR matrix with one row per token. Shards are written to a
temporary name and renamed, so a shard file that exists is complete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from safetensors import SafetensorError
from safetensors.numpy import load, save

from saelineage.errors import SaelineageError
from saelineage.run import RunDir, atomic_write_bytes, check

SHARD_RE = re.compile(r"^shard-(\d{5})\.safetensors$")


class LayerCodes(NamedTuple):
    """Sparse codes of one layer for the tokens of a shard (CSR, row = token)."""

    indptr: np.ndarray
    """int64 [T+1]"""
    indices: np.ndarray
    """int32 [nnz] feature ids"""
    values: np.ndarray
    """float32/float16 [nnz] activations"""

    def csr(self, d_sae: int) -> sp.csr_matrix:
        """As a scipy CSR matrix of shape (T, d_sae)."""
        t = len(self.indptr) - 1
        return sp.csr_matrix((self.values, self.indices, self.indptr), shape=(t, d_sae))

    @classmethod
    def from_csr(cls, m: sp.spmatrix, value_dtype: npt.DTypeLike = np.float32) -> LayerCodes:
        m = sp.csr_matrix(m)
        m.sum_duplicates()
        m.sort_indices()
        return cls(
            m.indptr.astype(np.int64),
            m.indices.astype(np.int32),
            m.data.astype(value_dtype),
        )


class Shard(NamedTuple):
    """One shard: token metadata and per-layer codes."""

    index: int  # type: ignore[assignment]  # NamedTuple field shadows tuple.index (public name, kept)
    tokens: np.ndarray
    """int32 [T] token ids"""
    window: np.ndarray
    """int32 [T] global window index"""
    pos: np.ndarray
    """int32 [T] position inside the window"""
    codes: dict[int, LayerCodes]


def shard_path(run: RunDir, index: int) -> Path:
    return run.activations / f"shard-{index:05d}.safetensors"


def list_shards(run: RunDir) -> list[Path]:
    """Complete shard files, in index order (temporary files are ignored)."""
    if not run.activations.is_dir():
        return []
    found = sorted(p for p in run.activations.iterdir() if SHARD_RE.match(p.name))
    return found


def write_shard(
    run: RunDir,
    index: int,
    tokens: np.ndarray,
    window: np.ndarray,
    pos: np.ndarray,
    codes: dict[int, LayerCodes],
) -> Path:
    """Write shard `index` atomically and return its path."""
    t = len(tokens)
    tensors: dict[str, np.ndarray] = {
        "tokens": np.ascontiguousarray(tokens, dtype=np.int32),
        "window": np.ascontiguousarray(window, dtype=np.int32),
        "pos": np.ascontiguousarray(pos, dtype=np.int32),
    }
    for layer, c in codes.items():
        if len(c.indptr) != t + 1:
            raise ValueError(f"layer {layer}: indptr has {len(c.indptr)} entries for {t} tokens")
        tensors[f"l{layer}.indptr"] = np.ascontiguousarray(c.indptr, dtype=np.int64)
        tensors[f"l{layer}.indices"] = np.ascontiguousarray(c.indices, dtype=np.int32)
        tensors[f"l{layer}.values"] = np.ascontiguousarray(c.values)
    # one metadata key: safetensors stores metadata in a hash map, so several keys would
    # come out in a random order and identical shards would differ byte for byte
    meta = {"saelineage": json.dumps({"n_tokens": t, "layers": sorted(codes)}, sort_keys=True)}
    run.activations.mkdir(parents=True, exist_ok=True)
    path = shard_path(run, index)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def read_shard(path: Path, layers: Iterable[int] | None = None) -> Shard:
    """Read one shard; a truncated or foreign file raises a clear error, and so does one whose bytes
    differ from the checksum collect recorded. The file is read once: hashed and parsed from the
    same bytes, so verifying costs no second read."""
    m = SHARD_RE.match(path.name)
    if m is None:
        raise SaelineageError(f"{path} is not a shard file name.", "shards are named shard-NNNNN.safetensors")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        from saelineage.hints import damaged_shard

        raise damaged_shard(path, exc) from exc
    try:
        data = load(raw)
    except (SafetensorError, OSError, ValueError) as exc:
        from saelineage.hints import damaged_shard

        raise damaged_shard(path, exc) from exc
    check(path, raw)  # after parsing, so a truncated file is reported as one
    want = sorted({int(k[1:].split(".")[0]) for k in data if k.startswith("l") and k.endswith(".indptr")})
    if layers is not None:
        missing = sorted(set(layers) - set(want))
        if missing:
            raise SaelineageError(
                f"shard {path} has no codes for layers {missing} (it has {want}).",
                "re-run `saelineage collect --force` with those layers.",
            )
        want = sorted(set(layers))
    codes = {
        layer: LayerCodes(data[f"l{layer}.indptr"], data[f"l{layer}.indices"], data[f"l{layer}.values"])
        for layer in want
    }
    return Shard(int(m.group(1)), data["tokens"], data["window"], data["pos"], codes)


def iter_shards(run: RunDir, layers: Iterable[int] | None = None) -> Iterator[Shard]:
    """Read the run's shards in order."""
    layers = None if layers is None else list(layers)
    for path in list_shards(run):
        yield read_shard(path, layers)


def token_mask(pos: np.ndarray, bos: bool, include_bos: bool) -> np.ndarray:
    """bool [T]: which tokens belong to the token set (docs/design.md §4)."""
    if bos and not include_bos:
        return pos != 0
    return np.ones(len(pos), dtype=bool)
