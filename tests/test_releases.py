"""SAELens releases by name: the directory read offline, stacks chosen, bad choices refused.

The expectations come from sae_lens's own directory (the ids it publishes), not from a table here.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from saelineage.cli import app
from saelineage.errors import SaelineageError
from saelineage.saes import catalog
from saelineage.saes.resolve import release_model

pytest.importorskip("sae_lens")


@pytest.fixture(scope="module")
def directory():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def test_every_release_is_parsed_with_layers_from_its_own_ids(directory):
    releases = catalog.releases()
    assert set(releases) == set(directory)
    for name, entry in directory.items():
        r = releases[name]
        assert len(r.saes) == len(entry.saes_map)
        for s in r.saes:
            if s.layer is not None and "{layer}" in s.template:
                assert s.template.format(layer=s.layer) == s.sae_id  # the template round-trips the id
        if name.startswith("gemma-scope-2-") and "transcoder" not in name:
            # Gemma Scope 2 ids spell their layer: layer_{l}_width_…
            assert r.layers == sorted({int(i.split("_")[1]) for i in entry.saes_map if i.startswith("layer_")})


def test_gemma_scope_2_variants_and_seed(directory):
    r = catalog.get_release("gemma-scope-2-270m-pt-res")
    assert r.site == "resid_post" and r.has_second_seed
    assert set(r.widths) == {"16k", "65k", "262k", "1m"} and set(r.l0s) == {"small", "medium", "big"}
    with pytest.raises(SaelineageError) as err:  # 12 stacks over the same layers: the user must choose
        catalog.select(r)
    assert "--sae-id" in err.value.fix and "layer_{layer}_width_262k_l0_medium" in err.value.fix
    assert "--width" in err.value.fix and "--l0" in err.value.fix
    chosen = catalog.select(r, width="262k", l0="medium")
    assert chosen == {l: f"layer_{l}_width_262k_l0_medium" for l in r.layers}
    assert all(i in directory["gemma-scope-2-270m-pt-res"].saes_map for i in chosen.values())
    twins = {l: catalog.seed_twin(r, i) for l, i in chosen.items()}
    published = [i for i in directory["gemma-scope-2-270m-pt-res"].saes_map if i.endswith("_seed_1")]
    assert sorted(t for t in twins.values() if t) == sorted(
        i for i in published if i.replace("_seed_1", "") in chosen.values()
    )
    assert catalog.select(r, width=str(262144), l0="medium") == chosen  # 262144 and 262k are one width


def test_template_and_impossible_choices():
    r = catalog.get_release("gemma-scope-2-270m-pt-res-all")
    ids = catalog.select(r, sae_id="layer_{layer}_width_16k_l0_small")
    assert ids == {l: f"layer_{l}_width_16k_l0_small" for l in range(18)}
    assert catalog.select(r, sae_id="layer_{layer}_width_16k_l0_small", layers=[3, 4]) == {
        3: "layer_3_width_16k_l0_small",
        4: "layer_4_width_16k_l0_small",
    }
    with pytest.raises(SaelineageError, match="no SAE with width 999k"):
        catalog.select(r, width="999k")
    with pytest.raises(SaelineageError, match="for layers \\[40\\]"):
        catalog.select(r, sae_id="layer_{layer}_width_16k_l0_small", layers=[40])
    with pytest.raises(SaelineageError, match="has no SAE 'layer_3_width_16k_l0_tiny'") as err:
        catalog.select(r, sae_id="layer_3_width_16k_l0_tiny")
    assert err.value.fix.startswith("did you mean layer_3_width_16k_l0_")  # the closest real ids first


def test_paper_release_picks_resid_pre_without_options():
    r = catalog.get_release("gpt2-small-res-jb")
    assert catalog.select(r) == {l: f"blocks.{l}.hook_resid_pre" for l in range(12)}
    assert catalog.hub_model(r.model) == "gpt2"


def test_unknown_and_unusable_releases():
    with pytest.raises(SaelineageError) as err:
        catalog.get_release("gemma-scope-2-270m-pt-resall")
    assert "gemma-scope-2-270m-pt-res-all" in err.value.fix
    temporal = catalog.get_release("temporal-sae-gemma-2-2b")
    with pytest.raises(SaelineageError, match="cannot be used for lineage: its latents depend on earlier tokens"):
        catalog.select(temporal)


def test_release_model_default_and_mismatch(tmp_path):
    assert release_model("gemma-scope-2-270m-pt-res-all", None) == "google/gemma-3-270m"
    assert release_model("gpt2-small-res-jb", "gpt2") == "gpt2"
    with pytest.raises(SaelineageError) as err:
        release_model("gemma-scope-2-270m-pt-res-all", "gpt2")
    assert "gemma-3-270m" in err.value.problem and "'gpt2'" in err.value.problem
    assert release_model(str(tmp_path), "anything") == "anything"  # a folder of SAEs names no model


def test_collect_refuses_another_model_before_loading_anything(tmp_path, monkeypatch):
    import saelineage.models.loading as loading
    import saelineage.saes.release as release
    from saelineage.collect.config import CollectConfig
    from saelineage.collect.stage import run_collect

    def fail(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(loading, "load_model", fail)
    monkeypatch.setattr(release, "load_release", fail)
    with pytest.raises(SaelineageError, match="release 'gemma-scope-2-270m-pt-res-all' holds SAEs of model"):
        run_collect(tmp_path / "run", CollectConfig(model="gpt2", saes="gemma-scope-2-270m-pt-res-all"))
    with pytest.raises(SaelineageError, match="which one is meant is ambiguous"):
        run_collect(tmp_path / "run2", CollectConfig(saes="gemma-scope-2-270m-pt-res-all"))


def test_releases_command_lists_gemma_scope_2_for_gemma_3(monkeypatch):
    runner = CliRunner()
    res = runner.invoke(app, ["releases", "--model", "google/gemma-3-270m", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    names = {r["release"] for r in rows}
    assert "gemma-scope-2-270m-pt-res-all" in names and "gemma-scope-2-270m-pt-res" in names
    assert all(r["hub_model"] == "google/gemma-3-270m" for r in rows)
    res_all = next(r for r in rows if r["release"] == "gemma-scope-2-270m-pt-res-all")
    assert res_all["layers"] == list(range(18)) and res_all["site"] == "resid_post" and "16k" in res_all["widths"]
    assert next(r for r in rows if r["release"] == "gemma-scope-2-270m-pt-res")["second_seed"] is True
    res = runner.invoke(app, ["releases", "--site", "resid_pre", "--json"])
    assert {r["site"] for r in json.loads(res.stdout)} == {"resid_pre"}
    monkeypatch.setenv("COLUMNS", "80")
    res = runner.invoke(app, ["releases", "--model", "google/gemma-3-270m"])
    assert res.exit_code == 0 and "gemma-scope-2-270m-pt-res-all" in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    res = runner.invoke(app, ["releases", "--site", "elsewhere"])
    assert res.exit_code != 0
