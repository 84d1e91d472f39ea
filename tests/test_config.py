"""Stage configs generate the command line: every field is an option with its docstring as help,
and a config written back as flags (`to_argv`) parses to the same config."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from rich.markup import escape
from typer.testing import CliRunner

from saelineage.causal.config import AblateConfig
from saelineage.ceiling.config import CeilingConfig
from saelineage.cli import app
from saelineage.collect.config import CollectConfig
from saelineage.config import cli_fields, default_of, field_docs, flag_of, from_options, to_argv
from saelineage.errors import SaelineageError
from saelineage.lineage.config import AnalyzeConfig
from saelineage.stats.config import StatsConfig
from saelineage.web.config import ServeConfig, SiteConfig

# one value unlike the default for every command-line field
ODD = {
    CollectConfig: dict(
        model="m",
        saes="s",
        sae_id="layer_{layer}_width_16k_l0_small",
        width="16k",
        l0="small",
        blocks_path="model.decoder.layers",
        layers=[0, 2, 3],
        corpus="c.txt",
        text_column="body",
        window=64,
        max_tokens=4096,
        first_window=3,
        batch_windows=4,
        shard_windows=8,
        examples_k=7,
        include_bos=True,
        dtype="bfloat16",
        device="cuda",
        center_residual=False,
        ray="10.0.0.1:6379",
        ray_workers=3,
    ),
    StatsConfig: dict(
        span=2,
        threshold=0.25,
        relative_threshold=0.2,
        include_bos=True,
        min_support=3,
        top_k=4,
        keep={"pearson": 0.5, "jaccard": 0.25},
        no_keep=True,
        primary=("jaccard", "pearson"),
        memory_limit=3 << 30,
        workers=1,
        accumulate="sparse",
        sae_match="greedy",
        ray="local",
        ray_workers=4,
    ),
    AnalyzeConfig: dict(
        measure="jaccard",
        threshold=0.3,
        gate_threshold=0.9,
        gate_valid=0.8,
        min_support=3,
        max_parents=4,
        pair_measure="pearson",
        split_threshold=0.85,
        exclusivity=0.2,
        min_coverage=0.4,
        max_children=8,
        community_measure="pearson",
        community_threshold=0.2,
        quality="cpm",
        resolution=0.5,
        seed=7,
        leiden_backend="leidenalg",
        prompt_samples=4,
        prompt_rel=0.2,
        prompt_measure="necessity",
        prompt_max_nodes=64,
        top_examples=5,
        gate_test="threshold",
        candidate_floor=0.4,
        fdr=0.05,
        min_prob=0.5,
        min_gain=0.2,
        confidence=0.9,
        bootstrap=50,
        bootstrap_groups=16,
        community_bootstrap=5,
    ),
    CeilingConfig: dict(
        saes="second", sae_id="layer_{layer}_width_262k_l0_medium_seed_1", tokens=1000, batch_windows=8
    ),
    AblateConfig: dict(
        measures=["jaccard", "pearson"],
        bins=5,
        per_bin=3,
        seed=1,
        binning="quantile",
        windows_per_pair=2,
        layer_pairs=[(0, 1), (5, 6)],
        threshold=0.1,
        batch_rows=4,
        hidden=False,
        hidden_windows=16,
        hidden_windows_per_feature=2,
        ending_measure="jaccard",
        ray="auto",
        ray_workers=2,
        layers_per_part=3,
        ending_threshold=0.3,
        plot=False,
        device="cuda",
    ),
    ServeConfig: dict(
        host="::1", port=8123, log_level="info", prompt_queue=3, auth_token="t0ken-0f-16-chars+", insecure=True
    ),
    SiteConfig: dict(
        features="3:17,4:2",
        top_n=50,
        examples=5,
        neighbours=4,
        context_before=6,
        context_after=1,
        max_table_rows=300,
    ),
}
COMMANDS = {
    CollectConfig: "collect",
    StatsConfig: "stats",
    AnalyzeConfig: "analyze",
    CeilingConfig: "ceiling",
    AblateConfig: "ablate",
    ServeConfig: "serve",
    SiteConfig: "export-site",
}
ARGUMENTS = {"export-site": ["RUN", "OUT"]}
"""Positional arguments of commands that take more than the run directory."""


def parse(command: str, argv: list[str]) -> dict:
    cmd = typer.main.get_command(app).commands[command]
    ctx = cmd.make_context(command, [*ARGUMENTS.get(command, ["RUN"]), *argv])
    return ctx.params


@pytest.mark.parametrize("cls", list(ODD))
def test_every_field_is_covered_and_documented(cls):
    names = {f.name for f in cli_fields(cls)}
    assert names == set(ODD[cls]), "ODD must set every command-line field"
    docs = field_docs(cls)
    assert all(docs.get(n) for n in names), f"fields without a docstring: {names - set(docs)}"
    cmd = typer.main.get_command(app).commands[COMMANDS[cls]]
    helps = {o: p.help for p in cmd.params for o in p.opts}
    for f in cli_fields(cls):
        flag = flag_of(f).split("/")[0]
        assert helps[flag] == escape(docs[f.name]), f"{flag}: help text is not the field's docstring"
        assert getattr(cls(), f.name) == default_of(f) and ODD[cls][f.name] != default_of(f)


@pytest.mark.parametrize("cls", list(ODD))
def test_flags_round_trip_to_the_same_config(cls):
    cfg = cls(**ODD[cls])
    back = from_options(cls, parse(COMMANDS[cls], to_argv(cfg)))
    assert dataclasses.asdict(back) == dataclasses.asdict(cfg)
    # and the defaults need no flag at all
    assert to_argv(cls()) == []
    assert dataclasses.asdict(from_options(cls, parse(COMMANDS[cls], []))) == dataclasses.asdict(cls())


def test_help_keeps_square_brackets():
    """Rendered help shows bracketed text literally (rich would drop '[ray]' as a markup tag)."""
    out = CliRunner().invoke(app, ["stats", "--help"], env={"COLUMNS": "300"}).output
    assert "saelineage[ray]" in out


def test_thread_counts_follow_the_machine(monkeypatch):
    """--workers defaults to the CPUs this process may use (its affinity, else the CPU count),
    resolved when the stage runs; the default stays out of the command that reproduces a config."""
    import os

    from saelineage.config import usable_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cpus() == 3
    assert StatsConfig().workers is None and StatsConfig().threads() == 3
    assert StatsConfig(workers=1).threads() == 1
    assert "--workers" not in to_argv(StatsConfig())
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cpus() == 64
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cpus() == 1
    with pytest.raises(SaelineageError, match="workers"):
        StatsConfig(workers=0)
