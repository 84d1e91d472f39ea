"""Model adapter: one-pass capture equals HF hidden states, stops early, cleans up hooks."""

from __future__ import annotations

import pytest
import torch
from tinymodels import tiny_gpt2, tiny_llama, tiny_neox

from saelineage.errors import SaelineageError
from saelineage.models.hooks import HookPoint, parse_hook
from saelineage.models.loading import load_model

BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "neox": tiny_neox}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def adapter(request, tmp_path_factory):
    folder = BUILDERS[request.param](tmp_path_factory.mktemp(request.param) / "model")
    return load_model(str(folder))


def test_parse_hook_names():
    assert parse_hook("blocks.3.hook_resid_pre") == HookPoint(3, "resid_pre")
    assert parse_hook("blocks.10.hook_resid_post") == HookPoint(10, "resid_post")
    assert parse_hook("resid_post.2") == HookPoint(2, "resid_post")
    assert parse_hook("layers.4") == HookPoint(4, "resid_post")
    assert parse_hook("7", "resid_pre") == HookPoint(7, "resid_pre")
    assert HookPoint(3, "resid_post").name == "blocks.3.hook_resid_post"
    with pytest.raises(SaelineageError, match="unknown hook"):
        parse_hook("blocks.3.attn.hook_q")


def test_residuals_equal_hidden_states(adapter):
    ids = torch.randint(0, 1000, (2, 17))
    n = adapter.n_layers
    hooks = [HookPoint(l, "resid_pre") for l in range(n)] + [HookPoint(n - 2, "resid_post")]
    got = adapter.residuals(ids, hooks)
    ref = adapter.model(input_ids=ids, output_hidden_states=True).hidden_states
    for l in range(n):
        torch.testing.assert_close(got[HookPoint(l, "resid_pre")], ref[l], rtol=0, atol=0)
    # resid_post of block n-2 is the input of block n-1 (the last hidden state is post-norm in some models)
    torch.testing.assert_close(got[HookPoint(n - 2, "resid_post")], ref[n - 1], rtol=0, atol=0)


def test_stops_after_deepest_hook_and_removes_hooks(adapter):
    before = [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in adapter.blocks]
    calls = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(adapter.blocks)]
    head = adapter.model.get_output_embeddings()
    head_calls = []
    handles.append(head.register_forward_hook(lambda *a: head_calls.append(1)))
    try:
        adapter.residuals(torch.randint(0, 1000, (1, 9)), [HookPoint(0, "resid_pre"), HookPoint(1, "resid_pre")])
    finally:
        for h in handles:
            h.remove()
    assert calls == [0], "block 1 and later must not run when the deepest hook is resid_pre of block 1"
    assert head_calls == []
    after = [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in adapter.blocks]
    assert after == before, "hooks must not pile up"


def test_center_residual(adapter):
    ids = torch.randint(0, 1000, (1, 5))
    hook = HookPoint(1, "resid_pre")
    raw = adapter.residuals(ids, [hook])[hook]
    adapter.center_residual = True
    try:
        cen = adapter.residuals(ids, [hook])[hook]
    finally:
        adapter.center_residual = False
    torch.testing.assert_close(cen, raw - raw.mean(-1, keepdim=True))
    assert cen.mean(-1).abs().max() < 1e-5


def test_hook_beyond_depth(adapter):
    with pytest.raises(SaelineageError, match="beyond the model's depth"):
        adapter.residuals(torch.zeros(1, 3, dtype=torch.long), [HookPoint(adapter.n_layers, "resid_pre")])


def test_missing_model_folder(tmp_path):
    with pytest.raises(SaelineageError):
        load_model(str(tmp_path / "nope"))
