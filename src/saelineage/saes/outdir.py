"""The output folder of `saelineage train`: what marks it complete, and how it is replaced safely.

A folder holds one SAELens directory per hook plus `training.json` (configuration, its hash,
status, timings) and `metrics.json`. Training writes into a work folder that is renamed into
place when complete, so a folder that says `complete` is whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from saelineage.errors import SaelineageError

TRAINING_JSON = "training.json"
METRICS_JSON = "metrics.json"


def _read_training(out: Path) -> dict | None:
    try:
        return json.loads((out / TRAINING_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(out: Path, digest: str) -> bool:
    """True when `out` holds a finished training run of the configuration hashed `digest`."""
    info = _read_training(out)
    return bool(
        info
        and info.get("config_hash") == digest
        and info.get("status") == "complete"
        and (out / METRICS_JSON).is_file()
    )


def prepare_out(out: Path, digest: str, force: bool) -> None:
    """Make `out` ready for a fresh run; refuse folders holding SAEs of another configuration."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SaelineageError(f"--out {out} is a file.", "choose a folder path for the SAEs.")
    info = _read_training(out)
    sae_dirs = [d for d in out.iterdir() if d.is_dir() and (d / "cfg.json").is_file()]
    ours = info is not None and "config_hash" in info
    if not force:
        if ours and info is not None and info["config_hash"] != digest:
            raise SaelineageError(
                f"{out} holds SAEs of another configuration (hash {info['config_hash']}, this one {digest}).",
                "choose another --out folder, or pass --force to replace them.",
            )
        if not ours and sae_dirs:
            raise SaelineageError(
                f"{out} already holds SAE folders not written by `saelineage train` "
                f"({', '.join(sorted(d.name for d in sae_dirs)[:4])}).",
                "choose another --out folder, or pass --force to replace them.",
            )
    for d in sae_dirs:
        shutil.rmtree(d)
    for name in (TRAINING_JSON, METRICS_JSON):
        (out / name).unlink(missing_ok=True)


def publish(work: Path, final: Path, digest: str) -> None:
    """Rename the finished cache folder `work` to `final`, replacing an older or broken copy."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(work, final)
    except OSError:  # another process published the same configuration in between
        if not is_complete(final, digest):
            raise
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
