"""CPU-fast training step for eai-sparsify's TopK `SparseCoder`.

We train with sparsify's `SparseCoder` (TopK encoder, AuxK loss, unit-norm decoder, decoder
gradient projection). Its backward passes are written for GPUs: on CPU the encoder's
`index_add_` over a [B·k, d] temporary and the decoder's `embedding_bag` backward (a sort)
take ~60% of a step. `FastSparseCoder` only overrides `encode`/`decode` with autograd
functions whose weight gradients come from a bucketed numba kernel (the same values, one
third less time per step); everything else is sparsify's.
"""

from __future__ import annotations

import contextlib
import io

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

with contextlib.redirect_stdout(io.StringIO()):  # sparsify prints a Triton notice to stdout on import
    from sparsify import SparseCoder, SparseCoderConfig  # noqa: F401 - re-exported for train.py
    from sparsify.fused_encoder import EncoderOutput

from saelineage.models.hooks import HookPoint
from saelineage.saes.sae import SAE


@njit(cache=True)
def _buckets(idx_flat: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Counting sort of latent ids: (starts [n+1], order [B·k]) so bucket i is order[starts[i]:starts[i+1]]."""
    starts = np.zeros(n + 1, np.int64)
    for t in range(idx_flat.shape[0]):
        starts[idx_flat[t] + 1] += 1
    for i in range(n):
        starts[i + 1] += starts[i]
    pos = starts[:-1].copy()
    order = np.empty(idx_flat.shape[0], np.int64)
    for t in range(idx_flat.shape[0]):
        i = idx_flat[t]
        order[pos[i]] = t
        pos[i] += 1
    return starts, order


@njit(parallel=True, fastmath=True, cache=True)
def _scatter_rows_sorted(starts, order, coef, rows, k, out):  # pragma: no cover - numba
    n, d = out.shape
    for i in prange(n):
        acc = np.zeros(d, np.float32)
        for p in range(starts[i], starts[i + 1]):
            t = order[p]
            c = coef[t]
            r = rows[t // k]
            for col in range(d):
                acc[col] += c * r[col]
        out[i, :] = acc


@njit(parallel=True, fastmath=True, cache=True)
def _gather_dot(idx, W, G, out):  # pragma: no cover - numba
    B, k = idx.shape
    d = G.shape[1]
    for b in prange(B):
        for j in range(k):
            i = idx[b, j]
            s = np.float32(0.0)
            for col in range(d):
                s += W[i, col] * G[b, col]
            out[b, j] = s


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().cpu().numpy()


def scatter_rows(idx: torch.Tensor, coef: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """out [n, d] with out[idx[b, j]] += coef[b, j] · rows[b]; idx int64 [B, k], coef [B, k], rows [B, d]."""
    if idx.device.type != "cpu" or rows.dtype != torch.float32:
        out = torch.zeros(n, rows.shape[1], dtype=rows.dtype, device=rows.device)
        return out.index_add_(0, idx.flatten(), (coef.unsqueeze(2) * rows.unsqueeze(1)).flatten(0, 1).to(rows.dtype))
    starts, order = _buckets(_np(idx).reshape(-1), n)
    out = torch.empty(n, rows.shape[1], dtype=torch.float32)
    _scatter_rows_sorted(starts, order, _np(coef.float()).reshape(-1), _np(rows), idx.shape[1], out.numpy())
    return out


def gather_dot(idx: torch.Tensor, W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """out [B, k] with out[b, j] = W[idx[b, j]] · G[b]; W [n, d], G [B, d]."""
    if idx.device.type != "cpu" or W.dtype != torch.float32:
        return torch.bmm(W[idx], G.unsqueeze(2).to(W.dtype)).squeeze(2)
    out = torch.empty(idx.shape, dtype=torch.float32)
    _gather_dot(_np(idx), _np(W), _np(G.float()), out.numpy())
    return out


class _TopKEncode(torch.autograd.Function):
    """relu(x W^T + b) then top-k: (values [B, k], indices [B, k], pre-activations [B, n])."""

    @staticmethod
    def forward(ctx, x, weight, bias, k: int):
        pre = F.relu(F.linear(x, weight, bias))
        values, indices = pre.topk(k, dim=-1, sorted=False)
        ctx.save_for_backward(x, weight, indices)
        ctx.mark_non_differentiable(indices, pre)
        return values, indices, pre

    @staticmethod
    def backward(ctx, g_values, _g_indices, _g_pre):
        x, weight, indices = ctx.saved_tensors
        g_values = g_values.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.embedding_bag(indices, weight, mode="sum", per_sample_weights=g_values.to(weight.dtype))
        if ctx.needs_input_grad[1]:
            gw = scatter_rows(indices, g_values, x, weight.shape[0]).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            gb = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
            gb.index_add_(0, indices.flatten(), g_values.flatten().to(weight.dtype))
        return gx, gw, gb, None


class _SparseDecode(torch.autograd.Function):
    """Σ_j acts[b, j] · W_dec[idx[b, j]]: [B, d]."""

    @staticmethod
    def forward(ctx, indices, acts, W_dec):
        ctx.save_for_backward(indices, acts, W_dec)
        return F.embedding_bag(indices, W_dec, mode="sum", per_sample_weights=acts.to(W_dec.dtype))

    @staticmethod
    def backward(ctx, g):
        indices, acts, W_dec = ctx.saved_tensors
        g = g.contiguous()
        g_acts = gather_dot(indices, W_dec, g).to(acts.dtype) if ctx.needs_input_grad[1] else None
        g_W = scatter_rows(indices, acts, g, W_dec.shape[0]).to(W_dec.dtype) if ctx.needs_input_grad[2] else None
        return None, g_acts, g_W


class FastSparseCoder(SparseCoder):
    """sparsify's SparseCoder (autoencoding, TopK) with CPU-friendly backward passes."""

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        if self.cfg.transcode or self.cfg.activation != "topk":
            return super().encode(x)
        return EncoderOutput(*_TopKEncode.apply(x - self.b_dec, self.encoder.weight, self.encoder.bias, self.cfg.k))

    def decode(self, top_acts: torch.Tensor, top_indices: torch.Tensor) -> torch.Tensor:
        assert self.W_dec is not None
        return _SparseDecode.apply(top_indices, top_acts, self.W_dec) + self.b_dec


def coder_to_sae(coder: SparseCoder, hook: HookPoint, scale: float, meta: dict | None = None) -> SAE:
    """Our `SAE` (SAELens TopK layout) for a coder trained on inputs divided by `scale`.

    The coder maps x/s; the returned SAE maps raw x with the same top-k choices: encoder and decoder
    weights unchanged, biases times s, so latent activations are s times the coder's.
    W_enc [d_in, d_sae] = encoder.weight^T; W_dec [d_sae, d_in].
    """
    with torch.no_grad():
        return SAE(
            W_enc=coder.encoder.weight.detach().T.contiguous().float().cpu(),
            b_enc=(coder.encoder.bias.detach() * scale).float().cpu(),
            W_dec=coder.W_dec.detach().contiguous().float().cpu(),
            b_dec=(coder.b_dec.detach() * scale).float().cpu(),
            architecture="topk",
            hook_name=hook.name,
            k=int(coder.cfg.k),
            meta=dict(meta or {}),
        )


def set_threads(n: int) -> None:
    """Use `n` threads in torch and in the numba kernels."""
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]  # set at import
