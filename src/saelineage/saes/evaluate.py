"""Held-out evaluation of per-layer SAEs: FVU, L0, dead fraction, next-token CE increase.

Token set: every position of every window except position 0 when the windows start with BOS
(as in docs/design.md §4). The CE increase replaces the residual stream at one hook with the SAE
reconstruction on those positions (a BOS position keeps its own residual: SAEs are neither
trained nor read there) and runs the model to the logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from saelineage.errors import SaelineageError
from saelineage.models.adapter import ModelAdapter
from saelineage.models.hooks import HookPoint, parse_hook
from saelineage.saes.sae import SAE


@dataclass
class LayerMetrics:
    """Held-out metrics of one SAE."""

    hook: str
    layer: int
    d_sae: int
    k: int | None
    fvu: float
    """Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over held-out tokens"""
    l0: float
    """mean number of active latents per token"""
    dead_fraction: float
    """latents that never fire on the held-out tokens / d_sae"""
    n_tokens: int
    ce_clean: float = math.nan
    ce_with_sae: float = math.nan
    ce_increase: float = math.nan
    """ce_with_sae − ce_clean (nats per token)"""
    n_ce_tokens: int = 0
    train_fvu: float = math.nan
    """FVU of the last training steps (for comparison with the held-out value)"""

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _sae_reconstruct(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, d] -> (reconstruction [N, d], active latent ids [N, j], their values [N, j]).

    Plain TopK SAEs decode sparsely (embedding_bag over the k winners, j = k, zeros where a winner
    is not positive); others go through the reference dense encode/decode (j = d_sae).
    """
    if sae.architecture == "topk" and not sae.rescale_acts_by_decoder_norm and sae.normalize_activations == "none":
        assert sae.k is not None  # SAE.__post_init__ requires it for topk
        vals, idx = torch.topk(sae._pre(x), k=sae.k, dim=-1, sorted=False)
        vals = vals.relu()
        recon = F.embedding_bag(idx, sae.W_dec, mode="sum", per_sample_weights=vals) + sae.b_dec
        return recon, idx, vals
    codes = sae.encode_dense(x)
    idx = torch.arange(sae.d_sae, device=codes.device).expand_as(codes)
    return sae.decode(codes, x), idx, codes


def _replacer(adapter: ModelAdapter, sae: SAE, skip_first: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """replace_fn for `ModelAdapter.logits_with`: residual [B, S, d] (uncentred) -> reconstruction."""

    def replace(x: torch.Tensor) -> torch.Tensor:
        start = 1 if skip_first else 0
        part = x[:, start:]
        mean = part.mean(dim=-1, keepdim=True) if adapter.center_residual else None
        inp = part - mean if mean is not None else part
        recon = _sae_reconstruct(sae, inp.reshape(-1, inp.shape[-1]))[0]
        recon = recon.reshape(inp.shape).to(device=x.device, dtype=x.dtype)
        if mean is not None:
            recon = recon + mean
        out = x.clone()
        out[:, start:] = recon
        return out

    return replace


def _ce(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token CE in nats, count) for logits [B, S, V] and ids [B, S]."""
    lp = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1).to(logits.device), reduction="sum"
    )
    return float(lp), int(ids[:, 1:].numel())


@torch.no_grad()
def evaluate_saes(
    adapter: ModelAdapter,
    saes: Mapping[HookPoint, SAE],
    windows: np.ndarray,
    bos: bool,
    ce_windows: int = 16,
    batch_windows: int = 32,
    ce_batch_windows: int = 8,
    on_batch: Callable[[str, int], None] | None = None,
) -> dict[HookPoint, LayerMetrics]:
    """Evaluate every SAE on held-out `windows` (int64 [n, S]).

    FVU / L0 / dead use all windows (one forward pass per batch captures every hook); the CE
    increase uses the first `ce_windows` windows (one full forward per batch and hook).
    `on_batch(phase, n_windows)` reports progress ('codes' or 'ce').
    """
    hooks = sorted(saes, key=lambda h: (h.order, h.kind))
    skip = 1 if bos else 0
    d = {h: adapter.width(h) for h in hooks}
    sse = {h: 0.0 for h in hooks}
    s1 = {h: torch.zeros(d[h], dtype=torch.float64) for h in hooks}
    s2 = {h: 0.0 for h in hooks}
    nnz = {h: 0 for h in hooks}
    fired = {h: torch.zeros(saes[h].d_sae, dtype=torch.bool) for h in hooks}
    n_tok = 0
    for start in range(0, len(windows), batch_windows):
        ids = torch.from_numpy(windows[start : start + batch_windows])
        res = adapter.residuals(ids, hooks)
        for h in hooks:
            x = res[h][:, skip:].reshape(-1, d[h]).float()
            recon, idx, vals = _sae_reconstruct(saes[h], x)
            x = x.to(recon.device)
            sse[h] += float((recon - x).double().pow(2).sum())
            s1[h] += x.double().sum(0).cpu()
            s2[h] += float(x.double().pow(2).sum())
            active = vals != 0
            nnz[h] += int(active.sum())
            fired[h][idx[active].cpu()] = True
        n_tok += ids.shape[0] * (ids.shape[1] - skip)
        if on_batch:
            on_batch("codes", ids.shape[0])
    out: dict[HookPoint, LayerMetrics] = {}
    for h in hooks:
        total_var = s2[h] - float((s1[h] ** 2).sum()) / max(n_tok, 1)
        out[h] = LayerMetrics(
            hook=h.name,
            layer=h.layer,
            d_sae=saes[h].d_sae,
            k=saes[h].k,
            fvu=sse[h] / total_var if total_var > 0 else math.nan,
            l0=nnz[h] / max(n_tok, 1),
            dead_fraction=float((~fired[h]).float().mean()),
            n_tokens=n_tok,
        )
    ce_ids = windows[:ce_windows]
    if len(ce_ids):
        clean_sum, clean_n = 0.0, 0
        with_sae = {h: [0.0, 0] for h in hooks}
        for start in range(0, len(ce_ids), ce_batch_windows):  # logits: [B, S, vocab] float32
            ids = torch.from_numpy(ce_ids[start : start + ce_batch_windows])
            s, n = _ce(adapter.logits_with(ids, hooks[0], None), ids)
            clean_sum += s
            clean_n += n
            for h in hooks:
                s, n = _ce(adapter.logits_with(ids, h, _replacer(adapter, saes[h], bool(bos))), ids)
                with_sae[h][0] += s
                with_sae[h][1] += n
            if on_batch:
                on_batch("ce", ids.shape[0])
        ce_clean = clean_sum / clean_n
        for h in hooks:
            m = out[h]
            m.ce_clean = ce_clean
            m.ce_with_sae = with_sae[h][0] / with_sae[h][1]
            m.ce_increase = m.ce_with_sae - ce_clean
            m.n_ce_tokens = clean_n
    return out


def metrics_table(metrics: list[dict], title: str = "SAE evaluation on held-out tokens"):
    """A rich Table of per-layer metrics (dicts as in metrics.json 'layers'), readable at 80
    columns: a layer column when every hook is of one kind (named in the title), short headers."""
    from rich import box
    from rich.table import Table

    def f(v, fmt: str) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    points = [_hook_point(m["hook"]) for m in metrics]
    kinds = {p.kind for p in points if p is not None}
    if None in points:  # a name that is no known hook: shown as written, folded to fit
        names, head = [m["hook"] for m in metrics], "hook"
    elif len(kinds) == 1:
        names, head, title = [str(p.layer) for p in points if p], "layer", f"{title} ({kinds.pop()})"
    else:
        names, head = [f"{p.layer} {p.kind}" for p in points if p], "layer site"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column(head, overflow="fold")
    for col in ("d_sae", "k", "FVU", "FVU tr.", "L0", "dead%", "CE", "CE+SAE", "ΔCE"):
        table.add_column(col, justify="right", no_wrap=True)
    for m, name in zip(metrics, names):
        table.add_row(
            name,
            str(m["d_sae"]),
            str(m.get("k") or "–"),
            f(m["fvu"], ".3f"),
            f(m.get("train_fvu"), ".3f"),
            f(m["l0"], ".1f"),
            f(100 * m["dead_fraction"], ".1f"),
            f(m.get("ce_clean"), ".3f"),
            f(m.get("ce_with_sae"), ".3f"),
            f(m.get("ce_increase"), "+.3f"),
        )
    return table


def _hook_point(hook: str) -> HookPoint | None:
    """The hook's layer and kind, or None for a name that is not a known hook (shown as written)."""
    try:
        return parse_hook(hook)
    except SaelineageError:
        return None
