"""Causal ablations on a tiny model built so that the answer is known exactly.

Block 1 of the model writes nothing (its output projections are zero), so the residual at
blocks.2.hook_resid_pre *is* the residual at blocks.1.hook_resid_pre. The SAEs at layers 1
and 2 read and write the same orthonormal directions q_k: upstream latent k writes exactly
the direction downstream latent k reads. Ablating upstream k must switch downstream k off
on every token; ablating any other upstream latent (orthogonal direction) or one that
never fires must change nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodels import tiny_gpt2, tiny_llama

from saelineage.causal.ablate import ablate_pairs, ablation_delta
from saelineage.causal.sampling import assign_bins, bin_edges, sample_edges, unique_pairs
from saelineage.models.loading import load_model
from saelineage.saes.sae import SAE

D, D_SAE, DEAD = 64, 16, 15


def _directions(seed: int, mean_zero: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(D, D_SAE, generator=g)
    if mean_zero:  # columns inside the subspace that centring keeps
        m = m - m.mean(0, keepdim=True)
    return torch.linalg.qr(m)[0]  # [D, D_SAE], orthonormal columns


def exact_saes(
    layers=(1, 2, 3),
    mean_zero: bool = False,
    seed: int = 0,
    archs=("standard", "topk", "jumprelu"),
    dead: dict[int, list[int]] | None = None,
) -> dict[int, SAE]:
    """SAEs whose latent k reads and writes q_k at every layer; latent DEAD (and `dead[layer]`) never fire."""
    q = _directions(seed, mean_zero)
    out = {}
    for layer, arch in zip(layers, archs):
        b = torch.zeros(D_SAE)
        b[[DEAD, *(dead or {}).get(layer, [])]] = -1e4
        kw = {"k": 8} if arch == "topk" else {"threshold": torch.zeros(D_SAE)} if arch == "jumprelu" else {}
        out[layer] = SAE(
            W_enc=q.clone(),
            b_enc=b,
            W_dec=q.T.contiguous(),
            b_dec=torch.zeros(D),
            architecture=arch,
            hook_name=f"blocks.{layer}.hook_resid_pre",
            **kw,
        )
    return out


def exact_model(folder: Path, kind: str = "llama") -> Path:
    """A tiny model whose block 1 is the identity on the residual stream (saved as an HF folder)."""
    from transformers import AutoModelForCausalLM

    src = tiny_llama(folder / "src", n_layers=4, d=D) if kind == "llama" else tiny_gpt2(folder / "src", n_layers=4, d=D)
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        if kind == "llama":
            model.model.embed_tokens.weight.mul_(50)  # activations of order 1
            model.model.layers[1].self_attn.o_proj.weight.zero_()
            model.model.layers[1].mlp.down_proj.weight.zero_()
        else:
            model.transformer.wte.weight.mul_(50)
            blk = model.transformer.h[1]
            for lin in (blk.attn.c_proj, blk.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
    model.save_pretrained(folder / "model")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(src).save_pretrained(folder / "model")
    return folder / "model"


@pytest.fixture(scope="module", params=["llama", "gpt2-centred"])
def system(request, tmp_path_factory):
    kind = request.param.split("-")[0]
    folder = exact_model(tmp_path_factory.mktemp(request.param), kind)
    adapter = load_model(str(folder), center_residual=request.param.endswith("centred"))
    saes = exact_saes(mean_zero=adapter.center_residual)
    ids = torch.randint(0, 5000, (6, 12), generator=torch.Generator().manual_seed(1))
    mask = np.ones((6, 12), bool)
    mask[:, 0] = False  # like a BOS position outside the token set
    return adapter, saes, ids, mask


# upstream 0 appears in several pairs (other dst, another dst layer, twice the same pair)
PAIRS = np.array(
    [
        [1, 0, 2, 0],  # exact: removes downstream 0
        [1, 1, 2, 0],  # orthogonal: nothing
        [1, DEAD, 2, 0],  # never fires: nothing
        [1, 0, 2, 3],  # same upstream, other downstream: nothing
        [1, 3, 2, 3],  # exact
        [1, 0, 2, 0],  # duplicate row of the first pair
        [1, 0, 3, 0],  # across a real block: some effect
        [2, 0, 3, 0],
    ]
)


def test_known_latent_removes_downstream_and_others_change_nothing(system):
    adapter, saes, ids, mask = system
    res = ablate_pairs(adapter, saes, ids, PAIRS, token_mask=mask, batch_rows=3, keep_tokens=True)
    t = res.table.to_pylist()
    assert len(t) == len(PAIRS)
    assert [(r["src_layer"], r["src"], r["dst_layer"], r["dst"]) for r in t] == [tuple(p) for p in PAIRS.tolist()]
    for k in (0, 4, 5):  # exact pairs: every active token switched off (to float tolerance)
        tok = res.tokens[k]
        assert t[k]["n_tokens"] > 5 and len(tok["clean"]) == t[k]["n_tokens"]
        assert (tok["pos"] > 0).all()  # BOS-like positions are not measured
        np.testing.assert_allclose(tok["ablated"], 0, atol=1e-5 * tok["clean"].max())
        assert t[k]["rel_drop"] == pytest.approx(1, abs=1e-5)
        np.testing.assert_allclose(tok["clean"] - tok["ablated"], tok["clean"], rtol=1e-5, atol=1e-6)
    for k in (1, 3):  # unrelated latent: nothing changes
        tok = res.tokens[k]
        assert t[k]["n_tokens"] > 5
        np.testing.assert_allclose(tok["ablated"], tok["clean"], rtol=1e-5, atol=1e-6)
        assert abs(t[k]["rel_drop"]) < 1e-5 and t[k]["frac_off"] == 0
    # a latent that never fires: no pass is even needed, and the drop is exactly zero
    assert t[2]["n_windows_ablated"] == 0 and t[2]["mean_drop"] == 0 and t[2]["n_tokens"] == t[0]["n_tokens"]
    # the duplicate row is the same measurement, nothing overwritten or lost
    assert t[5] == t[0]
    assert t[6]["n_tokens"] > 0 and t[7]["n_tokens"] > 0


def test_batched_equals_one_feature_per_forward(system):
    adapter, saes, ids, mask = system
    fast = ablate_pairs(adapter, saes, ids, PAIRS, token_mask=mask, batch_rows=4)
    slow = ablate_pairs(
        adapter,
        saes,
        ids,
        PAIRS,
        token_mask=mask,
        batch_rows=4,
        skip_prefix=False,
        prune=False,
        one_feature_per_forward=True,
    )
    assert fast.info["skip_prefix"] and fast.info["jobs_pruned"] > 0 and not slow.info["skip_prefix"]
    assert fast.info["forward_passes"] < slow.info["forward_passes"]
    chunked = ablate_pairs(adapter, saes, ids, PAIRS, token_mask=mask, batch_rows=2, cache_bytes=1)
    assert chunked.info["chunks"] == 3  # 6 windows, 2 per chunk: clean passes per chunk, all layers at once
    for other in (slow, chunked):
        _same(fast, other)


def clean_codes(adapter, saes, ids) -> dict[int, np.ndarray]:
    """Clean codes {layer: [W, S, d_sae]} as the collect stage would store them."""
    res = adapter.residuals(ids, [s.hook for s in saes.values()])
    return {
        l: s.encode_dense(res[s.hook].reshape(-1, D)).reshape(*ids.shape, -1).detach().numpy() for l, s in saes.items()
    }


def test_stored_codes_skip_silent_windows_and_change_nothing(system):
    from saelineage.causal.stored import StoredCodes

    adapter, saes, ids, mask = system
    codes = clean_codes(adapter, saes, ids)
    keep = {l: np.arange(D_SAE) for l in saes}
    stored = StoredCodes.from_dense(codes, mask, keep)
    for l in saes:  # fires = some token of the token set has a non-zero code
        np.testing.assert_array_equal(stored.fires(l, 2), (codes[l][:, :, 2] * mask != 0).any(1))
    # windows where upstream latent 1 is silent: take latent 1's silent windows plus two where it fires
    silent = np.flatnonzero(~stored.fires(1, 1))
    pw = [np.arange(len(ids))] * len(PAIRS)
    plain = ablate_pairs(adapter, saes, ids, PAIRS, pw, mask, batch_rows=4, keep_tokens=True)
    fast = ablate_pairs(adapter, saes, ids, PAIRS, pw, mask, batch_rows=4, keep_tokens=True, stored=stored)
    _same(plain, fast)
    for a, b in zip(plain.tokens, fast.tokens):
        np.testing.assert_array_equal(a["window"], b["window"])
        np.testing.assert_array_equal(a["pos"], b["pos"])
    assert fast.info["jobs_pruned"] == plain.info["jobs_pruned"] and fast.info["rows"] == plain.info["rows"]
    # a pair whose upstream latent never fires in its windows: no forward pass at all, drop exactly 0
    only_dead = ablate_pairs(adapter, saes, ids, PAIRS[2:3], None, mask, stored=stored)
    assert only_dead.info["forward_passes"] == 0
    row = only_dead.table.to_pylist()[0]
    assert row["mean_drop"] == 0 and row["n_tokens"] == int((codes[2][:, :, 0] * mask > 0).sum())
    assert row["mean_clean"] == pytest.approx(float(codes[2][:, :, 0][mask & (codes[2][:, :, 0] > 0)].mean()), rel=1e-6)
    if len(silent):  # silent windows of latent 1 are measured without a pass
        one = ablate_pairs(adapter, saes, ids, PAIRS[1:2], [silent], mask, stored=stored)
        assert one.info["forward_passes"] == 0 and one.table.to_pylist()[0]["mean_drop"] == 0


def _same(x, y):
    for a, b in zip(x.table.to_pylist(), y.table.to_pylist()):
        assert a["n_tokens"] == b["n_tokens"] and a["n_windows"] == b["n_windows"]
        for c in ("mean_clean", "mean_drop", "median_drop"):
            assert a[c] == pytest.approx(b[c], rel=1e-4, abs=1e-5 * max(1.0, abs(a["mean_clean"])))


def test_restart_that_does_not_reproduce_falls_back_to_full_passes(system, monkeypatch):
    import saelineage.causal.forward as fw

    adapter, saes, ids, mask = system
    good = ablate_pairs(adapter, saes, ids, PAIRS, token_mask=mask)
    # a restart that also skips block l itself (as a model with an unusual block layout might)
    monkeypatch.setattr(fw, "blocks_before", lambda hook: hook.layer + 1)
    with pytest.warns(UserWarning, match="does not reproduce"):
        bad = ablate_pairs(adapter, saes, ids, PAIRS, token_mask=mask)
    assert not bad.info["skip_prefix"]
    _same(good, bad)


def test_mean_component_of_a_write_is_invisible_with_centring(tmp_path):
    """GPT-2 preset: x' = x - a·w and x' = x - a·centre(w) give the same downstream codes."""
    folder = exact_model(tmp_path, "gpt2")
    adapter = load_model(str(folder), center_residual=True)
    saes = exact_saes(mean_zero=True)
    shifted = exact_saes(mean_zero=True)
    shifted[1].W_dec[0] += 0.3  # add a constant vector to upstream latent 0's write
    ids = torch.randint(0, 5000, (4, 10), generator=torch.Generator().manual_seed(2))
    pairs = np.array([[1, 0, 3, 0], [1, 0, 3, 2], [1, 0, 2, 0]])
    a = ablate_pairs(adapter, saes, ids, pairs, keep_tokens=True)
    b = ablate_pairs(adapter, shifted, ids, pairs, keep_tokens=True)
    for x, y in zip(a.tokens, b.tokens):
        np.testing.assert_allclose(x["ablated"], y["ablated"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "arch,norm,rescale",
    [
        ("standard", "none", False),
        ("jumprelu", "none", False),
        ("topk", "none", False),
        ("topk", "none", True),
        ("standard", "layer_norm", False),
        ("standard", "constant_norm_rescale", False),
    ],
)
def test_delta_is_decode_difference(arch, norm, rescale):
    g = torch.Generator().manual_seed(0)
    d, n = 12, 40
    kw = {"k": 5, "rescale_acts_by_decoder_norm": rescale} if arch == "topk" else {}
    if arch == "jumprelu":
        kw["threshold"] = torch.rand(n, generator=g) * 0.1
    sae = SAE(
        W_enc=torch.randn(d, n, generator=g),
        b_enc=torch.randn(n, generator=g) * 0.1,
        W_dec=torch.randn(n, d, generator=g),
        b_dec=torch.randn(d, generator=g),
        architecture=arch,
        hook_name="blocks.0.hook_resid_pre",
        normalize_activations=norm,
        **kw,
    )
    s = torch.randn(30, d, generator=g) * 3
    codes = sae.encode_dense(s)
    f = int(codes.abs().sum(0).argmax())
    without = codes.clone()
    without[:, f] = 0
    want = sae.decode(codes, x=s) - sae.decode(without, x=s)
    torch.testing.assert_close(ablation_delta(sae, s, codes, f), want, rtol=1e-4, atol=1e-4)
    assert sae.write_directions([f]).shape == (1, d)


# ---- sampling ---------------------------------------------------------------------------------------
def _edges(n=400, seed=0):
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    src_layer = rng.integers(0, 2, n)
    pearson = rng.uniform(-0.2, 1, n)
    pearson[:7] = np.nan
    pair = rng.choice(50 * 50, n, replace=False)  # edges are unique pairs per layer pair
    return pa.table(
        {
            "src_layer": src_layer,
            "src": pair // 50,
            "dst_layer": src_layer + 1,
            "dst": pair % 50,
            "jaccard": rng.uniform(0, 1, n) ** 2,
            "pearson": pearson,
        }
    )


def test_sample_bins_seed_and_order():
    e = _edges()
    s = sample_edges(e, bins=5, per_bin=3, seed=4)
    assert set(s.column("measure").to_pylist()) == {"jaccard", "pearson"}
    assert np.isfinite(s.column("similarity").to_numpy()).all()
    for (_m, _sl, _b), n in _counts(s).items():
        assert n <= 3
    sim, lo, hi = (s.column(c).to_numpy() for c in ("similarity", "bin_lo", "bin_hi"))
    assert ((sim >= lo) & (sim <= hi)).all()
    # same seed -> same sample, whatever the row order of edges.parquet
    perm = np.random.default_rng(1).permutation(e.num_rows)
    assert sample_edges(e.take(perm), bins=5, per_bin=3, seed=4).equals(s)
    assert not sample_edges(e, bins=5, per_bin=3, seed=5).equals(s)
    # a measure's draw does not depend on which other measures are sampled
    only = sample_edges(e, measures=["pearson"], bins=5, per_bin=3, seed=4)
    assert only.equals(s.filter(np.asarray(s.column("measure").to_pylist()) == "pearson"))
    # layer-pair filter
    lp = sample_edges(e, bins=5, per_bin=3, seed=4, layer_pairs=[(1, 2)])
    assert set(lp.column("src_layer").to_pylist()) == {1}


def _counts(s):
    from collections import Counter

    return Counter(zip(s.column("measure").to_pylist(), s.column("src_layer").to_pylist(), s.column("bin").to_pylist()))


def test_unique_pairs_keeps_every_row():
    e = _edges()
    s = sample_edges(e, bins=3, per_bin=50, seed=0)  # large bins: pairs repeat across measures
    pairs, inv = unique_pairs(s)
    assert len(pairs) < s.num_rows
    rows = np.stack([s.column(c).to_numpy() for c in ("src_layer", "src", "dst_layer", "dst")], 1)
    np.testing.assert_array_equal(pairs[inv], rows)


def test_bins():
    v = np.array([0.0, 0.1, 0.5, 1.0])
    e = bin_edges(v, 4)
    np.testing.assert_array_equal(assign_bins(v, e), [0, 0, 2, 3])
    assert assign_bins(np.array([1.0]), bin_edges(np.array([1.0, 1.0]), 3))[0] == 2
    assert len(bin_edges(v, 2, "quantile")) == 3
