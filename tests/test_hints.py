"""Every "fix:" line that names a command is followed as written, and then the problem is gone.

Each test breaks a run the way a user might (deletes a file, truncates a shard, corrupts the
manifest, moves the SAEs), reads the error's fix, runs the command it names through the CLI
exactly as printed, and checks that the original command now works and gives what an
unbroken run gives.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from runs import write_corpus, write_saes
from tinymodels import tiny_llama
from typer.testing import CliRunner

from saelineage.cli import app
from saelineage.errors import SaelineageError
from saelineage.run import RunDir

LAYERS = [0, 1, 2]
runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hints")
    return {
        "model": tiny_llama(root / "model", n_layers=3, d=64),
        "saes": write_saes(root / "saes", 64, LAYERS),
        "corpus": write_corpus(root / "corpus.txt", n_docs=12),
    }


def cli(*args: str) -> None:
    """Run a saelineage command in-process; a SaelineageError propagates to the test."""
    r = runner.invoke(app, list(args), catch_exceptions=True)
    if isinstance(r.exception, SaelineageError):
        raise r.exception
    assert r.exit_code == 0, (args, r.output, r.exception)


def collect_args(env, run: Path, saes: Path | None = None) -> list[str]:
    """A collect command with several non-default options, so a hint must repeat them to work."""
    return [
        "collect",
        str(run),
        "--model",
        str(env["model"]),
        "--saes",
        str(saes or env["saes"]),
        "--corpus",
        str(env["corpus"]),
        "--window",
        "16",
        "--batch-windows",
        "2",
        "--shard-windows",
        "4",
        "--examples",
        "3",
        "--max-tokens",
        str(16 * 24),
    ]


def make_run(env, run: Path) -> RunDir:
    cli(*collect_args(env, run))
    cli("stats", str(run), "--min-support", "2", "--top-k", "4")
    return RunDir(run)


def follow(exc: SaelineageError, **replace: str) -> list[str]:
    """Run every `saelineage ...` command the fix names, in order; returns them."""
    cmds = re.findall(r"`saelineage ([^`]+)`", exc.fix or "")
    assert cmds, f"the fix names no command: {exc.fix!r}"
    for cmd in cmds:
        for old, new in replace.items():
            cmd = cmd.replace(old, new)
        cli(*shlex.split(cmd))
    return cmds


def files(run: RunDir, names) -> dict[str, bytes]:
    return {n: run.file(n).read_bytes() for n in names}


def test_missing_features_parquet_names_collect_and_collect_rebuilds_it(env, tmp_path):
    run = make_run(env, tmp_path / "run")
    before = files(run, ["features.parquet", "examples.parquet"])
    run.file("features.parquet").unlink()
    with pytest.raises(SaelineageError, match="features.parquet is missing") as e:
        cli("analyze", str(run.path))
    assert "saelineage collect" in e.value.fix and "stats" not in e.value.fix
    follow(e.value)
    assert files(run, before) == before
    cli("analyze", str(run.path))
    assert run.is_complete("analyze")
    # the relative-threshold path of stats says the same
    run.file("features.parquet").unlink()
    with pytest.raises(SaelineageError, match="features.parquet is missing") as e:
        cli("stats", str(run.path), "--relative-threshold", "0.2", "--force")
    follow(e.value)
    cli("stats", str(run.path), "--relative-threshold", "0.2", "--force")


def test_missing_edges_names_stats_with_its_options(env, tmp_path):
    run = make_run(env, tmp_path / "run")
    before = files(run, ["edges.parquet", "feature_links.parquet"])
    run.file("edges.parquet").unlink()
    with pytest.raises(SaelineageError, match="edges.parquet is missing") as e:
        cli("analyze", str(run.path))
    cmds = follow(e.value)
    assert "--min-support 2" in cmds[0] and "--top-k 4" in cmds[0]
    assert files(run, before) == before  # same options: the same edges, byte for byte
    cli("analyze", str(run.path))


def test_truncated_shard_is_recomputed_by_the_named_command(env, tmp_path):
    run = make_run(env, tmp_path / "run")
    shards = sorted(run.activations.glob("shard-*.safetensors"))
    want = {p.name: p.read_bytes() for p in shards}
    edges = run.file("edges.parquet").read_bytes()
    bad = shards[1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(SaelineageError, match="unreadable or truncated") as e:
        cli("stats", str(run.path), "--min-support", "2", "--top-k", "4", "--force")
    assert f"delete {bad}" in e.value.fix
    bad.unlink()  # the fix's first step
    follow(e.value)
    assert {p.name: p.read_bytes() for p in run.activations.glob("shard-*.safetensors")} == want
    cli("stats", str(run.path), "--min-support", "2", "--top-k", "4", "--force")
    assert run.file("edges.parquet").read_bytes() == edges


def test_corrupt_manifest_is_rebuilt_by_collect_force(env, tmp_path):
    run = make_run(env, tmp_path / "run")
    shards = {p.name: p.read_bytes() for p in run.activations.glob("shard-*.safetensors")}
    run.manifest_path.write_text('{"schema_version": 1, "stages": {')
    with pytest.raises(SaelineageError, match="not valid JSON") as e:
        cli("stats", str(run.path))
    assert "--force" in e.value.fix and "saelineage collect" in e.value.fix
    # the manifest cannot say which options made the run: the user repeats the command they ran
    cli(*collect_args(env, run.path), "--force")
    assert {p.name: p.read_bytes() for p in run.activations.glob("shard-*.safetensors")} == shards
    cli("stats", str(run.path))


def test_incomplete_stage_hint_resumes_it(env, tmp_path):
    run = make_run(env, tmp_path / "run")
    run.set_stage("stats", "running")
    with pytest.raises(SaelineageError, match="stage 'stats' .* is running, not complete") as e:
        cli("analyze", str(run.path))
    follow(e.value)
    cli("analyze", str(run.path))
    # an interrupted collect names the full collect command
    run.set_stage("collect", "running")
    with pytest.raises(SaelineageError, match="stage 'collect' .* not complete") as e:
        cli("stats", str(run.path), "--force")
    assert "--window 16" in e.value.fix and "--shard-windows 4" in e.value.fix
    follow(e.value)
    cli("stats", str(run.path), "--force")


def test_other_options_hint_is_force(env, tmp_path):
    run = make_run(env, tmp_path / "run")
    with pytest.raises(SaelineageError, match="complete with other options") as e:
        cli("stats", str(run.path), "--top-k", "3")
    assert "--force" in e.value.fix
    cli("stats", str(run.path), "--top-k", "3", "--force")
    with pytest.raises(SaelineageError, match="different configuration") as e:
        cli(*collect_args(env, run.path)[:-1], str(16 * 20))
    assert "--force" in e.value.fix
    cli(*collect_args(env, run.path)[:-1], str(16 * 20), "--force")
    assert RunDir(run.path).load().n_windows == 20


def test_moved_saes_hint_collects_from_the_new_folder(env, tmp_path):
    saes = shutil.copytree(env["saes"], tmp_path / "saes")
    run = tmp_path / "run"
    cli(*collect_args(env, run, saes=saes))
    cli("stats", str(run), "--min-support", "2")
    moved = tmp_path / "saes-moved"
    saes.rename(moved)
    with pytest.raises(SaelineageError, match="is not at .* any more") as e:
        cli("prompt", str(run), "the cat sat")
    follow(e.value, NEW_FOLDER=str(moved))
    assert RunDir(run).is_complete("collect")
    cli("stats", str(run), "--min-support", "2")
    cli("prompt", str(run), "the cat sat")


def test_imported_run_hint_is_the_store_api(tmp_path):
    import scipy.sparse as sp

    from saelineage.data.importer import write_run
    from saelineage.stats.config import StatsConfig
    from saelineage.stats.stage import run_stats

    rng = np.random.default_rng(0)
    codes = {l: sp.csr_matrix((rng.random((64, 12)) < 0.3) * rng.random((64, 12))) for l in (0, 1)}
    run = write_run(tmp_path / "imp", codes, tokens=np.arange(64) % 7, window_len=8, bos=True)
    run_stats(run.path, StatsConfig(min_support=1), progress=False)
    run.file("features.parquet").unlink()
    with pytest.raises(SaelineageError, match="features.parquet is missing") as e:
        cli("analyze", str(run.path))
    assert "write_run(..., force=True)" in e.value.fix
    run = write_run(tmp_path / "imp", codes, tokens=np.arange(64) % 7, window_len=8, bos=True, force=True)
    run_stats(run.path, StatsConfig(min_support=1), progress=False)
    cli("analyze", str(run.path))
    assert pq.read_table(run.file("features.parquet")).num_rows == 24
