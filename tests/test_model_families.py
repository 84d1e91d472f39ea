"""Every hook kind, on tiny random models of every family, equals TransformerLens.

TransformerLens gets the same weights offline from the HF model object through its own config and
weight conversion (`convert_hf_model_config`, `pretrained.weight_conversions`) with no weight
processing (no LN folding, no centring), so both compute the same function. docs/model_families.md
holds the mapping these tests verify.
"""

from __future__ import annotations

import tempfile
import warnings
from unittest import mock

import pytest
import torch
from tinymodels import FAMILIES, tiny_family
from torch import nn

from saelineage.errors import SaelineageError
from saelineage.models.adapter import ModelAdapter, find_blocks
from saelineage.models.hooks import KINDS, HookPoint, parse_hook

pytestmark = pytest.mark.numeric

N_LAYERS = 2
SEQ = 12  # longer than the Gemma sliding window (6), so local attention is exercised
PARALLEL = {"neox", "phi"}  # attention and MLP read the same residual: no resid_mid
# Our kind -> TransformerLens hook (mlp_in has none: see _tl_mlp_in).
TL_HOOK = {
    "resid_pre": "hook_resid_pre",
    "attn_z": "attn.hook_z",
    "attn_out": "hook_attn_out",
    "resid_mid": "hook_resid_mid",
    "mlp_out": "hook_mlp_out",
    "resid_post": "hook_resid_post",
}
# TransformerLens only builds Gemma configs from hard-coded official names; we take that template's
# architecture flags and shrink its sizes to match the tiny HF model.
GEMMA_TEMPLATE = {"Gemma2ForCausalLM": "google/gemma-2-2b", "Gemma3ForCausalLM": "google/gemma-3-1b-pt"}


def _phi_rotary_shim():
    """TransformerLens 3.9 reads PhiConfig.partial_rotary_factor, which transformers 5 moved into rope_parameters."""
    from transformers import PhiConfig

    factor = property(lambda c: c.rope_parameters.get("partial_rotary_factor", 1.0))
    return mock.patch.object(PhiConfig, "partial_rotary_factor", factor, create=True)


def _tl_config(hf_model: nn.Module):
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    hf = hf_model.config
    arch = type(hf_model).__name__
    if arch in GEMMA_TEMPLATE:
        cfg = convert_hf_model_config(GEMMA_TEMPLATE[arch])
        cfg.update(
            d_model=hf.hidden_size,
            d_head=hf.head_dim,
            n_heads=hf.num_attention_heads,
            n_key_value_heads=hf.num_key_value_heads,
            d_mlp=hf.intermediate_size,
            n_layers=hf.num_hidden_layers,
            n_ctx=hf.max_position_embeddings,
            d_vocab=hf.vocab_size,
            window_size=hf.sliding_window,
            attn_types=["local" if t == "sliding_attention" else "global" for t in hf.layer_types],
        )
    else:
        # A folder named after nothing: TL picks some branches by substrings of the path ("llama").
        with tempfile.TemporaryDirectory(prefix="tlcfg") as folder, _phi_rotary_shim():
            hf.save_pretrained(folder)
            cfg = convert_hf_model_config(folder)
    cfg.update(tokenizer_name=None, device="cpu", dtype=torch.float32, init_weights=False, n_devices=1)
    return HookedTransformerConfig.from_dict(cfg)


def _tl_model(hf_model: nn.Module):
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained import weight_conversions as wc

    # The dispatch of transformer_lens.loading_from_pretrained.get_pretrained_state_dict, which
    # itself wants an official model name.
    convert = {
        "GPT2LMHeadModel": wc.convert_gpt2_weights,
        "GPTNeoXForCausalLM": wc.convert_neox_weights,
        "LlamaForCausalLM": wc.convert_llama_weights,
        "Gemma2ForCausalLM": wc.convert_gemma_weights,
        "Gemma3ForCausalLM": wc.convert_gemma_weights,
        "Qwen2ForCausalLM": wc.convert_qwen2_weights,
        "Qwen3ForCausalLM": wc.convert_qwen3_weights,
        "MistralForCausalLM": wc.convert_mistral_weights,
        "Phi3ForCausalLM": wc.convert_phi3_weights,
        "PhiForCausalLM": wc.convert_phi_weights,
    }[type(hf_model).__name__]
    cfg = _tl_config(hf_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HookedTransformer's deprecation notice
        tl = HookedTransformer(cfg, move_to_device=False)
    state = convert(hf_model, cfg)
    tl.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    return tl.eval().requires_grad_(False)


def _tl_mlp_in(cache, tl, layer: int) -> torch.Tensor:
    """What TransformerLens' MLP reads: ln2's normalized input times its weight (plus bias for LayerNorm)."""
    ln2 = tl.blocks[layer].ln2
    x = cache[f"blocks.{layer}.ln2.hook_normalized"] * ln2.w
    return x + ln2.b if hasattr(ln2, "b") else x


def _tl_activation(cache, tl, hook: HookPoint) -> torch.Tensor:
    if hook.kind == "mlp_in":
        return _tl_mlp_in(cache, tl, hook.layer)
    x = cache[f"blocks.{hook.layer}.{TL_HOOK[hook.kind]}"]
    return x.flatten(-2) if hook.kind == "attn_z" else x  # [B, S, H, Dh] -> [B, S, H*Dh]


def _close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    scale = float(ref.abs().max())
    # float32 agreement is ~1e-6 of the scale in practice; 1e-5 leaves room for other BLAS kernels.
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * max(scale, 1.0), msg=lambda m: f"{what}: {m}")


def _kinds(family: str) -> list[str]:
    return [k for k in KINDS if not (k == "resid_mid" and family in PARALLEL)]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request):
    """(family, our adapter, TransformerLens model, input ids [2, SEQ]) with identical weights."""
    hf = tiny_family(request.param, n_layers=N_LAYERS)
    try:
        tl = _tl_model(hf)
    except NotImplementedError as exc:  # TL's word for an unsupported architecture; every family builds in TL 3.9
        pytest.skip(f"TransformerLens cannot build {request.param}: {exc}")
    ids = torch.randint(3, hf.config.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(1))
    return request.param, ModelAdapter(model=hf), tl, ids


def test_logits_match(pair):
    """Guard for the comparisons below: both models compute the same function."""
    family, adapter, tl, ids = pair
    _close(adapter.logits_with(ids, HookPoint(0, "resid_pre"), None), tl(ids), f"{family} logits")


def test_every_kind_matches_transformer_lens(pair):
    family, adapter, tl, ids = pair
    hooks = [HookPoint(l, k) for l in range(N_LAYERS) for k in _kinds(family)]
    ours = adapter.residuals(ids, hooks)
    _, cache = tl.run_with_cache(ids)
    for h in hooks:
        assert ours[h].shape[-1] == adapter.width(h), h
        _close(ours[h], _tl_activation(cache, tl, h), f"{family} {h.name}")


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("resid_pre", "resid_post")])
def test_edit_at_sub_block_site_matches_transformer_lens(pair, kind):
    """An affine edit at layer 0 reaches the rest of the pass exactly as the same edit in TransformerLens."""
    family, adapter, tl, ids = pair
    if kind not in _kinds(family):
        with pytest.raises(SaelineageError, match="resid_mid does not exist"):
            adapter.residuals(ids, [HookPoint(0, kind)])
        return
    hook = HookPoint(0, kind)
    shift = torch.randn(adapter.width(hook), generator=torch.Generator().manual_seed(2))

    def edit(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + shift

    last = HookPoint(N_LAYERS - 1, "resid_post")
    ours = adapter.residuals(ids, [hook, last], edit=lambda h, x: edit(x) if h == hook else None)
    ours_logits = adapter.logits_with(ids, hook, edit)

    if kind == "mlp_in":  # no TL hook point on the MLP input: edit ln2's output as a torch hook
        handle = tl.blocks[0].ln2.register_forward_hook(lambda m, a, out: edit(out))
        fwd_hooks = []
    else:
        handle = None
        name = f"blocks.0.{TL_HOOK[kind]}"
        if kind == "attn_z":
            fwd_hooks = [(name, lambda z, hook: edit(z.flatten(-2)).view_as(z))]
        else:
            fwd_hooks = [(name, lambda x, hook: edit(x))]
    try:
        with tl.hooks(fwd_hooks=fwd_hooks):
            ref_logits, cache = tl.run_with_cache(ids)
    finally:
        if handle is not None:
            handle.remove()
    _close(ours[last], cache[last.name], f"{family} {last.name} after editing {hook.name}")
    _close(ours_logits, ref_logits, f"{family} logits after editing {hook.name}")
    unedited = adapter.residuals(ids, [last])[last]
    assert not torch.allclose(unedited, ours[last]), "the edit must change downstream values"


def test_resid_mid_is_resid_pre_plus_attn_out(pair):
    family, adapter, _, ids = pair
    if family in PARALLEL:
        pytest.skip("parallel attention/MLP: no resid_mid")
    got = adapter.residuals(ids, [HookPoint(1, k) for k in ("resid_pre", "attn_out", "resid_mid")])
    _close(got[HookPoint(1, "resid_mid")], got[HookPoint(1, "resid_pre")] + got[HookPoint(1, "attn_out")], family)


def test_stops_after_deepest_sub_block_hook(pair):
    family, adapter, _, ids = pair
    mlp = adapter.blocks[0].mlp
    calls: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(adapter.blocks)]
    handles.append(mlp.register_forward_hook(lambda *a: calls.append(-1)))
    try:
        adapter.residuals(ids, [HookPoint(0, "resid_pre"), HookPoint(0, "attn_out")])
    finally:
        for h in handles:
            h.remove()
    assert calls == [], f"{family}: nothing after layer 0's attention may run, got {calls}"


def test_centring_applies_to_what_writes_to_the_residual(pair):
    family, adapter, _, ids = pair
    hooks = [HookPoint(0, k) for k in _kinds(family)]
    raw = adapter.residuals(ids, hooks)
    adapter.center_residual = True
    try:
        cen = adapter.residuals(ids, hooks)
    finally:
        adapter.center_residual = False
    for h in hooks:
        want = raw[h] - raw[h].mean(-1, keepdim=True) if h.kind not in ("attn_z", "mlp_in") else raw[h]
        torch.testing.assert_close(cen[h], want, msg=lambda m, h=h: f"{h.name}: {m}")


# ---- names, order, blocks ------------------------------------------------------------------------


def test_names_round_trip_and_aliases():
    for k in KINDS:
        h = HookPoint(3, k)
        assert parse_hook(h.name) == h
        assert parse_hook(f"{k}.3") == h
        assert parse_hook("3", default_kind=k) == h
    assert HookPoint(2, "attn_z").name == "blocks.2.attn.hook_z"
    assert HookPoint(2, "mlp_in").name == "blocks.2.hook_mlp_in"
    assert parse_hook("blocks.2.hook_z") == HookPoint(2, "attn_z")
    assert parse_hook("blocks.2.ln2.hook_normalized") == HookPoint(2, "mlp_in")
    assert parse_hook("blocks.2.mlp.hook_in") == HookPoint(2, "mlp_in")
    assert parse_hook("model.layers.5") == HookPoint(5, "resid_post")
    assert KINDS[:2] == ("resid_pre", "resid_post")
    with pytest.raises(SaelineageError, match="attn.hook_z") as exc:
        parse_hook("blocks.2.attn.hook_q")
    assert "resid_mid" in str(exc.value) and "layers.L" in str(exc.value)


def test_order_is_depth():
    depth = ["resid_pre", "attn_z", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post"]
    orders = [HookPoint(4, k).order for k in depth]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    for l in range(12):
        assert HookPoint(l, "resid_post").order == HookPoint(l + 1, "resid_pre").order
        assert HookPoint(l, "mlp_out").order < HookPoint(l + 1, "resid_pre").order


class _Odd(nn.Module):
    """A model whose blocks sit at a path no heuristic knows, beside a decoy list of the same length."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.config = inner.config
        self.stack = nn.ModuleDict({"blocks": inner.model.layers})
        self.decoy = nn.ModuleList([nn.Identity() for _ in inner.model.layers])


def test_blocks_not_found_names_paths_and_option():
    odd = _Odd(tiny_family("llama3", n_layers=N_LAYERS))
    with pytest.raises(SaelineageError) as exc:
        find_blocks(odd)
    msg = str(exc.value)
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        assert path in msg
    assert "--blocks-path PATH" in msg
    with pytest.raises(SaelineageError, match="--blocks-path 'stack.nope'"):
        find_blocks(odd, "stack.nope")


def test_blocks_path_finds_blocks_at_a_non_standard_path():
    inner = tiny_family("llama3", n_layers=N_LAYERS)
    odd = _Odd(inner)
    assert find_blocks(odd, "stack.blocks") is inner.model.layers
    adapter = ModelAdapter(model=inner, blocks_path="model.layers")
    assert adapter.n_layers == N_LAYERS
