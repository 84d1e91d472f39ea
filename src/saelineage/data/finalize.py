"""Summary pass over a run's shards: features.parquet and examples.parquet.

Collection and the store API both end here, so an imported run and a collected one have
the same files. One streaming pass; memory is O(d_sae · K) per layer.
"""

from __future__ import annotations

import json

import pyarrow as pa

from saelineage import contract
from saelineage.data.store import iter_shards, list_shards, token_mask
from saelineage.data.summary import LayerSummary
from saelineage.errors import SaelineageError
from saelineage.run import RunDir, write_json, write_parquet


def summarize_run(run: RunDir, k: int = 20, progress=None) -> dict:
    """Stream all shards once; write features.parquet and examples.parquet. Returns counts."""
    manifest = run.load()
    layers, d_sae = manifest.layers, manifest.d_sae
    bos, include_bos = manifest.bos, manifest.include_bos
    acc = {l: LayerSummary(l, d_sae[l], k) for l in layers}
    n_shards = len(list_shards(run))
    if n_shards == 0:
        raise SaelineageError(f"run {run.path} has no activation shards.", "run `saelineage collect` first.")
    task = progress.add_task("summarising", total=n_shards, rate="") if progress else None
    n_tokens = 0
    for shard in iter_shards(run, layers):
        mask = token_mask(shard.pos, bos, include_bos)
        n_tokens += int(mask.sum())
        for l in layers:
            acc[l].add(shard.codes[l], mask, shard.window, shard.pos)
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
    p = run.file(contract.VOCAB)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    out = data.get("decoded") or data.get("tokens")
    return [str(s) for s in out] if isinstance(out, list) else None
