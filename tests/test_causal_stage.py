"""The `ablate` stage on a collected run of the exact tiny system (see test_causal.py).

edges.parquet is computed here by brute force from the stored codes, so this test does not
depend on the stats engine; the stage only needs the edges' contract columns.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from runs import write_corpus
from test_causal import D_SAE, D, exact_model, exact_saes
from typer import Typer
from typer.testing import CliRunner

from saelineage.causal.command import ablate_command
from saelineage.causal.config import AblateConfig
from saelineage.causal.error_projection import ERROR_COLUMNS
from saelineage.causal.stage import demo_ablation, run_ablate
from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.data.store import iter_shards, token_mask
from saelineage.errors import SaelineageError
from saelineage.run import write_parquet
from saelineage.saes.loading import save_saelens

LAYERS = (1, 2, 3)
HIDDEN = 5  # layer 2's SAE cannot represent q_5: upstream feature 5 ends, but lives on in the error


def brute_edges(run) -> pa.Table:
    m = run.load()
    codes = {l: [] for l in LAYERS}
    for shard in iter_shards(run, LAYERS):
        keep = token_mask(shard.pos, m.bos, False)
        for l in LAYERS:
            codes[l].append(shard.codes[l].csr(D_SAE).toarray()[keep])
    a = {l: np.concatenate(codes[l]).astype(np.float64) for l in LAYERS}
    rows = []
    for l, n in zip(LAYERS[:-1], LAYERS[1:]):
        x, y = a[l] > 0, a[n] > 0
        co = x.T.astype(np.int64) @ y.astype(np.int64)
        ci, cj = x.sum(0), y.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            pear = np.corrcoef(a[l].T, a[n].T)[:D_SAE, D_SAE:]
        for i, j in zip(*np.nonzero(co >= 1)):
            rows.append(
                {
                    "src_layer": l,
                    "src": int(i),
                    "dst_layer": n,
                    "dst": int(j),
                    "n_co": int(co[i, j]),
                    "jaccard": co[i, j] / (ci[i] + cj[j] - co[i, j]),
                    "sufficiency": co[i, j] / ci[i],
                    "necessity": co[i, j] / cj[j],
                    "pearson": float(pear[i, j]),
                }
            )
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate_stage")
    model = exact_model(root, "llama")
    saes = exact_saes(LAYERS, archs=("standard", "standard", "standard"), dead={2: [HIDDEN]})
    for _l, s in saes.items():
        save_saelens(s, root / "saes" / s.hook_name)
    cfg = CollectConfig(
        model=str(model),
        saes=str(root / "saes"),
        corpus=str(write_corpus(root / "c.txt")),
        window=16,
        max_tokens=16 * 48,
        batch_windows=8,
        shard_windows=16,
        examples_k=3,
    )
    r = run_collect(root / "run", cfg).run
    write_parquet(r.file("edges.parquet"), brute_edges(r))
    r.set_stage("stats", "complete", started="test")
    return r


def test_stage_writes_every_sampled_pair_and_correlates(run):
    cfg = AblateConfig(
        measures=["jaccard", "pearson", "sufficiency"],
        bins=4,
        per_bin=6,
        windows_per_pair=3,
        batch_rows=8,
        hidden=False,
    )
    table = run_ablate(run.path, cfg, force=True).read("ablations.parquet")
    disk = pq.read_table(run.file("ablations.parquet"))
    assert disk.equals(table)
    # one row per sampled (measure, pair): pairs repeat across measures and upstream features repeat
    keys = list(zip(*(table.column(c).to_pylist() for c in ("measure", "src_layer", "src", "dst_layer", "dst"))))
    assert len(keys) == len(set(keys))
    pairs = [k[1:] for k in keys]
    assert len(set(pairs)) < len(pairs)
    assert len({p[:2] for p in pairs}) < len(set(pairs))
    rows = table.to_pylist()
    for r in rows:  # same pair, same effect, whatever measure drew it
        same = [
            x
            for x in rows
            if (x["src_layer"], x["src"], x["dst_layer"], x["dst"])
            == (r["src_layer"], r["src"], r["dst_layer"], r["dst"])
        ]
        assert all(x["mean_drop"] == r["mean_drop"] or np.isnan(r["mean_drop"]) for x in same)
    # known answers of the exact system (1 -> 2): same latent: everything removed; other latent: nothing
    for r in rows:
        if r["src_layer"] == 1 and r["n_tokens"]:
            want = 1.0 if r["src"] == r["dst"] else 0.0
            assert r["rel_drop"] == pytest.approx(want, abs=1e-4), r
    m = run.load().stage("ablate")
    assert m["status"] == "complete" and m["n_rows"] == table.num_rows
    pooled = {c["measure"]: c for c in m["correlations"] if c["src_layer"] is None}
    assert pooled["jaccard"]["spearman_drop"] > 0.3
    assert run.file("ablations.html").stat().st_size > 100_000  # plotly.js inlined
    assert not run.file(".ablate-parts").exists()


def test_resume_from_parts_gives_same_file(run, monkeypatch):
    import saelineage.causal.work as st

    cfg = AblateConfig(
        measures=["jaccard"], bins=3, per_bin=4, windows_per_pair=2, hidden=False, plot=False, layers_per_part=1
    )
    full = run_ablate(run.path, cfg, force=True).read("ablations.parquet")
    # simulate a crash after the first upstream layer: its part file exists, the stage is 'running'
    calls = []
    real = st.ablate_pairs

    def crash_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    st.ablate_pairs = crash_second
    try:
        with pytest.raises(KeyboardInterrupt):
            run_ablate(run.path, cfg, force=True)
    finally:
        st.ablate_pairs = real
    assert run.stage_status("ablate") == "running" and len(list(run.file(".ablate-parts").iterdir())) == 1
    resumed = run_ablate(run.path, cfg).read("ablations.parquet")
    assert resumed.equals(full)


def test_hidden_in_error(run):
    # fallback without analyze: 'ending' = no next-layer edge with pearson >= 0.5
    collected = run.file("features.parquet").read_bytes()
    run_ablate(run.path, AblateConfig(measures=["jaccard"], bins=2, per_bin=2, plot=False), force=True)
    proj = pq.read_table(run.file("error_projection.parquet"))
    assert proj.column_names == ["layer", "feature", *ERROR_COLUMNS]
    by = {(r["layer"], r["feature"]): r for r in proj.to_pylist()}
    assert by[(1, HIDDEN)]["error_proj_rel"] == pytest.approx(1.0, abs=1e-4)  # all of it is in layer 2's error
    assert by[(1, HIDDEN)]["error_proj_tokens"] > 0
    assert (1, 0) not in by  # carried: not an ending feature
    # with analyze's lifecycle, exactly the features without a successor ('ending' and
    # 'new+ending') are measured; 'new' and 'carried' ones have a successor
    t = pq.read_table(run.file("features.parquet"), columns=["layer", "feature"])
    classes = {(1, HIDDEN): "ending", (1, 3): "new+ending", (1, 4): "new"}
    life = [
        classes.get((l, f), "carried") for l, f in zip(t.column("layer").to_pylist(), t.column("feature").to_pylist())
    ]
    write_parquet(run.file("feature_analysis.parquet"), t.append_column("lifecycle", pa.array(life)))
    try:
        run_ablate(run.path, AblateConfig(measures=["jaccard"], bins=2, per_bin=2, plot=False), force=True)
    finally:
        run.file("feature_analysis.parquet").unlink()  # the module's other tests run without analyze
    by = {(r["layer"], r["feature"]): r for r in pq.read_table(run.file("error_projection.parquet")).to_pylist()}
    assert set(by) == {(1, HIDDEN), (1, 3)}
    assert by[(1, HIDDEN)]["error_proj_rel"] == pytest.approx(1.0, abs=1e-4)
    assert by[(1, 3)]["error_proj_rel"] == pytest.approx(0.0, abs=1e-4)  # layer 2 reconstructs q_3 exactly
    assert by[(1, 3)]["resid_proj_rel"] == pytest.approx(1.0, abs=1e-4)  # ... so it is in the residual, not the error
    # ablate writes its own table only: collect's features.parquet is left as collect wrote it
    assert run.file("features.parquet").read_bytes() == collected


def test_stored_codes_match_a_clean_pass(run):
    """The codes the stage reads from the shards = a fresh clean pass, window by window, in any order."""
    from saelineage.causal.window_choice import load_windows_with_codes
    from saelineage.run_model import load_run_model

    wins = np.array([17, 0, 5, 33])  # out of order, over several shards (16 windows per shard)
    ids, mask, stored = load_windows_with_codes(run, wins, {l: np.arange(D_SAE) for l in LAYERS})
    rm = load_run_model(run)
    res = rm.adapter.residuals(ids, [rm.saes[l].hook for l in LAYERS])
    n_active = 0
    for l in LAYERS:
        want = rm.saes[l].encode_dense(res[rm.saes[l].hook].reshape(-1, D)).reshape(len(wins), -1, D_SAE).numpy()
        for w in range(len(wins)):
            np.testing.assert_array_equal(stored.fires(l, 0)[w], bool(((want[w, :, 0] != 0) & mask[w]).any()))
            for f in range(D_SAE):
                pos, v = stored.active(l, f, w, 0.0)
                expect = np.flatnonzero((want[w, :, f] > 0) & mask[w])
                np.testing.assert_array_equal(pos, expect)
                np.testing.assert_allclose(v, want[w, expect, f], rtol=1e-5, atol=1e-6)
                n_active += len(pos)
    assert n_active > 100


def test_command_and_demo(run):
    app = Typer()
    app.command("ablate")(ablate_command)
    app.command("other")(lambda: None)  # a group, so 'ablate' is a sub-command as in cli.py
    runner = CliRunner()
    help_text = runner.invoke(app, ["ablate", "--help"], terminal_width=200).output
    for opt in (
        "--measures",
        "--bins",
        "--per-bin",
        "--seed",
        "--layer-pairs",
        "--batch-rows",
        "--hidden",
        "--force",
        "--windows-per-pair",
    ):
        assert opt in help_text
    res = runner.invoke(
        app,
        [
            "ablate",
            str(run.path),
            "--measures",
            "jaccard",
            "--bins",
            "2",
            "--per-bin",
            "2",
            "--layer-pairs",
            "1:2",
            "--no-plot",
            "--no-hidden",
            "--force",
        ],
    )
    assert res.exit_code == 0, res.output
    assert set(pq.read_table(run.file("ablations.parquet")).column("src_layer").to_pylist()) == {1}
    with pytest.raises(SaelineageError, match="complete with other options"):
        demo_ablation(run.path)  # the run holds another sample: never mixed, never silently kept
    rows = demo_ablation(run.path, force=True)
    assert any(r["src_layer"] is None for r in rows)
    assert demo_ablation(run.path) == rows  # same options: skipped, same correlations
    assert json.loads(run.manifest_path.read_text())["stages"]["ablate"]["status"] == "complete"
