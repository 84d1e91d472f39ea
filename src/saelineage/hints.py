"""Commands that fix a run, written out in full for error messages.

A hint such as "re-run collect" only fixes the problem when the user can type it: `collect`
refuses a run directory made with other options, so the hint must repeat the options the run
was made with. These functions rebuild such commands from what the manifest records, so
every "fix:" line can be copied and run as it is (tests/test_hints.py follows each one).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from saelineage.contract import Manifest
from saelineage.errors import SaelineageError


def _read_manifest(run_path: Path, manifest: Manifest | None = None) -> dict[str, Any]:
    """The manifest's JSON as far as it can be read (an unreadable one gives {}).

    Read raw rather than through RunDir.load: a hint must still be written when the manifest is
    damaged or incomplete, which is often why the hint is needed."""
    if manifest is not None:
        return manifest.to_json()
    try:
        data = json.loads((run_path / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def collect_command(
    run_path: str | Path, *, force: bool = False, manifest: Manifest | None = None, **override: Any
) -> str | None:
    """The `saelineage collect` command that made (and resumes) the run; None for an imported run.

    Options equal to their defaults are left out; `force` appends --force; `override` replaces
    recorded options (CollectConfig field names)."""
    from saelineage.collect.config import CollectConfig
    from saelineage.config import config_from_dict, to_argv

    run_path = Path(run_path)
    recorded = _read_manifest(run_path, manifest).get("config")
    if not isinstance(recorded, dict):
        return None
    cfg = config_from_dict(CollectConfig, {**recorded, **override})
    return shlex.join(["saelineage", "collect", str(run_path), *to_argv(cfg)] + (["--force"] if force else []))


def recollect(run_path: str | Path, *, force: bool = False, manifest: Manifest | None = None) -> str:
    """A fix line that rebuilds collect's outputs: the exact collect command, or, for a run
    written through the store API, how to write it again."""
    cmd = collect_command(run_path, force=force, manifest=manifest)
    if cmd is None:
        return (
            "this run was written by the store API (saelineage.data.importer.write_run): write it again "
            "with write_run(..., force=True)."
        )
    return f"run `{cmd}` (it recomputes what is missing and keeps the rest)" if not force else f"run `{cmd}`"


def stage_command(run_path: str | Path, stage: str, *, force: bool = False) -> str:
    """`saelineage STAGE RUN` (stages after collect take their options from the command line)."""
    words = ["saelineage", stage, str(run_path)] + (["--force"] if force else [])
    return shlex.join(words)


def damaged_shard(shard: str | Path, why: object) -> SaelineageError:
    """The error for an unreadable activation shard: delete it, and collect recomputes it."""
    shard = Path(shard)
    run_path = shard.parent.parent  # RUN/activations/shard-NNNNN.safetensors
    return SaelineageError(
        f"activation shard {shard} is unreadable or truncated ({why}).", f"delete {shard}, then {recollect(run_path)}."
    )


def stats_command(run_path: str | Path, *, force: bool = False, manifest: Manifest | None = None) -> str:
    """`saelineage stats RUN` with the options the run's last stats stage recorded."""
    from saelineage.config import config_from_dict, to_argv
    from saelineage.stats.config import StatsConfig

    m = _read_manifest(Path(run_path), manifest)
    recorded = ((m.get("stages") or {}).get("stats") or {}).get("config") or {}
    cfg = config_from_dict(StatsConfig, recorded)
    return shlex.join(["saelineage", "stats", str(run_path), *to_argv(cfg)] + (["--force"] if force else []))


def regenerate(run_path: str | Path, stage: str, *, manifest: Manifest | None = None) -> str:
    """A fix line that writes `stage`'s outputs of the run again, as exact as the manifest allows."""
    if stage == "collect":
        return recollect(run_path, force=True, manifest=manifest)
    if stage == "stats":
        return f"run `{stats_command(run_path, force=True, manifest=manifest)}`"
    return f"run `{stage_command(run_path, stage, force=True)}` with the options it was made with"


def corrupt_file(path: str | Path, stage: str, why: str) -> SaelineageError:
    """The error for a run file whose bytes differ from the checksum its stage recorded: a shard is
    deleted and recomputed (collect keeps the others); any other file is written again by its stage."""
    from saelineage.checksum import run_root

    path = Path(path)
    run_path = run_root(path)
    problem = f"{path} is not what {stage} wrote ({why}); results read from it would be silently wrong."
    if path.name.startswith("shard-"):
        return SaelineageError(problem, f"delete {path}, then {recollect(run_path)}.")
    return SaelineageError(problem, f"{regenerate(run_path, stage)}.")
