"""Batched causal ablations of upstream SAE features, measured on downstream features.

Definition (the contract of `saelineage ablate`)
-------------------------------------------------
Ablating latent i of the SAE at hook l removes exactly i's contribution to the SAE's
reconstruction and keeps everything else, including the SAE error:

    s' = decode(a with a_i := 0) + (s - decode(a))  =  s - [decode(a) - decode(a with a_i := 0)]
       = s - a_i(t) · W_dec[i]                       (plain SAEs)

where s is the SAE input at hook l (the residual, mean-centred when the run centres
residuals) and a = encode(s) are the clean codes. Only i's own write changes, on every token
of the token set (BOS excluded unless the run includes it); for a TopK SAE the other
latents' codes are *not* re-selected. Which latents fire at later hooks changes only through
the model's response to the edited residual. In model space the residual becomes
x' = x - delta with delta = a_i(t) · W_dec[i]: with centring, x = s + mean(x), so adding the
uncentred offset back to s' gives the same x'. (A mean component of W_dec[i] is invisible to
the model's LayerNorms and is removed again by centring at the next hook.) For SAEs with a
run-time normalisation (layer_norm, constant_norm_rescale) or decoder-norm rescaling, delta
is scaled exactly as `SAE.decode` scales a single latent's write.

Effect of ablating i on a downstream feature j at hook m: on tokens t where j was active in
the clean run (a_j(t) > threshold), drop(t) = a_j(t) - a_j'(t) (positive = j decreased).
Reported per pair: token count, mean clean activation, mean and median drop, relative drop
(mean drop / mean clean activation) and the share of those tokens where j switched off.

Batching: each row of a forward batch is one (upstream feature, window) job, so one pass
ablates many different features. Windows where i never fires on the token set are not run
(delta = 0 there, so j's drop is exactly 0); with the run's stored codes (`stored.py`) they
are known before any pass, so they get no clean pass either. Clean residuals at hook l are cached and the
pass restarts at hook l (see forward.py), stopping at the deepest downstream hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch

from saelineage.causal.engine import Engine, Plan

EFFECT_COLUMNS = (
    "n_tokens",
    "n_windows",
    "n_windows_ablated",
    "mean_clean",
    "mean_drop",
    "median_drop",
    "rel_drop",
    "frac_off",
)


# ---- one latent's write (closed form) ------------------------------------------------------------------
def ablation_delta(sae, s: torch.Tensor, codes: torch.Tensor, feature: int) -> torch.Tensor:
    """Residual change [N, d_in] that ablates `feature`: decode(codes) - decode(codes without it).

    s: SAE input [N, d_in]; codes: clean codes [N, d_sae]. Closed form; equals the decode
    difference (tested) without decoding twice."""
    a = codes[:, feature].to(s.dtype)
    scale = sae.write_scale(s)
    if scale is not None:
        a = a * scale
    return a[:, None] * sae.write_directions([feature])[0][None, :]


# ---- the engine ----------------------------------------------------------------------------------------
class AblationResult(NamedTuple):
    table: pa.Table
    """One row per input pair: src_layer, src, dst_layer, dst + EFFECT_COLUMNS."""
    tokens: list[dict[str, np.ndarray]] | None
    """Per pair (when asked): window, pos, clean, ablated arrays over its measured tokens."""
    info: dict


def _effects(clean: np.ndarray, abl: np.ndarray, threshold: float) -> dict[str, float]:
    if len(clean) == 0:
        return {
            "mean_clean": np.nan,
            "mean_drop": np.nan,
            "median_drop": np.nan,
            "rel_drop": np.nan,
            "frac_off": np.nan,
        }
    drop = clean.astype(np.float64) - abl.astype(np.float64)
    mc = float(clean.astype(np.float64).mean())
    md = float(drop.mean())
    return {
        "mean_clean": mc,
        "mean_drop": md,
        "median_drop": float(np.median(drop)),
        "rel_drop": md / mc if mc > 0 else np.nan,
        "frac_off": float((abl <= threshold).mean()),
    }


def ablate_pairs(
    adapter,
    saes: dict,
    ids: torch.Tensor,
    pairs: np.ndarray,
    pair_windows: Sequence[np.ndarray] | None = None,
    token_mask: np.ndarray | None = None,
    threshold: float = 0.0,
    batch_rows: int = 32,
    skip_prefix: bool = True,
    prune: bool = True,
    one_feature_per_forward: bool = False,
    keep_tokens: bool = False,
    cache_bytes: int = 256 << 20,
    progress=None,
    stored=None,
) -> AblationResult:
    """Ablate every distinct upstream feature of `pairs` and measure its paired downstream features.

    ids: int64 [W, S] token windows; pairs: int [P, 4] rows (src_layer, src, dst_layer, dst);
    pair_windows[p]: indices into ids of the windows pair p is measured on (default: all);
    token_mask: bool [W, S] token set (default: all positions) — ablation and measurement use
    only these positions; threshold: j is active when its clean code > threshold.
    batch_rows: (feature, window) jobs per forward pass; skip_prefix: restart passes at hook l
    from cached residuals; prune: skip windows where the upstream feature never fires;
    one_feature_per_forward: the naive baseline (each pass ablates a single feature).
    cache_bytes bounds the cached clean residuals (windows per chunk x upstream layers).
    stored: the run's clean codes of these windows (`StoredCodes`, covering every pair's upstream
    feature and target): windows where the upstream feature does not fire are then measured from
    the store (drop exactly 0) and get no forward pass at all, clean or ablated.
    Returns one row per pair, in input order (duplicate pairs get identical rows).
    """

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 4)
    n_win, seq = ids.shape
    if pair_windows is None:
        pair_windows = [np.arange(n_win)] * len(pairs)
    pair_windows = [np.unique(np.asarray(w, dtype=np.int64)) for w in pair_windows]
    mask = np.ones((n_win, seq), bool) if token_mask is None else np.asarray(token_mask, bool)
    acc = _Acc(len(pairs))
    info = {"forward_passes": 0, "rows": 0, "skip_prefix": bool(skip_prefix), "jobs_pruned": 0}
    if len(pairs):
        possible = _n_feature_windows(pairs, pair_windows)
        run_windows = pair_windows if stored is None else _measure_silent(pairs, pair_windows, stored, threshold, acc)
        plan = Plan(saes, pairs, run_windows)
        per_window = seq * adapter.d_model * torch.finfo(adapter.dtype).bits // 8 * max(1, len(plan.src_layers))
        chunk = max(batch_rows, cache_bytes // per_window // batch_rows * batch_rows)
        Engine(
            adapter,
            saes,
            ids,
            mask,
            plan,
            acc,
            threshold,
            batch_rows,
            skip_prefix,
            prune,
            one_feature_per_forward,
            info,
        ).run(chunk, progress)
        info["jobs_pruned"] = int(possible - info.get("jobs", 0))
    return _assemble(pairs, pair_windows, acc, threshold, keep_tokens, info)


def _n_feature_windows(pairs: np.ndarray, pair_windows: Sequence[np.ndarray]) -> int:
    """(upstream feature, window) jobs there would be without pruning."""
    seen: dict[tuple[int, int], set] = {}
    for (l, f, _, _), w in zip(pairs.tolist(), pair_windows):
        seen.setdefault((l, f), set()).update(w.tolist())
    return sum(len(v) for v in seen.values())


def _measure_silent(
    pairs: np.ndarray, pair_windows: list[np.ndarray], stored, threshold: float, acc: _Acc
) -> list[np.ndarray]:
    """Record, from the store, every (pair, window) where the upstream feature does not fire (drop 0);
    return per pair the windows left to run."""
    fires: dict[tuple[int, int], np.ndarray] = {}
    out = []
    for p, ((l, f, m, j), w) in enumerate(zip(pairs.tolist(), pair_windows)):
        if (l, f) not in fires:
            fires[(l, f)] = stored.fires(l, f)
        on = fires[(l, f)][w]
        for x in w[~on].tolist():
            pos, clean = stored.active(m, j, x, threshold)
            acc.add(p, x, pos, clean, clean.copy())
        out.append(w[on])
    return out


class _Acc:
    """Per-pair measurements: lists of (clean, ablated, (window, pos)) arrays."""

    def __init__(self, n: int) -> None:
        self.clean: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.abl: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.where: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.n_ablated = np.zeros(n, np.int64)

    def add(self, p: int, window: int, pos: np.ndarray, clean: np.ndarray, abl: np.ndarray) -> None:
        self.clean[p].append(clean)
        self.abl[p].append(abl)
        self.where[p].append(np.stack([np.full(len(pos), window), pos], axis=1))


def _assemble(pairs, pair_windows, acc: _Acc, threshold, keep_tokens, info) -> AblationResult:
    cols: dict[str, list] = {c: [] for c in EFFECT_COLUMNS}
    tokens: list[dict[str, np.ndarray]] | None = [] if keep_tokens else None
    for p in range(len(pairs)):
        c = np.concatenate(acc.clean[p]) if acc.clean[p] else np.zeros(0, np.float32)
        a = np.concatenate(acc.abl[p]) if acc.abl[p] else np.zeros(0, np.float32)
        cols["n_tokens"].append(len(c))
        cols["n_windows"].append(len(pair_windows[p]))
        cols["n_windows_ablated"].append(int(acc.n_ablated[p]))
        for k, v in _effects(c, a, threshold).items():
            cols[k].append(v)
        if tokens is not None:
            wh = np.concatenate(acc.where[p]) if acc.where[p] else np.zeros((0, 2), np.int64)
            order = np.lexsort((wh[:, 1], wh[:, 0]))
            tokens.append({"window": wh[order, 0], "pos": wh[order, 1], "clean": c[order], "ablated": a[order]})
    table = pa.table(
        {
            "src_layer": pa.array(pairs[:, 0], pa.int32()),
            "src": pa.array(pairs[:, 1], pa.int32()),
            "dst_layer": pa.array(pairs[:, 2], pa.int32()),
            "dst": pa.array(pairs[:, 3], pa.int32()),
            "n_tokens": pa.array(cols["n_tokens"], pa.int64()),
            "n_windows": pa.array(cols["n_windows"], pa.int64()),
            "n_windows_ablated": pa.array(cols["n_windows_ablated"], pa.int64()),
            **{k: pa.array(cols[k], pa.float64()) for k in EFFECT_COLUMNS[3:]},
        }
    )
    return AblationResult(table, tokens, info)
