"""Collection end to end on a tiny model: contract columns, exact codes, resume, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import simd
import torch
from runs import write_corpus, write_saes
from tinymodels import tiny_llama

from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.data.store import iter_shards, list_shards
from saelineage.errors import SaelineageError
from saelineage.models.loading import load_model
from saelineage.saes.loading import load_saes

LAYERS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect")
    model = tiny_llama(root / "model", n_layers=4, d=64)
    saes = write_saes(root / "saes", 64, LAYERS)
    corpus = write_corpus(root / "corpus.txt")
    return root, model, saes, corpus


def cfg_for(env, **kw):
    root, model, saes, corpus = env
    base = dict(
        model=str(model), saes=str(saes), corpus=str(corpus), window=16, batch_windows=4, shard_windows=8, examples_k=5
    )
    base.update(kw)
    return CollectConfig(**base)


def test_collect_writes_contract_and_exact_codes(env, tmp_path):
    run = run_collect(tmp_path / "run", cfg_for(env, max_tokens=16 * 20)).run
    m = run.require("collect")
    assert m.layers == LAYERS and m.n_windows == 20 and m.bos is True
    assert m.saes[0]["sha256"] and m.model["sha256"]
    feats = pq.read_table(run.file("features.parquet"))
    assert feats.column_names[:7] == ["layer", "feature", "n_active", "density", "act_sum", "act_sumsq", "act_max"]
    assert pq.read_table(run.file("examples.parquet")).column_names == [
        "layer",
        "feature",
        "rank",
        "value",
        "window",
        "pos",
    ]
    assert len(list_shards(run)) == 3
    # independent recomputation: HF hidden states -> dense SAE encode, for every token
    adapter = load_model(str(env[1]))
    saes = load_saes(env[2])
    tokens = np.concatenate([s.tokens for s in iter_shards(run)]).reshape(-1, 16)
    hidden = adapter.model(input_ids=torch.from_numpy(tokens).long(), output_hidden_states=True).hidden_states
    for layer in LAYERS:
        dense = saes[layer].encode_dense(hidden[layer].reshape(-1, 64)).numpy()
        stored = np.concatenate([s.codes[layer].csr(saes[layer].d_sae).toarray() for s in iter_shards(run)])
        assert (stored > 0).sum() > 0
        np.testing.assert_array_equal(stored != 0, dense != 0)
        np.testing.assert_allclose(stored, dense, rtol=1e-5, atol=1e-6)
    # a complete run is skipped, not redone
    before = [p.stat().st_mtime_ns for p in list_shards(run)]
    run_collect(tmp_path / "run", cfg_for(env, max_tokens=16 * 20))
    assert [p.stat().st_mtime_ns for p in list_shards(run)] == before


def _cli(env, out, *extra):
    root, model, saes, corpus = env
    return [
        sys.executable,
        "-m",
        "saelineage.cli",
        "collect",
        str(out),
        "--model",
        str(model),
        "--saes",
        str(saes),
        "--corpus",
        str(corpus),
        "--window",
        "16",
        "--batch-windows",
        "1",
        "--shard-windows",
        "1",
        *extra,
    ]


def _files(run_dir):
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and (p.suffix in (".safetensors", ".parquet") or p.name == "vocab.json"):
            out[str(p.relative_to(run_dir))] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    full = subprocess.run(_cli(env, out), env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    return out


@pytest.mark.parametrize("resume_at", ["same", "lowest-simd"])
def test_sigkill_then_resume_is_byte_identical(env, uninterrupted, tmp_path, resume_at):
    """Killed mid-collection, resumed: every file equals the uninterrupted run's, byte for byte.

    With "lowest-simd" the resumed process runs NumPy's baseline kernels and generic numba
    code (as another machine would), so the identity cannot rest on one SIMD dispatch."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        _cli(env, tmp_path / "killed"), env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    shards = tmp_path / "killed" / "activations"
    deadline = time.time() + 120
    while time.time() < deadline and not (shards.is_dir() and len(list(shards.glob("shard-*"))) >= 3):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list(shards.glob("shard-*.safetensors")))
    n_total = len(list((uninterrupted / "activations").glob("shard-*.safetensors")))
    assert 0 < n_before < n_total, "the kill must land mid-collection"
    assert not (tmp_path / "killed" / "features.parquet").exists()
    if resume_at == "lowest-simd":
        environ = {k: v for k, v in environ.items() if k not in ("NPY_DISABLE_CPU_FEATURES", "NUMBA_CPU_NAME")}
        environ.update(simd.lowest())
    resumed = subprocess.run(_cli(env, tmp_path / "killed"), env=environ, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _files(uninterrupted), _files(tmp_path / "killed")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_bad_inputs(env, tmp_path):
    root, model, saes, corpus = env
    # SAE width differs from the model's
    wrong = write_saes(tmp_path / "wide", 32, [0])
    with pytest.raises(SaelineageError, match="d_in"):
        run_collect(tmp_path / "a", cfg_for(env, saes=str(wrong), max_tokens=64))
    # a layer without an SAE
    with pytest.raises(SaelineageError, match="no SAE for layers"):
        run_collect(tmp_path / "b", cfg_for(env, layers=[0, 7], max_tokens=64))
    # empty corpus
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(SaelineageError, match="holds no text"):
        run_collect(tmp_path / "c", cfg_for(env, corpus=str(tmp_path / "empty.txt")))
    # unwritable output directory (a path below a regular file)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaelineageError, match="cannot write to the output directory"):
        run_collect(tmp_path / "file" / "run", cfg_for(env, max_tokens=64))
    # a run directory made with a different configuration
    run_collect(tmp_path / "d", cfg_for(env, max_tokens=64))
    with pytest.raises(SaelineageError, match="different configuration"):
        run_collect(tmp_path / "d", cfg_for(env, max_tokens=128))
    run = run_collect(tmp_path / "d", cfg_for(env, max_tokens=128), force=True).run
    assert run.load().n_windows == 8


def test_nan_activation_names_layer_and_token(env, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(env[1])
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nanmodel")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(env[1]).save_pretrained(tmp_path / "nanmodel")
    with pytest.raises(SaelineageError, match=r"non-finite residual .* layer 2, window 0, position 0"):
        run_collect(tmp_path / "r", cfg_for(env, model=str(tmp_path / "nanmodel"), max_tokens=64))


def test_cli_reports_one_clear_error(env, tmp_path):
    r = subprocess.run(
        _cli(env, tmp_path / "x", "--layers", "9"),
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 2
    assert "no SAE for layers [9]" in r.stderr and "Traceback" not in r.stderr
