"""Store API: write a valid run directory from sparse codes computed elsewhere.

Activations cached by other tools (TransformerLens caches, sparsify runs, a cluster job)
can be imported; every later stage (stats, analyze, serve) then runs on them unchanged.

Example::

    import scipy.sparse as sp, numpy as np
    from saelineage.data.importer import write_run
    codes = {0: sp.csr_matrix(acts0), 1: sp.csr_matrix(acts1)}   # token x feature, >= 0
    write_run("runs/imported", codes, tokens=token_ids, window_len=128, bos=True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import save

from saelineage import contract
from saelineage.contract import new_manifest
from saelineage.data.finalize import summarize_run
from saelineage.data.store import LayerCodes, write_shard
from saelineage.errors import SaelineageError
from saelineage.run import RunDir, atomic_write_bytes, config_hash, write_json, writes_run


def _windows(n: int, window_len: int | None, window, pos) -> tuple[np.ndarray, np.ndarray, int]:
    if window is not None and pos is not None:
        window, pos = np.asarray(window, np.int32), np.asarray(pos, np.int32)
        if len(window) != n or len(pos) != n:
            raise SaelineageError("window and pos must have one entry per token.", "pass arrays of length T.")
        if np.any(np.diff(window) < 0):
            raise SaelineageError("tokens must be ordered by window.", "sort tokens by (window, pos) first.")
        counts = np.bincount(window - window.min())
        return window - window.min(), pos, int(counts.max())
    if window_len is None:
        raise SaelineageError("give either window_len or both window and pos.", "e.g. window_len=128.")
    if n % window_len:
        raise SaelineageError(
            f"{n} tokens are not a whole number of windows of {window_len}.",
            "pass window and pos arrays for ragged windows.",
        )
    return (
        np.repeat(np.arange(n // window_len, dtype=np.int32), window_len),
        np.tile(np.arange(window_len, dtype=np.int32), n // window_len),
        window_len,
    )


@writes_run("collect", create=True, again="`write_run(...)` with force=True")
def write_run(
    run_dir: str | Path,
    codes: Mapping[int, sp.spmatrix],
    tokens: Sequence[int] | np.ndarray,
    *,
    window_len: int | None = None,
    window: np.ndarray | None = None,
    pos: np.ndarray | None = None,
    bos: bool = False,
    include_bos: bool = False,
    decoders: Mapping[int, np.ndarray] | None = None,
    decoder_thresholds: Mapping[int, np.ndarray] | None = None,
    vocab: Sequence[str] | None = None,
    hooks: Mapping[int, str] | None = None,
    model: dict | None = None,
    shard_windows: int = 64,
    examples_k: int = 20,
    force: bool = False,
) -> RunDir:
    """Write a complete run directory (shards, manifest, features/examples) from codes.

    codes: {layer: scipy sparse [T, d_sae]} with activations >= 0 (row = token);
    tokens: int [T]; window_len: tokens per window (or window/pos arrays, int [T]);
    bos: windows start with BOS (position 0 is then left out of statistics);
    decoders: {layer: float [d_sae, d_in]} enables dec_cosine and the data-free match;
    decoder_thresholds: {layer: float [d_sae]} JumpReLU thresholds, folded into the decoder rows
    by the data-free match (stats/sae_match.py); vocab: token strings.
    """
    run = RunDir(run_dir)
    if run.exists():
        if not force:
            raise SaelineageError(f"{run.path} already holds a run.", "choose another directory or pass force=True.")
        run.clear()
    tokens = np.asarray(tokens, np.int32)
    n = len(tokens)
    if not codes:
        raise SaelineageError("no layers given.", "pass codes={layer: csr_matrix}.")
    layers = sorted(int(l) for l in codes)
    mats: dict[int, sp.csr_matrix] = {}
    for l in layers:
        m = sp.csr_matrix(codes[l])
        if m.shape[0] != n:
            raise SaelineageError(f"layer {l} codes have {m.shape[0]} rows for {n} tokens.", "one row per token.")
        if m.nnz and (not np.all(np.isfinite(m.data)) or m.data.min() < 0):
            raise SaelineageError(
                f"layer {l} codes hold negative or non-finite values.", "SAE activations must be finite and >= 0."
            )
        m.eliminate_zeros()
        mats[l] = m
    win, ps, wlen = _windows(n, window_len, window, pos)
    n_windows = int(win.max()) + 1 if n else 0
    hook = {l: (hooks or {}).get(l, f"layer{l}") for l in layers}
    manifest = new_manifest(
        config_hash=config_hash({"imported": True, "n": n, "layers": layers}),
        model=model or {"spec": "imported"},
        saes={l: {"hook_name": hook[l], "d_sae": int(mats[l].shape[1])} for l in layers},
        layers=layers,
        hooks=hook,
        d_sae={l: int(mats[l].shape[1]) for l in layers},
        corpus={"spec": "imported"},
        window=wlen,
        bos=bos,
        include_bos=bool(include_bos),
        n_windows=n_windows,
        n_tokens=n,
        shard_windows=shard_windows,
        thresholds={"active": 0.0},
    )
    run.save(manifest)
    if decoders:
        arrays = {}
        for l, w in decoders.items():
            w = np.ascontiguousarray(w, np.float32)
            if w.shape[0] != mats[int(l)].shape[1]:
                raise SaelineageError(
                    f"decoder of layer {l} has {w.shape[0]} rows, codes have {mats[int(l)].shape[1]} features.",
                    "decoders are [d_sae, d_in].",
                )
            arrays[f"l{int(l)}.W_dec"] = w
            manifest.saes[int(l)]["decoder_file"] = contract.DECODERS
            th = (decoder_thresholds or {}).get(l)
            if th is not None:
                th = np.ascontiguousarray(th, np.float32).reshape(-1)
                if th.shape[0] != w.shape[0]:
                    raise SaelineageError(
                        f"layer {l} has {th.shape[0]} thresholds for {w.shape[0]} decoder rows.",
                        "thresholds are [d_sae] (one per feature).",
                    )
                arrays[f"l{int(l)}.threshold"] = th
        atomic_write_bytes(run.file(contract.DECODERS), save(arrays))
    if vocab is not None:
        write_json(run.file(contract.VOCAB), {"tokens": list(vocab), "decoded": list(vocab)}, indent=None)
    run.save(manifest)
    with run.stage("collect", imported=True) as info:
        for i, w0 in enumerate(range(0, n_windows, shard_windows)):
            rows = np.nonzero((win >= w0) & (win < w0 + shard_windows))[0]
            lo, hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
            write_shard(
                run, i, tokens[lo:hi], win[lo:hi], ps[lo:hi], {l: LayerCodes.from_csr(mats[l][lo:hi]) for l in layers}
            )
        info.update(summarize_run(run, examples_k))
    return run
