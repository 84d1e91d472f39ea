"""Feature browser API and pages without a browser (FastAPI TestClient over a synthetic run)."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from saelineage.query.layout import crossings, order_rows
from saelineage.query.neuronpedia import neuronpedia_ids, neuronpedia_url
from saelineage.testing.sample_run import HOSTILE_LABEL, build_sample_run
from saelineage.web.app import create_app
from saelineage.web.labels import import_labels, read_label_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def node_rows(g: dict) -> list[dict]:
    """The graph API's node columns as one dict per node (id = position)."""
    cols = g["nodes"]
    return [dict(zip(cols, vals), id=i) for i, vals in enumerate(zip(*cols.values()))]


def edge_rows(g: dict) -> list[tuple]:
    return list(zip(g["edges"]["src"], g["edges"]["dst"], g["edges"]["value"]))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build_sample_run(tmp_path_factory.mktemp("webapi") / "run")


@pytest.fixture(scope="module")
def client(run):
    return TestClient(create_app(run.path, allowed_hosts=["testserver"]))


def test_every_page_renders(client):
    for path in [
        "/",
        "/graph",
        "/feature/1/3",
        "/communities",
        "/community/0",
        "/gates",
        "/splits",
        "/search?q=the",
        "/prompt",
        "/docs",
        "/openapi.json",
        "/vendor/plotly.min.js",
        "/static/app.css",
    ]:
        r = client.get(path)
        assert r.status_code == 200, path
        assert "content-security-policy" in r.headers
    assert "script-src 'self'" in client.get("/").headers["content-security-policy"]


def test_feature_api(client):
    f = client.get("/api/features/1/3").json()
    assert f["layer"] == 1 and f["feature"] == 3 and f["label"]
    assert f["density"] > 0 and f["act_max"] > 0 and f["lifecycle"]
    ex = f["examples"]
    assert ex and all(sum(t["hit"] for t in e["tokens"]) == 1 for e in ex)
    assert [e["rank"] for e in ex] == sorted(e["rank"] for e in ex)
    nb = client.get("/api/features/1/3/neighbours?sort=sufficiency&limit=5").json()
    assert nb["up"] and all(e["dst_layer"] == 1 and e["dst"] == 3 and e["src_layer"] == 0 for e in nb["up"])
    assert all(e["src_layer"] == 1 and e["src"] == 3 for e in nb["down"])
    vals = [e["sufficiency"] for e in nb["up"]]
    assert vals == sorted(vals, reverse=True) and len(vals) <= 5
    for key in ("n_co", "jaccard", "necessity", "mutual_info", "pearson", "act_cosine", "dec_cosine", "sufficiency_lo"):
        assert key in nb["up"][0]
    rel = client.get("/api/features/1/3/relations").json()
    assert set(rel) == {"gates", "splits"}
    assert client.get("/api/features/1/99999").status_code == 404
    assert client.get("/feature/1/99999").status_code == 404


def test_feature_card_is_the_top_of_the_feature_page(client):
    """The graph's side panel shows /feature/L/F/card: the feature page's own card and edge tables."""
    page = client.get("/feature/1/3?sort=pearson").text
    card = client.get("/feature/1/3/card?sort=pearson&examples=20&neighbours=50")
    assert card.status_code == 200 and "content-security-policy" in card.headers
    assert card.text.strip() and card.text in page and "<html" not in card.text
    small = client.get("/feature/1/3/card?examples=2&neighbours=3").text
    assert small.count("<li>") == 2 and small.count('class="fref"') <= 6
    assert '<th data-m="jaccard" class="sorted">' in small
    r = client.get("/feature/1/99999/card")
    assert r.status_code == 404 and "not in this run" in r.text
    assert client.get("/feature/1/3/card?examples=1000").status_code == 422


def test_graph_api(client):
    g = client.get("/api/graph?max_nodes=60&min_value=0.2").json()
    nodes, edges = node_rows(g), edge_rows(g)
    assert 0 < len(nodes) <= 60
    ids = {n["id"] for n in nodes}
    assert all(a in ids and b in ids and v >= 0.2 for a, b, v in edges)
    rows = {}
    for n in nodes:
        rows.setdefault(n["row"], []).append(n["pos"])
        assert g["layers"][n["row"]] == n["layer"]
    assert all(sorted(p) == list(range(len(p))) for p in rows.values())  # positions are a permutation per row
    assert all(nodes[b]["layer"] == nodes[a]["layer"] + 1 for a, b, _ in edges)
    assert g["crossings"]["shown"] <= g["crossings"]["by_feature"]
    big = client.get("/api/graph?max_nodes=2000&measure=necessity").json()
    assert big["crossings"]["shown"] < big["crossings"]["by_feature"]  # reordering really reduces crossings
    sub = client.get("/api/graph?layer_min=1&layer_max=2&max_nodes=2000").json()
    assert set(sub["nodes"]["layer"]) <= {1, 2} and sub["layers"] == [1, 2]
    c = client.get("/api/graph?community=0&max_nodes=2000").json()
    assert c["nodes"]["community"] and set(c["nodes"]["community"]) == {0}
    assert client.get("/api/graph?max_nodes=5000").status_code == 422
    assert client.get("/api/graph?measure=__import__").status_code == 422


@pytest.mark.parametrize(
    "query", [dict(min_value=0.0), dict(min_value=0.2, layer_min=1, layer_max=3), dict(min_value=0.05, max_nodes=7)]
)
def test_community_graph_edges_match_brute_force(run, client, query):
    """Edges of a community's graph = every edge of edges.parquet between two shown members of
    consecutive shown layers with value >= min_value (recomputed from the run's files)."""
    feats = (
        pq.read_table(run.file("features.parquet"))
        .to_pandas()
        .merge(pq.read_table(run.file("feature_analysis.parquet")).to_pandas(), on=["layer", "feature"])
    )
    edges = pq.read_table(run.file("edges.parquet")).to_pandas()
    comm = int(feats["community"].dropna().astype(int).value_counts().index[0])  # the largest community
    g = client.get("/api/graph", params={"community": comm, "measure": "jaccard", **query}).json()
    nodes = node_rows(g)
    shown = {(n["layer"], n["feature"]): n["id"] for n in nodes}
    layers = g["layers"]
    members = feats[(feats["community"] == comm) & feats["layer"].isin(layers)]
    if "max_nodes" not in query:
        assert set(shown) == set(zip(members["layer"], members["feature"]))
    else:  # the most active members are kept
        assert len(shown) == min(query["max_nodes"], len(members)) and g["truncated"] == (
            len(members) > query["max_nodes"]
        )
        assert (
            min(feats.set_index(["layer", "feature"]).loc[list(shown), "n_active"])
            >= sorted(members["n_active"], reverse=True)[len(shown) - 1]
        )
    nxt = dict(zip(layers[:-1], layers[1:]))
    want = {
        (shown[(r.src_layer, r.src)], shown[(r.dst_layer, r.dst)], round(r.jaccard, 12))
        for r in edges.itertuples()
        if (r.src_layer, r.src) in shown
        and (r.dst_layer, r.dst) in shown
        and nxt.get(r.src_layer) == r.dst_layer
        and r.jaccard >= query["min_value"]
    }
    got = {(a, b, round(v, 12)) for a, b, v in edge_rows(g)}
    assert got == want and len(got) == len(edge_rows(g))
    assert want  # the sample run's largest community has internal edges


def test_order_rows_and_crossings_match_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(30):
        sizes = rng.integers(2, 9, 3)
        row = np.repeat(np.arange(3), sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        e = [
            (a, b)
            for r in range(2)
            for a in range(starts[r], starts[r + 1])
            for b in range(starts[r + 1], starts[r + 2])
            if rng.random() < 0.35
        ]
        eu, ev = np.array([x[0] for x in e], np.int64), np.array([x[1] for x in e], np.int64)
        key = rng.random(len(row))
        for mode in ("feature", "barycenter"):
            pos = order_rows(row, key, eu, ev, mode)
            brute = sum(
                1
                for (a, b), (c, d) in itertools.combinations(e, 2)
                if row[a] == row[c] and (pos[a] - pos[c]) * (pos[b] - pos[d]) < 0
            )
            assert crossings(row, pos, eu, ev) == brute
        start = order_rows(row, key, eu, ev, "feature")
        assert crossings(row, order_rows(row, key, eu, ev), eu, ev) <= crossings(row, start, eu, ev)


def test_lists_and_search(client):
    ov = client.get("/api/overview").json()
    assert ov["counts"]["edges"] > 0 and ov["counts"]["communities"] > 0
    assert [r["layer"] for r in ov["per_layer"]] == [0, 1, 2, 3]
    assert set(ov["histograms"]) >= {"jaccard", "pearson"}
    # the data-free match's agreement table (stats_summary.json), shown on the overview page
    sm = ov["sae_match"]
    assert sm["method"] == "exact"
    assert [(r["src_layer"], r["dst_layer"]) for r in sm["pairs"]] == [(0, 1), (1, 2), (2, 3)]
    assert all(0 <= r["agreement"]["pearson"] <= 1 and r["n_matched"] <= r["n_live"] for r in sm["pairs"])
    page = client.get("/").text
    assert 'id="sae-match-table"' in page and "0 → 1" in page
    # the headline (the lifecycle chart) comes before the run's provenance (the SAE table)
    assert page.index('id="lifecycle-chart"') < page.index('id="sae-table"')
    cs = client.get("/api/communities?limit=5").json()
    sizes = [r["size"] for r in cs["rows"]]
    assert sizes == sorted(sizes, reverse=True)
    assert client.get(f"/api/communities/{cs['rows'][0]['community']}").json()["size"] == sizes[0]
    gates = client.get("/api/gates?kind=or&limit=3").json()
    assert gates["total"] > 0 and all(r["kind"] == "or" for r in gates["rows"])
    assert client.get("/api/splits").json()["total"] > 0
    s = client.get("/api/search", params={"q": "2:5"}).json()
    assert s["feature"]["layer"] == 2 and s["feature"]["feature"] == 5
    s = client.get("/api/search", params={"q": "the"}).json()
    assert s["tokens"] and s["token_ids"]
    assert all("the" in x["label"].lower() for x in s["labels"])
    assert client.get("/api/search", params={"q": "x" * 201}).status_code == 422


def test_hostile_label_is_escaped(client):
    r = client.get("/feature/0/0")
    assert HOSTILE_LABEL not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in r.text
    r = client.get("/search", params={"q": "onerror"})
    assert HOSTILE_LABEL not in r.text and "&lt;img src=x" in r.text
    assert client.get("/api/features/0/0").json()["label"] == HOSTILE_LABEL  # data stays data in the API


def test_inputs_are_bounded_and_never_paths(client):
    assert client.get("/static/../manifest.json").status_code == 404
    assert client.get("/static/%2e%2e/%2e%2e/manifest.json").status_code == 404
    assert client.get("/feature/..%2F..%2Fetc/passwd").status_code in (404, 422)
    assert client.get("/api/features/-1/0").status_code in (404, 422)
    r = client.post(
        "/api/prompt/tokens",
        content=b'{"text": "' + b"a" * 70_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert client.post("/api/prompt/tokens", json={"text": "a" * 2001}).status_code == 422
    assert client.get("/api/overview", headers={"host": "evil.example"}).status_code == 400


def test_prompt_unavailable_without_model(client):
    st = client.get("/api/prompt/status").json()
    assert st["available"] is False and "imported without a model" in st["reason"]
    r = client.post("/api/prompt/tokens", json={"text": "hello"})
    assert r.status_code == 503
    page = client.get("/prompt").text
    assert "prompt-unavailable" in page and "disabled" in page


def test_run_with_only_collect(tmp_path):
    """The browser works on a run whose later stages are missing and says what is missing."""
    from saelineage.data.importer import write_run
    from saelineage.testing.sample_run import synthetic_codes

    codes, tokens, vocab = synthetic_codes(n_layers=2, d_sae=12, n_windows=8, window=16)
    run = write_run(tmp_path / "r", codes, tokens, window_len=16, bos=True, vocab=vocab)
    c = TestClient(create_app(run.path, allowed_hosts=None))
    st = c.get("/api/status").json()
    assert {m["stage"] for m in st["missing"]} == {"stats", "analyze", "ablate"}
    assert "saelineage stats" in c.get("/").text
    g = c.get("/api/graph").json()
    assert g["nodes"]["layer"] == [] and "saelineage stats" in g["missing"]
    f = c.get("/api/features/0/1").json()
    assert f["examples"] and f["lifecycle"] is None and f["label_source"] == "auto"
    for path in ["/feature/0/1", "/graph", "/gates", "/splits", "/communities", "/search?q=0:1"]:
        assert c.get(path).status_code == 200, path
    assert "No edges yet" in c.get("/feature/0/1").text
    assert c.get("/api/gates").json()["missing"]


def test_labels_import_json_and_csv(tmp_path, run):
    np_export = [
        {"modelId": "m", "layer": "1-res-x", "index": "3", "description": "cats and dogs"},
        {"modelId": "m", "layer": "1-res-x", "index": "999999", "description": "out of range"},
        {"modelId": "m", "layer": "2-res-x", "index": 4, "description": "Paris"},
    ]
    (tmp_path / "np.json").write_text(json.dumps(np_export))
    (tmp_path / "l.csv").write_text('layer,feature,explanation\n3,7,"commas, and ""quotes"""\n')
    assert read_label_file(tmp_path / "np.json")[0] == (1, 3, "cats and dogs")
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns(".browser-cache"))
    n = import_labels(copy, tmp_path / "np.json")
    assert n == {"read": 3, "kept": 2, "unknown": 1, "total": 3}  # + the planted hostile label
    import_labels(copy, tmp_path / "l.csv")
    lab = pq.read_table(copy / "labels.parquet").to_pydict()
    assert 'commas, and "quotes"' in lab["explanation"]
    c = TestClient(create_app(copy, allowed_hosts=None))
    f = c.get("/api/features/1/3").json()
    assert f["label"] == "cats and dogs" and f["label_source"] == "imported" and f["auto_label"]
    assert f["explanation"] == "cats and dogs" and c.get("/api/features/1/4").json()["explanation"] is None
    assert any(x["feature"] == 4 for x in c.get("/api/search", params={"q": "paris"}).json()["labels"])


def test_labels_cli(tmp_path, run):
    import shutil

    from typer.testing import CliRunner

    from saelineage.web.command import labels_app

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns(".browser-cache"))
    (tmp_path / "l.csv").write_text("layer,feature,explanation\n0,1,first\n")
    res = CliRunner().invoke(labels_app, ["import", str(copy), str(tmp_path / "l.csv")])
    assert res.exit_code == 0, res.output
    assert "1 of 1" in res.output


def test_cache_follows_rewritten_files(tmp_path, run):
    import shutil
    import time

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns(".browser-cache"))
    app = create_app(copy, allowed_hosts=None)
    app.state.data.refresh_s = 0.0
    c = TestClient(app)
    assert c.get("/api/features/2/2").json()["label_source"] != "imported"
    time.sleep(0.01)
    pq.write_table(
        pa.table(
            {
                "layer": pa.array([2], pa.int64()),
                "feature": pa.array([2], pa.int64()),
                "explanation": ["new label"],
                "source": ["x"],
            }
        ),
        copy / "labels.parquet",
    )
    c.get("/api/status")  # notices the change and starts rebuilding in the background
    app.state.data.wait_for_refresh()
    assert c.get("/api/features/2/2").json()["label"] == "new label"


def test_neuronpedia_links():
    saes = {
        3: {"release": "gpt2-small-res-jb", "sae_id": "blocks.3.hook_resid_pre"},
        4: {"path": "/x"},
        5: {"neuronpedia": "gemma-2-2b/5-gemmascope-res-16k"},
    }
    ids = neuronpedia_ids(saes)
    assert neuronpedia_url(ids, 3, 17) == "https://www.neuronpedia.org/gpt2-small/3-res-jb/17"
    assert neuronpedia_url(ids, 4, 17) is None
    assert neuronpedia_url(ids, 5, 2) == "https://www.neuronpedia.org/gemma-2-2b/5-gemmascope-res-16k/2"


def test_feature_page_shows_hidden_in_error_when_present(tmp_path):
    """After `ablate`, a feature without a successor shows its error projection; others show none."""
    from saelineage.run import write_parquet

    run = build_sample_run(tmp_path / "run")
    feats = pq.read_table(run.file("feature_analysis.parquet")).to_pandas()
    ending = feats[feats["lifecycle"].isin(["ending", "new+ending"])].iloc[0]
    carried = feats[feats["lifecycle"] == "carried"].iloc[0]
    l, f = int(ending["layer"]), int(ending["feature"])
    write_parquet(
        run.file("error_projection.parquet"),
        pa.table(
            {
                "layer": pa.array([l], pa.int32()),
                "feature": pa.array([f], pa.int32()),
                "error_next_layer": pa.array([l + 1], pa.int32()),
                "error_proj_tokens": pa.array([321], pa.int64()),
                "error_proj": [0.75],
                "error_proj_rel": [0.4321],
                "error_proj_base": [0.01],
                "resid_proj_rel": [0.9],
            }
        ),
    )
    c = TestClient(create_app(run.path, allowed_hosts=["testserver"]))
    page = c.get(f"/feature/{l}/{f}").text
    assert 'id="hidden-in-error"' in page and "0.432" in page and "321" in page
    assert f"layer {l + 1}&#39;s SAE error" in page or f"layer {l + 1}'s SAE error" in page
    assert c.get(f"/api/features/{l}/{f}").json()["extra"]["error_proj_rel"] == pytest.approx(0.4321)
    assert 'id="hidden-in-error"' not in c.get(f"/feature/{int(carried['layer'])}/{int(carried['feature'])}").text


def test_neighbours_carry_ablation_results(tmp_path):
    """Edges sampled by `ablate` show its effect in both directions; other edges show none."""
    from saelineage.run import write_parquet

    run = build_sample_run(tmp_path / "run")
    edges = pq.read_table(run.file("edges.parquet")).to_pandas()
    e1, e2 = edges.iloc[0], edges.iloc[len(edges) // 2]
    rows = [(e1, "jaccard", 0.5), (e1, "pearson", 0.5), (e2, "jaccard", 1.25)]  # e1 drawn for two measures
    write_parquet(
        run.file("ablations.parquet"),
        pa.table(
            {
                "measure": [m for _, m, _ in rows],
                **{
                    c: pa.array([int(e[c]) for e, _, _ in rows], pa.int32())
                    for c in ("src_layer", "src", "dst_layer", "dst")
                },
                "mean_drop": [d for _, _, d in rows],
                "rel_drop": [d / 4 for _, _, d in rows],
                "frac_off": [0.0] * 3,
                "n_tokens": pa.array([7] * 3, pa.int64()),
            }
        ),
    )
    c = TestClient(create_app(run.path, allowed_hosts=["testserver"]))
    for e, drop in ((e1, 0.5), (e2, 1.25)):
        key = tuple(int(e[k]) for k in ("src_layer", "src", "dst_layer", "dst"))
        down = c.get(f"/api/features/{key[0]}/{key[1]}/neighbours", params={"limit": 500}).json()["down"]
        up = c.get(f"/api/features/{key[2]}/{key[3]}/neighbours", params={"limit": 500}).json()["up"]
        for lst in (down, up):
            hit = [x for x in lst if (x["src_layer"], x["src"], x["dst_layer"], x["dst"]) == key]
            assert len(hit) == 1 and hit[0]["ablation"] == {
                "mean_drop": drop,
                "rel_drop": drop / 4,
                "frac_off": 0.0,
                "n_tokens": 7,
            }
        if drop == 1.25:  # the feature page shows the drop and the relative drop (31%)
            page = c.get(f"/feature/{key[0]}/{key[1]}").text
            cell = page[page.index("ablating the upstream feature: mean drop") :]
            assert "on 7 tokens" in cell[:200] and '>1.25 <span class="lo">31%</span>' in cell[:400]
        sampled = {tuple(int(x[k]) for k in ("src_layer", "src", "dst_layer", "dst")) for x in (e1, e2)}
        assert sum(x["ablation"] is not None for x in down) == sum(p[:2] == key[:2] for p in sampled)
        assert sum(x["ablation"] is not None for x in up) == sum(p[2:] == key[2:] for p in sampled)


@pytest.mark.parametrize("k", [1, 3])
def test_edges_per_node_keeps_each_nodes_strongest_edges(client, k):
    """edges_per_node=k: exactly the edges among the k strongest out-edges of their source or
    in-edges of their target, from the same full graph (brute force over its edge list)."""
    q = {"measure": "jaccard", "max_nodes": 300, "min_value": 0.05}
    full = client.get("/api/graph", params=q).json()
    cut = client.get("/api/graph", params={**q, "edges_per_node": k}).json()
    assert [cut["nodes"][c] for c in ("layer", "feature")] == [full["nodes"][c] for c in ("layer", "feature")]
    edges = edge_rows(full)
    want = set()
    for end in (0, 1):
        by: dict[int, list] = {}
        for e in edges:
            by.setdefault(e[end], []).append(e)
        for lst in by.values():  # strongest first, ties by the other end's position
            want |= set(sorted(lst, key=lambda e: (-e[2], e[1 - end]))[:k])
    assert set(edge_rows(cut)) == want and len(want) < len(edges)
    assert cut["edges_dropped"] == len(edges) - len(want)


def test_serve_keeps_a_consistent_state_while_a_stage_rewrites_the_run(tmp_path, run):
    """A browser left open while `analyze` reruns with other options: while the stage writes (and
    its outputs are a mix of old and new files) every answer comes from the previous state; once
    it finishes, the browser switches to the new results."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns(".browser-cache"))
    app = create_app(copy, allowed_hosts=None)
    data = app.state.data
    data.refresh_s = 0.0
    c = TestClient(app)

    def lifecycle_counts() -> dict:
        t = pq.read_table(copy / "feature_analysis.parquet", columns=["lifecycle"]).column("lifecycle").to_pylist()
        return {lab: t.count(lab) for lab in set(t)}

    def shown_counts() -> dict:
        rows = [c.get(f"/api/features/{l}/{f}").json()["lifecycle"] for l in range(4) for f in range(48)]
        return {lab: rows.count(lab) for lab in set(rows)}

    before = lifecycle_counts()
    assert shown_counts() == before
    overview = c.get("/api/overview").json()
    spec = {"stage": "analyze", "run": str(copy), "mode": "pause", "k": 3, "kwargs": {"threshold": 0.95}, "force": True}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("killpoint.py")), json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert proc.stdout.readline().strip() == "paused"  # analyze holds the lock, some outputs rewritten
        assert data.run.writer()["stage"] == "analyze"
        for _ in range(3):
            assert c.get("/api/status").status_code == 200
            data.wait_for_refresh()
        # the previous state, not a mix (lifecycle.parquet is already rewritten, feature_analysis.parquet not yet)
        assert data._building is None and shown_counts() == before
        assert c.get("/api/overview").json() == overview
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(120) == 0
    finally:
        proc.kill()
    after = lifecycle_counts()
    assert after != before  # the stricter threshold moved features from carried to new/ending
    assert data.run.writer() is None
    c.get("/api/status")
    data.wait_for_refresh()
    assert shown_counts() == after
    assert c.get("/api/overview").json() != overview


def test_serve_command_serves_on_loopback(run):
    """`saelineage serve RUN --port P` (the path the demo takes) answers on 127.0.0.1 and stops on SIGINT."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "saelineage.cli", "serve", str(run.path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, status = time.time() + 60, None
        while time.time() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as r:
                    status = (r.status, json.loads(r.read()))
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.2)
        assert status is not None and status[0] == 200 and status[1]["stages"]["analyze"] == "complete"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out


def test_pager_links_are_followable(client):
    """Every link of the gates / splits pagers answers 200 (an empty layer= used to give 422)."""
    import re

    for page in ("/gates?offset=1", "/splits?offset=1", "/gates?kind=and&layer=1&offset=1"):
        html = client.get(page).text
        links = {h.replace("&amp;", "&") for h in re.findall(r'href="(/(?:gates|splits)\?[^"]*)"', html)}
        assert links, page
        for link in links:
            assert client.get(link).status_code == 200, link
