"""Live prompts for a first-time user: the model loads in the background when the server starts, its
state is reported (idle / loading / ready / unavailable), and a token's graph can be thinned to each
feature's strongest links with the layered graph's cap."""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import pytest
from fastapi.testclient import TestClient
from runs import write_corpus, write_saes
from tinymodels import tiny_llama

from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.testing.sample_run import build_sample_run
from saelineage.web.app import create_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("promptstate")
    model = tiny_llama(root / "model", n_layers=2, d=32)
    saes = write_saes(root / "saes", 32, [0, 1], d_sae=32)
    corpus = write_corpus(root / "corpus.txt", n_docs=4)
    cfg = CollectConfig(
        model=str(model), saes=str(saes), corpus=str(corpus), window=16, batch_windows=4, shard_windows=8,
        examples_k=3, max_tokens=16 * 4,
    )  # fmt: skip
    return run_collect(root / "run", cfg).run


def test_model_loads_in_background_and_reports_its_state(model_run):
    app = create_app(model_run.path, allowed_hosts=None, preload_model=True)
    c = TestClient(app)
    first = c.get("/api/prompt/status").json()
    assert first["available"] is True and first["state"] in ("loading", "ready"), first
    app.state.prompts.backend.wait_loaded(60)
    assert c.get("/api/prompt/status").json()["state"] == "ready"
    page = c.get("/prompt").text
    assert 'id="model-state" data-state="ready"' in page

    lazy = TestClient(create_app(model_run.path, allowed_hosts=None))  # tests and scripts: load on first use
    assert lazy.get("/api/prompt/status").json()["state"] == "idle"
    assert lazy.post("/api/prompt/tokens", json={"text": "the cat"}).status_code == 200
    assert lazy.get("/api/prompt/status").json()["state"] == "ready"


def test_failed_background_load_turns_prompts_off_with_its_reason(model_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(model_run.path, run)
    from saelineage.run import RunDir

    m = RunDir(run).load()
    model_dir = m.config["model"]
    moved = tmp_path / "model-broken"
    shutil.copytree(model_dir, moved)
    (moved / "config.json").write_text("{not json")
    m.config["model"] = str(moved)
    RunDir(run).save(m)
    app = create_app(run, allowed_hosts=None, preload_model=True)
    app.state.prompts.backend.wait_loaded(60)
    st = TestClient(app).get("/api/prompt/status").json()
    assert st["state"] == "unavailable" and st["available"] is False
    assert "could not be loaded" in st["reason"]


def test_imported_run_is_unavailable(tmp_path):
    run = build_sample_run(tmp_path / "run", n_layers=3, d_sae=24, n_windows=16)
    st = TestClient(create_app(run.path, allowed_hosts=None)).get("/api/prompt/status").json()
    assert st["state"] == "unavailable" and st["available"] is False and "imported" in st["reason"]


class DenseBackend:
    """Many features active on every token, so a token's graph is a hairball."""

    def __init__(self, d_sae: int, layers: list[int]):
        self.d_sae, self.layers = d_sae, layers

    def tokenize(self, text: str) -> list[int]:
        return [0] + [1 + (len(w) % 5) for w in text.split()]

    def codes(self, ids: list[int]):
        out = {}
        for l in self.layers:
            rows = [np.arange(self.d_sae, dtype=np.int32) for _ in ids]
            indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
            out[l] = (indptr, np.concatenate(rows), np.full(sum(map(len, rows)), 50.0, np.float32))
        return out


def _edges(g: dict) -> list[tuple[tuple[int, int], tuple[int, int], float]]:
    n, e = g["nodes"], g["edges"]
    key = [(l, f) for l, f in zip(n["layer"], n["feature"])]
    return [(key[s], key[d], v) for s, d, v in zip(e["src"], e["dst"], e["value"])]


def test_prompt_graph_edges_per_node_keeps_each_features_strongest_links(tmp_path):
    run = build_sample_run(tmp_path / "run", n_layers=4, d_sae=48, hostile_label=False)
    c = TestClient(create_app(run.path, prompt_backend=DenseBackend(48, [0, 1, 2, 3]), allowed_hosts=None))
    body = {"text": "the cat and the dog", "position": 2, "rel": 0.0, "max_nodes": 2000}
    full = c.post("/api/prompt/graph", json=body).json()
    all_edges = _edges(full)
    assert full["edges_per_node"] == 0 and len(all_edges) > 100
    for k in (1, 3):
        thin = c.post("/api/prompt/graph", json=body | {"edges_per_node": k}).json()
        # oracle: an edge stays when it ranks among the k strongest out-links of its source or in-links of its
        # target (ties broken by the other end's feature, as the layered graph does)
        out_, in_ = defaultdict(list), defaultdict(list)
        for s, d, v in all_edges:
            out_[s].append((-v, d))
            in_[d].append((-v, s))
        want = {(s, d) for s, d, v in all_edges if (-v, d) in sorted(out_[s])[:k] or (-v, s) in sorted(in_[d])[:k]}
        got = {(s, d) for s, d, _ in _edges(thin)}
        assert got == want
        assert thin["edges_dropped"] == len(all_edges) - len(want) > 0
        # the nodes stay: only links are thinned
        assert sorted(zip(thin["nodes"]["layer"], thin["nodes"]["feature"])) == sorted(
            zip(full["nodes"]["layer"], full["nodes"]["feature"])
        )
