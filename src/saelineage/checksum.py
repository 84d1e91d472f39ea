"""Checksums of run files: what a stage recorded for each file it wrote (docs/design.md §3).

A stage records, when it completes, one digest per file it wrote under `stages.STAGE.checksums`
in the manifest (`RunDir.stage`); every reader hashes the bytes it reads and compares them with
that record (`run.read_verified`), so a file changed on disk after its stage (a flipped bit, a
hand edit, a half-copied run) is refused instead of silently giving other results.

xxh3-128: ~30 GB/s on one core, so hashing what a reader reads anyway costs a few percent of the
reading stage; a cryptographic hash would cost more and guards against nothing we need here
(the threat is damage, not an adversary). Pure functions and a small cache; `run` does the I/O of
stages and the errors.
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
_manifests: dict[str, tuple[tuple[int, int, int], dict[str, tuple[str, str]]]] = {}
"""Parsed checksum records by manifest path, keyed by the manifest's (inode, mtime_ns, size)."""


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


def remember(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Note the digest of `data`, just written to `path` by this process."""
    st = os.stat(path)
    _written[str(Path(path).absolute())] = (digest(data), st.st_mtime_ns, st.st_size)


def written_digest(path: Path) -> str:
    """The digest of `path`: the one noted when this process wrote it (when the file is unchanged
    since), else read from disk (a file of an earlier, interrupted process or of a Ray worker)."""
    st = os.stat(path)
    known = _written.get(str(Path(path).absolute()))
    if known is not None and known[1:] == (st.st_mtime_ns, st.st_size):
        return known[0]
    return digest_file(path)


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


def expected(path: Path) -> tuple[str, str] | None:
    """(stage, digest) recorded for run file `path`, or None when nothing is recorded (a run
    written before checksums, or a stage still running): such a file is read unverified."""
    mpath = run_root(path) / MANIFEST
    try:
        st = os.stat(mpath)
    except OSError:
        return None
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _manifests.get(str(mpath))
    if cached is None or cached[0] != key:
        try:
            recs = records(json.loads(mpath.read_bytes()))
        except (OSError, ValueError):
            recs = {}
        cached = _manifests[str(mpath)] = (key, recs)
    return cached[1].get(relative(path))
