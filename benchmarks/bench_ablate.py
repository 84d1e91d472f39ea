"""Batched ablations vs one feature per forward pass, on the embedded default model.

Setting: SmolLM2-135M (30 blocks, d_model 576), random TopK SAEs (d_sae 4608, k 32) at
the hooks of the chosen layer pairs, windows of the bundled corpus. For each layer pair a
sample like `saelineage ablate` draws: upstream features that repeat across pairs (each
with its most co-active downstream partners and a few unrelated ones), 8 windows per
downstream feature among those where it is active.

Modes (same pairs, same windows, same batch size; all measure the same thing):
  reference     as the reference work: per upstream feature, a clean and an ablated pass over its
                windows, one feature per pass (we still stop at the downstream hook)
  1 feat/pass   one feature per ablated pass, but one clean pass shared by all features
  batched       many features per pass (one per row of the batch), shared clean pass
  +prune        ... and windows where the upstream feature never fires are not run (drop is exactly 0)
  +restart      ... and passes restart at hook l from cached clean residuals
  +stored       ... and the clean codes the collect stage stored say beforehand where the upstream
                feature is silent: those windows get no pass at all (what `saelineage ablate` does)
Results of every mode must equal the reference ones (to float tolerance); the script checks it.
Times: wall clock and process CPU time (the machine may be shared; CPU time is the steadier).

    python benchmarks/bench_ablate.py [--layer-pairs 2:3,10:11,20:21] [--features 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch


def random_topk(d: int, d_sae: int, k: int, layer: int, seed: int):
    from saelineage.saes.sae import SAE

    g = torch.Generator().manual_seed(seed + layer)
    w = torch.randn(d, d_sae, generator=g) / d**0.5
    return SAE(
        W_enc=w,
        b_enc=torch.zeros(d_sae),
        W_dec=w.T.contiguous(),
        b_dec=torch.zeros(d),
        architecture="topk",
        k=k,
        hook_name=f"blocks.{layer}.hook_resid_pre",
        meta={"path": "random"},
    )


def make_sample(adapter, saes, ids, layer_pairs, n_feats, partners, unrelated, windows_per_pair, seed):
    """Pairs [P, 4] and per-pair window indices, drawn from clean co-activations on `ids` (windows chosen
    as the stage does: coordinated random draws among the windows where the downstream feature is active)."""
    from saelineage.causal.window_choice import choose, window_rank

    rng = np.random.default_rng(seed)
    rank = window_rank(len(ids), seed)
    hooks = sorted({saes[l].hook for lp in layer_pairs for l in lp}, key=lambda h: h.order)
    values = {}
    for r0 in range(0, len(ids), 16):
        res = adapter.residuals(ids[r0 : r0 + 16], hooks)
        for l in {l for lp in layer_pairs for l in lp}:
            c = saes[l].encode_dense(res[saes[l].hook].reshape(-1, adapter.d_model))
            values.setdefault(l, []).append(c.view(-1, ids.shape[1], c.shape[-1]))
    values = {l: torch.cat(v).numpy() for l, v in values.items()}  # [W, S, d_sae]: what collect stores
    codes = {l: v > 0 for l, v in values.items()}
    pairs, windows = [], []
    for l, m in layer_pairs:
        a, b = codes[l].reshape(-1, codes[l].shape[-1]), codes[m].reshape(-1, codes[m].shape[-1])
        live_a, live_b = np.flatnonzero(a.sum(0) >= 3), np.flatnonzero(b.sum(0) >= 3)
        for i in rng.choice(live_a, size=min(n_feats, len(live_a)), replace=False):
            co = (a[:, i : i + 1] & b).sum(0)
            top = [j for j in np.argsort(-co)[:partners] if co[j] > 0]
            for j in top + list(rng.choice(live_b, size=unrelated, replace=False)):
                wins = np.flatnonzero(codes[m][:, :, j].any(1))
                pairs.append((l, int(i), m, int(j)))
                windows.append(choose(wins, windows_per_pair, rank))
    return np.array(pairs, np.int64), windows, values


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer-pairs", default="2:3,10:11,20:21")
    ap.add_argument("--windows", type=int, default=96, help="corpus windows to draw from")
    ap.add_argument("--window", type=int, default=64, help="tokens per window")
    ap.add_argument("--features", type=int, default=20, help="upstream features per layer pair")
    ap.add_argument("--partners", type=int, default=4, help="co-active downstream partners per upstream feature")
    ap.add_argument("--unrelated", type=int, default=1, help="random downstream partners per upstream feature")
    ap.add_argument("--windows-per-pair", type=int, default=8)
    ap.add_argument("--batch-rows", type=int, default=16)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 avoids thread contention on a shared 2-core machine)"
    )
    ap.add_argument("--all-modes", action="store_true", help="also time the intermediate modes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from saelineage.causal.ablate import ablate_pairs
    from saelineage.data.corpus import load_corpus
    from saelineage.data.windowing import make_windows
    from saelineage.models.loading import load_model

    layer_pairs = [tuple(int(x) for x in p.split(":")) for p in args.layer_pairs.split(",")]
    adapter = load_model("smollm2")
    saes = {l: random_topk(adapter.d_model, args.d_sae, args.k, l, 0) for lp in layer_pairs for l in lp}
    wins = make_windows(adapter.tokenizer, load_corpus("default").docs, args.window, args.windows * args.window)
    ids = torch.from_numpy(np.asarray(wins.ids[: args.windows], dtype=np.int64))
    mask = np.ones(ids.shape, bool)
    mask[:, 0] = False  # BOS
    from saelineage.causal.stored import StoredCodes

    pairs, pw, values = make_sample(
        adapter, saes, ids, layer_pairs, args.features, args.partners, args.unrelated, args.windows_per_pair, 0
    )
    keep: dict[int, list] = {}
    for l, f, m, j in pairs.tolist():
        keep.setdefault(l, []).append(f)
        keep.setdefault(m, []).append(j)
    stored = StoredCodes.from_dense(values, mask, {l: np.array(v) for l, v in keep.items()})
    del values
    n_up = len(np.unique(pairs[:, :2], axis=0))
    print(
        f"SmolLM2-135M, random TopK SAEs (d_sae={args.d_sae}, k={args.k}), layer pairs {layer_pairs}; "
        f"{len(pairs)} pairs, {n_up} distinct upstream features, {args.windows_per_pair} windows/pair of "
        f"{args.window} tokens; batch {args.batch_rows} rows; torch threads {torch.get_num_threads()}"
    )

    def reference(**kw):  # per upstream feature: its own clean pass + ablated passes
        from saelineage.causal.ablate import AblationResult

        tables, info = [], {"forward_passes": 0, "rows": 0, "jobs_pruned": 0}
        order = np.lexsort((pairs[:, 1], pairs[:, 0]))
        keys = pairs[order, :2]
        cuts = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
        for sel in np.split(order, cuts):
            r = ablate_pairs(
                adapter,
                saes,
                ids,
                pairs[sel],
                [pw[p] for p in sel],
                mask,
                batch_rows=args.batch_rows,
                one_feature_per_forward=True,
                skip_prefix=False,
                prune=False,
            )
            tables.append((sel, r.table))
            for k in info:
                info[k] += r.info[k]
        import pyarrow as pa

        t = pa.concat_tables([tb for _, tb in tables])
        back = np.argsort(np.concatenate([sel for sel, _ in tables]))
        return AblationResult(t.take(pa.array(back)), None, info)

    modes = [
        ("reference (clean+ablated per feature)", reference),
        ("1 feature/pass, shared clean pass", dict(one_feature_per_forward=True, skip_prefix=False, prune=False)),
        ("batched", dict(skip_prefix=False, prune=False)),
        ("batched +prune", dict(skip_prefix=False, prune=True)),
        ("batched +prune +restart", dict(skip_prefix=True, prune=True)),
        ("... +stored codes (the stage's default)", dict(skip_prefix=True, prune=True, stored=stored)),
    ]
    if not args.all_modes:
        modes = [modes[0], modes[1], modes[4], modes[5]]
    results, times, cpu = {}, {}, {}
    for name, kw in modes:
        t, c = time.perf_counter(), time.process_time()
        if callable(kw):
            res = kw()
        else:
            res = ablate_pairs(adapter, saes, ids, pairs, pw, mask, batch_rows=args.batch_rows, **kw)
        times[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
        results[name] = res
        print(
            f"  {name:40s} wall {times[name]:7.1f} s  cpu {cpu[name]:7.1f} s   passes {res.info['forward_passes']:5d}"
            f"   ablated rows {res.info['rows']:5d}   pruned jobs {res.info['jobs_pruned']}",
            flush=True,
        )
    base = modes[0][0]
    ref = results[base].table
    print(f"\nspeed-up over '{base}' (wall / cpu):")
    for name, _ in modes[1:]:
        t = results[name].table
        scale = max(1e-6, float(np.nanmax(np.abs(ref.column("mean_clean").to_numpy()))))
        err = float(np.nanmax(np.abs(t.column("mean_drop").to_numpy() - ref.column("mean_drop").to_numpy())))
        same = t.column("n_tokens").equals(ref.column("n_tokens"))
        print(
            f"  {name:40s} {times[base] / times[name]:6.1f}x / {cpu[base] / cpu[name]:5.1f}x   "
            f"max |Δ mean drop| {err:.1e} (activations up to {scale:.1f}); token counts identical: {same}"
        )
    drop = ref.column("rel_drop").to_numpy(zero_copy_only=False)
    print(f"\nrelative drops: median {np.nanmedian(drop):.3f}, max {np.nanmax(drop):.3f}")


if __name__ == "__main__":
    main()
