"""A small synthetic run with planted structure: the browser's tests and benchmark, and a way to
try the browser without a model (`build_sample_run("runs/sample")`, then `saelineage serve`).

Layer-0 features detect tokens; each later layer carries some features on, forms AND / OR
gates of two parents, splits a parent by the next token, adds new features and leaves some
dead. Codes go through the store API (`write_run`), then the real `stats` / `analyze`
stages. Feature (0, 0) gets a label that would run script if it were ever injected as HTML.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from saelineage.run import RunDir

HOSTILE_LABEL = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def _vocab(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    words = {" the", " of", " and", ",", ".", "\n", " cat", " dog", " Paris", " 1999"}
    while len(words) < n:
        k = int(rng.integers(2, 7))
        words.add((" " if rng.random() < 0.7 else "") + "".join(rng.choice(list(string.ascii_lowercase), k)))
    return sorted(words)


def synthetic_codes(
    n_layers: int = 4, d_sae: int = 48, n_windows: int = 64, window: int = 32, vocab_size: int = 120, seed: int = 0
) -> tuple[dict[int, sp.csr_matrix], np.ndarray, list[str]]:
    """Planted codes {layer: csr [T, d_sae]}, token ids [T] and vocab strings."""
    rng = np.random.default_rng(seed)
    t = n_windows * window
    tokens = rng.integers(1, vocab_size, t).astype(np.int32)
    tokens[::window] = 0  # BOS
    acts = np.zeros((n_layers, t, d_sae), np.float32)
    for f in range(d_sae - 2):  # layer 0: token detectors; the last two features are dead
        ids = rng.choice(np.arange(1, vocab_size), 2, replace=False)
        on = np.isin(tokens, ids)
        acts[0, on, f] = 1 + rng.random(on.sum()).astype(np.float32) * 4
    nxt = np.roll(tokens, -1)
    for layer in range(1, n_layers):
        prev = acts[layer - 1]
        for f in range(d_sae - 2):
            kind = f % 6
            a, b = rng.choice(d_sae - 2, 2, replace=False)
            if kind in (0, 1):  # carried, with some noise
                keep = rng.random(t) < 0.93
                acts[layer, :, f] = prev[:, a] * keep * (0.8 + 0.4 * rng.random())
            elif kind == 2:  # AND gate of a and b, widened so it has support
                both = (prev[:, a] > 0) | (prev[:, b] > 0)
                acts[layer, both & (rng.random(t) < 0.5), f] = 2.0
                acts[layer, (prev[:, a] > 0) & (prev[:, b] > 0), f] = 3.0
            elif kind == 3:  # OR gate
                acts[layer, :, f] = np.maximum(prev[:, a], prev[:, b])
            elif kind == 4:  # split of parent a by the parity of the next token
                acts[layer, :, f] = prev[:, a] * (nxt % 2 == (f // 6) % 2)
            else:  # new feature
                ids = rng.choice(np.arange(1, vocab_size), 3, replace=False)
                on = np.isin(tokens, ids)
                acts[layer, on, f] = 0.5 + rng.random(on.sum()).astype(np.float32)
    codes = {l: sp.csr_matrix(acts[l]) for l in range(n_layers)}
    return codes, tokens, ["<bos>"] + _vocab(vocab_size - 1)


def build_sample_run(
    path: str | Path,
    n_layers: int = 4,
    d_sae: int = 48,
    n_windows: int = 64,
    window: int = 32,
    seed: int = 0,
    hostile_label: bool = True,
) -> RunDir:
    """Write a complete synthetic run to `path`: the store API (standing in for collect), then the
    real stats and analyze stages."""
    from saelineage.data.importer import write_run
    from saelineage.lineage.stage import run_analyze
    from saelineage.stats.stage import run_stats

    codes, tokens, vocab = synthetic_codes(n_layers, d_sae, n_windows, window, seed=seed)
    rng = np.random.default_rng(seed + 1)
    decoders = {l: rng.standard_normal((d_sae, 16)).astype(np.float32) for l in codes}
    run = write_run(
        path,
        codes,
        tokens,
        window_len=window,
        bos=True,
        vocab=vocab,
        decoders=decoders,
        model={"spec": "imported", "name": "synthetic"},
        shard_windows=16,
        examples_k=10,
        force=True,
    )
    run_stats(run.path, progress=False)
    run_analyze(run.path, progress=False)
    if hostile_label:
        _plant_hostile_label(run)
    return run


def _plant_hostile_label(run: RunDir) -> None:
    """Give feature (0, 0) a label that would run script if it were ever injected as HTML."""
    from saelineage.run import write_parquet

    write_parquet(
        run.file("labels.parquet"),
        pa.table(
            {
                "layer": pa.array([0], pa.int64()),
                "feature": pa.array([0], pa.int64()),
                "explanation": [HOSTILE_LABEL],
                "source": ["test"],
            }
        ),
    )
