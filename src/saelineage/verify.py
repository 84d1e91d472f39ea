"""`saelineage verify RUN`: is every file of a run what its stage wrote? (docs/design.md §3)

Each file is checked against the checksum its stage recorded (missing files too), the manifest
against its seal (`checksum.edited_parts`: parts edited by hand), the browser's cache against its
own sums (`query.cache.CacheFiles.damage`), and the manifest against the shards: shard indices
contiguous and each holding its windows, token counts summing to the manifest's, each layer's
codes sized by its d_sae, and features.parquet's n_active equal to the shards' counts. Every
problem names its file and the command that writes it again (hints). A run written before
checksums is reported unverified, which is no error.

Module imports stay light (the CLI imports this module for --help); the work imports lazily.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

#: Statuses that make `verify` fail; "ok" and "unverified" (no checksum recorded) do not.
BAD = ("corrupt", "missing", "inconsistent", "unreadable", "edited", "stale")


@dataclass
class Finding:
    """One file's verdict."""

    file: str
    """Relative to the run ("edges.parquet", "activations/shard-00003.safetensors", "manifest.json")."""
    status: str
    """ok | unverified | corrupt | missing | inconsistent | unreadable | edited (the manifest, by hand) |
    stale (a browser cache built from other inputs under this run's name) | unused (older cache builds)"""
    detail: str = ""
    fix: str = ""


def verify_run(run_path: str | Path) -> list[Finding]:
    """Every finding for the run at `run_path`, in file order (shards, then top-level files)."""
    from saelineage import checksum, contract, hints
    from saelineage.errors import SaelineageError
    from saelineage.run import RunDir

    run = RunDir(run_path)
    try:
        manifest = run.load(edited=True)
    except SaelineageError as exc:
        return [Finding(contract.MANIFEST, "unreadable", exc.problem, exc.fix or "")]
    recorded = checksum.records(manifest.to_json())
    out: list[Finding] = []
    edits = checksum.manifest_edits(run.manifest_path)
    if edits:  # reported first; the files are still checked against what it now records
        err = hints.edited_manifest(run.path, edits)
        out.append(Finding(contract.MANIFEST, "edited", ", ".join(edits) + " changed by hand", err.fix or ""))

    def fix_for(rel: str, stage: str) -> str:
        p = run.path / rel
        if stage == "collect":  # collect recomputes what is gone and keeps the rest
            return f"delete {p} (if present), then {hints.recollect(run.path, manifest=manifest)}"
        return hints.regenerate(run.path, stage, manifest=manifest)

    # shards: one read each, hashed and parsed from the same bytes
    shard_files = sorted(p.name for p in run.activations.glob("shard-[0-9][0-9][0-9][0-9][0-9].safetensors"))
    expected_n = manifest.n_shards or -(-manifest.n_windows // manifest.shard_windows)
    names = sorted(set(shard_files) | {f"shard-{i:05d}.safetensors" for i in range(expected_n)})
    counts = {layer: 0 for layer in manifest.layers}
    n_tokens = 0
    for name in names:
        rel = f"{contract.ACTIVATIONS}/{name}"
        f, tokens = _check_shard(run.path / rel, rel, recorded.get(rel), manifest, counts)
        n_tokens += tokens
        if f.status in BAD:
            f.fix = fix_for(rel, "collect")
        out.append(f)
    recollect = hints.recollect(run.path, force=True, manifest=manifest)
    shards_bad = any(f.status in BAD for f in out)  # a bad shard's tokens are not counted: no second error
    if manifest.status("collect") == "complete" and not shards_bad and n_tokens != manifest.n_tokens:
        out.append(
            Finding(
                contract.MANIFEST,
                "inconsistent",
                f"shards hold {n_tokens} tokens, manifest says {manifest.n_tokens}",
                recollect,
            )  # fmt: skip
        )

    # top-level files of every stage that ran
    for name, stage in contract.WRITER.items():
        entry = manifest.stage(stage)
        rec = recorded.get(name)
        path = run.file(name)
        if rec is None:
            if not (path.is_file() and entry.get("status") == "complete"):
                continue
            found = Finding(name, "unverified", "no checksum recorded")
        elif not path.is_file():
            out.append(Finding(name, "missing", f"{stage} wrote it", fix_for(name, stage)))
            continue
        elif checksum.digest_file(path) != rec[1]:
            out.append(Finding(name, "corrupt", "checksum ≠ its record", fix_for(name, stage)))
            continue
        else:
            found = Finding(name, "ok")
        if name == contract.FEATURES and not shards_bad:
            # cheap (one column) and catches damage an old run without checksums cannot see
            bad = _n_active_mismatch(path, counts)
            if bad:
                found = Finding(name, "inconsistent", bad, fix_for(name, stage))
        out.append(found)
    return out + _check_browser_cache(run)


def _check_browser_cache(run: Any) -> list[Finding]:
    """The browser's cache in the run, if any: the build for the run's current files must hold
    what was written from them; builds of other inputs are unused (serve removes them)."""
    from saelineage import contract
    from saelineage.query.cache import CacheFiles, signature, stale_generations

    folder = run.path / contract.BROWSER_CACHE
    if not folder.is_dir():
        return []
    files = CacheFiles(folder, signature(run))
    out = []
    if files.complete():
        damage = files.damage()
        status = "ok" if not damage else "stale" if damage.startswith("stale") else "corrupt"
        fix = f"delete {folder}, or just serve: `saelineage serve {run.path}` builds it again" if damage else ""
        out.append(Finding(contract.BROWSER_CACHE, status, damage[:60], fix))
    old = stale_generations(folder, files.sig)
    if old:
        out.append(Finding(contract.BROWSER_CACHE, "unused", f"{len(old)} files of builds from older inputs"))
    return out


def _check_shard(
    path: Path, rel: str, rec: tuple[str, str] | None, manifest: Any, counts: dict[int, int]
) -> tuple[Finding, int]:
    """One shard's finding and its token count; adds its active-code counts (token set only) to
    `counts`, which features.parquet's n_active must sum to."""
    import numpy as np
    from safetensors.numpy import load

    from saelineage import checksum
    from saelineage.data.store import token_mask

    if not path.is_file():
        return Finding(rel, "missing", "the manifest lists it"), 0
    data = path.read_bytes()
    if rec is not None:
        got = checksum.digest(data)
        if got != rec[1]:
            return Finding(rel, "corrupt", "checksum ≠ its record"), 0
    try:
        t = load(data)
    except Exception as exc:  # noqa: BLE001 (any parse failure is the verdict)
        return Finding(rel, "unreadable", str(exc)[:60]), 0
    index = int(path.name[6:11])
    w0, w1 = index * manifest.shard_windows, min((index + 1) * manifest.shard_windows, manifest.n_windows)
    problems = []
    n = len(t["tokens"])
    win = t["window"]
    if n and (int(win.min()) != w0 or int(win.max()) != w1 - 1):
        problems.append(f"windows {int(win.min())}..{int(win.max())}, expected {w0}..{w1 - 1}")
    mask = token_mask(t["pos"], manifest.bos, manifest.include_bos)
    active = float(manifest.thresholds.get("active", 0.0))
    for layer in manifest.layers:
        ptr, idx, val = (t.get(f"l{layer}.{part}") for part in ("indptr", "indices", "values"))
        if ptr is None or idx is None or val is None:
            problems.append(f"no codes of layer {layer}")
            continue
        if len(ptr) != n + 1 or int(ptr[-1]) != len(idx) or len(idx) != len(val):
            problems.append(f"layer {layer}: CSR arrays do not match {n} tokens")
            continue
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= manifest.d_sae[layer]):
            problems.append(f"layer {layer}: feature ids beyond d_sae {manifest.d_sae[layer]}")
            continue
        rows = np.repeat(np.arange(n), np.diff(ptr))
        counts[layer] += int(((val > active) & mask[rows]).sum())
    status = "inconsistent" if problems else ("ok" if rec is not None else "unverified")
    detail = "; ".join(problems) if problems else ("" if rec is not None else "no checksum recorded")
    return Finding(rel, status, detail), n


def _n_active_mismatch(path: Path, counts: dict[int, int]) -> str:
    """Which layers' n_active sums differ from the shards' counts ("" when none)."""
    from saelineage.run import read_parquet

    t = read_parquet(path, columns=["layer", "n_active"])
    layer, n_active = t.column("layer").to_numpy(), t.column("n_active").to_numpy()
    bad = [
        f"layer {l}: {int(n_active[layer == l].sum())} ≠ {c}"
        for l, c in counts.items()
        if int(n_active[layer == l].sum()) != c
    ]
    return ("n_active vs shards: " + "; ".join(bad[:3])) if bad else ""


def render(findings: list[Finding], width: int = 80) -> str:
    """The findings as a text table of at most `width` columns, each fix on the lines below its row."""
    import textwrap

    ok = sum(f.status == "ok" for f in findings)
    shown = [f for f in findings if f.status != "ok"]
    lines = [f"{'status':<13}{'file':<38}detail", "-" * (width - 1)]
    for f in shown:
        name = f.file if len(f.file) <= 36 else "…" + f.file[-35:]
        lines.append(f"{f.status:<13}{name:<38}{f.detail}"[: width - 1])
        if f.fix:
            lines += textwrap.wrap(
                f"fix: {f.fix}", width - 1, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False
            )
    bad = sum(f.status in BAD for f in findings)
    unverified = sum(f.status == "unverified" for f in findings)
    lines.append(f"{ok} files ok, {unverified} unverified, {bad} bad")
    return "\n".join(lines)


def verify_command(
    run: Annotated[Path, typer.Argument(help="The run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check every file of a run against the checksum its stage recorded, the manifest against its
    seal (hand edits) and against the shards (windows, token counts, layer shapes, feature counts),
    and the browser's cache against its own record. Exits 1 when anything is corrupt, missing,
    edited, stale or inconsistent, and names the command that fixes each file."""
    findings = verify_run(run)
    bad = any(f.status in BAD for f in findings)
    if as_json:
        typer.echo(json.dumps({"run": str(run), "ok": not bad, "findings": [asdict(f) for f in findings]}, indent=1))
    else:
        typer.echo(render(findings))
    if bad:
        raise typer.Exit(1)
