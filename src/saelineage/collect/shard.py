"""One shard of collection: encode windows [w0, w1) with every layer's SAE, then write the shard
and its partial summary. The single-process stage and the Ray workers both run exactly this, so a
shard's bytes do not depend on who wrote it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from saelineage.data.finalize import drop_partial, summarize_shard, write_partial
from saelineage.data.store import LayerCodes, Shard, write_shard
from saelineage.errors import SaelineageError
from saelineage.run import RunDir


def _check_finite(x: torch.Tensor, layer: int, windows: np.ndarray) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        b, s = (int(v) for v in torch.nonzero(bad.any(-1))[0])
        raise SaelineageError(
            f"non-finite residual (NaN/inf) at layer {layer}, window {int(windows[b])}, position {s}.",
            "use --dtype float32, check the model weights, or exclude that text; complete shards are kept.",
        )


def concat_codes(parts: list[LayerCodes]) -> LayerCodes:
    """Stack CSR blocks of consecutive tokens."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(p.indices) for p in parts[:-1]])
    indptr = np.concatenate([parts[0].indptr[:1]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
    return LayerCodes(
        indptr.astype(np.int64), np.concatenate([p.indices for p in parts]), np.concatenate([p.values for p in parts])
    )


def encode_shard(
    adapter,
    saes: dict,
    layers: list[int],
    ids: np.ndarray,
    index: int,
    w0: int,
    w1: int,
    batch_windows: int,
    on_batch: Callable[[int], None] | None = None,
) -> Shard:
    """Shard `index`: windows ids[w0:w1] (int64 [n, S]) run in batches of `batch_windows`, each
    layer's residual encoded by saes[layer]. on_batch(tokens) after each forward pass."""
    window_len = ids.shape[1]
    parts: dict[int, list[LayerCodes]] = {l: [] for l in layers}
    hooks = [saes[l].hook for l in layers]
    for b0 in range(w0, w1, batch_windows):
        b1 = min(b0 + batch_windows, w1)
        res = adapter.residuals(torch.from_numpy(ids[b0:b1]), hooks)
        for l in layers:
            x = res[saes[l].hook].reshape(-1, adapter.width(saes[l].hook))
            _check_finite(x.view(b1 - b0, window_len, -1), l, np.arange(b0, b1))
            parts[l].append(saes[l].encode_sparse(x.to(saes[l].W_enc.dtype)))
        if on_batch:
            on_batch((b1 - b0) * window_len)
    return Shard(
        index,
        ids[w0:w1].reshape(-1).astype(np.int32),
        np.repeat(np.arange(w0, w1, dtype=np.int32), window_len),
        np.tile(np.arange(window_len, dtype=np.int32), w1 - w0),
        {l: concat_codes(parts[l]) for l in layers},
    )


def store_shard(run: RunDir, shard: Shard, d_sae: dict[int, int], k: int, bos: bool, include_bos: bool) -> None:
    """Write the shard, then its partial summary (the old partial goes first, so a partial on
    disk always belongs to the shard beside it)."""
    drop_partial(run, shard.index)
    write_shard(run, shard.index, shard.tokens, shard.window, shard.pos, shard.codes)
    write_partial(run, shard.index, summarize_shard(shard, d_sae, k, bos, include_bos))
