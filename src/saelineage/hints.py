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


def _recorded_config(stage: str) -> tuple[type, str]:
    """The config class of a stage after collect and the key of its manifest entry that records it."""
    from saelineage.causal.config import AblateConfig
    from saelineage.ceiling.config import CeilingConfig
    from saelineage.lineage.config import AnalyzeConfig
    from saelineage.stats.config import StatsConfig

    return {
        "stats": (StatsConfig, "config"),
        "analyze": (AnalyzeConfig, "options"),
        "ablate": (AblateConfig, "config"),
        "ceiling": (CeilingConfig, "options"),
    }[stage]


def rerun_command(run_path: str | Path, stage: str, *, force: bool = False, manifest: Manifest | None = None) -> str:
    """`saelineage STAGE RUN` with the options the run's last `stage` recorded (stats, analyze,
    ablate, ceiling), so the command writes the same outputs again."""
    from saelineage.config import config_from_dict, to_argv

    cls, key = _recorded_config(stage)
    m = _read_manifest(Path(run_path), manifest)
    recorded = ((m.get("stages") or {}).get(stage) or {}).get(key) or {}
    try:
        argv = to_argv(config_from_dict(cls, recorded))
    except (TypeError, ValueError):  # a record this version cannot rebuild: the stage's defaults
        argv = []
    return shlex.join(["saelineage", stage, str(run_path), *argv] + (["--force"] if force else []))


def stats_command(run_path: str | Path, *, force: bool = False, manifest: Manifest | None = None) -> str:
    """`saelineage stats RUN` with the options the run's last stats stage recorded."""
    return rerun_command(run_path, "stats", force=force, manifest=manifest)


def regenerate(run_path: str | Path, stage: str, *, manifest: Manifest | None = None) -> str:
    """A fix line that writes `stage`'s outputs of the run again, as exact as the manifest allows."""
    if stage == "collect":
        return recollect(run_path, force=True, manifest=manifest)
    if stage == "labels import":
        return relabel(run_path, manifest=manifest)
    try:
        _recorded_config(stage)
    except KeyError:
        return f"run `{stage_command(run_path, stage, force=True)}` with the options it was made with"
    return f"run `{rerun_command(run_path, stage, force=True, manifest=manifest)}`"


def relabel(run_path: str | Path, *, manifest: Manifest | None = None) -> str:
    """A fix line that writes labels.parquet again: the recorded label imports, in order, the
    first one replacing what is there."""
    m = _read_manifest(Path(run_path), manifest)
    imports = ((m.get("stages") or {}).get("labels import") or {}).get("imports") or []
    files = [i["file"] for i in imports if isinstance(i, dict) and i.get("file")]
    if not files:
        cmd = f"saelineage labels import {shlex.quote(str(run_path))} FILE --replace"
        return f"run `{cmd}` with the files it was made from"
    cmds = [
        shlex.join(["saelineage", "labels", "import", str(run_path), f, *(["--replace"] if i == 0 else [])])
        for i, f in enumerate(files)
    ]
    return "run " + ", then ".join(f"`{c}`" for c in cmds)


def missing_file(path: str | Path, stage: str) -> SaelineageError:
    """The error for a run file its stage recorded and that is gone: reading on without it would
    silently drop what it held."""
    from saelineage.checksum import run_root

    path = Path(path)
    run_path = run_root(path)
    problem = f"{path} is missing: {stage} wrote it, and the run's results depend on it."
    if stage == "collect":
        return SaelineageError(problem, f"{recollect(run_path)}.")
    return SaelineageError(problem, f"{regenerate(run_path, stage)}.")


def edited_manifest(run_path: str | Path, parts: list[str]) -> SaelineageError:
    """The error for a manifest changed since saelineage wrote it: its seal names the edited `parts`
    ("n_tokens", "stages.analyze"). An edited stage entry is written again by that stage's --force
    run; any other part describes the collected data, which collect --force writes again."""
    run_path = Path(run_path)
    stages = [p.split(".", 1)[1] for p in parts if p.startswith("stages.")]
    problem = (
        f"{run_path / 'manifest.json'} was edited after saelineage wrote it ({', '.join(parts)} changed); "
        "what it now says about the run's files cannot be trusted."
    )
    if len(stages) == len(parts) and "collect" not in stages:
        fixes = [regenerate(run_path, s) for s in stages]
        return SaelineageError(problem, "undo the edit, or " + ", then ".join(fixes) + ".")
    return SaelineageError(problem, f"undo the edit, or write the run again: {recollect(run_path, force=True)}.")


def corrupt_file(path: str | Path, stage: str, why: str) -> SaelineageError:
    """The error for a run file whose bytes differ from the checksum its stage recorded: a shard is
    deleted and recomputed (collect keeps the others); any other file is written again by its stage."""
    from saelineage.checksum import run_root

    path = Path(path)
    run_path = run_root(path)
    problem = f"{path} is not what {stage} wrote ({why}); results read from it would be silently wrong."
    if stage == "collect":  # collect recomputes just the files that are gone and keeps the rest
        return SaelineageError(problem, f"delete {path}, then {recollect(run_path)}.")
    return SaelineageError(problem, f"{regenerate(run_path, stage)}.")
