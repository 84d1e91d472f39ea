"""SAE training: tiny SAEs on a tiny random Llama (seconds), SAELens round trip, metrics, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from runs import write_corpus
from tinymodels import tiny_llama

from saelineage.errors import SaelineageError
from saelineage.saes.loading import load_sae, load_saes
from saelineage.saes.train import METRICS_JSON, TRAINING_JSON, TrainConfig, train_saes

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = tiny_llama(root / "model", n_layers=3, d=64)
    corpus = write_corpus(root / "corpus.txt", n_docs=60)
    return root, model, corpus


def tiny_cfg(model: Path, corpus: Path, **kw) -> TrainConfig:
    base = dict(
        model=str(model),
        hooks=HOOKS,
        corpus=str(corpus),
        window=32,
        num_latents=256,
        k=8,
        tokens=3000,
        epochs=4,
        batch_size=256,
        heldout_tokens=620,
        ce_tokens=124,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(env):
    root, model, corpus = env
    t0 = time.perf_counter()
    out = train_saes(tiny_cfg(model, corpus), out=root / "saes", progress=False)
    return out, time.perf_counter() - t0


def test_trains_and_fvu_falls(trained):
    out, seconds = trained
    metrics = json.loads((out / METRICS_JSON).read_text())
    layers = metrics["layers"]
    assert [m["hook"] for m in layers] == HOOKS
    for m in layers:
        assert m["fvu"] < 0.3, m  # a fresh TopK SAE has FVU ~1
        assert m["l0"] <= 8 + 1e-9
        assert 0 <= m["dead_fraction"] <= 1
        assert m["n_tokens"] == 20 * 31
        assert m["ce_clean"] > 0 and m["ce_increase"] is not None
    info = json.loads((out / TRAINING_JSON).read_text())
    assert info["status"] == "complete" and info["d_sae"] == 256
    assert info["train_windows"][1] <= info["heldout_windows"][0]  # held-out text never trained on
    assert seconds < 60


def test_saved_dirs_load_in_sae_lens_with_same_codes(trained, env):
    sl = pytest.importorskip("sae_lens")
    out, _ = trained
    ours = load_saes(out)
    assert sorted(ours) == [0, 1, 2]
    x = torch.randn(50, 64) * 0.05
    for layer, sae in ours.items():
        folder = out / HOOKS[layer]
        ref = sl.SAE.load_from_disk(str(folder))
        assert ref.cfg.metadata.hook_name == HOOKS[layer]
        assert ref.cfg.k == 8 and ref.cfg.d_sae == 256
        with torch.no_grad():
            want = ref.encode(x)
            got = load_sae(folder).encode_dense(x)
            assert torch.equal(want != 0, got != 0)
            torch.testing.assert_close(got, want)
            torch.testing.assert_close(sae.decode(got), ref.decode(want))
        assert sae.hook.layer == layer and sae.hook.kind == "resid_pre"


def test_distinct_init_per_layer(trained):
    out, _ = trained
    saes = load_saes(out)
    cos = torch.nn.functional.cosine_similarity(saes[1].W_dec, saes[2].W_dec, dim=1)
    assert cos.abs().mean() < 0.5  # latent i of adjacent layers did not start on the same direction


def test_rerun_reuses_and_other_config_is_refused(trained, env):
    root, model, corpus = env
    out, _ = trained
    t0 = time.perf_counter()
    assert train_saes(tiny_cfg(model, corpus), out=out, progress=False) == out
    assert time.perf_counter() - t0 < 10  # no retraining
    with pytest.raises(SaelineageError, match="another configuration"):
        train_saes(tiny_cfg(model, corpus, k=4), out=out, progress=False)


def test_bad_input(env, tmp_path):
    root, model, corpus = env
    with pytest.raises(SaelineageError, match="exceeds the number of latents"):
        train_saes(tiny_cfg(model, corpus, num_latents=16, k=32), out=tmp_path / "a", progress=False)
    with pytest.raises(SaelineageError, match="exceeds the number of latents"):
        train_saes(
            tiny_cfg(model, corpus, num_latents=None, expansion_factor=1, k=65), out=tmp_path / "b", progress=False
        )
    with pytest.raises(SaelineageError, match="beyond the model's depth"):
        train_saes(tiny_cfg(model, corpus, hooks=["blocks.3.hook_resid_pre"]), out=tmp_path / "c", progress=False)
    with pytest.raises(SaelineageError, match="fewer than"):
        train_saes(tiny_cfg(model, corpus, tokens=10**6), out=tmp_path / "d", progress=False)
    foreign = tmp_path / "e" / "blocks.0.hook_resid_pre"
    foreign.mkdir(parents=True)
    (foreign / "cfg.json").write_text("{}")
    with pytest.raises(SaelineageError, match="not written by"):
        train_saes(tiny_cfg(model, corpus), out=tmp_path / "e", progress=False)


def test_fast_coder_matches_sparsify_gradients():
    from sparsify import SparseCoder, SparseCoderConfig

    from saelineage.saes.topk_train import FastSparseCoder

    x = torch.randn(200, 24) * 2 + 0.5
    grads = []
    for cls in (SparseCoder, FastSparseCoder):
        torch.manual_seed(0)
        coder = cls(24, SparseCoderConfig(num_latents=96, k=6))
        coder.b_dec.data += 0.1
        out = coder(x, dead_mask=torch.arange(96) < 30)
        (out.fvu + out.auxk_loss).backward()
        grads.append([p.grad.clone() for p in coder.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_hook_option_parsing():
    from saelineage.saes.train_command import parse_hooks

    assert parse_hooks("0-2") == HOOKS
    assert parse_hooks("1, blocks.3.hook_resid_post", "resid_pre") == [
        "blocks.1.hook_resid_pre",
        "blocks.3.hook_resid_post",
    ]
    with pytest.raises(SaelineageError):
        parse_hooks("attn.3")


def test_train_sets_share_one_activation_cache(env, tmp_path, monkeypatch):
    """Two cached sets trained together (a seed-ceiling set on a subset of the hooks, fewer tokens)
    run the model once and give the same weights as training each set alone."""
    from saelineage.saes import train as train_mod
    from saelineage.saes.train import train_sets

    root, model, corpus = env
    main = tiny_cfg(model, corpus, ce_tokens=0)
    second = tiny_cfg(model, corpus, hooks=HOOKS[1:], seed=1, tokens=2000, ce_tokens=0)
    monkeypatch.setenv("SAELINEAGE_CACHE", str(tmp_path / "alone"))
    alone = [train_saes(c, progress=False) for c in (main, second)]
    calls = []
    real = train_mod.cache_activations
    monkeypatch.setattr(train_mod, "cache_activations", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    monkeypatch.setenv("SAELINEAGE_CACHE", str(tmp_path / "together"))
    together = train_sets([main, second], progress=False)
    assert len(calls) == 1 and len(calls[0]) == len(HOOKS)  # one forward over every hook of both sets
    for a, b in zip(alone, together):
        assert a.name == b.name  # same configuration hash
        for hook in (h for h in HOOKS if (a / h).is_dir()):
            wa, wb = load_sae(a / hook), load_sae(b / hook)
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                assert torch.equal(getattr(wa, name), getattr(wb, name)), (hook, name)
    assert train_sets([main, second], progress=False) == together and len(calls) == 1  # cached: nothing runs


def test_train_cli_also_seeds(env, tmp_path, monkeypatch):
    """`train --also-seeds 1` trains the set twice (seeds 0 and 1) into the cache; bad lists and
    --out are refused with a message."""
    from typer.testing import CliRunner

    from saelineage.cli import app

    root, model, corpus = env
    monkeypatch.setenv("SAELINEAGE_CACHE", str(tmp_path / "cache"))
    args = ["train", "--model", str(model), "--hooks", "0-1", "--corpus", str(corpus), "--window", "32",
            "--latents", "128", "-k", "8", "--tokens", "2000", "--epochs", "1", "--batch-size", "256",
            "--heldout-tokens", "620", "--ce-tokens", "0"]  # fmt: skip
    res = CliRunner().invoke(app, args + ["--also-seeds", "1"])
    assert res.exit_code == 0, res.output
    folders = [Path(line) for line in res.output.strip().splitlines()[-2:]]  # the command's last lines
    seeds = [json.loads((f / TRAINING_JSON).read_text())["config"]["seed"] for f in folders]
    assert seeds == [0, 1] and all(f.parent == tmp_path / "cache" / "saes" for f in folders)
    bad = CliRunner().invoke(app, args + ["--also-seeds", "one"])
    assert bad.exit_code != 0 and "--also-seeds 'one' is not a list of integers" in str(bad.exception)
    bad = CliRunner().invoke(app, args + ["--also-seeds", "1", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "cache only" in str(bad.exception) and not (tmp_path / "x").exists()
