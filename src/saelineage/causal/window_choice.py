"""Which corpus windows to run: read from the run's activation store, never from a model."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from saelineage.causal.stored import StoredCodes
from saelineage.data.store import iter_shards, read_shard, shard_path, token_mask
from saelineage.run import RunDir


def active_windows(
    run: RunDir, wanted: dict[int, np.ndarray], threshold: float = 0.0
) -> dict[tuple[int, int], np.ndarray]:
    """Windows (sorted, unique int64) where each wanted feature is active on the token set.

    wanted: {layer: feature ids}. One streaming pass over the shards; independent of sharding."""
    m = run.load()
    bos, include_bos = m.bos, m.include_bos
    layers = sorted(l for l, f in wanted.items() if len(f))
    feats = {l: np.unique(np.asarray(wanted[l], dtype=np.int64)) for l in layers}
    hits: dict[int, list[np.ndarray]] = {l: [] for l in layers}
    for shard in iter_shards(run, layers):
        keep = token_mask(shard.pos, bos, include_bos)
        for l in layers:
            csr = shard.codes[l].csr(m.d_sae[l])[np.flatnonzero(keep)][:, feats[l]].tocoo()
            on = csr.data > threshold
            win = shard.window[np.flatnonzero(keep)][csr.row[on]].astype(np.int64)
            hits[l].append(np.stack([csr.col[on].astype(np.int64), win], axis=1))
    out: dict[tuple[int, int], np.ndarray] = {}
    for l in layers:
        allh = np.unique(np.concatenate(hits[l]), axis=0) if hits[l] else np.zeros((0, 2), np.int64)
        split = np.searchsorted(allh[:, 0], np.arange(len(feats[l]) + 1))
        for k, f in enumerate(feats[l]):
            out[(l, int(f))] = allh[split[k] : split[k + 1], 1]
    return out


def window_rank(n_windows: int, seed: int) -> np.ndarray:
    """A seeded random rank for every window of the run: int64 [n_windows]."""
    return np.random.default_rng([int(seed), 0x5A11]).permutation(int(n_windows)).astype(np.int64)


def choose(windows: np.ndarray, k: int, rank: np.ndarray) -> np.ndarray:
    """Up to k of `windows` (sorted): those first in the shared random `rank`.

    Per feature this is a uniform random draw among the windows where it is active; across
    features the draws are coordinated (features active in the same windows get the same
    ones), so the union of windows to run stays small and the clean passes are shared."""
    windows = np.asarray(windows, dtype=np.int64)
    if len(windows) <= k:
        return windows
    return np.sort(windows[np.argsort(rank[windows], kind="stable")[:k]])


def load_windows(run: RunDir, windows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Token ids int64 [W, S] and the token-set mask bool [W, S] of `windows` (in the given order)."""
    ids, mask, _ = _read_windows(run, windows, {})
    return ids, mask


def load_windows_with_codes(
    run: RunDir, windows: np.ndarray, keep: dict[int, np.ndarray]
) -> tuple[torch.Tensor, np.ndarray, StoredCodes]:
    """As `load_windows`, plus the stored clean codes of the `keep` {layer: features} on those windows."""
    return _read_windows(run, windows, keep)


def _read_windows(run: RunDir, windows: np.ndarray, keep: dict[int, np.ndarray]):
    m = run.load()
    windows = np.asarray(windows, dtype=np.int64)
    seq = m.window
    ids = np.zeros((len(windows), seq), np.int64)
    pos = np.zeros((len(windows), seq), np.int32)
    where = {int(w): r for r, w in enumerate(windows)}
    layers = sorted(int(l) for l in keep)
    parts: dict[int, list] = {l: [] for l in layers}
    at: list[np.ndarray] = []  # store row of each part row, as w_local * seq + position index
    for s in sorted({int(w) // m.shard_windows for w in windows}):
        shard = read_shard(shard_path(run, s), layers=layers)
        csr = {l: shard.codes[l].csr(m.d_sae[l]) for l in layers}  # once per shard
        for w in np.unique(shard.window):
            if int(w) in where:
                sel = np.flatnonzero(shard.window == w)
                r = where[int(w)]
                ids[r] = shard.tokens[sel]
                pos[r] = shard.pos[sel]
                at.append(r * seq + np.arange(len(sel)))
                for l in layers:
                    parts[l].append(csr[l][sel])
    mask = token_mask(pos.reshape(-1), m.bos, m.include_bos).reshape(pos.shape)
    stored = None
    if layers:
        order = np.argsort(np.concatenate(at)) if at else np.zeros(0, np.int64)
        codes = {
            l: sp.vstack(parts[l]).tocsr()[order] if parts[l] else sp.csr_matrix((len(windows) * seq, m.d_sae[l]))
            for l in layers
        }
        stored = StoredCodes(codes, mask, keep)
    return torch.from_numpy(ids), mask, stored
