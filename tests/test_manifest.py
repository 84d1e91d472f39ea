"""The typed manifest (saelineage.contract.Manifest): manifest.json of existing runs reads and
writes back unchanged, and collect and the store API both build theirs through `new_manifest`."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
from runs import write_corpus, write_saes
from tinymodels import tiny_llama

from saelineage import __version__, checksum, contract
from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.contract import Manifest, new_manifest
from saelineage.data.importer import write_run
from saelineage.errors import SaelineageError
from saelineage.run import RunDir

#: manifest.json as collect writes it (keys in its order), after stats ran, plus a key of a newer
#: saelineage that this version does not know.
COLLECTED = {
    "schema_version": 1,
    "saelineage_version": "0.3.0",
    "config_hash": "0123456789abcdef",
    "config": {"model": "smollm2", "saes": "/saes", "corpus": "default", "window": 128, "device": "cpu"},
    "model": {"spec": "smollm2", "sha256": "ab" * 32, "dtype": "float32"},
    "saes": {
        "0": {"path": "/saes/l0", "sha256": "cd" * 32, "hook_name": "blocks.0.hook_resid_pre", "d_sae": 96},
        "2": {"release": "r", "sae_id": "blocks.2.hook_resid_pre", "hook_name": "blocks.2.hook_resid_pre", "d_sae": 64},
    },
    "layers": [0, 2],
    "hooks": {"0": "blocks.0.hook_resid_pre", "2": "blocks.2.hook_resid_pre"},
    "d_sae": {"0": 96, "2": 64},
    "d_model": 64,
    "corpus": {"spec": "default", "sha256": "ef" * 32, "n_docs": 30},
    "window": 128,
    "bos": True,
    "include_bos": False,
    "first_window": 0,
    "n_windows": 4,
    "n_tokens": 512,
    "shard_windows": 2,
    "n_shards": 2,
    "center_residual": False,
    "thresholds": {"active": 0.0},
    "stages": {
        "collect": {"status": "complete", "started": "2024-01-01T00:00:00", "seconds": 1.5},
        "stats": {"status": "running", "options": {"top_k": 2}},
    },
    "written_by_a_newer_version": {"anything": [1, 2]},
}

#: The keys only collect records (the store API has no model run, configuration or shard plan).
COLLECT_ONLY = {"config", "d_model", "first_window", "n_shards", "center_residual"}


def test_collected_manifest_round_trips_unchanged():
    data = copy.deepcopy(COLLECTED)
    m = Manifest.from_json(data)
    assert m.layers == [0, 2] and m.d_sae == {0: 96, 2: 64} and m.hooks[2] == "blocks.2.hook_resid_pre"
    assert m.saes[0]["sha256"] == "cd" * 32 and m.n_tokens == 512 and m.bos is True
    assert m.stage("collect")["seconds"] == 1.5 and m.status("stats") == "running" and m.stage("ablate") == {}
    assert m.extra == {"written_by_a_newer_version": {"anything": [1, 2]}}
    out = m.to_json()
    assert out == COLLECTED and list(out) == list(COLLECTED)  # same keys, same order, string layer keys
    assert json.dumps(out, indent=2) == json.dumps(COLLECTED, indent=2)
    assert data == COLLECTED  # parsing does not edit its input


def test_store_api_manifest_round_trips_without_gaining_keys():
    data = {k: v for k, v in COLLECTED.items() if k not in COLLECT_ONLY}
    m = Manifest.from_json(data)
    assert m.config is None and m.first_window is None and m.n_shards is None
    assert m.to_json() == data


def test_run_dir_reads_and_writes_an_existing_manifest(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.manifest_path.write_text(json.dumps(COLLECTED, indent=2))
    m = run.require("collect")
    assert isinstance(m, Manifest) and m.d_sae[2] == 64
    run.save(m)
    saved = json.loads(run.manifest_path.read_text())
    assert set(saved.pop("seal")) == {*COLLECTED.keys() - {"stages"}, *(f"stages.{s}" for s in COLLECTED["stages"])}
    assert saved == COLLECTED
    run.set_stage("stats", "complete", edges=7)
    after = json.loads(run.manifest_path.read_text())
    assert after["stages"]["stats"] == {"status": "complete", "options": {"top_k": 2}, "edges": 7}
    assert after["written_by_a_newer_version"] == COLLECTED["written_by_a_newer_version"]
    assert run.stage_status("stats") == "complete" and run.stage_status("analyze") is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (json.dumps(COLLECTED | {"schema_version": 99}), "newer saelineage"),
        (json.dumps({k: v for k, v in COLLECTED.items() if k != "d_sae"}), "not a saelineage manifest: it lacks d_sae"),
        (json.dumps(COLLECTED | {"d_sae": {"zero": 96}}), "not a saelineage manifest: its layer fields"),
        ("[1, 2]", "not a saelineage manifest"),
        ('{"schema_version": 1, "stages": {', "not valid JSON"),
    ],
)
def test_unreadable_manifests_are_clear_errors(tmp_path, text, match):
    run = RunDir(tmp_path)
    run.manifest_path.write_text(text)
    with pytest.raises(SaelineageError, match=match):
        run.load()


def test_new_manifest_checks_d_sae_covers_the_layers():
    with pytest.raises(ValueError, match="d_sae covers layers"):
        new_manifest(
            layers=[0, 1], d_sae={0: 4}, hooks={}, saes={}, model={}, corpus={}, window=4, bos=False, n_windows=1,
            shard_windows=1, config_hash="x",
        )  # fmt: skip


@pytest.fixture
def built(monkeypatch):
    """Every manifest that new_manifest builds, in order (collect and the store API import it by name)."""
    calls: list[Manifest] = []

    def spy(**kw):
        calls.append(new_manifest(**kw))
        return calls[-1]

    monkeypatch.setattr("saelineage.collect.stage.new_manifest", spy)
    monkeypatch.setattr("saelineage.data.importer.new_manifest", spy)
    return calls


def test_collect_and_store_api_build_through_new_manifest(tmp_path, built):
    root = tmp_path
    cfg = CollectConfig(
        model=str(tiny_llama(root / "model", n_layers=2, d=64)),
        saes=str(write_saes(root / "saes", 64, [0, 1])),
        corpus=str(write_corpus(root / "corpus.txt", n_docs=4)),
        window=16,
        batch_windows=2,
        shard_windows=2,
        max_tokens=16 * 4,
    )
    collected = run_collect(root / "collected", cfg, progress=False).run
    assert len(built) == 1
    rng = np.random.default_rng(0)
    codes = {l: sp.random(64, 8, density=0.2, random_state=rng, format="csr") for l in (0, 1)}
    stored = write_run(root / "stored", codes, np.zeros(64, np.int32), window_len=16, bos=True)
    assert len(built) == 2

    fields = {f.name for f in dataclasses.fields(Manifest)} - {"extra"}
    on_disk = {name: json.loads(r.manifest_path.read_text()) for name, r in (("collect", collected), ("store", stored))}
    for data in on_disk.values():
        assert data.pop("seal") == checksum.seal_of(data)
    assert set(on_disk["collect"]) == fields
    assert set(on_disk["store"]) == fields - COLLECT_ONLY
    for name, data in on_disk.items():
        m = Manifest.from_json(data)
        assert m.saelineage_version == __version__ and m.status("collect") == "complete", name
        assert m.to_json() == data and list(m.to_json()) == list(data), name
    # a collect that resumes (here: to write a deleted summary file again) keeps the entries of
    # the stages that ran since
    collected.set_stage("stats", "complete", edges=3)
    collected.file(contract.FEATURES).unlink()
    run_collect(root / "collected", cfg, progress=False)
    assert len(built) == 3 and collected.load().stage("stats") == {"status": "complete", "edges": 3}
