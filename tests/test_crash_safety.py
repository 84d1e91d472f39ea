"""Crash safety of the writing stages (issue #11): SIGKILL at chosen writes, a full disk, two writers.

Kill tests run the stage in a fresh process (killpoint.py) that SIGKILLs itself at the k-th
rename into the run — while a file is half written, or right after a file landed — then rerun
the stage normally and compare every file of the run with an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from runs import write_corpus, write_saes
from tinymodels import tiny_llama

from saelineage import contract, hints
from saelineage.causal.config import AblateConfig
from saelineage.causal.stage import run_ablate
from saelineage.collect.config import CollectConfig
from saelineage.collect.stage import run_collect
from saelineage.contract import LOCK
from saelineage.errors import SaelineageError
from saelineage.lineage.stage import run_analyze
from saelineage.run import RunDir
from saelineage.run_model import load_run_model
from saelineage.stats.config import StatsConfig
from saelineage.stats.stage import run_stats
from saelineage.testing.planted import build_planted_run

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
KILLPOINT = Path(__file__).with_name("killpoint.py")
# a fixed, generous memory limit: the default depends on free RAM, and the plan takes the
# process's resident memory off the limit; with 4 GiB these small runs get one pass (the same
# recorded plan) however much the test process holds
STATS_KW = {"memory_limit": 4 << 30}
ABLATE_KW = {
    "layers_per_part": 1,  # one part per upstream layer: several parts
    "measures": ["jaccard", "pearson"],
    "bins": 2,
    "per_bin": 3,
    "windows_per_pair": 2,
    "batch_rows": 8,
    "hidden_windows": 8,
    "hidden_windows_per_feature": 1,
}
#: The only content of manifest.json / stats_summary.json that may differ between an
#: interrupted-then-resumed run and an uninterrupted one, so those files are compared without
#: it: wall-clock times, and stats' batch size, which the memory plan derives from the
#: process's resident memory at start (a property of the process, like its timings).
TIMING_KEYS = {"started", "seconds", "timings", "tokens_per_second", "batch_bytes", "seal"}
"""Keys whose values are timings (the manifest's seal digests them too)."""
TIMED_JSON = {"manifest.json", "stats_summary.json"}


# ---- helpers -------------------------------------------------------------------------------------------
def _untimed(obj):
    if isinstance(obj, dict):
        if "checksums" in obj:  # a timed file's checksum changes with its timings
            obj = {**obj, "checksums": {f: d for f, d in obj["checksums"].items() if f not in TIMED_JSON}}
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def snapshot(run_dir: Path) -> dict[str, object]:
    """Every file (bytes; timed JSON without its timings) and folder of a run, by relative path."""
    out: dict[str, object] = {}
    for p in sorted(run_dir.rglob("*")):
        rel = str(p.relative_to(run_dir))
        if p.is_dir():
            out[rel] = "<dir>"
        elif p.name in TIMED_JSON:
            out[rel] = _untimed(json.loads(p.read_bytes()))
        else:
            out[rel] = p.read_bytes()
    return out


def assert_same_run(got: Path, want: Path) -> None:
    a, b = snapshot(got), snapshot(want)
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"files differ from the uninterrupted run: {differ}"


def temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if ".tmp-" in p.name]


def renames(fn, run_dir: Path) -> list[str]:
    """Run fn() in this process; return, in order, the run files it renamed into place."""
    real, names = os.replace, []

    def spy(src, dst, *a, **kw):
        if Path(dst).resolve().is_relative_to(run_dir.resolve()):
            names.append(str(Path(dst).resolve().relative_to(run_dir.resolve())))
        return real(src, dst, *a, **kw)

    os.replace = spy
    try:
        fn()
    finally:
        os.replace = real
    return names


def point(names: list[str], which: str, last: bool = False) -> int:
    """1-based index of the first (or last) rename of `which` (a name, or a folder prefix)."""
    hits = [i + 1 for i, n in enumerate(names) if n == which or n.startswith(which + "/")]
    assert hits, f"{which} is never written: {names}"
    return hits[-1] if last else hits[0]


def start(stage: str, run_dir: Path, kwargs: dict, mode: str, k: int, **extra) -> subprocess.Popen:
    """The stage in its own process (for the lock tests: "pause" mode talks over stdin/stdout)."""
    spec = {"stage": stage, "run": str(run_dir), "kwargs": kwargs, "mode": mode, "k": k, **extra}
    return subprocess.Popen(
        [sys.executable, str(KILLPOINT), json.dumps(spec)],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class ForkServer:
    """killpoint.py --serve: the stages imported once, one forked child per kill (a fresh process each)."""

    def __init__(self) -> None:
        # started now, awaited at the first run: its imports overlap with building the fixtures
        self.proc = subprocess.Popen(
            [sys.executable, str(KILLPOINT), "--serve"],
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = False

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the killpoint server did not answer in time"
        return self.proc.stdout.readline().strip()

    def run(self, spec: dict) -> dict:
        if not self.ready:
            assert self._line(300) == "ready"
            self.ready = True
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line(300))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    s = ForkServer()
    yield s
    s.close()


def kill_at(server: ForkServer, stage: str, run_dir: Path, kwargs: dict, mode: str, k: int, **extra) -> None:
    log = run_dir.parent / "stage.log"
    got = server.run(
        {"stage": stage, "run": str(run_dir), "kwargs": kwargs, "mode": mode, "k": k, "log": str(log), **extra}
    )
    assert got["signal"] == signal.SIGKILL, f"the stage was not killed at write {k} ({got}):\n{log.read_text()[-3000:]}"


def assert_killed_state(run_dir: Path, stage: str, mode: str) -> None:
    """After a kill: the stage is not recorded complete, and every file under a final name is whole."""
    assert RunDir(run_dir).stage_status(stage) != "complete"
    if mode == "during":
        assert temporaries(run_dir), "a kill in the middle of a write leaves its temporary"
    for p in run_dir.rglob("*"):
        if not p.is_file() or ".tmp-" in p.name:
            continue
        if p.suffix == ".parquet":
            pq.read_table(p)  # a half-written Parquet file has no footer and raises
        elif p.suffix == ".json":
            json.loads(p.read_bytes())
        elif p.suffix == ".html":
            assert p.read_bytes().rstrip().endswith(b"</html>")


def copy_run(src: Path, parent: Path) -> Path:
    """Copy to parent/run: every copy has the same name, which the HTML titles show."""
    return Path(shutil.copytree(src, parent / "run"))


def kill_and_resume(
    server: ForkServer,
    base: Path,
    ref: Path,
    tmp_path: Path,
    stage: str,
    kwargs: dict,
    mode: str,
    k: int,
    resume,
    **extra,
) -> None:
    run = copy_run(base, tmp_path)
    kill_at(server, stage, run, kwargs, mode, k, **extra)
    assert_killed_state(run, stage, mode)
    resume(run)
    assert RunDir(run).is_complete(stage)
    assert not temporaries(run), "the rerun removes what the killed process left"
    assert_same_run(run, ref)


# ---- fixtures: a planted run (stats, analyze) and a collected run with a model (ablate) ------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """{"collected": run after collect, "stats": reference stats, "analyzed": reference analyze} + renames."""
    root = tmp_path_factory.mktemp("crash")
    run, _ = build_planted_run(root / "collected" / "run", noise=0.0, seed=0)
    stats_ref = copy_run(run.path, root / "stats")
    stats_names = renames(lambda: run_stats(stats_ref, StatsConfig(**STATS_KW), progress=False), stats_ref)
    analyzed = copy_run(stats_ref, root / "analyzed")
    analyze_names = renames(lambda: run_analyze(analyzed, progress=False), analyzed)
    return {
        "collected": run.path,
        "stats": stats_ref,
        "analyzed": analyzed,
        "stats_names": stats_names,
        "analyze_names": analyze_names,
    }


@pytest.fixture(scope="module")
def modelled(tmp_path_factory):
    """A run collected from a tiny Llama with random SAEs, through analyze, and its uninterrupted ablate."""
    root = tmp_path_factory.mktemp("crash_model")
    model = tiny_llama(root / "model", n_layers=3, d=32)
    saes = write_saes(root / "saes", 32, [0, 1, 2], d_sae=48)
    cfg = CollectConfig(
        model=str(model),
        saes=str(saes),
        corpus=str(write_corpus(root / "c.txt", n_docs=8)),
        window=16,
        max_tokens=16 * 16,
        batch_windows=4,
        shard_windows=8,
        examples_k=3,
    )
    base = run_collect(root / "base" / "run", cfg).run.path
    run_stats(base, StatsConfig(**STATS_KW), progress=False)
    run_analyze(base, progress=False)
    ref = copy_run(base, root / "ablated")
    names = renames(lambda: run_ablate(ref, AblateConfig(**ABLATE_KW), progress=False), ref)
    return {"base": base, "ref": ref, "names": names, "cfg": cfg, "model": load_run_model(base)}


# ---- 1. SIGKILL, then rerun ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode,which,last",
    [
        ("after", contract.ABLATE_PARTS, False),  # one block of upstream layers saved: the rerun resumes from it
        ("during", "ablations.html", False),  # middle, half written
        ("after", "error_projection.parquet", False),  # last output in place, 'complete' not yet recorded
    ],
)
def test_ablate_killed_then_rerun_equals_uninterrupted(server, modelled, tmp_path, monkeypatch, mode, which, last):
    names = modelled["names"]
    assert sum(n.startswith(contract.ABLATE_PARTS + "/") for n in names) >= 2, names
    k = point(names, which, last)
    kill_and_resume(
        server,
        modelled["base"],
        modelled["ref"],
        tmp_path,
        "ablate",
        ABLATE_KW,
        mode,
        k,
        lambda run: run_ablate(run, AblateConfig(**ABLATE_KW), progress=False, model=modelled["model"]),
    )


@pytest.mark.parametrize(
    "mode,which,last",
    [
        ("during", "edges.parquet", False),  # first output, half written
        ("after", "feature_links.parquet", False),  # two outputs in place, summary missing
        ("during", "stats_summary.json", False),  # last output
        ("during", "manifest.json", True),  # every output in place, 'complete' half written
    ],
)
def test_stats_killed_then_rerun_equals_uninterrupted(server, planted, tmp_path, mode, which, last):
    k = point(planted["stats_names"], which, last)
    kill_and_resume(
        server,
        planted["collected"],
        planted["stats"],
        tmp_path,
        "stats",
        STATS_KW,
        mode,
        k,
        lambda run: run_stats(run, StatsConfig(**STATS_KW), progress=False),
    )


@pytest.mark.parametrize(
    "mode,which,last",
    [
        ("during", "lifecycle.parquet", False),  # first output
        ("after", "communities.parquet", False),  # middle
        ("after", "feature_analysis.parquet", False),  # last output in place, 'complete' not yet recorded
        ("during", "manifest.json", True),  # every output in place, 'complete' half written
    ],
)
def test_analyze_killed_then_rerun_equals_uninterrupted(server, planted, tmp_path, mode, which, last):
    k = point(planted["analyze_names"], which, last)
    kill_and_resume(
        server,
        planted["stats"],
        planted["analyzed"],
        tmp_path,
        "analyze",
        {},
        mode,
        k,
        lambda run: run_analyze(run, progress=False),
    )


# ---- 2. a full disk ----------------------------------------------------------------------------------------
class FullDisk:
    """Stands in for `os` inside saelineage.run, whose atomic writer every run file goes through:
    writing a file whose temporary matches `pattern` puts half its bytes on disk, then fails with
    ENOSPC, as write(2) does when the disk fills up mid-file."""

    def __init__(self, pattern: str) -> None:
        self.pattern, self.names, self.started = re.compile(pattern), {}, set()

    def __getattr__(self, name):
        return getattr(os, name)

    def open(self, path, flags, mode=0o777):
        fd = os.open(path, flags, mode)
        self.names[fd] = Path(path).name
        return fd

    def write(self, fd, data):
        name = self.names.get(fd, "")
        if not self.pattern.match(name):
            return os.write(fd, data)
        if name in self.started:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.started.add(name)
        return os.write(fd, bytes(data[: len(data) // 2]))


def _flat(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines anywhere


@pytest.fixture(scope="module")
def collected(modelled, tmp_path_factory):
    """An uninterrupted collect of 4 shards (the reference for the disk-full tests)."""
    cfg = CollectConfig(**{**modelled["cfg"].__dict__, "shard_windows": 4})
    return cfg, run_collect(tmp_path_factory.mktemp("collected") / "run", cfg).run.path


def test_collect_disk_full_keeps_complete_shards_and_resumes(collected, tmp_path, monkeypatch):
    cfg, ref = collected
    run = tmp_path / "run"
    monkeypatch.setattr("saelineage.run.os", FullDisk(r"\.shard-0000[2-9]\.safetensors\.tmp-"))
    with pytest.raises(SaelineageError) as err:
        run_collect(run, cfg)
    e = err.value
    assert "disk is full" in e.problem and str(run / "activations" / "shard-00002.safetensors") in e.problem
    assert "free there now" in e.problem and "free space" in e.fix and f"`saelineage collect {run} --model" in e.fix
    assert "resumes" in e.fix
    shards = sorted(p.name for p in (run / "activations").iterdir())
    assert shards == ["shard-00000.safetensors", "shard-00001.safetensors"]  # complete ones kept, nothing half
    for name in shards:
        assert (run / "activations" / name).read_bytes() == (ref / "activations" / name).read_bytes()
    assert not temporaries(run) and not (run / "features.parquet").exists()
    assert RunDir(run).stage_status("collect") == "running"
    monkeypatch.undo()
    run_collect(run, cfg)
    assert_same_run(run, ref)


@pytest.mark.parametrize("where", ["edges", "feature_links"])
def test_stats_disk_full_is_one_clear_cli_error_then_resumes(planted, tmp_path, monkeypatch, capsys, where):
    import saelineage.stats.outputs as outputs
    from saelineage.cli import main

    run = copy_run(planted["collected"], tmp_path)
    if where == "edges":  # Arrow's own writer: its OSError carries errno 28 and no file name

        def full(*a, **kw):
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

        monkeypatch.setattr(outputs.pq.ParquetWriter, "write_table", full)
    else:
        monkeypatch.setattr("saelineage.run.os", FullDisk(r"\.feature_links\.parquet\.tmp-"))
    monkeypatch.setattr(sys, "argv", ["saelineage", "stats", str(run), "--memory-limit", "4G"])
    with pytest.raises(SystemExit) as ex:
        main()
    assert ex.value.code == 2
    out = capsys.readouterr()
    text = _flat(out.err + out.out)
    assert "Traceback" not in text and text.count("error:") == 1
    assert _flat(f"error: the disk is full: writing {run / f'{where}.parquet'} failed") in text
    # the resuming command repeats the options this run's stats was started with
    again = hints.stats_command(run)
    assert again.endswith("--memory-limit 4294967296")
    assert _flat("fix: free space on that disk") in text and _flat(f"`{again}`") in text
    assert RunDir(run).stage_status("stats") == "running"
    assert not temporaries(run) and not (run / f"{where}.parquet").exists()
    monkeypatch.undo()
    run_stats(run, StatsConfig(**STATS_KW), progress=False)
    assert_same_run(run, planted["stats"])


def _pages(n: int) -> int:
    return -(-n // 4096) * 4096


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None,
    reason="a real full disk needs a small tmpfs: root and mount(8)",
)
def test_collect_cli_on_a_really_full_disk(server, collected, tmp_path):
    cfg, ref = collected
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        shards = sorted((ref / "activations").glob("shard-*"))
        # room for what collect writes before the shards, two shards and half of the third;
        # a ballast file takes the rest of the tmpfs
        room = (
            _pages((ref / "vocab.json").stat().st_size)
            + 3 * _pages((ref / "manifest.json").stat().st_size)
            + sum(_pages(p.stat().st_size) for p in shards[:2])
            + _pages(shards[2].stat().st_size) // 2
        )
        st = os.statvfs(disk)
        with open(disk / "ballast", "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, st.f_bavail * st.f_frsize - room)
        run = disk / "run"
        argv = [
            "collect",
            str(run),
            "--model",
            cfg.model,
            "--saes",
            cfg.saes,
            "--corpus",
            cfg.corpus,
            "--window",
            str(cfg.window),
            "--max-tokens",
            str(cfg.max_tokens),
            "--batch-windows",
            str(cfg.batch_windows),
            "--shard-windows",
            str(cfg.shard_windows),
            "--examples",
            str(cfg.examples_k),
        ]
        log = tmp_path / "cli.log"
        got = server.run({"stage": "cli", "run": str(run), "argv": argv, "log": str(log)})
        out = log.read_text()
        assert got["code"] == 2, out[-3000:]
        assert "Traceback" not in out and _flat("error: the disk is full: writing") in _flat(out)
        assert _flat(f"`saelineage collect {run} --model {cfg.model}") in _flat(out)  # the command, to copy
        kept = sorted(p.name for p in (run / "activations").iterdir())
        assert 0 < len(kept) < len(shards) and not temporaries(run)
        for name in kept:  # complete shards only, identical to the uninterrupted run's
            assert (run / "activations" / name).read_bytes() == (ref / "activations" / name).read_bytes()
        (disk / "ballast").unlink()  # "free space on that disk", then the same command again
        run_collect(run, cfg)
        assert_same_run(run, ref)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ---- 3. two processes on one run -------------------------------------------------------------------------
def _paused(proc: subprocess.Popen) -> None:
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    assert ready and proc.stdout.readline().strip() == "paused", proc.stderr.read() if proc.poll() is not None else ""


def test_second_writer_is_refused_while_a_stage_writes(planted, tmp_path, monkeypatch, capsys):
    from saelineage.cli import main
    from saelineage.web.labels import import_labels

    run = copy_run(planted["collected"], tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("layer,feature,explanation\n0,1,cats\n")
    # a real `stats` in another process, stopped with edges.parquet written and feature_links half way
    proc = start("stats", run, STATS_KW, "pause", point(planted["stats_names"], "feature_links.parquet"))
    try:
        _paused(proc)
        before = snapshot(run)
        for second in (
            lambda: run_stats(run, StatsConfig(**STATS_KW), progress=False),
            lambda: run_analyze(run, progress=False),
            lambda: import_labels(run, labels),
            lambda: run_collect(run, CollectConfig()),
        ):
            with pytest.raises(SaelineageError) as err:
                second()
            assert (
                f"`saelineage stats` (pid {proc.pid} on" in err.value.problem
                and "is writing to it" in err.value.problem
            )
            assert "wait for that process to finish" in err.value.fix and f"kill {proc.pid}" in err.value.fix
            assert "killed stage releases the lock" in err.value.fix
        monkeypatch.setattr(sys, "argv", ["saelineage", "analyze", str(run)])
        with pytest.raises(SystemExit) as ex:
            main()
        assert ex.value.code == 2
        err_text = capsys.readouterr().err
        assert "Traceback" not in err_text and _flat(f"pid {proc.pid}") in _flat(err_text)
        # readers need no lock, and the refused writers changed nothing, not even the temporary
        # the paused writer is filling
        assert RunDir(run).stage_status("stats") == "running" and pq.read_table(run / "edges.parquet").num_rows
        assert snapshot(run) == before and temporaries(run)
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "done" in out, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_same_run(run, planted["stats"])  # the first writer finished with intact outputs


def test_lock_of_a_killed_stage_does_not_block_the_next_run(planted, tmp_path):
    run = copy_run(planted["collected"], tmp_path)
    proc = start("stats", run, STATS_KW, "pause", point(planted["stats_names"], "edges.parquet"))
    try:
        _paused(proc)
        holder = json.loads((run / LOCK).read_text())
        assert holder["pid"] == proc.pid and holder["stage"] == "stats"
    finally:
        proc.kill()
        proc.wait()
    run_stats(run, StatsConfig(**STATS_KW), progress=False)  # the dead holder's lock is gone with it
    assert (run / LOCK).read_bytes() == b""  # released: no stale pid for the next reader
    assert not temporaries(run)
    assert_same_run(run, planted["stats"])
    # one process may nest stages (a stage calling another) without locking itself out
    r = RunDir(run)
    with r.writing("stats"), r.writing("analyze"):
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
