"""The run directory: manifest, stage status, file locations and write access (docs/design.md §3).

Every stage reads what earlier stages wrote through this module, so paths and the
manifest layout live in one place. Stages that write take `RunDir.writing` (or the
`writes_run` decorator): one writer per run directory at a time, stale temporaries of a
killed writer removed, and a full disk reported as one clear error.

Every stage starts the same way (`settle`): its outputs complete with the same identity (the
config fields that decide its results, `identity`) are skipped, another identity is refused
unless forced, and interrupted work resumes; every stage returns a `StageResult`.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from saelineage.contract import ABLATE_PARTS, ACTIVATIONS, LOCK, MANIFEST, SCHEMA_VERSION, WRITER, Manifest
from saelineage.errors import SaelineageError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against a second writer
    fcntl = None  # type: ignore[assignment]

#: Folders (relative to the run) where writers put ``.NAME.tmp-PID`` temporaries.
TEMP_DIRS = (".", ACTIVATIONS, ABLATE_PARTS)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_REWRITING: ContextVar[str | None] = ContextVar("rewriting", default=None)
"""The stage this call runs with --force, if any: it rewrites its own manifest entry (collect:
the whole run), so a hand edit there does not stop the command that repairs it."""


def _refused_edits(edits: list[str]) -> list[str]:
    """The edited manifest parts the current call may not read past (see `_REWRITING`)."""
    stage = _REWRITING.get()
    if stage == "collect":
        return []
    return [e for e in edits if e != f"stages.{stage}"]


F = TypeVar("F", bound=Callable[..., Any])


def temp_name(path: Path) -> Path:
    """The temporary a writer of `path` fills before renaming it into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old or the new file, never half.

    A failed write (full disk, Ctrl-C) removes its temporary and names `path` in the error.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            view = memoryview(data).cast("B")
            while view:  # os.write may write less than asked (signals, >2 GiB)
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # ENOSPC from write(2) names no file
        raise
    if path.name != MANIFEST:
        _note_written(path, data)


def _note_written(path: Path, data: bytes) -> None:
    """Remember the digest of what was just written, for the stage that records it at its end;
    a file a complete stage recorded, written again outside that stage (a repair through this
    writer), gets its record updated, so the record always describes the project's own writes."""
    from saelineage import checksum

    checksum.remember(path, data)
    known = checksum.expected(path)
    if known is None:
        return
    stage, old = known
    new = checksum.written_digest(path)
    if new != old:
        run = RunDir(checksum.run_root(path))
        manifest = run.load()
        manifest.stages[stage].setdefault(checksum.CHECKSUMS, {})[checksum.relative(path)] = new
        run.save(manifest)


def read_verified(path: Path) -> bytes:
    """The bytes of run file `path`, read once and checked against the checksum its stage recorded
    (a file without a record, as in runs written before checksums, is returned unverified). A
    recorded file that is gone is one clear error (`present`)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        present(path)  # raises the one clear error for a file its stage recorded
        raise
    check(path, data)
    return data


def present(path: Path) -> bool:
    """Whether run file `path` exists; a file whose stage recorded it (so the run's results depend
    on it) and that is gone raises the one error naming it and the command that writes it again,
    where a reader would otherwise go on without it."""
    if Path(path).is_file():
        return True
    from saelineage import checksum

    known = checksum.expected(path)
    if known is not None:
        from saelineage import hints

        raise hints.missing_file(path, known[0])
    return False


def check(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Raise the one SaelineageError naming `path` and the command that writes it again when
    `data` (the file's bytes, as read) differs from what its stage recorded."""
    from saelineage import checksum

    edits = _refused_edits(checksum.manifest_edits(path))
    if edits:
        from saelineage import hints

        raise hints.edited_manifest(checksum.run_root(path), edits)
    known = checksum.expected(path)
    if known is None:
        return
    stage, want = known
    got = checksum.digest(data)
    if got != want:
        from saelineage import hints

        raise hints.corrupt_file(path, stage, f"checksum {got}, recorded {want}")


def parquet_file(path: Path) -> Any:
    """A run's Parquet file as a pyarrow ParquetFile over its bytes, read once and verified against
    the recorded checksum (pages against their CRCs as they are read): its schema and any columns
    come from the same checked bytes."""
    import pyarrow.parquet as pq

    return _parse_parquet(path, lambda buf: pq.ParquetFile(buf, page_checksum_verification=True))


def read_parquet(path: Path, **kwargs: Any) -> Any:
    """A run's Parquet file as a pyarrow Table (`kwargs`: pq.read_table's columns, filters, ...),
    its bytes verified against the recorded checksum and its pages against their CRCs."""
    import pyarrow.parquet as pq

    return _parse_parquet(path, lambda buf: pq.read_table(buf, page_checksum_verification=True, **kwargs))


def _parse_parquet(path: Path, parse: Callable[[Any], Any]) -> Any:
    """`parse` of the verified bytes of `path` (a pyarrow BufferReader); a file that cannot be
    parsed is one clear error."""
    import pyarrow as pa

    data = read_verified(path)
    try:
        return parse(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> SaelineageError:
    """The error for a run file that passed its checksum (or has none) but cannot be parsed."""
    from saelineage import hints

    name = Path(path).name
    return hints.corrupt_file(path, WRITER.get(name, "its stage"), f"unreadable: {str(exc)[:80]}")


def write_json(path: Path, obj: Any, *, indent: int | None = 2, allow_nan: bool = True) -> None:
    """Write `obj` as JSON atomically (values JSON cannot hold, such as paths, as strings)."""
    atomic_write_bytes(path, json.dumps(obj, indent=indent, default=str, allow_nan=allow_nan).encode())


def write_parquet(path: Path, table: Any) -> None:
    """Write a pyarrow Table as zstd Parquet atomically; the same table always gives the same bytes."""
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    # page CRCs: a reader without the manifest's record (a copied file) still detects damage
    pq.write_table(table, buf, compression="zstd", write_page_checksum=True)
    atomic_write_bytes(path, buf.getvalue())


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def resume_command(run: RunDir, stage: str) -> str:
    """The command that resumes `stage` of `run`, as exact as the manifest allows (saelineage.hints)."""
    from saelineage import hints

    cmd = (
        hints.collect_command(run.path)
        if stage == "collect"
        else hints.stats_command(run.path)
        if stage == "stats"
        else None
    )
    return f"`{cmd}`" if cmd else f"`{hints.stage_command(run.path, stage)}` with the same options"


def disk_full_error(exc: OSError, run: RunDir, again: str) -> SaelineageError:
    """The one message for ENOSPC / EDQUOT while writing into `run` (`again`: the command that resumes)."""
    where = Path(exc.filename) if exc.filename else run.path
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{_size(shutil.disk_usage(probe).free)} free there now"
    except OSError:
        free = "free space unknown"
    what = "the disk quota is exceeded" if exc.errno == errno.EDQUOT else "the disk is full"
    return SaelineageError(
        f"{what}: writing {where} failed ({free}).",
        f"free space on that disk (or raise the quota), then run the same command again ({again}): "
        "it resumes and keeps everything already complete.",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: dict[Path, list] = {}
"""Run locks this process holds: resolved run path -> [lock fd, depth] (a stage may call another)."""


def _holder(fd: int) -> dict[str, Any]:
    """What the lock's holder recorded; it writes right after taking the lock, so retry briefly."""
    for _ in range(20):
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"null")
            if isinstance(info, dict):
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.025)
    return {}


@contextmanager
def _lock(run: RunDir, stage: str) -> Iterator[bool]:
    """Hold RUN/.lock (flock, non-blocking); yields True when this call took it (not re-entered).

    flock belongs to the open file, so the kernel releases it when the process dies, even by
    SIGKILL: a killed stage never leaves a lock that blocks the next run.
    """
    key = run.path.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield False
        finally:
            _HELD[key][1] -= 1
        return
    if fcntl is None:
        yield True
        return
    try:
        fd = os.open(run.path / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except PermissionError as exc:
        raise SaelineageError(
            f"cannot open the run's lock file {run.path / LOCK} ({exc.strerror}).",
            "run as a user who may write to the run directory, or fix its permissions.",
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        h = _holder(fd)
        os.close(fd)
        pid = h.get("pid", "?")
        raise SaelineageError(
            f"run {run.path} is in use: `saelineage {h.get('stage', '?')}` (pid {pid} on {h.get('host', '?')}, "
            f"started {h.get('started', '?')}) is writing to it, so `saelineage {stage}` may not.",
            f"wait for that process to finish, or stop it (kill {pid}); a stopped or killed stage releases the "
            "lock, and running its command again resumes it.",
        ) from None
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = [fd, 1]
    try:
        info = {
            "pid": os.getpid(),
            "stage": stage,
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield True
    finally:
        del _HELD[key]
        try:
            os.ftruncate(fd, 0)  # no stale pid for the next reader; a killed holder's is overwritten
        except OSError:
            pass
        os.close(fd)  # releases the flock


def writes_run(stage: str, create: bool = False, again: str | None = None) -> Callable[[F], F]:
    """Decorator for a stage function whose first argument is the run directory: runs it under
    `RunDir.writing(stage, create, again)`."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(run_dir, *args, **kwargs):
            run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
            token = _REWRITING.set(stage if kwargs.get("force") else None)
            try:
                with run.writing(stage, create=create, again=again):
                    return fn(run_dir, *args, **kwargs)
            finally:
                _REWRITING.reset(token)

        return wrapper  # type: ignore[return-value]

    return deco


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable configuration."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class RunDir:
    """A run directory and its manifest.

    The manifest is re-read on every access that matters (`load`) and written atomically
    (`save`), so a crashed stage never leaves a manifest that claims more than is on disk.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---- locations -------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def activations(self) -> Path:
        return self.path / ACTIVATIONS

    def file(self, name: str) -> Path:
        """Path of a top-level run file such as ``"edges.parquet"``."""
        return self.path / name

    # ---- manifest --------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def load(self, *, edited: bool = False) -> Manifest:
        """The run's manifest, read now (a stage may have written it since the last call).

        A manifest changed since saelineage wrote it (its seal, `checksum.edited_parts`) is refused,
        naming the parts, unless `edited` (verify, which reports them itself) or the call is the
        --force run of the stage whose entry was edited (`_REWRITING`)."""
        return self._load(edited)[0]

    def _load(self, edited: bool = False) -> tuple[Manifest, list[str]]:
        """The manifest and the parts edited since it was written (the tolerated ones)."""
        if not self.manifest_path.is_file():
            raise SaelineageError(
                f"{self.path} is not a saelineage run directory (no {MANIFEST}).",
                f"run `saelineage collect {self.path}` first (with --model/--saes/--corpus as needed), or point "
                "to the folder that holds manifest.json.",
            )
        again = (
            f"run the `saelineage collect {self.path} ...` command that made this run again, with its "
            "options and --force (the manifest records them, but cannot be read)."
        )
        try:
            data = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise SaelineageError(f"{self.manifest_path} is not valid JSON ({exc}).", again) from exc
        # the schema first: a newer writer's manifest may lack or reshape fields this version needs
        schema = data.get("schema_version", 0) if isinstance(data, dict) else 0
        if isinstance(schema, int) and schema > SCHEMA_VERSION:
            raise SaelineageError(
                f"{self.path} was written by a newer saelineage (schema {schema}).", "upgrade saelineage."
            )
        from saelineage import checksum

        edits = checksum.edited_parts(data)
        if edits and not edited and _refused_edits(edits):
            from saelineage import hints

            raise hints.edited_manifest(self.path, _refused_edits(edits))
        if isinstance(data, dict):
            data.pop(checksum.SEAL, None)
        try:
            return Manifest.from_json(data), edits
        except ValueError as exc:
            raise SaelineageError(f"{self.manifest_path} is not a saelineage manifest: {exc}.", again) from exc

    def save(self, manifest: Manifest) -> None:
        """Write the manifest atomically, sealed: a digest of each part (`checksum.seal_of`) of the
        object as it will read back, so a later edit is named part by part."""
        from saelineage import checksum

        self.path.mkdir(parents=True, exist_ok=True)
        data = json.loads(json.dumps(manifest.to_json(), default=str))  # as a reader will parse it
        data[checksum.SEAL] = checksum.seal_of(data)
        write_json(self.manifest_path, data)

    # ---- stages ----------------------------------------------------------------------
    def stage_status(self, stage: str) -> str | None:
        if not self.exists():
            return None
        return self.load().status(stage)

    def is_complete(self, stage: str) -> bool:
        return self.stage_status(stage) == "complete"

    def require(self, stage: str) -> Manifest:
        """Return the manifest, or raise a clear error when `stage` has not completed."""
        manifest = self.load()
        status = manifest.status(stage)
        if status != "complete":
            from saelineage import hints

            fix = (
                hints.recollect(self.path, manifest=manifest)
                if stage == "collect"
                else f"run `{hints.stage_command(self.path, stage)}` (it resumes where it stopped)."
            )
            raise SaelineageError(f"stage '{stage}' of run {self.path} is {status or 'missing'}, not complete.", fix)
        return manifest

    def set_stage(self, stage: str, status: str, **info: Any) -> None:
        manifest, edits = self._load()
        if f"stages.{stage}" in edits:  # hand-edited, and this --force run rewrites it: start it afresh
            manifest.stages.pop(stage, None)
        entry = manifest.stages.setdefault(stage, {})
        if status != "complete":
            # the files are about to change: their old record would refuse the new ones
            entry.pop("checksums", None)
        entry["status"] = status
        entry.update(info)
        self.save(manifest)

    @contextmanager
    def stage(self, stage: str, **info: Any) -> Iterator[dict[str, Any]]:
        """Mark `stage` running, then complete with its wall time; leaves it 'running' on error."""
        carried = self.load().stage(stage).get("checksums") or {}  # "running" drops it: keep it here
        self.set_stage(stage, "running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), **info)
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        yield extra
        extra["checksums"] = self.written_checksums(stage, carried)
        self.set_stage(stage, "complete", seconds=round(time.perf_counter() - t0, 3), **extra)

    def written_checksums(self, stage: str, carried: Mapping[str, str] | None = None) -> dict[str, str]:
        """Digest of every file `stage` wrote into the run (contract.WRITER; collect: the shards
        too), by relative path: what the stage's manifest entry records when it completes.

        carried: the record of the stage's last completion. A file this attempt did not write (a
        resumed collect keeps the shards it finds) must still match it: a damaged one raises
        instead of being recorded as if the stage had written it."""
        from saelineage import checksum

        paths = [self.file(n) for n, w in WRITER.items() if w == stage]
        if stage == "collect" and self.activations.is_dir():
            paths += sorted(self.activations.glob("shard-[0-9][0-9][0-9][0-9][0-9].safetensors"))
        out = {}
        for p in paths:
            if not p.is_file():
                continue
            rel, st, noted = checksum.relative(p), os.stat(p), checksum.written(p)
            out[rel] = got = checksum.written_digest(p)
            kept = noted is None or noted[1:] != (st.st_mtime_ns, st.st_size)
            if kept and carried and rel in carried and carried[rel] != got:
                from saelineage import hints

                raise hints.corrupt_file(p, stage, f"checksum {got}, recorded {carried[rel]}")
        return out

    # ---- write access ----------------------------------------------------------------
    @contextmanager
    def writing(self, stage: str, create: bool = False, again: str | None = None) -> Iterator[RunDir]:
        """Exclusive write access for `stage`; every stage that writes into the run takes it.

        Refuses (SaelineageError naming the other process) while another process writes; then
        removes temporaries that killed writers left; turns a full disk (ENOSPC/EDQUOT) into one
        error that says which file, how much is free and that the same command resumes (`again`,
        "{run}" standing for the run's path; default: `resume_command`). create: the run may not
        exist yet (collect). Readers (serve, export) do not take it: atomic writes keep them
        consistent.
        """
        try:
            if create:
                self.check_writable()
            elif not self.exists():
                self.load()  # raises: not a run directory
            with _lock(self, stage) as first:
                if first:
                    self.remove_stale_temporaries()
                yield self
        except OSError as exc:
            if exc.errno in DISK_FULL:
                cmd = again.format(run=self.path) if again else resume_command(self, stage)
                raise disk_full_error(exc, self, cmd) from exc
            raise

    def writer(self) -> dict[str, Any] | None:
        """Who is writing into the run now ({pid, stage, host, started}), or None.

        Reads what the lock holder recorded rather than probing the flock itself, so a reader
        (the browser) can never make a writer's non-blocking lock attempt fail. A holder that
        died by SIGKILL leaves its record behind; its pid is gone, so it does not count."""
        try:
            info = json.loads((self.path / LOCK).read_bytes() or b"null")
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
            return None
        if info.get("host") not in (None, socket.gethostname()):
            return info  # another machine's process: its pid cannot be checked from here
        return info if _alive(info["pid"]) else None

    def remove_stale_temporaries(self) -> None:
        """Drop the temporaries of writers that died (their pid is gone) or of this process."""
        for sub in TEMP_DIRS:
            folder = self.path / sub
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                name, _, pid = p.name.rpartition(".tmp-")
                if not (p.name.startswith(".") and name):
                    continue
                try:
                    owner = int(pid.split(".")[0])
                except ValueError:
                    continue
                if owner == os.getpid() or not _alive(owner):
                    try:
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                    except OSError:
                        pass

    def clear(self) -> None:
        """Delete everything in the run (for --force) except the lock its writer holds."""
        if not self.path.is_dir():
            return
        for p in self.path.iterdir():
            if p.name == LOCK:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise SaelineageError(
                f"cannot write to the output directory {self.path} ({exc.strerror}).",
                "choose a folder you can write to (--out/RUN argument) or fix its permissions.",
            ) from exc


# ---- one stage lifecycle ---------------------------------------------------------------------


def identity_of(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The identity part of the config values `values` of config class `cls` (a config, or one the
    manifest recorded): every field but those `cls.NOT_IDENTITY` declares (where or how the stage
    runs), the cluster options, and `cls.LATE_FIELDS` while unset. Field order is kept: the
    manifest records these dicts as they are."""
    from saelineage.config import CLUSTER_FIELDS  # config imports typer: only when a stage starts

    skip = {*CLUSTER_FIELDS, *getattr(cls, "NOT_IDENTITY", ())}
    late = getattr(cls, "LATE_FIELDS", ())
    return {k: v for k, v in values.items() if k not in skip and not (k in late and v is None)}


def identity(cfg: Any) -> dict[str, Any]:
    """What stage config `cfg` computes (`identity_of` its fields), in the config's one spelling
    when it defines `canonical` (two spellings of the same results must not count as two)."""
    ident = identity_of(type(cfg), dataclasses.asdict(cfg))
    canonical = getattr(cfg, "canonical", None)
    return canonical(ident) if canonical is not None else ident


def _plain(obj: Any) -> Any:
    """`obj` as JSON gives it back (tuples as lists, keys as strings), so that a live identity and
    one read from the manifest compare equal."""
    return json.loads(json.dumps(obj, default=str))


def same_identity(recorded: Mapping[str, Any] | str, ident: Mapping[str, Any]) -> bool:
    """Whether `recorded` (an identity, or only its `config_hash`) is `ident`."""
    if isinstance(recorded, str):
        return recorded == config_hash(ident)
    return _plain(recorded) == _plain(ident)


def identity_differences(recorded: Mapping[str, Any] | str, ident: Mapping[str, Any]) -> str:
    """The options that differ between `recorded` and `ident`, e.g. "top_k 16 → 3; span 1 → 2"."""
    if isinstance(recorded, str):
        return f"identity hash {recorded} vs {config_hash(ident)}"
    old, new = _plain(recorded), _plain(ident)

    def show(d: dict, k: str) -> str:
        return json.dumps(d[k]) if k in d else "unset"

    unset = object()  # a key only one side has differs, whatever its value
    keys = [k for k in (*old, *(k for k in new if k not in old)) if old.get(k, unset) != new.get(k, unset)]
    return "; ".join(f"{k} {show(old, k)} → {show(new, k)}" for k in keys) or "the same options in another form"


def settle(
    run: RunDir,
    stage: str,
    ident: Mapping[str, Any],
    recorded: Mapping[str, Any] | str | None,
    *,
    complete: bool,
    force: bool,
    progress: bool = True,
    discards: str = "its results",
    otherwise: str = "run it with the options it was made with",
) -> bool:
    """How every stage starts: True when it may skip its work, False when it runs (docs/design.md §1).

    recorded: the identity the run's earlier work on `stage` carries (only its hash where no more
    is known), or None when there is nothing to protect (never run, or a restart that starts from
    scratch anyway). complete: that work is complete and its outputs are on disk.

    The same identity skips when complete; another identity is refused (SaelineageError naming
    the options that differ, with `--force` as the fix) unless `force`. Everything else runs, and
    each stage resumes or restarts an interrupted attempt as it always has. `discards` and
    `otherwise` word the fix: what --force throws away, and the way that keeps it.
    """
    if force or recorded is None:
        return False
    if not same_identity(recorded, ident):
        state = "is complete" if complete else "holds work"
        raise SaelineageError(
            f"{stage} of {run.path} {state} with other options, so its results belong to a different "
            f"configuration: {identity_differences(recorded, ident)}.",
            f"pass --force (force=True) to discard {discards} and run {stage} with these options, or {otherwise}.",
        )
    if complete and progress:
        from saelineage.progress import console

        console.print(f"{stage}: {run.path} is complete with these options; skipping (use --force to redo).")
    return complete


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a stage's `run_*` function did; one shape for every stage."""

    stage: str
    run: RunDir
    skipped: bool
    """The outputs were complete with the same identity, so nothing was computed."""
    summary: dict[str, Any]
    """The stage's counts (collect: n_tokens, n_shards; stats: n_tokens, pairs, edges, passes, ...;
    analyze: lifecycle, gates, splits, ...; ablate: correlations; ceiling: rates by layer)."""
    seconds: float
    """Wall time of this call."""

    @classmethod
    def since(cls, t0: float, stage: str, run: RunDir, *, skipped: bool, summary: dict[str, Any]) -> StageResult:
        """The result of a call that started at `time.perf_counter()` value `t0`."""
        return cls(stage, run, skipped, summary, round(time.perf_counter() - t0, 3))

    @property
    def outputs(self) -> dict[str, Path]:
        """The stage's files now in the run (its files in `contract.WRITER`), by name."""
        paths = {name: self.run.file(name) for name, writer in WRITER.items() if writer == self.stage}
        return {name: p for name, p in paths.items() if p.is_file()}

    def read(self, name: str) -> Any:
        """One of the stage's Parquet outputs (e.g. "ablations.parquet") as a pyarrow Table."""
        return read_parquet(self.outputs[name])
