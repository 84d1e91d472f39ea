"""`saelineage prompt` on a tiny collected run: model + SAEs → features on a token → subgraph."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import typer
from runs import write_corpus, write_saes
from tinymodels import tiny_llama
from typer.testing import CliRunner

from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.lineage.command import prompt_command
from saelineage.lineage.config import AnalyzeConfig
from saelineage.lineage.export import prompt_nodelink
from saelineage.lineage.stage import run_analyze
from saelineage.query.prompt import ModelBackend, prompt
from saelineage.run_model import load_run_model
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats

LAYERS = [0, 1, 2]
TEXT = "the cat sat on the mat and ran to the river"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt")
    model = tiny_llama(root / "model", n_layers=3, d=64)
    saes = write_saes(root / "saes", 64, LAYERS)
    corpus = write_corpus(root / "corpus.txt")
    r = run_collect(
        root / "run",
        CollectConfig(
            model=str(model),
            saes=str(saes),
            corpus=str(corpus),
            window=16,
            max_tokens=16 * 32,
            batch_windows=8,
            shard_windows=16,
            examples_k=5,
        ),
    ).run
    run_stats(r.path, StatsConfig(min_support=2))
    run_analyze(r.path, AnalyzeConfig(prompt_samples=4), progress=False)
    return r


@pytest.fixture(scope="module")
def model(run):
    return load_run_model(run)


def _expected_nodes(r, rm, position):
    tok = rm.adapter.tokenizer
    ids = [tok.bos_token_id] + tok(TEXT, add_special_tokens=False)["input_ids"]
    feats = pq.read_table(r.file("features.parquet"), columns=["layer", "feature", "act_max"]).to_pylist()
    mx = {(f["layer"], f["feature"]): f["act_max"] for f in feats}
    res = rm.adapter.residuals(torch.tensor([ids]), [rm.saes[l].hook for l in LAYERS])
    want = set()
    for l in LAYERS:
        a = rm.saes[l].encode_dense(res[rm.saes[l].hook][0]).numpy()[position]
        for f in np.nonzero(a > 0)[0].tolist():
            if mx[(l, f)] <= 0 or a[f] >= 0.1 * mx[(l, f)]:
                want.add(f"{l}_{f}")
    return want, len(ids)


def test_prompt_graph_matches_direct_encoding(run, model):
    want, n = _expected_nodes(run, model, -1)
    g = prompt_nodelink(*prompt(run.path, TEXT, -1, model=model))
    assert {x["id"] for x in g["nodes"]} == want and g["graph"]["position"] == n - 1
    edges = pq.read_table(run.file("edges.parquet"), columns=["src_layer", "src", "dst_layer", "dst", "jaccard"])
    expect = {
        (f"{a}_{b}", f"{c}_{d}")
        for a, b, c, d in zip(*(edges.column(k).to_pylist() for k in ("src_layer", "src", "dst_layer", "dst")))
        if f"{a}_{b}" in want and f"{c}_{d}" in want
    }
    assert {(x["source"], x["target"]) for x in g["links"]} == expect
    comm = {
        (r["layer"], r["feature"]): r["community"]
        for r in pq.read_table(
            run.file("feature_analysis.parquet"), columns=["layer", "feature", "community"]
        ).to_pylist()
    }
    assert all(x["community"] == comm[(x["layer"], x["feature"])] for x in g["nodes"])
    want3, _ = _expected_nodes(run, model, 3)
    assert {x["id"] for x in prompt_nodelink(*prompt(run.path, TEXT, 3, model=model))["nodes"]} == want3


def test_browser_and_command_make_one_graph(run, model):
    """The browser's live graph (edges from the query cache) is the command's (edges.parquet): one selection."""
    from fastapi.testclient import TestClient

    from saelineage.web.app import create_app

    app = create_app(run.path, allowed_hosts=None, prompt_backend=ModelBackend(run.path, run.load(), model))
    c = TestClient(app)
    n = len(c.post("/api/prompt/tokens", json={"text": TEXT}).json()["tokens"])
    for position, rel, max_nodes in [(n - 1, 0.1, 500), (3, 0.0, 7)]:
        body = {"text": TEXT, "position": position, "rel": rel, "max_nodes": max_nodes}
        live = c.post("/api/prompt/graph", json=body).json()
        graph, _ = prompt(run.path, TEXT, position, rel=rel, max_nodes=max_nodes, model=model)
        nodes = live["nodes"]
        assert list(zip(nodes["layer"], nodes["feature"])) == list(zip(graph.layer.tolist(), graph.feature.tolist()))
        assert nodes["activation"] == graph.activation.tolist() and live["truncated"] == graph.truncated
        pos = {(l, f): k for k, (l, f) in enumerate(zip(graph.layer.tolist(), graph.feature.tolist()))}
        at = [pos[(nodes["layer"][i], nodes["feature"][i])] for i in range(len(nodes["layer"]))]
        got = sorted((at[s], at[t], v) for s, t, v in zip(*(live["edges"][k] for k in ("src", "dst", "value"))))
        assert got == sorted(zip(graph.src.tolist(), graph.dst.tolist(), graph.value.tolist()))


def test_prompt_cli_json_and_summary(run, tmp_path):
    app = typer.Typer()
    app.command("prompt")(prompt_command)
    app.command("noop")(lambda: None)  # a second command keeps typer in sub-command mode
    out = tmp_path / "g.json"
    res = CliRunner().invoke(app, ["prompt", str(run.path), TEXT, "--position", "-2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    g = json.loads(out.read_text())
    assert g["graph"]["token"] and all(n["id"] == f"{n['layer']}_{n['feature']}" for n in g["nodes"])
    res = CliRunner().invoke(app, ["prompt", str(run.path), TEXT, "--position", "99"])
    assert res.exit_code != 0 and "outside the prompt" in str(res.exception)
