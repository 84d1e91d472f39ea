"""Neuronpedia interop: explanations exported in Neuronpedia's record format read back through
`labels import` unchanged; feature lists carry Neuronpedia's list entries and a quick-list URL; ids come
from the SAELens release or a given template, and SAEs without one get a clear error."""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs, urlsplit

import pytest

from saelineage.errors import SaelineageError
from saelineage.lineage.export import export
from saelineage.query.neuronpedia import neuronpedia_list, neuronpedia_sources
from saelineage.query.run_data import RunData
from saelineage.run import RunDir
from saelineage.testing.sample_run import HOSTILE_LABEL, build_sample_run
from saelineage.web.labels import import_labels, read_label_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEMPLATE = "smollm2-135m/{layer}-saelineage"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return build_sample_run(tmp_path_factory.mktemp("np") / "run", n_layers=3, d_sae=32)


def test_explanations_round_trip_through_labels_import(sample, tmp_path):
    path = export(sample.path, "neuronpedia", tmp_path / "expl.json", neuronpedia_id=TEMPLATE)
    records = json.loads(path.read_text())
    g = RunData(sample.path).g
    live = [(int(l), int(f)) for l, f, n in zip(g.layer, g.feature, g.n_active) if n > 0]
    assert [(int(r["layer"].split("-")[0]), int(r["index"])) for r in records] == live
    assert {r["modelId"] for r in records} == {"smollm2-135m"}
    assert all(
        set(r) == {"modelId", "layer", "index", "description", "explanationModelName", "typeName"} for r in records
    )
    first = records[0]
    assert (
        first["layer"] == "0-saelineage" and first["description"] == HOSTILE_LABEL and first["typeName"] == "imported"
    )
    assert {r["typeName"] for r in records[1:]} == {"top-tokens"}
    # read back by the importer, as Neuronpedia's own exports are
    assert read_label_file(path) == [
        (int(r["layer"].split("-")[0]), int(r["index"]), r["description"]) for r in records
    ]
    other = build_sample_run(tmp_path / "other", n_layers=3, d_sae=32, hostile_label=False)
    n = import_labels(other.path, path)
    assert n["kept"] == len(records) and n["unknown"] == 0
    back = RunData(other.path).g
    assert [back.label[back.idx(l, f)] for l, f in live] == [r["description"] for r in records]


def test_feature_list_and_quick_list_url(sample, tmp_path):
    path = export(sample.path, "neuronpedia-list", tmp_path / "list.json", features="1:3, 2:5", neuronpedia_id=TEMPLATE)
    data = json.loads(path.read_text())
    g = RunData(sample.path).g
    assert data["features"] == [
        {"modelId": "smollm2-135m", "layer": f"{l}-saelineage", "index": str(f), "description": g.label[g.idx(l, f)]}
        for l, f in [(1, 3), (2, 5)]
    ]
    url = urlsplit(data["url"])
    assert url.netloc == "www.neuronpedia.org" and url.path == "/quick-list/"
    assert json.loads(parse_qs(url.query)["features"][0]) == data["features"]
    comm = int(g.community[g.idx(1, 3)])
    members = export(sample.path, "neuronpedia-list", tmp_path / "c.json", community=comm, neuronpedia_id=TEMPLATE)
    got = {(int(e["layer"].split("-")[0]), int(e["index"])) for e in json.loads(members.read_text())["features"]}
    assert got == {(int(g.layer[i]), int(g.feature[i])) for i in g.members(comm)}
    with pytest.raises(SaelineageError, match="needs its features"):
        export(sample.path, "neuronpedia-list", tmp_path / "x.json", neuronpedia_id=TEMPLATE)
    big = neuronpedia_list({0: {}}, [(0, i, "x") for i in range(101)], "big", TEMPLATE)
    assert "url" not in big and len(big["features"]) == 101  # too long for a URL: the file only


def test_ids_from_the_release_or_a_clear_error(sample, tmp_path):
    saes = {6: {"release": "gpt2-small-res-jb", "sae_id": "blocks.6.hook_resid_pre"}}
    assert neuronpedia_sources(saes) == {6: ("gpt2-small", "6-res-jb")}  # the browser's link logic, reused
    assert neuronpedia_sources(saes, "gpt2-small/{layer}-mine") == {6: ("gpt2-small", "6-mine")}
    with pytest.raises(SaelineageError, match="no Neuronpedia id"):
        export(sample.path, "neuronpedia", tmp_path / "e.json")  # synthetic SAEs: no release
    with pytest.raises(SaelineageError, match="not MODEL/SOURCE"):
        neuronpedia_sources(saes, "{layer}-res-jb")
    m = RunDir(sample.path).load()
    assert m.saes and all(not (meta or {}).get("release") for meta in m.saes.values())
