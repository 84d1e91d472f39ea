"""Re-open the model and SAEs a run was collected with (for prompts and ablations)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from saelineage.errors import SaelineageError
from saelineage.run import RunDir


class RunModel(NamedTuple):
    """The model adapter and per-layer SAEs of a run."""

    adapter: object
    """saelineage.models.adapter.ModelAdapter"""
    saes: dict
    """{layer: saelineage.saes.sae.SAE}"""


def load_run_model(run: RunDir | str | Path, device: str | None = None) -> RunModel:
    """Load the model and SAEs recorded in the run's manifest.

    Raises a SaelineageError when the run was imported without a model, or the model/SAE
    files are no longer where the manifest says.
    """
    from saelineage.models.loading import load_model
    from saelineage.saes.loading import load_sae

    run = run if isinstance(run, RunDir) else RunDir(run)
    m = run.load()
    cfg = m.config or {}
    spec = cfg.get("model") or m.model.get("spec")
    if not spec or spec == "imported":
        raise SaelineageError(
            f"run {run.path} was imported without a model.",
            "prompts and ablations need the model: collect the corpus with "
            "`saelineage collect RUN --model MODEL --saes SAES` into a new run directory.",
        )
    saes = {}
    for layer in m.layers:
        meta = m.saes.get(layer) or {}
        path = meta.get("path")
        if not path and meta.get("release") and meta.get("sae_id"):  # a SAELens release: the hub cache, or the hub
            from saelineage.saes.release import load_release

            saes[layer] = load_release(
                meta["release"],
                meta["sae_id"],
                device=device or cfg.get("device", "cpu"),
                dtype=cfg.get("dtype", "float32"),
            )
            continue
        if not path or not Path(path).exists():
            from saelineage.hints import collect_command

            again = collect_command(run.path, force=True, manifest=m, saes="NEW_FOLDER")
            raise SaelineageError(
                f"the SAE of layer {layer} is not at {path!r} any more.",
                f"restore that folder, or collect the run again from the SAEs' new folder: `{again}`.",
            )
        saes[layer] = load_sae(path, device=device or cfg.get("device", "cpu"), dtype=cfg.get("dtype", "float32"))
    adapter = load_model(
        spec,
        dtype=cfg.get("dtype", "float32"),
        device=device or cfg.get("device", "cpu"),
        center_residual=m.center_residual,
        blocks_path=cfg.get("blocks_path"),
    )
    return RunModel(adapter, saes)
