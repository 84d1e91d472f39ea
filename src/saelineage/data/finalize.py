"""A run's summary, features.parquet and examples.parquet: the reduction of per-shard partials.

Collect writes each shard's partial summary beside it (`SUMMARY_PARTS/summary-NNNNN`, right after
the shard, by whichever process or worker wrote the shard); the summary merges them in shard order.
A shard without a partial (an imported run, a crash between the two writes) is summarised from
the shard itself, the same way, so every route ends with the same bytes. Memory is O(d_sae · K)
per layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from saelineage import contract
from saelineage.data.store import SHARD_RE, Shard, list_shards, read_shard, token_mask
from saelineage.data.summary import PARTIAL_FIELDS, LayerSummary
from saelineage.errors import SaelineageError
from saelineage.run import RunDir, atomic_write_bytes, write_json, write_parquet


class Partial(NamedTuple):
    """The summary of one shard: its token count and per layer the arrays of LayerSummary.partial."""

    n_tokens: int
    k: int
    layers: dict[int, dict[str, np.ndarray]]


def summarize_shard(shard: Shard, d_sae: dict[int, int], k: int, bos: bool, include_bos: bool) -> Partial:
    """The partial summary of one shard (every layer it holds that `d_sae` names)."""
    mask = token_mask(shard.pos, bos, include_bos)
    out = {}
    for l in sorted(d_sae):
        acc = LayerSummary(l, d_sae[l], k)
        acc.add(shard.codes[l], mask, shard.window, shard.pos)
        out[l] = acc.partial()
    return Partial(int(mask.sum()), k, out)


def partial_path(run: RunDir, index: int) -> Path:
    return run.file(contract.SUMMARY_PARTS) / f"summary-{index:05d}.safetensors"


def drop_partial(run: RunDir, index: int) -> None:
    """Remove shard `index`'s partial before the shard is (re)written, so a partial on disk is never
    older than its shard."""
    partial_path(run, index).unlink(missing_ok=True)


def write_partial(run: RunDir, index: int, part: Partial) -> None:
    """Write shard `index`'s partial summary atomically (after the shard itself)."""
    tensors = {f"l{l}.{f}": np.ascontiguousarray(a[f]) for l, a in part.layers.items() for f in PARTIAL_FIELDS}
    meta = {"saelineage": json.dumps({"n_tokens": part.n_tokens, "k": part.k, "layers": sorted(part.layers)})}
    path = partial_path(run, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata=meta))


def read_partial(run: RunDir, index: int, layers: list[int], k: int) -> Partial | None:
    """Shard `index`'s partial summary, or None when it is absent, unreadable or made for another
    K or other layers (the caller then summarises the shard)."""
    path = partial_path(run, index)
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "np") as fh:
            meta = json.loads((fh.metadata() or {}).get("saelineage", "{}"))
        if meta.get("k") != k or not set(layers) <= set(meta.get("layers", [])):
            return None
        data = load_file(str(path))
        return Partial(int(meta["n_tokens"]), k, {l: {f: data[f"l{l}.{f}"] for f in PARTIAL_FIELDS} for l in layers})
    except (SafetensorError, OSError, ValueError, KeyError):
        return None


def summarize_run(run: RunDir, k: int = 20, progress=None, write_missing: bool = False) -> dict:
    """Merge every shard's partial summary in shard order; write features.parquet and
    examples.parquet. Returns counts. A shard without a usable partial is summarised from the
    shard itself; write_missing (collect, which owns the partials) then also saves that partial,
    so a resumed run holds the same files as an uninterrupted one."""
    manifest = run.load()
    layers, d_sae = manifest.layers, manifest.d_sae
    bos, include_bos = manifest.bos, manifest.include_bos
    acc = {l: LayerSummary(l, d_sae[l], k) for l in layers}
    shards = list_shards(run)
    if not shards:
        raise SaelineageError(f"run {run.path} has no activation shards.", "run `saelineage collect` first.")
    task = progress.add_task("summarising", total=len(shards), rate="") if progress else None
    n_tokens = 0
    for path in shards:
        m = SHARD_RE.match(path.name)
        assert m is not None  # list_shards only returns names SHARD_RE matches
        index = int(m.group(1))
        part = read_partial(run, index, layers, k)
        if part is None:
            shard = read_shard(path, layers)
            part = summarize_shard(shard, {l: d_sae[l] for l in layers}, k, bos, include_bos)
            if write_missing:
                write_partial(run, index, part)
        n_tokens += part.n_tokens
        for l in layers:
            acc[l].merge(part.layers[l], part.n_tokens)
        if progress:
            progress.advance(task)
    write_parquet(run.file(contract.FEATURES), pa.concat_tables([acc[l].features() for l in layers]))
    write_parquet(run.file(contract.EXAMPLES), pa.concat_tables([acc[l].examples() for l in layers]))
    dead = {str(l): int((acc[l].count == 0).sum()) for l in layers}
    return {"n_tokens_counted": n_tokens, "dead": dead}


def write_vocab(run: RunDir, tokenizer) -> None:
    """vocab.json: the string of every token id, for showing examples without the tokenizer."""
    n = len(tokenizer)
    strings = tokenizer.convert_ids_to_tokens(list(range(n)))
    decoded = tokenizer.batch_decode([[i] for i in range(n)])
    write_json(run.file(contract.VOCAB), {"tokens": strings, "decoded": decoded}, indent=None)


def read_vocab(run: RunDir) -> list[str] | None:
    """Decoded string of every token id (vocab.json), or None when the run has none or it is unreadable."""
    from saelineage.run import present, read_verified

    p = run.file(contract.VOCAB)
    if not present(p):  # a recorded one that is gone raises
        return None
    try:
        data = json.loads(read_verified(p))  # a damaged one raises, naming it
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    out = data.get("decoded") or data.get("tokens")
    return [str(s) for s in out] if isinstance(out, list) else None
