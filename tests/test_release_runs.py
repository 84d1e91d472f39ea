"""The README's "Your model and SAEs" commands, run as written against a fabricated hub cache, offline.

Each command collects a run from a SAELens release by name: the release's model and SAEs come
from a Hugging Face hub cache on disk (saelineage.testing.hub: tiny random weights in each
release's exact on-hub format), read by huggingface_hub, transformers and sae_lens's own
loaders, with every network access failing the test. The stored codes must equal sae_lens's own
`SAE.encode` on the same residuals, and stats, analyze and ablate must run on every such run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from runs import write_corpus
from typer.testing import CliRunner

from saelineage.cli import app
from saelineage.data.store import iter_shards
from saelineage.run import RunDir

pytest.importorskip("sae_lens")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

README = Path(__file__).resolve().parents[1] / "README.md"

# Depth of the tiny models per release: the release's every layer, except Gemma Scope (1), whose SAEs are
# 2304 x 16384 by format (sae_lens hard-codes both), so its cache holds 2 of the 26 layers.
DEPTH = {
    "gpt2-small-res-jb": 12,
    "gemma-scope-2-270m-pt-res-all": 18,
    "gemma-scope-2b-pt-res-canonical": 2,
    "llama_scope_lxr_8x": 32,
    "pythia-70m-deduped-res-sm": 6,
    "sae_bench_pythia70m_sweep_topk_ctx128_0730": 6,
}
ALSO = {"gemma-scope-2-270m-pt-res-all": ["gemma-scope-2-270m-pt-res"]}  # the seed twins share the model
LAYERS = {"gemma-scope-2b-pt-res-canonical": "0,1", "sae_bench_pythia70m_sweep_topk_ctx128_0730": "3,4"}
# Releases run beside the README's systems: a dictionary_learning release (SAEBench TopK sweep, layers 3 and 4)
MORE_COMMANDS = [
    "saelineage collect runs/saebench --saes sae_bench_pythia70m_sweep_topk_ctx128_0730 "
    "--sae-id blocks.{layer}.hook_resid_post__trainer_0"
]
# The later stages on these runs too; Gemma Scope (1) is left to the codes check, since its full-size 16,384-wide
# layers make the stats stage's d² sweep the slowest thing in the suite without testing anything more.
PIPELINE = set(DEPTH) - {"gemma-scope-2b-pt-res-canonical"}


def readme_commands() -> list[str]:
    """`saelineage collect … --saes RELEASE …` lines of the README's "Your model and SAEs" section."""
    text = README.read_text()
    section = text[text.index("## Your model and SAEs") :]
    section = section[: section.index("\n## ", 3)]
    return [line.strip() for line in section.splitlines() if line.strip().startswith("saelineage collect ")]


def release_of(command: str) -> str:
    args = shlex.split(command)
    return args[args.index("--saes") + 1]


@pytest.fixture(scope="session")
def hubs(tmp_path_factory):
    """{release: built HubCache}, each release's cache built on first use (one folder per depth)."""
    from saelineage.testing.hub import build_hub_cache

    built = {}

    def get(release: str):
        if release not in built:
            root = tmp_path_factory.mktemp(f"hub-{re.sub(r'[^a-z0-9]', '', release)}")
            built[release] = build_hub_cache(root, [release, *ALSO.get(release, [])], n_layers=DEPTH[release])
        return built[release]

    return get


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "text.txt", n_docs=12, words=80)


def invoke(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, f"{args}: {res.output}\n{res.exception!r}"


def test_readme_names_the_five_systems():
    assert [release_of(c) for c in readme_commands() + MORE_COMMANDS] == list(DEPTH)


def assert_codes_equal_sae_lens(run: RunDir, release: str) -> None:
    """Every stored code equals sae_lens's own SAE.encode on the residuals of the run's own windows."""
    from sae_lens import SAE as SaeLensSAE

    from saelineage.run_model import load_run_model
    from saelineage.saes.release import shapes_from_hub_cache

    m = run.load()
    rm = load_run_model(run)
    for l in m.layers:
        meta = m.saes[l]
        assert meta["release"] == release
        with shapes_from_hub_cache():
            ref = SaeLensSAE.from_pretrained(release, meta["sae_id"], device="cpu", dtype="float32")
        hook = rm.saes[l].hook
        assert ref.cfg.metadata.hook_name.replace("hook_z", "attn.hook_z").endswith(hook.name.split(".", 2)[-1])
        n_checked = 0
        for shard in iter_shards(run, [l]):
            ids = torch.from_numpy(np.asarray(shard.tokens, dtype=np.int64).reshape(-1, m.window))
            x = rm.adapter.residuals(ids, [hook])[hook].reshape(-1, rm.adapter.width(hook))
            with torch.no_grad():
                want = ref.encode(x.float()).numpy()
            got = shard.codes[l].csr(m.d_sae[l]).toarray()
            assert np.array_equal(got > 0, want > 0), f"layer {l}: active sets differ"
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
            n_checked += int((want > 0).sum())
        assert n_checked > 0, f"layer {l}: no code fired, the comparison would be empty"


@pytest.mark.parametrize("command", readme_commands() + MORE_COMMANDS, ids=release_of)
def test_readme_command_runs_offline_and_equals_sae_lens(command, hubs, corpus, tmp_path, no_network):
    from saelineage.testing.hub import use_hub_cache

    release = release_of(command)
    cache = hubs(release)
    args = shlex.split(command)[1:]
    run_dir = tmp_path / "run"
    args[1] = str(run_dir)  # the command's runs/NAME, here in a temporary folder
    args += ["--corpus", str(corpus), "--window", "32", "--max-tokens", "768", "--shard-windows", "8"]
    args += ["--batch-windows", "8"]
    if release in LAYERS:
        args += ["--layers", LAYERS[release]]
    with use_hub_cache(cache):
        invoke(args)
        run = RunDir(run_dir)
        m = run.load()
        model_id = cache.releases[release].model_id
        assert m.config["model"] == model_id  # the release's model, never the embedded default
        want_layers = [int(x) for x in LAYERS[release].split(",")] if release in LAYERS else None
        assert m.layers == (want_layers or list(range(DEPTH[release] if release != "gpt2-small-res-jb" else 12)))
        assert_codes_equal_sae_lens(run, release)
        if release not in PIPELINE:
            return
        invoke(["stats", str(run_dir)])
        invoke(["analyze", str(run_dir)])
        invoke(["ablate", str(run_dir), "--measures", "jaccard", "--bins", "2", "--per-bin", "2", "--no-plot"])
        assert run.load().status("ablate") == "complete"


def test_ceiling_from_a_published_second_seed(hubs, corpus, tmp_path, no_network):
    """gemma-scope-2-270m-pt-res publishes layer_{l}_width_262k_l0_medium_seed_1 twins: `ceiling RUN` finds them."""
    import pyarrow.parquet as pq

    from saelineage.testing.hub import use_hub_cache

    cache = hubs("gemma-scope-2-270m-pt-res-all")
    twin_layers = sorted(cache.releases["gemma-scope-2-270m-pt-res"].layers)
    run_dir = tmp_path / "run"
    with use_hub_cache(cache):
        invoke(["collect", str(run_dir), "--saes", "gemma-scope-2-270m-pt-res", "--width", "262k", "--l0", "medium",
                "--layers", ",".join(map(str, twin_layers)), "--corpus", str(corpus), "--window", "32",
                "--max-tokens", "512", "--shard-windows", "8", "--batch-windows", "8"])  # fmt: skip
        invoke(["ceiling", str(run_dir), "--tokens", "256"])
    m = RunDir(run_dir).load()
    second = m.stage("ceiling")["second_saes"]
    assert {int(l) for l in second} == set(twin_layers)
    assert all(s["sae_id"].endswith("_seed_1") and s["release"] == "gemma-scope-2-270m-pt-res" for s in second.values())
    table = pq.read_table(RunDir(run_dir).file("seed_ceiling.parquet")).to_pandas()
    live = table[table.live]
    assert len(live) > 0
    # the fabricated twin shares half of its latents with seed 0 (perturbed copies): many partners are close
    assert (live.best_pearson > 0.5).mean() > 0.2


def test_release_not_in_the_cache_fails_offline_naming_what_it_needs(hubs, tmp_path, no_network):
    from saelineage.errors import SaelineageError
    from saelineage.saes.release import load_release
    from saelineage.testing.hub import use_hub_cache

    with use_hub_cache(hubs("pythia-70m-deduped-res-sm")):
        with pytest.raises(SaelineageError) as err:
            load_release("pythia-70m-deduped-mlp-sm", "blocks.0.hook_mlp_out")
    msg = str(err.value)
    assert "not in the local Hugging Face cache" in msg and "--saes FOLDER" in msg
    from saelineage.models.loading import load_model

    with use_hub_cache(hubs("pythia-70m-deduped-res-sm")) as root:
        with pytest.raises(SaelineageError) as err:
            load_model("google/gemma-2-9b")
    assert "https://huggingface.co/google/gemma-2-9b" in err.value.problem and str(root) in err.value.problem
