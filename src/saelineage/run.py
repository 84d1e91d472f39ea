"""The run directory: manifest, stage status and file locations (DESIGN §3).

Every stage reads what earlier stages wrote through this module, so paths and the
manifest layout live in one place.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from saelineage.errors import SaelineageError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
STAGES = ("collect", "stats", "analyze", "ablate")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
        return self.path / "activations"

    def file(self, name: str) -> Path:
        """Path of a top-level run file such as ``"edges.parquet"``."""
        return self.path / name

    # ---- manifest --------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def load(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            raise SaelineageError(
                f"{self.path} is not a saelineage run directory (no {MANIFEST}).",
                "run `saelineage collect` first, or point to the folder that holds manifest.json.",
            )
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise SaelineageError(
                f"{self.manifest_path} is not valid JSON ({exc}).",
                "re-run `saelineage collect --force` to rebuild the run.",
            ) from exc
        if manifest.get("schema_version", 0) > SCHEMA_VERSION:
            raise SaelineageError(
                f"{self.path} was written by a newer saelineage (schema {manifest['schema_version']}).",
                "upgrade saelineage.",
            )
        return manifest

    def save(self, manifest: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        data = json.dumps(manifest, indent=2, sort_keys=False, default=str).encode()
        atomic_write_bytes(self.manifest_path, data)

    def update(self, **fields: Any) -> dict[str, Any]:
        manifest = self.load()
        manifest.update(fields)
        self.save(manifest)
        return manifest

    # ---- stages ----------------------------------------------------------------------
    def stage_status(self, stage: str) -> str | None:
        if not self.exists():
            return None
        return self.load().get("stages", {}).get(stage, {}).get("status")

    def is_complete(self, stage: str) -> bool:
        return self.stage_status(stage) == "complete"

    def require(self, stage: str) -> dict[str, Any]:
        """Return the manifest, or raise a clear error when `stage` has not completed."""
        manifest = self.load()
        status = manifest.get("stages", {}).get(stage, {}).get("status")
        if status != "complete":
            raise SaelineageError(
                f"stage '{stage}' of run {self.path} is {status or 'missing'}, not complete.",
                f"run `saelineage {stage} {self.path}` (it resumes where it stopped).",
            )
        return manifest

    def set_stage(self, stage: str, status: str, **info: Any) -> None:
        manifest = self.load()
        entry = manifest.setdefault("stages", {}).setdefault(stage, {})
        entry["status"] = status
        entry.update(info)
        self.save(manifest)

    @contextmanager
    def stage(self, stage: str, **info: Any) -> Iterator[dict[str, Any]]:
        """Mark `stage` running, then complete with its wall time; leaves it 'running' on error."""
        self.set_stage(stage, "running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), **info)
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        yield extra
        self.set_stage(stage, "complete", seconds=round(time.perf_counter() - t0, 3), **extra)

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
