"""The collect stage: run the model over a corpus once, encode every layer with its SAE, store codes.

Shards hold `shard_windows` whole windows and are written atomically, each followed by its
partial summary, so after a crash the complete shards are kept and collection resumes with the
missing ones; the summary files are then the reduction of every shard's partial in shard order,
which makes a resumed run, and one collected by Ray workers (`--ray`, saelineage.cluster), end
byte-identical to an uninterrupted single-process one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from saelineage import checksum, contract
from saelineage.collect.config import CollectConfig
from saelineage.collect.shard import encode_shard, store_shard
from saelineage.contract import Manifest, new_manifest
from saelineage.data.corpus import load_corpus
from saelineage.data.finalize import summarize_run, write_vocab
from saelineage.data.store import list_shards
from saelineage.data.windowing import make_windows
from saelineage.errors import SaelineageError
from saelineage.progress import console
from saelineage.progress import progress as make_progress
from saelineage.run import RunDir, StageResult, config_hash, identity, settle, writes_run

RECORDED_ONLY = ("device", "batch_windows")
"""Manifest `config` keys recorded beside the identity (how the run was made, not what it holds)."""


def _outputs_present(run: RunDir, manifest: Manifest) -> bool:
    """Every shard and summary file of a complete collection is on disk (a user may have deleted
    a damaged shard or a summary file; collect then recomputes just those)."""
    n_shards = manifest.n_shards or 0
    have = {int(p.name[6:11]) for p in list_shards(run)}
    recorded = [rel for rel, (stage, _) in checksum.records(manifest.to_json()).items() if stage == "collect"]
    return (
        have >= set(range(n_shards))
        and all(run.file(f).is_file() for f in (contract.FEATURES, contract.EXAMPLES))
        and all((run.path / rel).is_file() for rel in recorded)  # vocab.json too, where it was written
    )


def _recorded(manifest: Manifest) -> dict[str, Any] | str:
    """The identity `manifest`'s run was collected with: the recorded config less `RECORDED_ONLY`,
    or only its hash where that config does not give the hash back (another version, an import)."""
    config = {k: v for k, v in (manifest.config or {}).items() if k not in RECORDED_ONLY}
    return config if config_hash(config) == manifest.config_hash else manifest.config_hash


def _prepare_run(run: RunDir, ident: dict[str, Any], force: bool, progress: bool) -> bool:
    """Settle the run directory for collecting identity `ident` (saelineage.run.settle); True: it is complete.

    The identity guards the whole run, partial or complete: shards of two configurations must never
    mix. --force clears the run, even one whose manifest cannot be read at all."""
    run.check_writable()
    old = None
    if run.exists():
        try:
            old = run.load()
        except SaelineageError:
            if not force:
                raise
    complete = old is not None and old.status("collect") == "complete" and _outputs_present(run, old)
    skip = settle(
        run, "collect", ident, None if old is None else _recorded(old), complete=complete, force=force,
        progress=progress, discards="that run (every stage's results)", otherwise="choose another output directory",
    )  # fmt: skip
    if force and run.exists():
        run.clear()
    elif old is not None and old.status("collect") == "complete" and not skip:
        console.print(f"collect: {run.path} lacks some of its files; recomputing them.")
    return skip


@writes_run("collect", create=True)
def run_collect(
    run_dir: str | Path,
    cfg: CollectConfig | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    adapter=None,
    saes=None,
) -> StageResult:
    """Collect sparse codes into `run_dir` (resumes an interrupted run of the same config); summary:
    n_tokens, n_shards.

    adapter / saes: an already loaded model adapter and {layer: SAE} instead of loading cfg's."""
    t_start = time.perf_counter()
    cfg = cfg or CollectConfig()
    from saelineage.models.loading import load_model
    from saelineage.models.presets import SMOLLM2
    from saelineage.saes.catalog import ReleaseChoice
    from saelineage.saes.resolve import release_model, resolve_saes

    if adapter is None:  # with a release, its model (a different --model is refused before any weights load)
        cfg = replace(cfg, model=release_model(cfg.saes, cfg.model) or SMOLLM2)
    elif cfg.model is None:
        cfg = replace(cfg, model=adapter.name or SMOLLM2)
    assert cfg.model is not None  # the release's, the adapter's or the given model

    run = RunDir(run_dir)
    ident = identity(cfg)
    if _prepare_run(run, ident, force, progress):
        summary = {"n_tokens": run.load().n_tokens, "n_shards": len(list_shards(run))}
        return StageResult.since(t_start, "collect", run, skipped=True, summary=summary)
    if saes is None:  # SAEs first: a wrong release choice is reported before the model loads
        saes = resolve_saes(
            cfg.saes,
            cfg.model,
            device=cfg.device,
            dtype=cfg.dtype,
            layers=cfg.layers,
            choice=ReleaseChoice(sae_id=cfg.sae_id, width=cfg.width, l0=cfg.l0),
        )
    adapter = adapter or load_model(
        cfg.model, dtype=cfg.dtype, device=cfg.device, center_residual=cfg.center_residual, blocks_path=cfg.blocks_path
    )
    layers = sorted(saes) if cfg.layers is None else sorted(cfg.layers)
    unknown = [l for l in layers if l not in saes]
    if unknown:
        raise SaelineageError(
            f"no SAE for layers {unknown} (SAEs exist for {sorted(saes)}).",
            "choose --layers among those, or add SAEs for them.",
        )
    for l in layers:
        saes[l].validate_for(adapter)
    if cfg.center_residual is None and any(
        (saes[l].meta.get("model_from_pretrained_kwargs") or {}).get("center_writing_weights") for l in layers
    ):
        # SAEs trained on TransformerLens activations with centred writing weights see
        # residuals whose mean over d_model is zero; plain HF residuals must match that
        adapter.center_residual = True
    hooks = {l: saes[l].hook for l in layers}

    corpus = load_corpus(cfg.corpus, cfg.text_column)
    need = None if cfg.max_tokens is None else cfg.max_tokens + cfg.first_window * cfg.window
    wins = make_windows(adapter.tokenizer, corpus.docs, cfg.window, need)
    ids = wins.ids[cfg.first_window :]
    if cfg.max_tokens is not None:
        ids = ids[: cfg.max_tokens // cfg.window]
    if len(ids) == 0:
        raise SaelineageError(
            f"the corpus has no windows left after skipping {cfg.first_window} (it has {len(wins.ids)}).",
            "lower --first-window or use a larger corpus.",
        )
    n_windows = len(ids)
    n_shards = -(-n_windows // cfg.shard_windows)
    # a resumed run (same configuration, else _prepare_run cleared it) keeps what its stages
    # recorded and the keys a newer saelineage added
    old = run.load() if run.exists() else None
    manifest = new_manifest(
        config_hash=config_hash(ident),
        config=ident | {k: getattr(cfg, k) for k in RECORDED_ONLY},
        model=adapter.identity,
        saes={
            l: saes[l].meta
            | {
                "hook_name": saes[l].hook_name,
                "architecture": saes[l].architecture,
                "d_in": saes[l].d_in,
                "d_sae": saes[l].d_sae,
            }
            for l in layers
        },
        layers=layers,
        hooks={l: hooks[l].name for l in layers},
        d_sae={l: saes[l].d_sae for l in layers},
        d_model=adapter.d_model,
        corpus=corpus.identity,
        window=cfg.window,
        bos=wins.bos,
        include_bos=cfg.include_bos,
        first_window=cfg.first_window,
        n_windows=n_windows,
        n_tokens=int(n_windows * cfg.window),
        shard_windows=cfg.shard_windows,
        n_shards=n_shards,
        center_residual=adapter.center_residual,
        thresholds={"active": 0.0},
        stages=old.stages if old else {},
        extra=old.extra if old else {},
    )
    run.save(manifest)
    if adapter.tokenizer is not None and not run.file(contract.VOCAB).is_file():
        write_vocab(run, adapter.tokenizer)

    done = {int(p.name[6:11]) for p in list_shards(run)}
    todo = [i for i in range(n_shards) if i not in done]
    d_sae = {l: saes[l].d_sae for l in layers}
    with run.stage("collect") as info, make_progress(transient=not progress) as bar:
        already = sum(min(cfg.shard_windows, n_windows - i * cfg.shard_windows) for i in done if i < n_shards)
        task = bar.add_task("collect", total=n_windows * cfg.window, rate="", completed=already * cfg.window)
        t0, n_new = time.perf_counter(), 0

        def advance(tokens: int) -> None:
            nonlocal n_new
            n_new += tokens
            bar.update(task, advance=tokens, rate=f"{n_new / (time.perf_counter() - t0):,.0f} tok/s")

        spans = {i: (i * cfg.shard_windows, min((i + 1) * cfg.shard_windows, n_windows)) for i in todo}
        if cfg.ray:
            from saelineage.collect.ray import collect_on_ray

            info["ray"] = collect_on_ray(run, cfg, ids, spans, layers, advance)
        else:
            for i, (w0, w1) in spans.items():
                shard = encode_shard(adapter, saes, layers, ids, i, w0, w1, cfg.batch_windows, advance)
                store_shard(run, shard, d_sae, cfg.examples_k, wins.bos, cfg.include_bos)
        info.update(summarize_run(run, cfg.examples_k, progress=bar, write_missing=True))
        elapsed = time.perf_counter() - t0
        info["tokens_per_second"] = round(n_new / elapsed, 1) if n_new else None
    summary = {"n_tokens": n_windows * cfg.window, "n_shards": n_shards}
    return StageResult.since(t_start, "collect", run, skipped=False, summary=summary)
