"""Disappeared, or hidden in the SAE error? For features that end at layer l.

A feature i at hook l "ends" when no feature at the next hook m continues it. Its direction
may still be in the residual stream at m without any m-latent reading it: then it sits in
m's SAE error e_m = s_m - decode_m(encode_m(s_m)). On tokens where i is active we project
e_m onto i's unit write direction u_i and compare with what i itself wrote there:

    error_proj      = mean_t <e_m(t), u_i>                         (t: i active)
    error_proj_rel  = Σ_t <e_m(t), u_i> / Σ_t a_i(t)·||write_i||  (share of i's write found in the error)
    error_proj_base = mean <e_m(t), u_i> over token-set tokens where i is not active (the baseline)
    resid_proj_rel  = Σ_t <s_m(t), u_i> / Σ_t a_i(t)·||write_i||  (share of the direction in the whole residual)

error_proj_rel well above 0 (and above the baseline) means the feature is still there, but the
next SAE does not represent it: "hidden in the error" rather than gone.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from saelineage import contract
from saelineage.errors import SaelineageError
from saelineage.feature_table import read_features
from saelineage.run import RunDir, read_parquet

ERROR_COLUMNS = (
    "error_next_layer",
    "error_proj_tokens",
    "error_proj",
    "error_proj_rel",
    "error_proj_base",
    "resid_proj_rel",
)


def ending_features(run: RunDir, measure: str = "pearson", threshold: float = 0.5) -> tuple[dict[int, np.ndarray], str]:
    """{layer: ids of live features with no successor} for every layer that has a next layer, and a note.

    Uses analyze's `lifecycle` (feature_analysis.parquet) when present: 'ending' and 'new+ending'
    (a feature that is new at l and ends there has no successor either); otherwise live features with
    no edge to the next layer whose `measure` ≥ `threshold` (the rule of arXiv:2410.08869: pearson ≥ 0.5)."""
    layers = sorted(run.load().layers)
    nxt = dict(zip(layers[:-1], layers[1:]))
    feats = read_features(run, columns=["n_active", "lifecycle"])
    layer_col = feats.column("layer").to_numpy()
    fid = feats.column("feature").to_numpy()
    out: dict[int, np.ndarray] = {}
    if "lifecycle" in feats.column_names:
        life = np.asarray(feats.column("lifecycle").to_pylist(), dtype=object)
        for l in nxt:
            ends = (life == "ending") | (life == "new+ending")
            out[l] = np.sort(fid[(layer_col == l) & ends].astype(np.int64))
        return out, "features without a successor by analyze (lifecycle 'ending' or 'new+ending')"
    if not run.file(contract.EDGES).is_file():
        raise SaelineageError(
            f"no lifecycle ({contract.FEATURE_ANALYSIS}) and no edges.parquet.",
            "run `saelineage stats RUN` (and `saelineage analyze RUN`) first.",
        )
    edges = read_parquet(run.file(contract.EDGES), columns=["src_layer", "src", "dst_layer", measure])
    live = feats.column("n_active").to_numpy() > 0
    for l, nl in nxt.items():
        e = edges.filter(
            pc.and_(
                pc.and_(pc.equal(edges["src_layer"], l), pc.equal(edges["dst_layer"], nl)),
                pc.greater_equal(edges[measure], threshold),
            )
        )
        has = np.unique(e.column("src").to_numpy())
        cand = fid[(layer_col == l) & live].astype(np.int64)
        out[l] = np.sort(cand[~np.isin(cand, has)])
    return out, (
        f"analyze has not run (no lifecycle): 'ending' = live features with no edge to the next "
        f"layer with {measure} ≥ {threshold}"
    )


@torch.no_grad()
def project_errors(
    adapter,
    saes: dict,
    ids: torch.Tensor,
    token_mask: np.ndarray,
    features: dict[int, np.ndarray],
    next_layer: dict[int, int],
    threshold: float = 0.0,
    batch_rows: int = 32,
) -> pa.Table:
    """Error projections (ERROR_COLUMNS) for `features` {layer: ids}, over windows ids int64 [W, S].

    token_mask bool [W, S] is the token set. One clean pass per batch of windows captures every
    needed hook. Returns one row per (layer, feature), float64 sums accumulated in window order."""
    layers = [l for l in sorted(features) if len(features[l]) and l in next_layer]
    if not layers:
        return _table({}, features, next_layer)
    prev = {next_layer[l]: l for l in layers}  # next layer -> the layer whose features project onto its error
    order = sorted(set(layers) | set(prev), key=lambda L: saes[L].hook.order)
    hooks = list(dict.fromkeys(saes[L].hook for L in order))
    acc = {l: np.zeros((6, len(features[l])), np.float64) for l in layers}
    dirs = {l: saes[l].write_directions(features[l]) for l in layers}
    for r0 in range(0, len(ids), batch_rows):
        res = adapter.residuals(ids[r0 : r0 + batch_rows], hooks)
        mask = torch.from_numpy(np.asarray(token_mask[r0 : r0 + batch_rows]).reshape(-1))
        written: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for L in order:  # each layer encoded once per batch; its dense codes dropped right after
            sae = saes[L]
            s_L = res[sae.hook].reshape(-1, sae.d_in)
            codes = sae.encode_dense(s_L)
            if L in acc:
                a = codes[:, torch.as_tensor(features[L], device=codes.device)]
                scale = sae.write_scale(s_L)
                w = a * dirs[L].norm(dim=-1)[None, :] * (scale[:, None] if scale is not None else 1.0)
                written[L] = (a, w)
            if L in prev:
                l = prev[L]
                a, w = written.pop(l)
                err = s_L - sae.decode(codes, x=s_L)
                u = dirs[l] / dirs[l].norm(dim=-1, keepdim=True)
                proj, proj_res = err @ u.T, s_L @ u.T  # [N, F]
                m_ = mask[:, None].to(a.device)
                on = (a > threshold) & m_
                off = (~on) & m_
                f64 = lambda t: t.double().sum(0).cpu().numpy()  # noqa: E731
                acc[l] += np.stack(
                    [f64(on), f64(proj * on), f64(w * on), f64(proj_res * on), f64(proj * off), f64(off)]
                )
            del codes
    return _table(acc, features, next_layer)


def _table(acc: dict, features: dict[int, np.ndarray], next_layer: dict[int, int]) -> pa.Table:
    rows: dict[str, list] = {c: [] for c in ("layer", "feature", *ERROR_COLUMNS)}
    for l in sorted(acc):
        n, sp, sw, sr, sb, nb = acc[l]
        with np.errstate(invalid="ignore", divide="ignore"):
            cols = {
                "error_proj": sp / n,
                "error_proj_rel": sp / sw,
                "error_proj_base": sb / nb,
                "resid_proj_rel": sr / sw,
            }
        rows["layer"] += [l] * len(n)
        rows["feature"] += np.asarray(features[l]).tolist()
        rows["error_next_layer"] += [next_layer[l]] * len(n)
        rows["error_proj_tokens"] += n.astype(np.int64).tolist()
        for k, v in cols.items():
            rows[k] += [float(x) if np.isfinite(x) else None for x in v]
    return pa.table(
        {
            "layer": pa.array(rows["layer"], pa.int32()),
            "feature": pa.array(rows["feature"], pa.int32()),
            "error_next_layer": pa.array(rows["error_next_layer"], pa.int32()),
            "error_proj_tokens": pa.array(rows["error_proj_tokens"], pa.int64()),
            **{k: pa.array(rows[k], pa.float64()) for k in ERROR_COLUMNS[2:]},
        }
    )
