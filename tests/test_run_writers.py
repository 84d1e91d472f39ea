"""One writer per run file: collect → stats → ceiling → analyze → ablate → labels import →
analyze again → ablate again (skipped) on a tiny collected run, recording which files each stage
changed; then the joined per-feature table and its export against the separate tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from runs import write_corpus, write_saes
from tinymodels import tiny_llama
from typer.testing import CliRunner

from saelineage import contract
from saelineage.causal.config import AblateConfig
from saelineage.causal.stage import run_ablate
from saelineage.ceiling.config import CeilingConfig
from saelineage.ceiling.stage import run_ceiling
from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.feature_table import read_features
from saelineage.lineage.command import analyze_command, export_command
from saelineage.lineage.export import export
from saelineage.lineage.stage import run_analyze
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
from saelineage.web.labels import import_labels

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = {"manifest.json", ".lock"}
"""The manifest records every stage's status (README: written by every stage); .lock is the run lock."""
ABLATE_KW = {
    "measures": ["jaccard", "pearson"],
    "bins": 2,
    "per_bin": 3,
    "windows_per_pair": 2,
    "batch_rows": 8,
    "hidden_windows": 8,
    "hidden_windows_per_feature": 1,
    "plot": False,
}
COLLECT_COLUMNS = ["layer", "feature", "n_active", "density", "act_sum", "act_sumsq", "act_max"]
LABEL = "a planted label"


def state(run: Path) -> dict[str, tuple]:
    """(inode, mtime, size) of every file under the run: an atomic rewrite changes the inode even
    when bytes and mtime happen to match."""
    out = {}
    for p in run.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(run))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("writers")
    model = tiny_llama(root / "model", n_layers=3, d=32)
    saes = write_saes(root / "saes", 32, [0, 1, 2], d_sae=48)
    cfg = CollectConfig(
        model=str(model),
        saes=str(saes),
        corpus=str(write_corpus(root / "c.txt", n_docs=8)),
        window=16,
        max_tokens=16 * 16,
        batch_windows=4,
        shard_windows=8,
        examples_k=3,
    )
    run = root / "run"
    second = write_saes(root / "saes-2", 32, [1], d_sae=48, archs=("standard",))  # another training of layer 1
    labelled = []

    def label_one() -> None:
        """Label a feature of the first prompt graph, so that the graphs analyze writes next must show it."""
        node = json.loads((run / "prompt_graphs.json").read_text())["graphs"][0]["nodes"][0]
        labelled.append((node["layer"], node["feature"]))
        (root / "labels.csv").write_text(f"layer,feature,explanation\n{node['layer']},{node['feature']},{LABEL}\n")
        import_labels(run, root / "labels.csv")

    stages = [
        ("collect", lambda: run_collect(run, cfg)),
        ("stats", lambda: run_stats(run, StatsConfig(memory_limit=4 << 30), progress=False)),
        (
            "ceiling",
            lambda: run_ceiling(run, CeilingConfig(saes=str(second), tokens=128, batch_windows=4), progress=False),
        ),
        ("analyze", lambda: run_analyze(run, progress=False)),
        ("ablate", lambda: run_ablate(run, AblateConfig(**ABLATE_KW), progress=False)),
        ("labels import", label_one),
        ("analyze", lambda: run_analyze(run, progress=False, force=True)),
        ("ablate", lambda: run_ablate(run, AblateConfig(**ABLATE_KW), progress=False)),
    ]
    writers: dict[str, set[str]] = {}
    before: dict[str, tuple] = {}
    for stage, fn in stages:
        fn()
        after = state(run) if run.is_dir() else {}
        for name in set(before) | set(after):
            if before.get(name) != after.get(name):
                writers.setdefault(name, set()).add(stage)
        before = after
    return run, writers, labelled[0]


def test_each_run_file_has_one_writing_stage(pipeline):
    run, writers, _ = pipeline
    shared = {name: stages for name, stages in writers.items() if name not in SHARED and len(stages) > 1}
    assert not shared, f"files written by more than one stage: {shared}"
    assert writers["features.parquet"] == {"collect"}
    assert writers["feature_analysis.parquet"] == {"analyze"}
    assert writers["error_projection.parquet"] == {"ablate"}
    # the contract's table of writers says the same as what the stages did
    top = {name: stages for name, stages in writers.items() if "/" not in name and name not in SHARED}
    assert top == {name: {contract.WRITER[name]} for name in top}, "saelineage.contract.WRITER is out of date"
    # not made by this run: the store API's decoders, and the plot that ablate skips with plot=False
    assert set(contract.WRITER) - set(top) <= {contract.DECODERS, contract.ABLATIONS_HTML}
    assert writers["labels.parquet"] == {"labels import"}
    assert pq.read_schema(run / "features.parquet").names == COLLECT_COLUMNS
    assert pq.read_table(run / "error_projection.parquet").num_rows > 0  # ablate did measure ending features


def expected_join(run: Path) -> list[dict]:
    """features.parquet rows, each extended by its row of the analyze and ablate tables (None where absent)."""
    feats = pq.read_table(run / "features.parquet").to_pylist()
    out = [dict(r) for r in feats]
    for name in ("feature_analysis.parquet", "error_projection.parquet"):
        t = pq.read_table(run / name)
        cols = [c for c in t.column_names if c not in ("layer", "feature")]
        by = {(r["layer"], r["feature"]): r for r in t.to_pylist()}
        for r in out:
            other = by.get((r["layer"], r["feature"]), {})
            r.update({c: other.get(c) for c in cols})
    return out


def test_read_features_joins_the_stage_tables(pipeline):
    run, _, _ = pipeline
    got = read_features(run)
    assert got.column_names[:7] == COLLECT_COLUMNS
    assert {"lifecycle", "has_pred", "has_succ", "community", "error_proj_rel"} <= set(got.column_names)
    assert got.to_pylist() == expected_join(run)
    assert {r["lifecycle"] for r in got.to_pylist()} <= {"dead", "new", "carried", "ending", "new+ending"}


def test_export_features_writes_the_joined_table(pipeline, tmp_path):
    run, _, _ = pipeline
    app = typer.Typer()
    app.command("analyze")(analyze_command)
    app.command("export")(export_command)
    out = tmp_path / "features.parquet"
    res = CliRunner().invoke(app, ["export", str(run), "--format", "features", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert pq.read_table(out).to_pylist() == expected_join(run)
    default = export(run, "features")
    assert default == run / "export" / "features.parquet" and pq.read_table(default).to_pylist() == expected_join(run)


def test_explanations_come_from_labels_parquet(pipeline, tmp_path):
    run, _, labelled = pipeline
    data = json.loads(export(run, "nodelink", tmp_path / "g.json").read_text())
    expl = {(n["layer"], n["feature"]): n["explanation"] for n in data["nodes"]}
    assert expl.pop(labelled) == LABEL
    assert set(expl.values()) == {None}
    # analyze ran again after the import: its prompt graphs carry the imported label, and only there
    nodes = [n for g in json.loads((run / "prompt_graphs.json").read_text())["graphs"] for n in g["nodes"]]
    mine = [(n["layer"], n["feature"]) == labelled for n in nodes]
    assert {n["explanation"] for n, m in zip(nodes, mine) if m} == {LABEL}
    assert {n["explanation"] for n, m in zip(nodes, mine) if not m} == {None}


def test_files_hold_the_contract_columns(pipeline):
    """Each table's columns as docs/design.md §3 lists them, and as saelineage.contract defines them."""
    run, _, _ = pipeline
    design = {
        "features.parquet": ["layer", "feature", "n_active", "density", "act_sum", "act_sumsq", "act_max"],
        "examples.parquet": ["layer", "feature", "rank", "value", "window", "pos"],
        "edges.parquet": ["src_layer", "src", "dst_layer", "dst", "n_co", "jaccard", "sufficiency", "necessity",
                          "mutual_info", "pearson", "act_cosine", "dec_cosine", "sufficiency_lo", "necessity_lo"],
        "gates.parquet": ["kind", "layer", "feature", "parent_layer", "parent_a", "parent_b", "support",
                          "score_forward", "score_backward"],
        "feature_analysis.parquet": ["layer", "feature", "lifecycle", "has_pred", "has_succ", "community"],
    }  # fmt: skip
    defined = {"features.parquet": contract.FEATURE_COLUMNS, "examples.parquet": contract.EXAMPLE_COLUMNS,
               "edges.parquet": contract.EDGE_COLUMNS, "gates.parquet": contract.GATE_COLUMNS,
               "feature_analysis.parquet": contract.ANALYSIS_COLUMNS}  # fmt: skip
    for name, cols in design.items():
        names = pq.read_schema(run / name).names
        assert names[: len(cols)] == cols, name  # more columns may follow, never fewer or renamed
        assert list(defined[name][: len(cols)]) == cols, name
