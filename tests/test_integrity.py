"""A run cannot be silently wrong: checksums recorded by writers, verified by readers, and
`saelineage verify` (docs/design.md §3)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from runs import write_corpus, write_saes
from safetensors.numpy import load, save
from tinymodels import tiny_llama
from typer.testing import CliRunner

from saelineage import contract
from saelineage.cli import app
from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.errors import SaelineageError
from saelineage.feature_table import read_features
from saelineage.lineage.stage import run_analyze
from saelineage.run import RunDir
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
from saelineage.verify import verify_run

STATS_KW = {"memory_limit": 4 << 30}
STATS_FILES = (contract.EDGES, contract.FEATURE_LINKS)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny real run (a random Llama, random SAEs) through stats: 4 shards."""
    root = tmp_path_factory.mktemp("integrity")
    cfg = CollectConfig(
        model=str(tiny_llama(root / "model", n_layers=3, d=32)),
        saes=str(write_saes(root / "saes", 32, [0, 1, 2], d_sae=48)),
        corpus=str(write_corpus(root / "c.txt", n_docs=8)),
        window=16,
        max_tokens=16 * 16,
        batch_windows=4,
        shard_windows=4,
        examples_k=3,
    )
    run = run_collect(root / "run", cfg, progress=False).run.path
    run_stats(run, StatsConfig(**STATS_KW), progress=False)
    return run


def copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def multiply_values(shard: Path, layer: int, n: int = 200, factor: float = 7.0) -> None:
    """The reported damage: n activation values of one layer of one shard multiplied by `factor`."""
    raw = shard.read_bytes()
    meta = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")]).get("__metadata__")
    t = {k: v.copy() for k, v in load(raw).items()}
    vals = t[f"l{layer}.values"]
    assert len(vals) >= n
    vals[:n] *= factor
    shard.write_bytes(save(t, metadata=meta))


def verify_cli(run: Path, *args: str):
    return CliRunner().invoke(app, ["verify", str(run), *args])


def test_verify_passes_on_a_clean_run(base):
    findings = verify_run(base)
    assert findings and all(f.status == "ok" for f in findings), [f for f in findings if f.status != "ok"]
    got = verify_cli(base)
    assert got.exit_code == 0, got.output
    assert all(len(line) <= 80 for line in got.output.splitlines())
    data = json.loads(verify_cli(base, "--json").output)
    assert data["ok"] and any(f["file"] == "activations/shard-00003.safetensors" for f in data["findings"])


def test_corrupted_shard_is_refused_flagged_and_fixed_by_the_printed_command(base, tmp_path):
    run = copy(base, tmp_path)
    shard = run / "activations" / "shard-00001.safetensors"
    multiply_values(shard, layer=1)
    # stats refuses, naming the shard, and leaves no output computed from it
    with pytest.raises(SaelineageError) as err:
        run_stats(run, StatsConfig(**STATS_KW), force=True, progress=False)
    assert str(shard) in err.value.problem and f"delete {shard}" in (err.value.fix or "")
    assert not any((run / f).exists() for f in STATS_FILES)
    assert RunDir(run).load().status("stats") != "complete"
    # any other reader of shards refuses too
    with pytest.raises(SaelineageError, match="shard-00001"):
        from saelineage.data.store import iter_shards

        list(iter_shards(RunDir(run)))
    # verify flags it and prints the fix
    got = verify_cli(run)
    assert got.exit_code == 1 and "shard-00001" in got.output and "corrupt" in got.output
    finding = next(f for f in verify_run(run) if f.file.endswith("shard-00001.safetensors"))
    assert finding.status == "corrupt"
    # the printed fix: delete the shard, run the collect command as printed
    cmd = re.search(r"`(saelineage collect [^`]+)`", err.value.fix or "")
    assert cmd is not None
    shard.unlink()
    done = CliRunner().invoke(app, shlex.split(cmd.group(1))[1:])
    assert done.exit_code == 0, done.output
    run_stats(run, StatsConfig(**STATS_KW), force=True, progress=False)
    for name in (*STATS_FILES, "activations/shard-00001.safetensors", contract.FEATURES, contract.EXAMPLES):
        assert (run / name).read_bytes() == (base / name).read_bytes(), name
    assert verify_cli(run).exit_code == 0


@pytest.mark.parametrize("name", [contract.EDGES, contract.FEATURES])
def test_a_bit_flip_in_a_parquet_output_is_refused_by_its_next_reader(base, tmp_path, name):
    run = copy(base, tmp_path)
    p = run / name
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(SaelineageError) as err:
        if name == contract.EDGES:
            run_analyze(run, progress=False)
        else:
            read_features(RunDir(run))
    assert str(p) in err.value.problem
    # a later stage's file: that stage again; collect's: delete it and collect recomputes just it
    want = "--force" if name == contract.EDGES else f"delete {p}, then run `saelineage collect"
    assert want in (err.value.fix or "")
    if name == contract.EDGES:  # analyze wrote nothing from it
        assert not (run / contract.GATES).exists()
    got = verify_cli(run)
    assert got.exit_code == 1 and name in got.output


def test_a_missing_file_is_flagged(base, tmp_path):
    run = copy(base, tmp_path)
    (run / contract.FEATURE_LINKS).unlink()
    (run / "activations" / "shard-00002.safetensors").unlink()
    bad = {f.file: f for f in verify_run(run) if f.status != "ok"}
    assert bad[contract.FEATURE_LINKS].status == "missing" and "saelineage stats" in bad[contract.FEATURE_LINKS].fix
    assert bad["activations/shard-00002.safetensors"].status == "missing"
    assert "saelineage collect" in bad["activations/shard-00002.safetensors"].fix
    assert verify_cli(run).exit_code == 1


def test_a_run_without_checksums_is_read_unverified(base, tmp_path):
    run = copy(base, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m.pop("seal")  # as written before checksums and seals
    for entry in m["stages"].values():
        entry.pop("checksums", None)
    (run / "manifest.json").write_text(json.dumps(m))
    assert read_features(RunDir(run)).num_rows > 0
    run_stats(run, StatsConfig(**STATS_KW), force=True, progress=False)
    got = verify_run(run)
    assert not any(f.status in ("corrupt", "missing", "inconsistent") for f in got)
    assert {f.status for f in got if f.file.startswith("activations/")} == {"unverified"}
    assert verify_cli(run).exit_code == 0


def test_verify_checks_the_manifest_against_the_shards(base, tmp_path):
    """Without checksums (an old run), damage that changes counts is still caught by consistency."""
    run = copy(base, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m.pop("seal")
    m["stages"]["collect"].pop("checksums")
    m["n_tokens"] += 16
    (run / "manifest.json").write_text(json.dumps(m))
    shard = run / "activations" / "shard-00000.safetensors"
    t = dict(load(shard.read_bytes()))
    t["l0.values"] = np.zeros_like(t["l0.values"])  # every code of layer 0 inactive
    shard.write_bytes(save(t))
    bad = {f.file: f for f in verify_run(run) if f.status == "inconsistent"}
    assert contract.MANIFEST in bad and contract.FEATURES in bad, bad


def test_an_imported_run_records_checksums(tmp_path):
    from saelineage.testing.planted import build_planted_run

    run, _ = build_planted_run(tmp_path / "run", noise=0.0, seed=0)
    sums = run.load().stage("collect")["checksums"]
    assert contract.FEATURES in sums and any(k.startswith("activations/shard-") for k in sums)
    assert all(f.status == "ok" for f in verify_run(run.path))
    shard = sorted(run.activations.iterdir())[0]
    multiply_values(shard, layer=run.load().layers[0], n=20)
    bad = [f for f in verify_run(run.path) if f.status == "corrupt"]
    assert [f.file for f in bad] == [f"activations/{shard.name}"] and "write_run" in bad[0].fix
