"""The activation store: sharded sparse codes on disk (docs/design.md §3).

A shard holds whole windows. Per shard: ``tokens``, ``window``, ``pos`` (int32[T]) and per
layer ``l{l}.indptr`` (int64[T+1]), ``l{l}.indices`` (int32[nnz]), ``l{l}.values``
(float32 or float16 [nnz]) — a CSR matrix with one row per token. Shards are written to a
temporary name and renamed, so a shard file that exists is complete.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from io import RawIOBase
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from safetensors import SafetensorError
from safetensors.numpy import load, save

from saelineage import checksum
from saelineage.contract import ACTIVATIONS
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


def collected_shards(run: RunDir) -> list[Path]:
    """The shards a reader uses, in index order. When collect recorded what it wrote, exactly
    those: a missing one is an error (reading the others would silently drop its tokens), and so is
    a shard file it did not write (copied in from elsewhere). Unrecorded runs: every shard file."""
    from saelineage.run import present

    found = list_shards(run)
    if run.load().status("collect") != "complete":
        return found
    recorded = sorted(
        run.path / rel
        for rel, (stage, _) in checksum.records_of(run.path).items()
        if stage == "collect" and rel.startswith(f"{ACTIVATIONS}/")
    )
    if not recorded:  # written before checksums
        return found
    for p in recorded:
        present(p)  # raises for a missing one
    extra = sorted(set(found) - set(recorded))
    if extra:
        from saelineage.hints import damaged_shard

        raise damaged_shard(extra[0], "collect did not write it: the manifest records no such shard")
    return recorded


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
    differ from the checksum collect recorded. The first read in a process reads the file whole:
    hashed and parsed from the same bytes, so verifying costs no second read. Once verified
    (checksum.verified: the file unchanged since, its record too), or when nothing is recorded for
    it, only the header and the tensors asked for are read."""
    m = SHARD_RE.match(path.name)
    if m is None:
        raise SaelineageError(f"{path} is not a shard file name.", "shards are named shard-NNNNN.safetensors")
    try:
        with open(path, "rb", buffering=0) as fh:
            st = os.fstat(fh.fileno())  # before reading: a change while reading changes it
            known = checksum.expected(path)
            if known is not None and not checksum.verified(path, st, known[1]):
                raw = fh.readall()
                data = load(raw)
                check(path, raw)  # after parsing, so a truncated file is reported as one
                checksum.mark_verified(path, st, known[1])
                names, get = list(data), data.__getitem__
            else:
                names, get = _tensor_reader(fh, st.st_size)
            want = sorted({int(k[1:].split(".")[0]) for k in names if k.startswith("l") and k.endswith(".indptr")})
            if layers is not None:
                missing = sorted(set(layers) - set(want))
                if missing:
                    raise SaelineageError(
                        f"shard {path} has no codes for layers {missing} (it has {want}).",
                        "re-run `saelineage collect --force` with those layers.",
                    )
                want = sorted(set(layers))
            codes = {
                layer: LayerCodes(get(f"l{layer}.indptr"), get(f"l{layer}.indices"), get(f"l{layer}.values"))
                for layer in want
            }
            return Shard(int(m.group(1)), get("tokens"), get("window"), get("pos"), codes)
    except (SafetensorError, OSError, ValueError, struct.error) as exc:
        from saelineage.hints import damaged_shard

        raise damaged_shard(path, exc) from exc


_HEADER_SIZE = struct.Struct("<Q")  # safetensors: the JSON header's length, little-endian u64
_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}
"""The dtypes a shard's tensors are stored in."""


def read_into(fh: RawIOBase, out: np.ndarray, offset: int, short: str = "file shorter than its header says") -> None:
    """Fill `out` (a contiguous array) with the bytes of the open file `fh` from `offset` on;
    ValueError(`short`) if the file ends first."""
    view = out.data.cast("B")
    fh.seek(offset)
    while view:
        n = fh.readinto(view)
        if not n:
            raise ValueError(short)
        view = view[n:]


def _tensor_reader(fh: RawIOBase, size_all: int) -> tuple[list[str], Callable[[str], np.ndarray]]:
    """The tensor names of the open safetensors file `fh` (of `size_all` bytes), from its header,
    and a function that reads one of them (only its bytes)."""
    fh.seek(0)
    (size,) = _HEADER_SIZE.unpack(fh.read(_HEADER_SIZE.size) or b"")
    if _HEADER_SIZE.size + size > size_all:
        raise ValueError("file shorter than its header says")
    text = np.empty(size, np.uint8)
    read_into(fh, text, _HEADER_SIZE.size)
    header = json.loads(text.tobytes())
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    base = _HEADER_SIZE.size + size

    def get(name: str) -> np.ndarray:
        meta = header[name]  # a tensor the file lacks: KeyError, as from load()'s dict
        try:
            dtype = np.dtype(_DTYPES[meta["dtype"]])
            shape = [int(n) for n in meta["shape"]]
            begin, end = (int(o) for o in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"tensor {name}: unreadable header entry {meta!r}") from exc
        count = int(np.prod(shape, dtype=np.int64))
        if begin < 0 or end - begin != count * dtype.itemsize or base + end > size_all:
            raise ValueError(f"tensor {name}: its data offsets do not fit its shape or the file")
        out = np.empty(count, dtype)
        read_into(fh, out.view(np.uint8), base + begin)
        return out.reshape(shape)

    return [k for k in header if k != "__metadata__"], get


def iter_shards(run: RunDir, layers: Iterable[int] | None = None) -> Iterator[Shard]:
    """Read the run's shards in order."""
    layers = None if layers is None else list(layers)
    for path in collected_shards(run):
        yield read_shard(path, layers)


def token_mask(pos: np.ndarray, bos: bool, include_bos: bool) -> np.ndarray:
    """bool [T]: which tokens belong to the token set (docs/design.md §4)."""
    if bos and not include_bos:
        return pos != 0
    return np.ones(len(pos), dtype=bool)
