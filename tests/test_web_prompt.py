"""Live prompts with a real (tiny) model: tokens and the per-token feature graph match a direct encode."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from runs import write_corpus, write_saes
from tinymodels import tiny_llama

from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.run_model import load_run_model
from saelineage.web.app import create_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LAYERS = [0, 1, 2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("webprompt")
    model = tiny_llama(root / "model", n_layers=3, d=64)
    saes = write_saes(root / "saes", 64, LAYERS, d_sae=64)
    corpus = write_corpus(root / "corpus.txt", n_docs=10)
    return run_collect(
        root / "run",
        CollectConfig(
            model=str(model),
            saes=str(saes),
            corpus=str(corpus),
            window=16,
            batch_windows=4,
            shard_windows=8,
            examples_k=5,
            max_tokens=16 * 12,
        ),
    ).run


def test_prompt_graph_matches_direct_encoding(run):
    c = TestClient(create_app(run.path, allowed_hosts=None))
    st = c.get("/api/prompt/status").json()
    assert st["available"] is True, st
    text = "the cat sat on the mat"
    toks = c.post("/api/prompt/tokens", json={"text": text}).json()["tokens"]
    rm = load_run_model(run)
    ids = rm.adapter.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [t["id"] for t in toks][-len(ids) :] == ids
    pos = len(toks) - 2
    g = c.post("/api/prompt/graph", json={"text": text, "position": pos, "rel": 0.0}).json()
    assert g["token"] == toks[pos]["text"]
    n = g["nodes"]
    got = {(l, f): a for l, f, a in zip(n["layer"], n["feature"], n["activation"])}
    full = [t["id"] for t in toks]
    res = rm.adapter.residuals(torch.tensor([full]), [rm.saes[l].hook for l in LAYERS])
    want = {}
    for l in LAYERS:
        codes = rm.saes[l].encode_sparse(res[rm.saes[l].hook].reshape(-1, rm.adapter.d_model))
        a, b = codes.indptr[pos], codes.indptr[pos + 1]
        for f, v in zip(codes.indices[a:b], codes.values[a:b]):
            if v > 0:
                want[(l, int(f))] = float(v)
    assert set(got) == set(want)
    assert all(np.isclose(got[k], want[k], rtol=1e-4, atol=1e-5) for k in want)
    assert c.post("/api/prompt/graph", json={"text": text, "position": 999}).status_code == 400
