"""Collection throughput on the embedded default vs a plain-HF baseline and the FLOP bound.

Ours: `saelineage.collect` (one forward pass that stops after the deepest hook, fused sparse
encode, shard writes, summaries). Baseline: HF forward with output_hidden_states=True (all
blocks + LM head) + dense SAE encode + nonzero, on the same windows. The bound: model FLOPs
of the blocks we need + encoder FLOPs, at the fp32 matmul rate measured in this run.

    python benchmarks/bench_collect.py [--tokens 8192] [--layers 12]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def matmul_rate(n: int = 2048, d: int = 576, m: int = 4608, reps: int = 20) -> float:
    """fp32 GFLOP/s of a matmul shaped like the SAE encoder."""
    a, b = torch.randn(n, d), torch.randn(d, m)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n * d * m * reps / (time.perf_counter() - t) / 1e9


def block_params(block: torch.nn.Module) -> int:
    return sum(p.numel() for p in block.parameters() if p.dim() >= 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    args = ap.parse_args()

    from saelineage.collect.config import CollectConfig
    from saelineage.collect.stage import run_collect
    from saelineage.data.corpus import load_corpus
    from saelineage.data.windowing import make_windows
    from saelineage.models.loading import load_model
    from saelineage.saes.sae import SAE

    adapter = load_model("smollm2")
    d = adapter.d_model
    g = torch.Generator().manual_seed(0)
    saes = {}
    for l in range(args.layers):
        w = torch.randn(d, args.d_sae, generator=g) / d**0.5
        saes[l] = SAE(
            W_enc=w,
            b_enc=torch.zeros(args.d_sae),
            W_dec=w.T.contiguous(),
            b_dec=torch.zeros(d),
            architecture="topk",
            k=args.k,
            hook_name=f"blocks.{l}.hook_resid_pre",
            meta={"path": "random"},
        )
    window, batch = 128, 16
    n_windows = args.tokens // window
    ids = make_windows(adapter.tokenizer, load_corpus("default").docs, window, n_windows * window).ids
    n_tok = ids.size

    rate = matmul_rate(d=d, m=args.d_sae)
    deepest = max(s.hook.order for s in saes.values())  # blocks that must run
    per_tok_model = sum(2 * block_params(adapter.blocks[i]) for i in range(deepest))
    heads_dim = d  # attention scores + weighted sum, causal: ~2*2*(S/2)*d per token per block
    per_tok_attn = deepest * 2 * window * heads_dim
    per_tok_enc = args.layers * 2 * d * args.d_sae
    flops_tok = per_tok_model + per_tok_attn + per_tok_enc
    bound = rate * 1e9 / flops_tok

    # ours
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CollectConfig(model="smollm2", corpus="default", max_tokens=n_tok, batch_windows=batch, shard_windows=64)
        t = time.perf_counter()
        run_collect(os.path.join(tmp, "run"), cfg, adapter=adapter, saes=saes)
        ours = n_tok / (time.perf_counter() - t)

    # baseline: full forward with all hidden states, dense encode, nonzero
    t = time.perf_counter()
    with torch.no_grad():
        for b0 in range(0, len(ids), batch):
            x = torch.from_numpy(ids[b0 : b0 + batch])
            hs = adapter.model(input_ids=x, output_hidden_states=True).hidden_states
            for l, sae in saes.items():
                dense = sae.encode_dense(hs[l].reshape(-1, d))
                nz = torch.nonzero(dense)
                _ = dense[nz[:, 0], nz[:, 1]]
    base = n_tok / (time.perf_counter() - t)

    print(f"tokens                      {n_tok:,} ({args.layers} layers x {args.d_sae} latents, k={args.k})")
    print(f"fp32 matmul rate            {rate:.1f} GFLOP/s")
    print(
        f"FLOPs per token             {flops_tok / 1e6:.1f} M (blocks {per_tok_model / 1e6:.1f} + attention "
        f"{per_tok_attn / 1e6:.1f} + encoders {per_tok_enc / 1e6:.1f})"
    )
    print(f"FLOP bound                  {bound:,.0f} tokens/s")
    print(f"saelineage collect          {ours:,.0f} tokens/s")
    print(f"baseline (HF + dense)       {base:,.0f} tokens/s")
    print(f"speed-up vs baseline        {ours / base:.2f}x   (target >= 1.2x)")
    print(f"fraction of FLOP bound      {ours / bound:.0%}   (target >= 60%)")


if __name__ == "__main__":
    main()
