"""Checksums of run files: what a stage recorded for each file it wrote (docs/design.md §3).

A stage records, when it completes, one digest per file it wrote under `stages.STAGE.checksums`
in the manifest (`RunDir.stage`); every reader hashes the bytes it reads and compares them with
that record (`run.read_verified`), so a file changed on disk after its stage (a flipped bit, a
hand edit, a half-copied run) is refused instead of silently giving other results.

xxh3-128: ~30 GB/s on one core, so hashing what a reader reads anyway costs a few percent of the
reading stage; a cryptographic hash would cost more and guards against nothing we need here
(the threat is damage, not an adversary). Pure functions and a small cache; `run` does the I/O of
stages and the errors.

A file is hashed once per process: a reader that read a file whole and found it matching its
record notes so (`mark_verified`), and a later read of the same file, unchanged on disk and still
recorded with the same digest (`verified`), may read only the bytes it needs (stats reads a few
layers of every shard on each of its passes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from saelineage.contract import ACTIVATIONS, MANIFEST

ALGORITHM = "xxh3_128"
CHECKSUMS = "checksums"
"""The key of a manifest stage entry that maps relative paths to digests."""

_written: dict[str, tuple[str, int, int]] = {}
"""Digests of files this process wrote (path → digest, mtime_ns, size), so a completing stage
records what it wrote without reading it again."""
_manifests: dict[str, tuple[tuple[int, int, int], dict[str, tuple[str, str]], list[str]]] = {}
"""Parsed checksum records and edited parts by manifest path, keyed by the manifest's
(inode, mtime_ns, size)."""
_verified: dict[str, tuple[tuple[int, ...], str]] = {}
"""Files this process read whole and found matching their record: absolute path → (the file's
`identity` when it was read, the digest it matched). Any change to the file (a rewrite, an
edit in place, a touch) changes its identity; a new record changes the digest to compare."""


def digest(data: bytes | bytearray | memoryview) -> str:
    """The checksum of `data` as the manifest records it, e.g. "xxh3_128:9f…"."""
    import xxhash

    return f"{ALGORITHM}:{xxhash.xxh3_128_hexdigest(data)}"


def digest_file(path: Path, chunk: int = 1 << 24) -> str:
    """The checksum of the file at `path`, read in chunks (for files no reader parses)."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return f"{ALGORITHM}:{h.hexdigest()}"


def _key(path: Path) -> str:
    return str(Path(path).absolute())


def remember(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Note the digest of `data`, just written to `path` by this process."""
    st = os.stat(path)
    note(path, digest(data), st.st_mtime_ns, st.st_size)


def note(path: Path, digest: str, mtime_ns: int, size: int) -> None:
    """Note that `path`, as of (mtime_ns, size), holds bytes of `digest`: what its writer (this
    process, or a Ray worker that reported it, `written`) computed from the bytes it wrote."""
    _written[_key(path)] = (digest, mtime_ns, size)
    _verified.pop(_key(path), None)  # the file was just replaced: what was verified is gone


def written(path: Path) -> tuple[str, int, int] | None:
    """(digest, mtime_ns, size) noted for `path` when this process wrote it, or None."""
    return _written.get(_key(path))


def written_digest(path: Path) -> str:
    """The digest of `path`: the one noted when it was written (`note`; when the file is unchanged
    since), else read from disk (a file of an earlier, interrupted process, or one changed since)."""
    st = os.stat(path)
    known = _written.get(_key(path))
    if known is not None and known[1:] == (st.st_mtime_ns, st.st_size):
        return known[0]
    return digest_file(path)


def identity(st: os.stat_result) -> tuple[int, ...]:
    """What tells one state of a file from another: device, inode, size, modification and change
    times (a touch that restores the old mtime still moves the ctime)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def mark_verified(path: Path, st: os.stat_result, recorded: str) -> None:
    """Note that the bytes of `path`, read whole from a descriptor whose `os.fstat` (taken before
    reading) was `st`, matched the `recorded` digest."""
    _verified[_key(path)] = (identity(st), recorded)


def verified(path: Path, st: os.stat_result, recorded: str) -> bool:
    """Whether this process already found `path` matching `recorded` (the digest its record holds
    now), and the file is unchanged since (`st`: its stat now): then it need not be hashed again,
    and a reader may read only the parts it needs."""
    known = _verified.get(_key(path))
    return known is not None and known == (identity(st), recorded)


def run_root(path: Path) -> Path:
    """The run directory of a run file (a shard lives one level down, in activations/)."""
    path = Path(path)
    return path.parent.parent if path.parent.name == ACTIVATIONS else path.parent


def relative(path: Path) -> str:
    """`path` as the manifest's checksum records name it ("edges.parquet", "activations/…")."""
    path = Path(path)
    return f"{ACTIVATIONS}/{path.name}" if path.parent.name == ACTIVATIONS else path.name


def records(manifest: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Every recorded checksum of a manifest's JSON object: relative path → (stage, digest)."""
    out: dict[str, tuple[str, str]] = {}
    stages = manifest.get("stages") if isinstance(manifest, dict) else None
    for stage, entry in (stages or {}).items():
        if isinstance(entry, dict) and entry.get("status") == "complete":
            for rel, d in (entry.get(CHECKSUMS) or {}).items():
                out[rel] = (stage, d)
    return out


def _manifest_facts(root: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """(records, edited parts) of the manifest of the run at `root`, parsed once per version."""
    mpath = Path(root) / MANIFEST
    try:
        st = os.stat(mpath)
    except OSError:
        return {}, []
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _manifests.get(str(mpath))
    if cached is None or cached[0] != key:
        try:
            data = json.loads(mpath.read_bytes())
            recs, edits = records(data), edited_parts(data)
        except (OSError, ValueError):
            recs, edits = {}, []
        cached = _manifests[str(mpath)] = (key, recs, edits)
    return cached[1], cached[2]


def expected(path: Path) -> tuple[str, str] | None:
    """(stage, digest) recorded for run file `path`, or None when nothing is recorded (a run
    written before checksums, or a stage still running): such a file is read unverified."""
    return _manifest_facts(run_root(path))[0].get(relative(path))


def records_of(root: Path) -> dict[str, tuple[str, str]]:
    """Every checksum the manifest of the run at `root` records: relative path → (stage, digest)."""
    return _manifest_facts(root)[0]


def manifest_edits(path: Path) -> list[str]:
    """The parts of the manifest of run file `path`'s run edited since saelineage wrote it."""
    return _manifest_facts(run_root(path))[1]


# ---- the manifest's own seal ---------------------------------------------------------------------
SEAL = "seal"
"""The manifest key holding a digest of every other top-level key and of each stage's entry, written
by `RunDir.save`: an edit made by hand (or by another program) is then named part by part."""


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode()


def seal_of(data: dict[str, Any]) -> dict[str, str]:
    """Digest per part of a manifest's JSON object, as parsed back from disk: "KEY" for each
    top-level key, "stages.STAGE" for each stage's entry (the seal itself left out)."""
    import xxhash

    parts: dict[str, str] = {}
    for key, value in data.items():
        if key == SEAL:
            continue
        if key == "stages" and isinstance(value, dict):
            for stage, entry in value.items():
                parts[f"stages.{stage}"] = xxhash.xxh3_64_hexdigest(_canonical(entry))
        else:
            parts[key] = xxhash.xxh3_64_hexdigest(_canonical(value))
    return parts


def edited_parts(data: dict[str, Any]) -> list[str]:
    """The parts of a manifest's JSON object that differ from its seal (added, removed or changed),
    in order; [] when it matches or carries no seal (a run written before seals)."""
    seal = data.get(SEAL) if isinstance(data, dict) else None
    if not isinstance(seal, dict):
        return []
    now = seal_of(data)
    return sorted(k for k in set(now) | set(seal) if now.get(k) != seal.get(k))
