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

# CollectConfig field -> CLI option of `saelineage collect` (tests/test_hints.py checks it
# against the typer command); defaults come from CollectConfig itself.
COLLECT_FLAGS: dict[str, str] = {
    "model": "--model", "saes": "--saes", "layers": "--layers", "corpus": "--corpus",
    "text_column": "--text-column", "window": "--window", "max_tokens": "--max-tokens",
    "first_window": "--first-window", "batch_windows": "--batch-windows", "shard_windows": "--shard-windows",
    "examples_k": "--examples", "include_bos": "--include-bos", "dtype": "--dtype", "device": "--device",
    "center_residual": "--center",
}


def _read_manifest(run_path: Path) -> dict[str, Any]:
    """The manifest as far as it can be read (an unreadable one gives {})."""
    try:
        return json.loads((run_path / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def collect_command(run_path: str | Path, *, force: bool = False, manifest: dict[str, Any] | None = None,
                    **override: Any) -> str | None:
    """The `saelineage collect` command that made (and resumes) the run; None for an imported run.

    Options equal to their defaults are left out; `force` appends --force; `override` replaces
    recorded options (CollectConfig field names)."""
    run_path = Path(run_path)
    m = _read_manifest(run_path) if manifest is None else manifest
    cfg = m.get("config")
    if not isinstance(cfg, dict):
        return None
    cfg = {**cfg, **override}
    from dataclasses import fields

    from saelineage.collect import CollectConfig

    defaults = {f.name: f.default for f in fields(CollectConfig)}
    words = ["saelineage", "collect", str(run_path)]
    for name, flag in COLLECT_FLAGS.items():
        default = defaults[name]
        value = cfg.get(name, default)
        if value == default:
            continue
        if name == "layers":
            words += [flag, ",".join(str(int(l)) for l in value)]
        elif name == "include_bos":
            words.append(flag)
        elif name == "center_residual":
            words.append("--center" if value else "--no-center")
        else:
            words += [flag, str(value)]
    if force:
        words.append("--force")
    return shlex.join(words)


def recollect(run_path: str | Path, *, force: bool = False, manifest: dict[str, Any] | None = None) -> str:
    """A fix line that rebuilds collect's outputs: the exact collect command, or, for a run
    written through the store API, how to write it again."""
    cmd = collect_command(run_path, force=force, manifest=manifest)
    if cmd is None:
        return ("this run was written by the store API (saelineage.data.importer.write_run): write it again "
                "with write_run(..., force=True).")
    return f"run `{cmd}` (it recomputes what is missing and keeps the rest)" if not force else f"run `{cmd}`"


def stage_command(run_path: str | Path, stage: str, *, force: bool = False) -> str:
    """`saelineage STAGE RUN` (stages after collect take their options from the command line)."""
    words = ["saelineage", stage, str(run_path)] + (["--force"] if force else [])
    return shlex.join(words)


def damaged_shard(shard: str | Path, why: object) -> "SaelineageError":
    """The error for an unreadable activation shard: delete it, and collect recomputes it."""
    from saelineage.errors import SaelineageError

    shard = Path(shard)
    run_path = shard.parent.parent  # RUN/activations/shard-NNNNN.safetensors
    return SaelineageError(f"activation shard {shard} is unreadable or truncated ({why}).",
                           f"delete {shard}, then {recollect(run_path)}.")


def stats_command(run_path: str | Path, *, force: bool = False, manifest: dict[str, Any] | None = None) -> str:
    """`saelineage stats RUN` with the options the run's last stats stage recorded."""
    from saelineage.stats.measures import PRIMARY
    from saelineage.stats.stage import DEFAULT_KEEP

    m = _read_manifest(Path(run_path)) if manifest is None else manifest
    opts = ((m.get("stages") or {}).get("stats") or {}).get("options") or {}
    words = ["saelineage", "stats", str(run_path)]
    for name, flag, default in (("span", "--span", 1), ("threshold", "--threshold", 0.0),
                                ("relative_threshold", "--relative-threshold", None),
                                ("min_support", "--min-support", 5), ("top_k", "--top-k", 16)):
        if opts.get(name, default) != default:
            words += [flag, str(opts[name])]
    if opts.get("include_bos"):
        words.append("--include-bos")
    keep = opts.get("keep_thresholds")
    if keep == {}:
        words.append("--no-keep")
    elif keep and keep != DEFAULT_KEEP:
        for k, v in keep.items():
            words += ["--keep", f"{k}={v}"]
    primary = opts.get("primary")
    if primary and tuple(primary) != PRIMARY:
        words += ["--primary", ",".join(primary)]
    if force:
        words.append("--force")
    return shlex.join(words)
