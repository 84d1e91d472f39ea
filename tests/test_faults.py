"""Fault injection over every file of a complete run (docs/design.md §3).

A tiny run goes through every stage (collect, stats, ceiling, labels import, analyze, ablate, the
browser's cache). Each file then suffers each fault in a copy of the run: bit flips in its data and
in its header, truncation, a zero-filled block, the same file from another run, two shards swapped,
deletion, hand edits of the manifest and a stale browser cache. For every case:

- the next stage that reads the file refuses with one SaelineageError (what the CLI prints as one
  message, no traceback) naming the file, and writes nothing computed from it;
- `saelineage verify` flags the file;
- for one fault per file, the printed fix (delete what it says, run the commands it quotes), then
  the interrupted command again, restores every output byte for byte, and verify passes again.

Which stage reads a file next: shards → stats; collect's tables, stats' outputs and the ceiling →
analyze; analyze's, ablate's and the labels' tables, and stats_summary.json → serve building its
cache (an up-to-date cache is built from the digests the stages recorded, so serve reads those files
only when it builds: the cases give it an empty cache folder). best_pairs.parquet,
prompt_graphs.json and lifecycle.html are read by no stage: verify alone checks them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from runs import write_corpus, write_saes
from tinymodels import tiny_llama
from typer.testing import CliRunner

from saelineage import checksum, contract
from saelineage.causal.config import AblateConfig
from saelineage.causal.stage import run_ablate
from saelineage.ceiling.config import CeilingConfig
from saelineage.ceiling.stage import run_ceiling
from saelineage.cli import app
from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.errors import SaelineageError
from saelineage.lineage.stage import run_analyze
from saelineage.query.cache import input_files
from saelineage.query.run_data import RunData
from saelineage.run import RunDir
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
from saelineage.verify import BAD, verify_run
from saelineage.web.labels import import_labels

os.environ.setdefault("HF_HUB_OFFLINE", "1")
STATS = StatsConfig(memory_limit=4 << 30)  # past a test process's baseline (stats refuses a plan that cannot fit)
ABLATE = AblateConfig(
    measures=("jaccard",),
    bins=2,
    per_bin=2,
    windows_per_pair=2,
    batch_rows=8,
    hidden_windows=4,
    hidden_windows_per_feature=1,
    plot=False,
)
TIMED = {contract.MANIFEST, contract.STATS_SUMMARY}
"""Files that record wall times: equal runs differ there, so they are compared without them."""
UNREAD = {contract.BEST_PAIRS, contract.PROMPT_GRAPHS, contract.LIFECYCLE_HTML}


def build(root: Path, seed: int) -> Path:
    """A complete tiny run (3 layers, 48 latents, 4 shards of 4 windows) through every stage."""
    root.mkdir(parents=True, exist_ok=True)
    model = tiny_llama(root / "model", n_layers=3, d=32)
    cfg = CollectConfig(
        model=str(model),
        saes=str(write_saes(root / "saes", 32, [0, 1, 2], d_sae=48)),
        corpus=str(write_corpus(root / "c.txt", n_docs=8, seed=seed)),
        window=16,
        max_tokens=16 * 16,
        batch_windows=4,
        shard_windows=4,
        examples_k=3,
    )
    run = root / "run"
    second = write_saes(root / "saes-2", 32, [1], d_sae=48, archs=("standard",))
    run_collect(run, cfg, progress=False)
    run_stats(run, STATS, progress=False)
    run_ceiling(run, CeilingConfig(saes=str(second), tokens=128, batch_windows=4), progress=False)
    (root / "labels.csv").write_text(f"layer,feature,explanation\n1,{3 + seed},a planted label\n2,5,another\n")
    import_labels(run, root / "labels.csv")  # before analyze: its prompt graphs show the labels
    run_analyze(run, progress=False)
    run_ablate(run, ABLATE, progress=False)
    RunData(run)  # the browser's cache, in RUN/.browser-cache
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("faults")
    return build(root / "a", seed=0), build(root / "b", seed=1)


def files_of(run: Path) -> list[str]:
    """Every file a stage recorded, relative to the run, in order."""
    return sorted(checksum.records(json.loads((run / contract.MANIFEST).read_bytes())))


def snapshot(run: Path) -> dict[str, bytes]:
    return {rel: (run / rel).read_bytes() for rel in files_of(run) if rel not in TIMED}


# ---- faults --------------------------------------------------------------------------------------
def header_at(data: bytes, rel: str) -> int:
    """A byte of the file's own metadata: a safetensors shard's JSON header, a Parquet file's footer,
    the opening of a JSON or HTML file."""
    if rel.endswith(".safetensors"):
        return 8 + int.from_bytes(data[:8], "little") // 2
    if rel.endswith(".parquet"):
        return len(data) - 8 - int.from_bytes(data[-8:-4], "little") // 2
    return 1


def flip(at: Callable[[bytes, str], int]) -> Callable[[Path, str, Path], None]:
    def fault(run: Path, rel: str, other: Path) -> None:
        p = run / rel
        data = bytearray(p.read_bytes())
        data[at(bytes(data), rel)] ^= 0x04
        p.write_bytes(bytes(data))

    return fault


def truncate(run: Path, rel: str, other: Path) -> None:
    p = run / rel
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def zero_block(run: Path, rel: str, other: Path) -> None:
    p = run / rel
    data = bytearray(p.read_bytes())
    n = min(4096, len(data) // 4)
    start = len(data) // 3
    data[start : start + n] = bytes(n)
    p.write_bytes(bytes(data))


SAME_IN_BOTH = {contract.VOCAB, contract.SPLITS}
"""Identical in the two runs (one tokenizer; no splits in either): no foreign copy to detect."""


def foreign(run: Path, rel: str, other: Path) -> None:
    assert (other / rel).read_bytes() != (run / rel).read_bytes()
    shutil.copy2(other / rel, run / rel)


def missing(run: Path, rel: str, other: Path) -> None:
    (run / rel).unlink()


FAULTS = {
    "flip-data": flip(lambda data, rel: len(data) // 2),
    "flip-header": flip(header_at),
    "truncated": truncate,
    "zero-block": zero_block,
    "foreign": foreign,
    "missing": missing,
}


# ---- readers -------------------------------------------------------------------------------------
def serve(run: Path, cache: Path | None = None) -> None:
    """What `saelineage serve` reads: the browser's cache, built into `cache` when it is empty."""
    data = RunData(run, cache_folder=cache)
    data.overview()


def reader_of(rel: str) -> str:
    if rel.startswith(f"{contract.ACTIVATIONS}/"):
        return "stats"
    if contract.WRITER.get(rel) in ("collect", "stats", "ceiling") and rel != contract.STATS_SUMMARY:
        return "analyze"
    return "serve"


def read(stage: str, run: Path, tmp: Path) -> None:
    """Run the stage that reads the file next (forced: a complete stage would skip its work)."""
    if stage == "stats":
        run_stats(run, STATS, force=True, progress=False)
    elif stage == "analyze":
        run_analyze(run, force=True, progress=False)
    elif stage == "serve":
        serve(run, tmp / "fresh-cache")
    else:
        raise AssertionError(stage)


def outputs_of(stage: str) -> list[str]:
    return [name for name, w in contract.WRITER.items() if w == stage]


def assert_refused(stage: str, run: Path, tmp: Path, rel: str, original: dict[str, bytes]) -> SaelineageError:
    """The reader refuses with one clear error naming `rel`, and leaves no output made from it."""
    with pytest.raises(SaelineageError) as err:
        read(stage, run, tmp)
    named = rel.split("/")[-1]
    assert named in err.value.problem or named in (err.value.fix or ""), (rel, err.value.problem)
    assert err.value.fix, err.value.problem
    for name in outputs_of(stage) if stage != "serve" else ():
        p = run / name
        assert not p.exists() or name in TIMED or p.read_bytes() == original[name], f"{stage} wrote {name}"
    if stage == "serve" and rel in {p.name for p in input_files(RunDir(run))}:
        assert not list((tmp / "fresh-cache").glob("sums-*")), "serve completed a cache from damaged input"
    return err.value


def assert_flagged(run: Path, rel: str) -> None:
    bad = {f.file: f for f in verify_run(run) if f.status in BAD}
    assert rel in bad, (rel, bad)
    assert bad[rel].fix
    assert CliRunner().invoke(app, ["verify", str(run)]).exit_code == 1


def apply_fix(err: SaelineageError) -> None:
    """Do what the printed fix says: delete the files it names, then run the commands it quotes."""
    fix = err.fix or ""
    for path in re.findall(r"\bdelete (\S+?\.\w+)\b", fix):
        Path(path).unlink(missing_ok=True)
    commands = re.findall(r"`(saelineage [^`]+)`", fix)
    assert commands, fix
    for cmd in commands:
        done = CliRunner().invoke(app, shlex.split(cmd)[1:])
        if isinstance(done.exception, SaelineageError):  # the next damaged file, named by the fix's command
            raise done.exception
        assert done.exit_code == 0, (cmd, done.output, done.exception)


CASES = [
    pytest.param(rel, fault, id=f"{rel}-{fault}")
    for rel in (
        *(f"{contract.ACTIVATIONS}/shard-0000{i}.safetensors" for i in (0, 2)),
        contract.FEATURES,
        contract.EXAMPLES,
        contract.VOCAB,
        contract.EDGES,
        contract.FEATURE_LINKS,
        contract.STATS_SUMMARY,
        contract.SEED_CEILING,
        contract.LIFECYCLE,
        contract.GATES,
        contract.SPLITS,
        contract.COMMUNITIES,
        contract.FEATURE_ANALYSIS,
        contract.ABLATIONS,
        contract.ERROR_PROJECTION,
        contract.LABELS,
    )
    for fault in FAULTS
    if not (fault == "foreign" and rel in SAME_IN_BOTH)
]


def test_the_cases_cover_every_recorded_file(runs):
    covered = {c.values[0] for c in CASES} | UNREAD
    shards = {rel for rel in files_of(runs[0]) if rel.startswith(f"{contract.ACTIVATIONS}/")}
    assert set(files_of(runs[0])) - shards <= covered and len(shards) == 4


@pytest.mark.parametrize(("rel", "fault"), CASES)
def test_a_fault_is_refused_by_the_next_reader_and_flagged_by_verify(runs, tmp_path, rel, fault):
    base, other = runs
    run = Path(shutil.copytree(base, tmp_path / "run", symlinks=True))
    original = snapshot(base)
    FAULTS[fault](run, rel, other)
    err = assert_refused(reader_of(rel), run, tmp_path, rel, original)
    assert_flagged(run, rel)
    if fault in ("flip-data", "missing"):  # the printed fix restores every output
        apply_fix(err)
        read(reader_of(rel), run, tmp_path)  # the command it interrupted, again
        got = snapshot(run)
        assert got.keys() == original.keys()
        assert [k for k in original if got[k] != original[k]] == []
        assert CliRunner().invoke(app, ["verify", str(run)]).exit_code == 0


@pytest.mark.parametrize("rel", sorted(UNREAD))
def test_a_file_no_stage_reads_is_flagged_by_verify_and_written_again(runs, tmp_path, rel):
    run = Path(shutil.copytree(runs[0], tmp_path / "run", symlinks=True))
    original = snapshot(runs[0])
    FAULTS["flip-data"](run, rel, runs[1])
    assert_flagged(run, rel)
    bad = next(f for f in verify_run(run) if f.file == rel)
    apply_fix(SaelineageError("", bad.fix))
    got = snapshot(run)
    assert [k for k in original if got[k] != original[k]] == []


def test_two_swapped_shards_are_refused_and_flagged(runs, tmp_path):
    run = Path(shutil.copytree(runs[0], tmp_path / "run", symlinks=True))
    original = snapshot(runs[0])
    a, b = (run / contract.ACTIVATIONS / f"shard-0000{i}.safetensors" for i in (1, 2))
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    err = assert_refused("stats", run, tmp_path, "shard-0000", original)
    assert "shard-00001" in err.problem or "shard-00002" in err.problem
    bad = {f.file for f in verify_run(run) if f.status in BAD}
    assert {f"{contract.ACTIVATIONS}/{p.name}" for p in (a, b)} <= bad
    # the fix, once per shard: each error (of stats, or of the collect the fix runs) names the next
    named = []
    for _ in range(4):
        try:
            run_stats(run, STATS, force=True, progress=False)
            break
        except SaelineageError as exc:
            named.append(re.search(r"shard-\d+", exc.problem).group(0))  # type: ignore[union-attr]
            try:
                apply_fix(exc)
            except SaelineageError as again:
                named.append(re.search(r"shard-\d+", again.problem).group(0))  # type: ignore[union-attr]
                apply_fix(again)
    assert sorted(named) == ["shard-00001", "shard-00002"]
    got = snapshot(run)
    assert [k for k in original if got[k] != original[k]] == []


def test_a_shard_copied_in_beside_the_others_is_refused(runs, tmp_path):
    run = Path(shutil.copytree(runs[0], tmp_path / "run", symlinks=True))
    shutil.copy2(
        run / contract.ACTIVATIONS / "shard-00003.safetensors", run / contract.ACTIVATIONS / "shard-00004.safetensors"
    )
    assert_refused("stats", run, tmp_path, "shard-00004", snapshot(runs[0]))


def edit_manifest(run: Path, change: Callable[[dict], None]) -> None:
    p = run / contract.MANIFEST
    data = json.loads(p.read_bytes())
    change(data)
    p.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize(
    ("part", "change", "reader"),
    [
        ("n_tokens", lambda m: m.update(n_tokens=m["n_tokens"] + 16), "stats"),
        ("thresholds", lambda m: m["thresholds"].update(active=0.5), "analyze"),
        ("stages.analyze", lambda m: m["stages"]["analyze"].update(gates=999), "serve"),
        ("stages.ablate", lambda m: m["stages"]["ablate"]["config"].update(bins=7), "serve"),
        ("stages.stats", lambda m: m["stages"]["stats"]["checksums"].pop(contract.EDGES), "analyze"),
    ],
)
def test_a_hand_edited_manifest_is_refused_naming_the_edit(runs, tmp_path, part, change, reader):
    run = Path(shutil.copytree(runs[0], tmp_path / "run", symlinks=True))
    original = snapshot(runs[0])
    edit_manifest(run, change)
    err = assert_refused(reader, run, tmp_path, contract.MANIFEST, original)
    assert part in err.problem
    bad = [f for f in verify_run(run) if f.status in BAD]
    assert bad[0].file == contract.MANIFEST and bad[0].status == "edited" and part in bad[0].detail
    if part in ("stages.analyze", "stages.stats"):  # the stage's --force run writes it and its outputs again
        apply_fix(err)
        read(reader, run, tmp_path)
        got = snapshot(run)
        assert [k for k in original if got[k] != original[k]] == []
        assert CliRunner().invoke(app, ["verify", str(run)]).exit_code == 0


@pytest.mark.parametrize("fault", ["flip-data", "truncated", "missing"])
def test_a_damaged_manifest_is_one_clear_error(runs, tmp_path, fault):
    run = Path(shutil.copytree(runs[0], tmp_path / "run", symlinks=True))
    FAULTS[fault](run, contract.MANIFEST, runs[1])
    with pytest.raises(SaelineageError, match="manifest|not a saelineage run"):
        run_analyze(run, force=True, progress=False)
    assert any(f.file == contract.MANIFEST and f.status in BAD for f in verify_run(run))


def test_a_stale_or_damaged_browser_cache_is_never_served(runs, tmp_path):
    """A cache under this run's name that was built from other inputs (here: the other run's, renamed
    into place) or whose files changed since is flagged by verify and rebuilt by serve."""
    run = Path(shutil.copytree(runs[0], tmp_path / "run", symlinks=True))
    cache = run / contract.BROWSER_CACHE
    (sums,) = cache.glob("sums-*.json")
    sig = sums.name[5:-5]
    assert not [f for f in verify_run(run) if f.file == contract.BROWSER_CACHE and f.status != "ok"]
    # damaged: a flipped byte in the database
    db = cache / f"cache-{sig}.duckdb"
    data = bytearray(db.read_bytes())
    data[len(data) // 2] ^= 0x01
    db.write_bytes(bytes(data))
    assert [f.status for f in verify_run(run) if f.file == contract.BROWSER_CACHE] == ["corrupt"]
    serve(run)
    assert all(f.status not in BAD for f in verify_run(run))
    # stale: the other run's cache, renamed to this run's signature
    shutil.rmtree(cache)
    shutil.copytree(runs[1] / contract.BROWSER_CACHE, cache)
    (theirs,) = cache.glob("sums-*.json")
    for p in list(cache.iterdir()):
        p.rename(p.with_name(p.name.replace(theirs.name[5:-5], sig)))
    found = [f for f in verify_run(run) if f.file == contract.BROWSER_CACHE]
    assert [f.status for f in found] == ["stale"] and "saelineage serve" in found[0].fix
    serve(run)
    assert all(f.status not in BAD for f in verify_run(run))
    a, b = RunData(run), RunData(runs[0])
    assert a.overview()["counts"] == b.overview()["counts"]
