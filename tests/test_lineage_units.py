"""Lineage building blocks against brute force: validation counts, grouping, gates logic,
Leiden options, prompt graphs and exports (no stats engine, no model needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from saelineage.data.importer import write_run
from saelineage.feature_table import feature_rows
from saelineage.lineage import communities as comm
from saelineage.lineage import evidence, gates
from saelineage.lineage.export import graphml_bytes, nodelink, prompt_nodelink
from saelineage.lineage.lifecycle import classify
from saelineage.lineage.validate import Requests, count
from saelineage.query.prompt_graph import GraphContext, prompt_graph


def _random_run(tmp_path, rel=None, threshold=0.0):
    rng = np.random.default_rng(3)
    t, w = 24 * 16, 16
    codes = {}
    for l, d in ((0, 12), (2, 9)):
        m = sp.random(t, d, density=0.3, random_state=rng, format="csr", dtype=np.float64)
        m.data = np.round(m.data * 8) / 4
        codes[l] = m.astype(np.float32)
    tokens = rng.integers(1, 50, t)
    run = write_run(tmp_path / "run", codes, tokens, window_len=w, bos=True, shard_windows=5)
    run.set_stage(
        "stats", "complete", options={"threshold": threshold, "relative_threshold": rel, "include_bos": False}
    )
    return run, codes, tokens, w


@pytest.mark.parametrize("rel,threshold", [(None, 0.0), (0.4, 0.0), (None, 0.5)])
def test_validation_counts_match_brute_force(tmp_path, rel, threshold):
    run, codes, tokens, w = _random_run(tmp_path, rel, threshold)
    mask = np.arange(len(tokens)) % w != 0
    dense = {l: c.toarray().astype(np.float64) for l, c in codes.items()}
    act = {}
    for l, x in dense.items():
        theta = np.full(x.shape[1], threshold) if rel is None else rel * x[mask].max(0)  # max from collection
        act[l] = (x > np.maximum(theta, threshold)) & (x > 0) & mask[:, None]
    pairs = {0: np.array([[0, 1], [2, 5], [3, 3], [11, 0]]), 2: np.array([[1, 2]])}
    triples = {(0, 2): np.array([[0, 1, 2], [3, 4, 5], [8, 0, 11], [8, 7, 7]])}
    groups = {(0, 2): (np.array([1, 4]), np.array([0, 3, 5]), np.array([0, 2, 3, 5, 8]))}
    ex_w, ex_p = np.array([0, 3, 23, 7]), np.array([5, 0, 15, 9])
    c = count(
        run, Requests(pairs=pairs, triples=triples, groups=groups, samples=np.array([2, 20]), example_keys=(ex_w, ex_p))
    )
    assert c.n_tokens == int(mask.sum())
    for l in act:
        assert np.array_equal(c.n_active[l], act[l].sum(0))
    for l, p in pairs.items():
        assert np.array_equal(c.pairs[l], [(act[l][:, a] & act[l][:, b]).sum() for a, b in p])
    a0, a2 = act[0], act[2]
    want = [
        ((a2[:, j] & a0[:, a] & a0[:, b]).sum(), (a2[:, j] & (a0[:, a] | a0[:, b])).sum())
        for j, a, b in triples[(0, 2)]
    ]
    assert np.array_equal(c.triples[(0, 2)], want)
    anchor, ptr, members = groups[(0, 2)]
    for g in range(2):
        k = a2[:, members[ptr[g] : ptr[g + 1]]].sum(1)
        assert list(c.groups[(0, 2)][g]) == [(k >= 1).sum(), (k >= 2).sum(), ((k >= 1) & a0[:, anchor[g]]).sum()]
    assert np.array_equal(c.example_tokens, tokens[ex_w * w + ex_p])
    assert [s["window"] for s in c.samples] == [2, 20]
    s = c.samples[0]
    row = 2 * w + w - 1
    assert s["pos"] == w - 1 and s["token"] == tokens[row]
    f, v = s["codes"][0]
    assert np.array_equal(f, np.nonzero(dense[0][row])[0]) and np.allclose(v, dense[0][row][f])


def test_pairs_in_groups_and_ranking():
    gid = np.array([0, 0, 0, 1, 2, 2])
    p1, p2 = gates.pairs_in_groups(gid)
    assert sorted(zip(p1.tolist(), p2.tolist())) == [(0, 1), (0, 2), (1, 2), (4, 5)]
    order, g = gates.ranked_groups([np.array([1, 1, 1, 2])], [np.array([0.1, 0.9, 0.5, 0.3])], 2)
    assert order.tolist() == [1, 2, 3] and g.tolist() == [0, 0, 1]


def _edges(rows):
    cols = ("src_layer", "src", "dst_layer", "dst", "n_co", "necessity", "sufficiency", "jaccard")
    return {c: np.array([r[i] for r in rows], np.float64 if i >= 5 else np.int64) for i, c in enumerate(cols)}


def test_gate_validation_rejects_redundant_and_low_support():
    # child 0 has three AND parents; (0, 1) is a real gate, parent 2 ⊇ parent 0 (so 0∧2 = 0 alone)
    e = _edges([(0, 0, 1, 0, 50, 1.0, 0.30, 0.3), (0, 1, 1, 0, 50, 1.0, 0.25, 0.25), (0, 2, 1, 0, 50, 1.0, 0.10, 0.1)])
    c = gates.candidates(e, "and", 0.95, 5)
    assert sorted(zip(c["a"].tolist(), c["b"].tolist())) == [(0, 1), (0, 2), (1, 2)]
    k = {
        "n_j": np.full(3, 50),
        "n_a": np.array([166, 166, 200]),
        "n_b": np.array([200, 500, 500]),
        "n_ab": np.array([50, 166, 200]),
        "t_and": np.array([50, 50, 50]),
        "t_or": np.array([50, 50, 50]),
    }
    # order of candidates follows the ranking; rebuild counts per (a, b)
    by = {(0, 1): 0, (0, 2): 1, (1, 2): 2}
    idx = np.array([by[(a, b)] for a, b in zip(c["a"].tolist(), c["b"].tolist())])
    k = {key: v[idx] for key, v in k.items()}
    for test in ("threshold", "evidence"):
        t = _validated(e, c, k, test).to_pylist()
        assert [(r["parent_a"], r["parent_b"]) for r in t] == [(0, 1)], test
        assert t[0]["support"] == 50 and t[0]["score_forward"] == 1.0 and t[0]["score_backward"] == 1.0
        # the same perfect gate on 4 tokens is not reported with min_support 5
        k4 = {key: np.minimum(v, 4) if key in ("t_and", "n_j", "n_ab") else v for key, v in k.items()}
        e4 = dict(e, n_co=np.minimum(e["n_co"], 4))
        assert _validated(e4, c, k4, test).num_rows == 0
    # evidence: bounds and gain are reported; the real gate's child is fully explained by a∧b
    r = _validated(e, c, k, "evidence").to_pylist()[0]
    assert r["info_condition"] == pytest.approx(1.0) and r["gain"] > 0.2 and r["q_value"] < 1e-6
    assert r["score_forward_lo"] == pytest.approx(0.025 ** (1 / 50))  # exact bound of 50/50: (α/2)^(1/n)


def _validated(e, c, k, test, n=10_000):
    s = gates.score_candidates(e, c, k, "and", n)
    s["q_value"] = evidence.bh_qvalues(s["p_value"])
    return gates.gate_table(s, gates.select_gates(s, test, 5))


def test_lifecycle_labels_first_last_dead_nan():
    feats = pa.table(
        {"layer": [0, 0, 1, 1, 1, 2, 2], "feature": [0, 1, 0, 1, 2, 0, 1], "n_active": [5, 0, 5, 5, 5, 5, 5]}
    )
    nan = float("nan")
    links = pa.table(
        {
            "layer": [2, 2, 1, 1, 1, 0, 0],
            "feature": [0, 1, 0, 1, 2, 0, 1],  # shuffled order
            "best_pred_pearson": [0.9, 0.1, 0.8, 0.2, nan, nan, nan],
            "best_succ_pearson": [nan, nan, 0.1, 0.7, 0.9, 0.6, nan],
        }
    )
    lc = classify(feats, links, [0, 1, 2], "pearson", 0.5)
    assert list(lc.label) == ["carried", "dead", "ending", "new", "new", "carried", "new"]
    lc = classify(feats, links, [0, 1, 2], "pearson", 0.95)
    assert list(lc.label) == ["ending", "dead", "new+ending", "new+ending", "new+ending", "new", "new"]


def test_feature_rows_lookup():
    rows = feature_rows(np.array([0, 0, 3, 3, 3]), np.array([1, 0, 0, 1, 2]))
    assert rows(np.array([3, 0, 1, 0, 3]), np.array([2, 0, 0, 5, -1])).tolist() == [4, 1, -1, -1, -1]


def _graph_edges():
    # two chains (0_0 → 1_0 → 2_0) and (0_1 → 1_1 → 2_1) plus a weak cross link
    return {
        "src_layer": np.array([0, 1, 0, 1, 0]),
        "src": np.array([0, 0, 1, 1, 0]),
        "dst_layer": np.array([1, 2, 1, 2, 1]),
        "dst": np.array([0, 0, 1, 1, 1]),
        "jaccard": np.array([0.9, 0.8, 0.7, 0.9, 0.15]),
        "pearson": np.array([0.9, 0.8, 0.7, 0.9, -0.2]),
    }


@pytest.mark.parametrize("backend", ["igraph", "leidenalg"])
def test_leiden_is_deterministic_and_resolution_is_used(backend):
    f_layer = np.repeat([0, 1, 2], 3)
    f_id = np.tile([0, 1, 2], 3)
    live = f_id != 2  # feature 2 of each layer is dead
    e = _graph_edges()
    a, info = comm.leiden(f_layer, f_id, live, e, "jaccard", 0.1, seed=1, backend=backend)
    b, _ = comm.leiden(f_layer, f_id, live, e, "jaccard", 0.1, seed=1, backend=backend)
    assert np.array_equal(a, b) and info["edges"] == 5
    assert (a[~live] == -1).all() and a[0] == a[3] == a[6] and a[1] == a[4] == a[7] and a[0] != a[1]
    # CPM with a resolution above every weight leaves singletons; a tiny one joins the connected graph
    hi, _ = comm.leiden(f_layer, f_id, live, e, "jaccard", 0.1, quality="cpm", resolution=5.0, backend=backend)
    lo, _ = comm.leiden(f_layer, f_id, live, e, "jaccard", 0.1, quality="cpm", resolution=0.001, backend=backend)
    assert len(set(hi[live])) == 6 and len(set(lo[live])) == 1
    t = comm.community_table(f_layer, a, np.array([0, 3, 6, 1]), np.array([7, 7, 8, 9]), [f"t{i}" for i in range(10)])
    r = t.to_pylist()[a[0]]
    assert r["size"] == 3 and r["layers"] == [0, 1, 2] and r["top_tokens"][:2] == ["t7", "t8"]
    assert r["top_token_counts"][0] == 2


def test_leiden_same_partition_in_a_fresh_process():
    rng = np.random.default_rng(5)
    n, m = 300, 900
    e = {
        "src_layer": np.zeros(m, np.int64),
        "src": rng.integers(0, n, m),
        "dst_layer": np.ones(m, np.int64),
        "dst": rng.integers(0, n, m),
        "jaccard": rng.uniform(0.05, 1, m),
    }
    f_layer, f_id = np.repeat([0, 1], n), np.tile(np.arange(n), 2)
    live = np.ones(2 * n, bool)
    here, info = comm.leiden(f_layer, f_id, live, e)
    assert 1 < info["communities"] < 2 * n
    code = (
        "import sys, json, numpy as np; from saelineage.lineage import communities as c; "
        "d = json.load(sys.stdin); e = {k: np.asarray(v) for k, v in d['e'].items()}; "
        "print(json.dumps(c.leiden(np.asarray(d['l']), np.asarray(d['f']), np.ones(len(d['l']), bool), e)[0]"
        ".tolist()))"
    )
    payload = json.dumps({"e": {k: v.tolist() for k, v in e.items()}, "l": f_layer.tolist(), "f": f_id.tolist()})
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == here.tolist()


def test_prompt_graph_pure_function():
    f_layer = np.repeat([0, 1, 2], 3)
    f_id = np.tile([0, 1, 2], 3)
    ctx = GraphContext(f_layer, f_id, np.full(9, 10.0), np.array([0, 1, -1] * 3), None, _graph_edges())
    codes = {
        0: (np.array([0, 1]), np.array([5.0, 0.5])),
        1: (np.array([0, 1]), np.array([2.0, 3.0])),
        2: (np.array([0]), np.array([1.0])),
    }
    pg = prompt_graph(codes, ctx, rel=0.1)
    assert pg.rows.tolist() == [0, 3, 4, 6] and pg.activation.tolist() == [5.0, 2.0, 3.0, 1.0]
    g = prompt_nodelink(pg)
    assert [n["id"] for n in g["nodes"]] == ["0_0", "1_0", "1_1", "2_0"]  # 0_1 is below 0.1 × max
    assert {(x["source"], x["target"]) for x in g["links"]} == {("0_0", "1_0"), ("1_0", "2_0"), ("0_0", "1_1")}
    assert g["nodes"][0]["community"] == 0 and g["nodes"][0]["rel_activation"] == 0.5
    g = prompt_nodelink(prompt_graph(codes, ctx, rel=0.1, min_value=0.5))
    assert {(x["source"], x["target"]) for x in g["links"]} == {("0_0", "1_0"), ("1_0", "2_0")}
    g = prompt_nodelink(prompt_graph(codes, ctx, rel=0.1, max_nodes=2))
    assert [n["id"] for n in g["nodes"]] == ["0_0", "1_1"] and g["graph"]["truncated"]


def test_exports_are_readable():
    nx = pytest.importorskip("networkx")
    nodes = pa.table(
        {
            "id": ["0_0", "1_0"],
            "layer": [0, 1],
            "feature": [0, 0],
            "explanation": ['<b>"x" & y</b>', None],
            "community": [0, None],
            "lifecycle": ["carried", "new"],
            "density": [0.1, float("nan")],
        }
    )
    links = pa.table({"source": ["0_0"], "target": ["1_0"], "similarity": [0.5]})
    data = json.loads(json.dumps(nodelink(nodes, links, {"measure": "jaccard"}), allow_nan=False))
    g = nx.node_link_graph(data, edges="links")
    assert g.is_directed() and g["0_0"]["1_0"]["similarity"] == 0.5 and g.nodes["0_0"]["community"] == 0
    x = graphml_bytes(nodes, links, {"run": "r"})
    ET.fromstring(x)  # well-formed despite the markup in the explanation
    g2 = nx.parse_graphml(x.decode())
    assert g2.nodes["0_0"]["explanation"] == '<b>"x" & y</b>' and g2["0_0"]["1_0"]["weight"] == 0.5
    assert "community" not in g2.nodes["1_0"]
