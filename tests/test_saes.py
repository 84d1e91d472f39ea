"""SAE loading (SAELens current/legacy, sparsify, releases offline), fast sparse encode vs sae_lens, save."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saelineage.errors import SaelineageError
from saelineage.models.hooks import HookPoint
from saelineage.run import sha256_file
from saelineage.saes.loading import load_sae, load_saes, save_saelens
from saelineage.saes.release import load_release
from saelineage.saes.sae import SAE, codes_to_dense

D_IN, D_SAE, K = 16, 48, 5


@pytest.fixture(scope="module")
def sl():
    return pytest.importorskip("sae_lens")


def _randomize(sae, seed: int) -> None:
    """Random weights with a mix of firing / silent latents (and thresholds of both signs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            p = getattr(sae, name, None)
            if p is not None:
                scale = {"b_dec": 0.2, "b_enc": 0.5, "threshold": 0.3}.get(name, 1.0)
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def saelens_dir(sl, folder: Path, arch: str, hook: str = "blocks.2.hook_resid_pre", seed: int = 0, **cfg) -> Path:
    """An SAELens folder written by sae_lens's own class and save_model."""
    from sae_lens.saes.sae import SAEMetadata

    classes = {
        "standard": (sl.StandardSAE, sl.StandardSAEConfig),
        "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig),
        "topk": (sl.TopKSAE, sl.TopKSAEConfig),
    }
    cls, cfg_cls = classes[arch]
    if arch == "topk":
        cfg.setdefault("k", K)
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook), **cfg))
    _randomize(sae, seed)
    sae.save_model(folder)
    return folder


def x_batch(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


def assert_codes_equal(sae: SAE, x: torch.Tensor, ref: torch.Tensor) -> None:
    """encode_sparse(x) has exactly the nonzeros and values of the dense reference [N, d_sae]."""
    codes = sae.encode_sparse(x)
    assert codes.indptr.dtype == np.int64 and codes.indices.dtype == np.int32 and codes.values.dtype == np.float32
    for r in range(len(codes.indptr) - 1):
        row = codes.indices[codes.indptr[r] : codes.indptr[r + 1]]
        assert np.all(np.diff(row) > 0), "entries of a row must be sorted by feature id"
    dense = codes_to_dense(codes, sae.d_sae)
    assert torch.equal(dense != 0, ref != 0)
    assert torch.equal(dense, ref.float())
    assert (codes.values > 0).all()


ARCH_CASES = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("standard", {"normalize_activations": "constant_norm_rescale"}),
    ("standard", {"normalize_activations": "layer_norm"}),
    ("standard", {"normalize_activations": "expected_average_only_in"}),
    ("jumprelu", {}),
    ("jumprelu", {"apply_b_dec_to_input": False}),
    ("topk", {}),
    ("topk", {"apply_b_dec_to_input": False}),
    ("topk", {"rescale_acts_by_decoder_norm": True}),
    ("topk", {"normalize_activations": "constant_norm_rescale"}),
]


@pytest.mark.parametrize("arch,cfg", ARCH_CASES)
def test_encode_matches_sae_lens(sl, tmp_path, arch, cfg):
    folder = saelens_dir(sl, tmp_path / "sae", arch, **cfg)
    ours = load_sae(folder)
    theirs = sl.SAE.load_from_disk(folder)
    x = x_batch()
    with torch.no_grad():
        ref = theirs.encode(x)
        ref_out = theirs.decode(ref)  # right after encode: run-time normalisation state is set
    assert 0 < (ref != 0).sum() < ref.numel()
    assert torch.equal(ours.encode_dense(x), ref)
    assert_codes_equal(ours, x, ref)
    torch.testing.assert_close(ours.decode(ours.encode_sparse(x), x), ref_out, rtol=1e-5, atol=1e-5)
    assert ours.architecture == arch and ours.hook == HookPoint(2, "resid_pre")
    assert ours.hook_name == "blocks.2.hook_resid_pre"
    assert (ours.d_in, ours.d_sae, ours.dtype_name) == (D_IN, D_SAE, "float32")
    assert ours.meta["format"] == "saelens" and ours.meta["sha256"] == sha256_file(folder / "sae_weights.safetensors")
    json.dumps(ours.meta)  # goes into the run manifest


def test_encode_sparse_chunks_and_empty(sl, tmp_path):
    ours = load_sae(saelens_dir(sl, tmp_path / "sae", "topk"))
    x = x_batch(50)
    whole, parts = ours.encode_sparse(x), ours.encode_sparse(x, chunk_rows=16)
    np.testing.assert_array_equal(whole.indptr, parts.indptr)
    np.testing.assert_array_equal(whole.indices, parts.indices)
    np.testing.assert_allclose(whole.values, parts.values, rtol=1e-6)  # BLAS may round per block size
    empty = ours.encode_sparse(torch.zeros(0, D_IN))
    assert empty.indptr.tolist() == [0] and len(empty.indices) == 0
    # leading dims are flattened into token rows
    assert len(ours.encode_sparse(x.view(5, 10, D_IN)).indptr) == 51


def test_to_changes_dtype_and_keeps_codes(sl, tmp_path):
    ours = load_sae(saelens_dir(sl, tmp_path / "sae", "jumprelu"))
    d64 = ours.to(dtype="float64")
    assert d64.dtype_name == "float64" and d64.threshold.dtype == torch.float64 and d64.hook == ours.hook
    back = d64.to("cpu", torch.float32)
    x = x_batch()
    assert torch.equal(back.encode_dense(x), ours.encode_dense(x))
    assert load_sae(tmp_path / "sae", dtype=None).dtype_name == "float32"


def _write_legacy(folder: Path, cfg: dict, weights: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(folder / "sae_weights.safetensors"))
    return folder


def _legacy_weights(seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g) * 0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g) * 0.2,
    }


@pytest.mark.parametrize("topk", [False, True])
def test_legacy_saelens_dir(sl, tmp_path, topk):
    cfg = {
        "model_name": "gpt2-small",
        "hook_point": "blocks.1.hook_resid_pre",
        "hook_point_layer": 1,
        "hook_point_head_index": None,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cpu",
        "activation_fn_str": "topk" if topk else "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "context_size": 128,
        "expansion_factor": 3,
    }
    if topk:
        cfg["activation_fn_kwargs"] = {"k": 4}
    w = _legacy_weights() | {"scaling_factor": torch.ones(D_SAE)}  # old files carry an all-ones scale
    folder = _write_legacy(tmp_path / "legacy", cfg, w)
    ours = load_sae(folder)
    theirs = sl.SAE.load_from_disk(folder)
    assert ours.meta["format"] == "saelens-legacy" and ours.architecture == ("topk" if topk else "standard")
    assert ours.k == (4 if topk else None) and ours.hook == HookPoint(1, "resid_pre")
    x = x_batch()
    with torch.no_grad():
        ref = theirs.encode(x)
    assert_codes_equal(ours, x, ref)


def sparsify_dir(root: Path, hookpoint: str, seed: int = 0) -> tuple[Path, object]:
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(seed)
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=K))
    with torch.no_grad():
        coder.encoder.bias.normal_(0, 0.3)
        coder.b_dec.normal_(0, 0.2)
    coder.save_to_disk(root / hookpoint)
    return root / hookpoint, coder


def test_sparsify_dir(tmp_path):
    folder, coder = sparsify_dir(tmp_path / "sp", "layers.2")
    sparsify_dir(tmp_path / "sp", "layers.0", seed=1)
    (tmp_path / "sp" / "config.json").write_text("{}")  # sparsify's trainer config beside the SAE folders
    ours = load_sae(folder)
    assert ours.meta["format"] == "sparsify" and ours.hook == HookPoint(2, "resid_post") and ours.k == K
    assert ours.hook_name == "blocks.2.hook_resid_post" and ours.meta["hookpoint"] == "layers.2"
    x = x_batch()
    with torch.no_grad():
        out = coder.encode(x)
    ref = torch.zeros(len(x), D_SAE).scatter_(-1, out.top_indices, out.top_acts)
    codes = ours.encode_sparse(x)
    dense = codes_to_dense(codes, D_SAE)
    assert torch.equal(dense != 0, ref != 0)  # same latents fire
    torch.testing.assert_close(dense, ref, rtol=1e-6, atol=1e-6)  # F.linear vs matmul+bias: last-bit differences
    torch.testing.assert_close(ours.decode(codes), coder.decode(out.top_acts, out.top_indices), rtol=1e-5, atol=1e-5)
    saes = load_saes(tmp_path / "sp")
    assert sorted(saes) == [0, 2] and saes[0].hook == HookPoint(0, "resid_post")


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_save_saelens_round_trip(sl, tmp_path, arch):
    ours = load_sae(saelens_dir(sl, tmp_path / "src", arch, apply_b_dec_to_input=arch != "topk"))
    out = save_saelens(ours, tmp_path / "out" / "blocks.2.hook_resid_pre", metadata={"model_name": "tiny"})
    assert sorted(p.name for p in out.parent.iterdir()) == ["blocks.2.hook_resid_pre"]  # no temporaries left
    theirs = sl.SAE.load_from_disk(out)
    again = load_sae(out)
    x = x_batch()
    with torch.no_grad():
        ref = theirs.encode(x)
    assert torch.equal(ours.encode_dense(x), ref)
    assert_codes_equal(again, x, ref)
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_pre" and theirs.cfg.metadata.model_name == "tiny"
    assert again.meta["format"] == "saelens"
    save_saelens(ours, out)  # overwriting an SAE folder is allowed
    assert load_sae(out).meta["sha256"] == again.meta["sha256"]


def test_save_saelens_topk_for_training(sl, tmp_path):
    """The shape the training engineer writes: a TopK SAE built from tensors."""
    g = torch.Generator().manual_seed(5)
    sae = SAE(
        W_enc=torch.randn(D_IN, D_SAE, generator=g),
        b_enc=torch.randn(D_SAE, generator=g),
        W_dec=torch.randn(D_SAE, D_IN, generator=g),
        b_dec=torch.randn(D_IN, generator=g),
        architecture="topk",
        k=K,
        hook_name="blocks.4.hook_resid_post",
        apply_b_dec_to_input=False,
    )
    out = save_saelens(sae, tmp_path / "l4")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == K and (cfg["d_in"], cfg["d_sae"]) == (D_IN, D_SAE)
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "blocks.4.hook_resid_post" and cfg["dtype"] == "float32"
    theirs = sl.SAE.load_from_disk(out)
    x = x_batch()
    with torch.no_grad():
        assert torch.equal(theirs.encode(x), sae.encode_dense(x))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(SaelineageError, match="not an SAE folder"):
        save_saelens(sae, tmp_path / "other")


def test_load_saes_root(sl, tmp_path):
    root = tmp_path / "saes"
    for layer in (2, 0, 1):
        name = f"blocks.{layer}.hook_resid_pre"
        saelens_dir(sl, root / name, "topk", hook=name, seed=layer)
    (root / ".blocks.3.hook_resid_pre.tmp-1-abc").mkdir()  # half-written folders are ignored
    saes = load_saes(root)
    assert list(saes) == [0, 1, 2] and all(s.hook.kind == "resid_pre" for s in saes.values())
    assert list(load_saes([root / "blocks.1.hook_resid_pre"])) == [1]
    assert list(load_saes(root / "blocks.2.hook_resid_pre")) == [2]
    # two SAEs for one layer
    shutil.copytree(root / "blocks.1.hook_resid_pre", root / "copy_of_1")
    with pytest.raises(SaelineageError, match="two SAEs claim layer 1"):
        load_saes(root)
    shutil.rmtree(root / "copy_of_1")
    saelens_dir(sl, root / "post3", "topk", hook="blocks.3.hook_resid_post")
    with pytest.raises(SaelineageError, match="mix hook kinds"):
        load_saes(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaelineageError, match="no SAE folders"):
        load_saes(tmp_path / "empty")
    with pytest.raises(SaelineageError, match="does not exist"):
        load_saes(tmp_path / "nope")


def test_load_release_offline(sl, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SaelineageError) as err:
        load_release("gpt2-small-res-jb", "blocks.3.hook_resid_pre")
    msg = str(err.value)  # what would be fetched, from where, into which cache; and the offline alternative
    assert "jbloom/GPT2-Small-SAEs-Reformatted" in msg and "blocks.3.hook_resid_pre" in msg and "local folder" in msg
    with pytest.raises(SaelineageError, match="has no SAE"):
        load_release("gpt2-small-res-jb", "blocks.99.hook_resid_pre")
    with pytest.raises(SaelineageError, match="not a SAELens release"):
        load_release("gpt2-small-res-typo", "blocks.3.hook_resid_pre")


def test_load_release_from_hub_cache(sl, tmp_path, monkeypatch):
    """A release already in the hub cache loads offline (a tiny fake SAE stands in for the real one)."""
    from huggingface_hub import constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--jbloom--GPT2-Small-SAEs-Reformatted"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    cfg = {
        "model_name": "gpt2-small",
        "hook_point": "blocks.3.hook_resid_pre",
        "hook_point_layer": 3,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cpu",
    }  # the release's real files are pre-6.0
    folder = _write_legacy(repo / "snapshots" / commit / "blocks.3.hook_resid_pre", cfg, _legacy_weights())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sae_lens: "load the model with model_from_pretrained_kwargs"
        sae = load_release("gpt2-small-res-jb", "blocks.3.hook_resid_pre")
    assert sae.hook == HookPoint(3, "resid_pre") and sae.meta["release"] == "gpt2-small-res-jb"
    assert sae.meta["sha256"] == sha256_file(folder / "sae_weights.safetensors") and sae.meta["sha256_of"] == "file"
    assert sae.meta["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    json.dumps(sae.meta)
    x = x_batch()
    assert torch.equal(sae.encode_dense(x), load_sae(folder).encode_dense(x))
    # a run collected with the release finds its decoder for dec_cosine (no local path in the manifest)
    from saelineage.contract import new_manifest
    from saelineage.run import RunDir
    from saelineage.saes.run_weights import load_decoder

    run = RunDir(tmp_path / "run")
    run.save(
        new_manifest(
            layers=[3, 4],
            saes={3: sae.meta, 4: {**sae.meta, "sae_id": "blocks.4.hook_resid_pre"}},
            d_sae={3: sae.d_sae, 4: sae.d_sae},
            hooks={3: "blocks.3.hook_resid_pre", 4: "blocks.4.hook_resid_pre"},
            model={"spec": "gpt2"},
            corpus={"spec": "none"},
            window=16,
            bos=True,
            n_windows=0,
            shard_windows=64,
            config_hash="test",
        )
    )
    assert sae.meta["path"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        np.testing.assert_array_equal(load_decoder(run, 3), load_sae(folder).W_dec.numpy())
        assert load_decoder(run, 4) is None  # not in the cache, offline: reported missing, not an error


# -- bad inputs ---------------------------------------------------------------------------------


def _good(sl, tmp_path, arch: str = "standard") -> Path:
    return saelens_dir(sl, tmp_path / "sae", arch)


def _edit_cfg(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in changes.items():
        if key == "hook_name":
            cfg["metadata"]["hook_name"] = value
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_missing_folder(tmp_path):
    with pytest.raises(SaelineageError, match="does not exist") as err:
        load_sae(tmp_path / "absent")
    assert err.value.fix


def test_missing_cfg(sl, tmp_path):
    folder = _good(sl, tmp_path)
    (folder / "cfg.json").unlink()
    with pytest.raises(SaelineageError, match="has no cfg.json"):
        load_sae(folder)
    with pytest.raises(SaelineageError, match="one SAE per sub-folder"):
        load_sae(saelens_dir(sl, tmp_path / "root" / "blocks.0.hook_resid_pre", "topk").parent)


def test_bad_json_cfg(sl, tmp_path):
    folder = _good(sl, tmp_path)
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(SaelineageError, match="not valid JSON"):
        load_sae(folder)


def test_missing_weights(sl, tmp_path):
    folder = _good(sl, tmp_path)
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(SaelineageError, match="no weights file 'sae_weights.safetensors'"):
        load_sae(folder)


@pytest.mark.parametrize("keep", [0.9, 0.3, 0.0])
def test_truncated_weights(sl, tmp_path, keep):
    folder = _good(sl, tmp_path)
    path = folder / "sae_weights.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SaelineageError, match="unreadable or truncated") as err:
        load_sae(folder)
    assert "again" in err.value.fix


def test_truncated_sparsify_weights(tmp_path):
    folder, _ = sparsify_dir(tmp_path / "sp", "layers.1")
    path = folder / "sae.safetensors"
    path.write_bytes(path.read_bytes()[:-17])
    with pytest.raises(SaelineageError, match="truncated"):
        load_sae(folder)


def test_shape_disagrees_with_cfg(sl, tmp_path):
    folder = _good(sl, tmp_path)
    _edit_cfg(folder, d_sae=D_SAE * 2)
    with pytest.raises(SaelineageError, match=f"d_sae={D_SAE * 2} but the weights have d_sae={D_SAE}"):
        load_sae(folder)
    _edit_cfg(folder, d_sae=D_SAE)
    w = _legacy_weights()
    w["b_dec"] = torch.zeros(D_IN + 1)
    save_file(w, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SaelineageError, match="'b_dec' has shape"):
        load_sae(folder)


def test_unknown_architecture(sl, tmp_path):
    folder = _good(sl, tmp_path)
    _edit_cfg(folder, architecture="gated")
    with pytest.raises(SaelineageError, match="unsupported architecture 'gated'"):
        load_sae(folder)
    _edit_cfg(folder, architecture="mystery")
    with pytest.raises(SaelineageError, match="'mystery'"):
        load_sae(folder)


def test_unreadable_hook(sl, tmp_path):
    folder = _good(sl, tmp_path)
    _edit_cfg(folder, hook_name="blocks.0.attn.hook_pattern")  # attention patterns are not activations an SAE reads
    with pytest.raises(SaelineageError, match="not a hook point saelineage can read"):
        load_sae(folder)
    _edit_cfg(folder, hook_name="blocks.0.hook_mlp_out")  # MLP outputs are
    assert load_sae(folder).hook_name == "blocks.0.hook_mlp_out"


def test_jumprelu_missing_threshold(sl, tmp_path):
    folder = _good(sl, tmp_path, "jumprelu")
    w = _legacy_weights()  # no threshold
    save_file(w, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SaelineageError, match=r"lacks \['threshold'\]"):
        load_sae(folder)


def test_validate_for(sl, tmp_path):
    sae = load_sae(_good(sl, tmp_path))  # blocks.2.hook_resid_pre, d_in 16

    def adapter(width: int, n_layers: int = 4) -> SimpleNamespace:
        return SimpleNamespace(width=lambda hook: width, n_layers=n_layers, name="tiny", model=None)

    sae.validate_for(adapter(D_IN))
    with pytest.raises(SaelineageError) as err:
        sae.validate_for(adapter(32))
    msg = str(err.value)
    assert "blocks.2.hook_resid_pre" in msg and "d_in=16" in msg and "32 wide" in msg and err.value.fix
    with pytest.raises(SaelineageError, match="beyond the model's depth"):
        sae.validate_for(adapter(D_IN, n_layers=2))
