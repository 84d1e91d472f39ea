"""examples/quickstart.ipynb executed on a small real run made by every stage (collect on a tiny
random model with random SAEs, stats, ceiling, analyze, ablate), as a user runs it on `make demo`'s
run: test_notebook.py runs it on a synthetic run, imported without a model and never ablated."""

from __future__ import annotations

import os

import pytest
from runs import random_sae, run_quickstart, write_corpus, write_saes
from tinymodels import tiny_llama

from saelineage import contract
from saelineage.causal.config import AblateConfig
from saelineage.causal.stage import run_ablate
from saelineage.ceiling.config import CeilingConfig
from saelineage.ceiling.stage import run_ceiling
from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.lineage.stage import run_analyze
from saelineage.run import RunDir
from saelineage.saes.loading import save_saelens
from saelineage.stats.stage import run_stats

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LAYERS = [0, 1, 2, 3]
D = 64


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> RunDir:
    root = tmp_path_factory.mktemp("nb_real")
    cfg = CollectConfig(
        model=str(tiny_llama(root / "model", n_layers=len(LAYERS), d=D)),
        saes=str(write_saes(root / "saes", D, LAYERS)),
        corpus=str(write_corpus(root / "corpus.txt")),
        window=16,
        max_tokens=16 * 48,
        batch_windows=8,
        shard_windows=16,
        examples_k=5,
    )
    run = run_collect(root / "run", cfg, progress=False).run
    run_stats(run.path, progress=False)
    second = root / "saes_seed1"  # a second training of two layers: other weights, same hooks
    for layer in (1, 2):
        hook = f"blocks.{layer}.hook_resid_pre"
        save_saelens(random_sae(D, 96, hook, seed=100 + layer), second / hook)
    run_ceiling(run.path, CeilingConfig(saes=str(second), tokens=16 * 16, batch_windows=8), progress=False)
    run_analyze(run.path, progress=False)
    ablate = AblateConfig(measures=["jaccard", "pearson"], bins=3, per_bin=3, windows_per_pair=2, hidden_windows=16)
    run_ablate(run.path, ablate, progress=False)
    return run


def test_quickstart_notebook_runs_on_a_real_run(real_run, tmp_path):
    manifest = real_run.load()
    for stage in ("collect", "stats", "ceiling", "analyze", "ablate"):
        assert manifest.status(stage) == "complete", stage
    assert real_run.file(contract.ABLATIONS).is_file() and real_run.file(contract.SEED_CEILING).is_file()
    outputs = run_quickstart(real_run.path, tmp_path)
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any('class="saelineage-card"' in h for h in html)  # the feature card rendered
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)  # the graph figure
    # the run has its model: the prompt cell ran it live instead of saying why it could not
    printed = "".join(o.get("text", "") for o in outputs)
    assert "active features" in printed and "without a model" not in printed
