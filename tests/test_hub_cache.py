"""SAELens releases loaded BY NAME through sae_lens's own loaders, offline, from a fabricated hub cache.

`saelineage.testing.hub` writes tiny random-weight fakes of each release (real SAE ids, real
folders, each loader's file format) and of each release's model into a Hugging Face cache on
disk. Every test here runs with the network cut (`no_network`), so a pass shows the cache alone
answers sae_lens, transformers and huggingface_hub.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NetworkBlocked

from saelineage.models.hooks import RESIDUAL_KINDS, parse_hook
from saelineage.saes.release import shapes_from_hub_cache
from saelineage.testing.hub import RELEASES, HubCache, build_hub_cache, hub_env, use_hub_cache

sae_lens = pytest.importorskip("sae_lens")
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*model_from_pretrained_kwargs:UserWarning")

N_LAYERS = 2
TEXT = ["The quick brown fox jumps over the lazy dog, and then it naps in the warm sun.", "Hello world! 123"]


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> HubCache:
    return build_hub_cache(tmp_path_factory.mktemp("hub"), n_layers=N_LAYERS)


@pytest.fixture
def offline_hub(hub: HubCache, no_network):
    with use_hub_cache(hub.path):
        yield hub


def _load_model(model_id: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_id).eval(), AutoTokenizer.from_pretrained(model_id)


def _residuals(model, tok, hook: str, center: bool) -> torch.Tensor:
    """Residuals [N, d_model] of the tiny model at TransformerLens hook `hook` on TEXT (BOS left out)."""
    from saelineage.models.adapter import ModelAdapter

    point = parse_hook(hook)
    adapter = ModelAdapter(model, center_residual=center)
    # one text at a time: GPT-2 and Llama 3 tokenizers have no padding token
    rows = [adapter.residuals(tok(t, return_tensors="pt")["input_ids"], [point])[point][0, 1:] for t in TEXT]
    return torch.cat(rows)


def test_cache_has_huggingface_hub_layout(hub: HubCache):
    """scan_cache_dir (huggingface_hub's own reader) sees every repo, each file linked into blobs/."""
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub.path)
    assert not info.warnings, info.warnings
    repos = {r.repo_id: r for r in info.repos}
    wanted = {c.repo_id for c in hub.releases.values()} | set(hub.models)
    assert set(repos) == wanted
    for repo in repos.values():
        ref = (repo.repo_path / "refs" / "main").read_text()
        assert re.fullmatch(r"[0-9a-f]{40}", ref) and repo.refs["main"].commit_hash == ref
        for f in repo.refs["main"].files:
            assert f.file_path.is_symlink() and not os.path.isabs(os.readlink(f.file_path))
            assert f.blob_path.parent == repo.repo_path / "blobs"
    assert not [p for p in hub.path.iterdir() if p.name.startswith(".staging")]


def test_every_release_is_built(hub: HubCache):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    assert set(hub.releases) == set(RELEASES)
    for name, rel in hub.releases.items():
        assert rel.repo_id == directory[name].repo_id
        assert set(rel.sae_ids) <= set(directory[name].saes_map)  # real ids only
        assert max(rel.layers) < hub.models[rel.model_id].n_layers
    assert hub.models["google/gemma-2-2b"].d_model == 2304  # what sae_lens hard-codes for Gemma Scope 2b
    assert hub.models["gpt2"].n_layers == N_LAYERS
    twins = hub.releases["gemma-scope-2-270m-pt-res"].sae_ids
    assert {"layer_5_width_262k_l0_medium", "layer_5_width_262k_l0_medium_seed_1"} <= set(twins)


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_release_loads_by_name_offline(offline_hub: HubCache, release: str):
    from transformer_lens.loading_from_pretrained import get_official_model_name

    rel = offline_hub.releases[release]
    model, tok = _load_model(rel.model_id)
    n_layers = model.config.num_hidden_layers
    assert n_layers == offline_hub.models[rel.model_id].n_layers
    assert tok(TEXT[0])["input_ids"]
    for sae_id in rel.sae_ids:
        with shapes_from_hub_cache():
            sae = sae_lens.SAE.from_pretrained(release, sae_id)
        meta = sae.cfg.metadata
        point = parse_hook(meta.hook_name)
        assert point.kind in RESIDUAL_KINDS and 0 <= point.layer < n_layers, meta.hook_name
        assert sae.cfg.d_in == model.config.hidden_size
        assert get_official_model_name(meta.model_name) == rel.model_id  # the model the SAE names is the one cached
        center = bool((meta.model_from_pretrained_kwargs or {}).get("center_writing_weights"))
        x = _residuals(model, tok, meta.hook_name, center)
        with torch.no_grad():
            l0 = (sae.encode(x) > 0).sum(-1).float()
            noise = torch.randn(64, sae.cfg.d_in, generator=torch.Generator().manual_seed(0)) * x.std() + x.mean(0)
            l0_noise = (sae.encode(noise) > 0).sum(-1).float()
        assert 0 < l0.mean() <= sae.cfg.d_sae / 4, (sae_id, l0.mean())  # calibrated: a fair share fires
        assert (l0 > 0).float().mean() > 0.9 and l0_noise.mean() > 0, (sae_id, l0, l0_noise)


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_saelineage_loads_release_offline(offline_hub: HubCache, release: str):
    from saelineage.saes.release import load_release

    rel = offline_hub.releases[release]
    sae_id = rel.sae_ids[-1]
    sae = load_release(release, sae_id)
    assert sae.meta["release"] == release and sae.meta["sae_id"] == sae_id
    assert sae.meta["repo_id"] == rel.repo_id


def test_seed_twins_share_half_their_latents(offline_hub: HubCache):
    release, base = "gemma-scope-2-270m-pt-res", "layer_5_width_262k_l0_medium"
    with shapes_from_hub_cache():
        a = sae_lens.SAE.from_pretrained(release, base).W_dec.detach()
        b = sae_lens.SAE.from_pretrained(release, f"{base}_seed_1").W_dec.detach()
    cos = (b @ a.T).max(dim=1).values  # unit rows: best match of each seed-1 latent among seed-0 latents
    assert 0.4 < (cos > 0.9).float().mean() < 0.6


def test_uncached_files_fail_offline(offline_hub: HubCache):
    """What is not in the cache fails with huggingface_hub's not-cached error, never by a network attempt."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError):  # a cached repo, an SAE not written
        sae_lens.SAE.from_pretrained("gpt2-small-res-jb", "blocks.11.hook_resid_post")
    with pytest.raises(LocalEntryNotFoundError):  # a repo not in the cache
        sae_lens.SAE.from_pretrained("gemma-scope-2b-pt-mlp-canonical", "layer_0/width_16k/canonical")
    with pytest.raises(OSError, match="offline|cache|connect"):
        _load_model("gpt2-medium")


def test_gemma_scope_2_shapes_need_the_cache_reader(offline_hub: HubCache, no_network: list[str]):
    """sae_lens reads Gemma Scope 2 tensor shapes by an HTTP range request that ignores HF_HUB_OFFLINE;
    without `shapes_from_hub_cache` the load reaches for the network (and no_network stops it)."""
    rel = offline_hub.releases["gemma-scope-2-270m-pt-res-all"]
    with pytest.raises(NetworkBlocked, match="huggingface.co"):
        sae_lens.SAE.from_pretrained(rel.release, rel.sae_ids[0])
    no_network.clear()  # the attempt was the point


def test_use_hub_cache_restores_state(hub: HubCache):
    import huggingface_hub.constants as constants

    before = (constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE, {k: os.environ.get(k) for k in hub_env(hub.path)})
    with use_hub_cache(hub.path) as path:
        assert Path(constants.HF_HUB_CACHE) == path == hub.path.resolve()
        assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_CACHE"] == str(path)
    assert (
        constants.HF_HUB_CACHE,
        constants.HF_HUB_OFFLINE,
        {k: os.environ.get(k) for k in hub_env(hub.path)},
    ) == before


def test_hub_env_serves_a_new_process(hub: HubCache):
    """hub_env alone (no patching) makes a child process load a release and its model from the cache."""
    code = (
        "import sae_lens, transformers;"
        "sae = sae_lens.SAE.from_pretrained('llama_scope_lxr_8x', 'l1r_8x');"
        "m = transformers.AutoModelForCausalLM.from_pretrained('meta-llama/Llama-3.1-8B');"
        "print(sae.cfg.metadata.hook_name, m.config.num_hidden_layers)"
    )
    # a closed local endpoint: were anything fetched, it would fail at once instead of reaching the hub
    env = {**os.environ, **hub_env(hub.path), "HF_ENDPOINT": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["blocks.1.hook_resid_post", str(N_LAYERS)]


def _tree(root: Path, repo_id: str) -> dict[str, str]:
    """{path in the snapshot: blob name} of a repo's main snapshot."""
    folder = root / f"models--{repo_id.replace('/', '--')}"
    snap = folder / "snapshots" / (folder / "refs" / "main").read_text()
    return {p.relative_to(snap).as_posix(): os.readlink(p).rsplit("/", 1)[1] for p in snap.rglob("*") if p.is_symlink()}


def test_build_is_idempotent_and_deterministic(hub: HubCache, tmp_path: Path):
    blobs = {p: p.stat().st_mtime_ns for p in hub.path.glob("models--*/blobs/*")}
    assert build_hub_cache(hub.path, n_layers=N_LAYERS) == hub
    assert {p: p.stat().st_mtime_ns for p in hub.path.glob("models--*/blobs/*")} == blobs  # nothing rewritten
    cheap = ["llama_scope_lxr_8x", "gemma-scope-2-270m-pt-res"]
    again = build_hub_cache(tmp_path / "hub", releases=cheap, n_layers=N_LAYERS)
    for name in cheap:
        assert again.releases[name] == hub.releases[name]
        for repo in (again.releases[name].repo_id, again.releases[name].model_id):
            mine = _tree(again.path, repo)
            assert mine and mine.items() <= _tree(hub.path, repo).items()  # same files, same bytes
