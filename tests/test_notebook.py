"""The notebook API, `saelineage.Run(path)`, on a synthetic run: tables against the run's files,
a feature's card and neighbours against edges.parquet, the graph figure against the browser's graph,
a live prompt with a stand-in model, and examples/quickstart.ipynb executed end to end."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from runs import run_quickstart

import saelineage
from saelineage import SaelineageError
from saelineage.testing.sample_run import HOSTILE_LABEL, build_sample_run

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return build_sample_run(tmp_path_factory.mktemp("nb") / "run", n_layers=4, d_sae=48)


@pytest.fixture(scope="module")
def run(sample):
    return saelineage.Run(sample.path)


def test_tables_are_the_runs_files(run, sample):
    feats = run.features()
    raw = pq.read_table(sample.file("features.parquet")).to_pandas()
    assert isinstance(feats, pd.DataFrame) and len(feats) == len(raw)
    assert np.array_equal(feats["n_active"].to_numpy(), raw["n_active"].to_numpy())
    assert {"lifecycle", "community", "explanation"} <= set(feats.columns)
    assert feats.loc[(feats.layer == 0) & (feats.feature == 0), "explanation"].item() == HOSTILE_LABEL
    analysis = pq.read_table(sample.file("feature_analysis.parquet")).to_pandas()
    assert list(feats["lifecycle"]) == list(analysis["lifecycle"])
    for name in ("gates", "splits", "communities", "lifecycle"):
        want = pq.read_table(sample.file(f"{name}.parquet")).to_pandas()
        got = getattr(run, name)()
        assert list(got.columns) == list(want.columns), name  # every column, new ones included
        pd.testing.assert_frame_equal(got, want)


def test_edges_filters_match_brute_force(run, sample):
    full = pq.read_table(sample.file("edges.parquet")).to_pandas()
    got = run.edges(measure="pearson", min=0.5, layers=1)
    want = full[(full.pearson >= 0.5) & (full.src_layer == 1)]
    assert len(got) == len(want) > 0
    assert got["pearson"].is_monotonic_decreasing
    key = ["src_layer", "src", "dst_layer", "dst"]
    assert set(map(tuple, got[key].to_numpy())) == set(map(tuple, want[key].to_numpy()))
    inner = run.edges(layers=[1, 2, 3])
    assert len(inner) == int((full.src_layer.isin([1, 2, 3]) & full.dst_layer.isin([1, 2, 3])).sum())
    assert len(run.edges()) == len(full)
    with pytest.raises(SaelineageError, match="no measure 'bogus'"):
        run.edges(measure="bogus")


def test_feature_card_neighbours_and_examples(run, sample):
    full = pq.read_table(sample.file("edges.parquet")).to_pandas()
    f = run.feature(0, 0)
    assert f.label == HOSTILE_LABEL and f.label_source == "imported"
    html = f._repr_html_()
    assert HOSTILE_LABEL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.replace("&lt;script", "")
    assert 'class="tok hit"' in html and "Top activating examples" in html
    # downstream: the edges out of 0:0, strongest jaccard first (ties by the other end)
    want = full[(full.src_layer == 0) & (full.src == 0)].sort_values(
        ["jaccard", "dst_layer", "dst"], ascending=[False, True, True]
    )
    assert list(zip(f.downstream.layer, f.downstream.feature)) == list(zip(want.dst_layer, want.dst))[:50]
    assert np.allclose(f.downstream["jaccard"], want["jaccard"].to_numpy()[:50])
    g = run.feature(2, 5)
    up = full[(full.dst_layer == 2) & (full.dst == 5)]
    assert set(zip(g.upstream.layer, g.upstream.feature)) == set(zip(up.src_layer, up.src))
    # examples: as examples.parquet ranks them, the hit token marked
    ex = pq.read_table(sample.file("examples.parquet")).to_pandas()
    mine = ex[(ex.layer == 2) & (ex.feature == 5)].sort_values("rank")
    assert np.allclose(g.examples["value"], mine["value"].to_numpy()[: len(g.examples)])
    assert all(t.count("«") == 1 and t.count("»") == 1 for t in g.examples["text"])
    assert g.stats["n_active"] == int(
        pq.read_table(sample.file("features.parquet")).to_pandas().query("layer == 2 and feature == 5").n_active.item()
    )
    assert g.neuronpedia is None  # synthetic SAEs are no public release
    with pytest.raises(SaelineageError, match="not in this run"):
        run.feature(0, 10_000)


def test_graph_figure_is_the_browsers_graph(run):
    from saelineage.query.graph import graph

    fig = run.graph(measure="jaccard", edges_per_node=2)
    want = graph(run.data, "jaccard", 0.1, None, None, None, 400, "barycenter", 2)
    nodes = fig.data[-1]
    assert len(nodes.x) == len(want["nodes"]["layer"]) > 0
    assert fig.layout.meta["edges"]["src"] == want["edges"]["src"]
    drawn = sum(sum(1 for x in t.x if x is None) for t in fig.data[:-1])  # one None closes each edge's segment
    assert drawn == len(want["edges"]["src"])
    assert all("&lt;script&gt;" in h for h, l, f in zip(nodes.hovertext, *zip(*nodes.customdata)) if (l, f) == (0, 0))


def test_prompt_with_a_stand_in_model(run, sample):
    import json

    vocab = json.loads(sample.file("vocab.json").read_text())["decoded"]

    class Backend:
        index = {w.strip(): i for i, w in enumerate(vocab)}

        def tokenize(self, text):
            return [0] + [self.index.get(w, 1) for w in text.split()]

        def codes(self, ids):
            out = {}
            for l in range(4):
                rows = [np.array(sorted({(t * 7 + k * 5 + l) % 46 for k in range(12)}), np.int32) for t in ids]
                indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
                idx = np.concatenate(rows)
                out[l] = (indptr, idx, np.full(len(idx), 50.0, np.float32))
            return out

    with pytest.raises(SaelineageError, match="imported without a model"):
        saelineage.Run(sample.path).prompt("the cat")
    g = run.prompt("the cat and the dog", backend=Backend(), edges_per_node=0)
    assert g.position == 5 and g.token == vocab[Backend.index.get("dog", 1)]
    ids = Backend().tokenize("the cat and the dog")
    want = {(l, int(f)) for l, (p, i, _) in Backend().codes(ids).items() for f in i[p[5] : p[6]]}
    assert set(zip(g.nodes.layer, g.nodes.feature)) <= want and len(g.nodes) > 0
    thin = run.prompt("the cat and the dog", backend=Backend(), edges_per_node=1)
    assert thin.raw["edges_per_node"] == 1 and len(thin.edges) == len(g.edges) - thin.raw.get("edges_dropped", 0)
    assert len(g.figure.data[-1].x) == len(g.nodes)


def test_not_a_run(tmp_path):
    with pytest.raises(SaelineageError):
        saelineage.Run(tmp_path / "nowhere")
    with pytest.raises(SaelineageError, match="unknown frames"):
        saelineage.Run(tmp_path, frames="excel")


def test_quickstart_notebook_runs(sample, tmp_path):
    outputs = run_quickstart(sample.path, tmp_path)
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any('class="saelineage-card"' in h for h in html)  # the feature card rendered
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)  # the graph figure
    assert any("imported without a model" in o.get("text", "") for o in outputs)  # the prompt cell said why not


def test_neighbours_keep_ablation_columns_that_the_first_row_lacks(sample, tmp_path):
    """A feature whose strongest neighbour was not ablated but a later one was: the card's frame has the
    later row's ablation_* columns (the frame's columns once came from its first row alone)."""
    import shutil

    import pyarrow as pa

    path = tmp_path / "run"
    shutil.copytree(sample.path, path)
    edges = pq.read_table(path / "edges.parquet").to_pandas()
    out = edges[(edges.src_layer == 0) & (edges.src == 0)].sort_values(
        ["jaccard", "dst_layer", "dst"], ascending=[False, True, True]
    )
    assert len(out) >= 2
    second = out.iloc[1]
    pq.write_table(
        pa.table(
            {
                "src_layer": [0],
                "src": [0],
                "dst_layer": [int(second.dst_layer)],
                "dst": [int(second.dst)],
                "mean_drop": [0.25],
            }
        ),  # fmt: skip
        path / "ablations.parquet",
    )
    down = saelineage.Run(path).feature(0, 0).downstream
    assert "ablation_mean_drop" in down.columns
    assert pd.isna(down["ablation_mean_drop"].iloc[0]) and down["ablation_mean_drop"].iloc[1] == 0.25
