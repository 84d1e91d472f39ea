"""Turn the `--saes` option into SAEs per layer: a local folder, a SAELens release by name, or the default set.

A release is resolved through its published SAE names (saes/catalog.py): `--sae-id`, `--width`
and `--l0` pick one stack of SAEs, and each SAE then loads through sae_lens's own loader
(saes/release.py), which reads its hook from the SAE's config.
"""

from __future__ import annotations

from pathlib import Path

from saelineage.errors import SaelineageError
from saelineage.models.presets import GPT2, GPT2_RELEASE, SMOLLM2
from saelineage.saes.catalog import ReleaseChoice


def is_folder(spec: str | None) -> bool:
    return spec is not None and Path(spec).expanduser().exists()


def release_model(spec: str | None, model: str | None) -> str | None:
    """The model to load for SAE source `spec`: the release's model when `spec` is a release (an explicit
    `model` that names another model is an error naming both, raised before any weights load); `model`
    otherwise (None: the embedded default)."""
    if spec is None or is_folder(spec):
        return model
    from saelineage.saes import catalog

    release = catalog.get_release(spec)
    wanted = catalog.hub_model(release.model)
    if model is None:
        return wanted
    if Path(model).expanduser().is_dir():
        return model  # a local copy: its width is checked against the SAEs when they load
    given = catalog.hub_model(model)
    if given.lower() != wanted.lower():
        raise SaelineageError(
            f"release '{spec}' holds SAEs of model '{release.model}' ({wanted}), but --model is '{model}'.",
            f"drop --model (the release's model is used), pass --model {wanted}, or a local folder of that model.",
        )
    return model


def resolve_saes(
    spec: str | None,
    model: str,
    device: str = "cpu",
    dtype: str = "float32",
    layers: list[int] | None = None,
    choice: ReleaseChoice | None = None,
) -> dict:
    """SAEs keyed by layer for `spec` (folder, release name, or None = the model's default set)."""
    from saelineage.saes.loading import load_saes

    if spec is None:
        if model == SMOLLM2:
            from saelineage.saes.defaults import default_saes

            spec = str(default_saes())
        elif model == GPT2:
            spec = GPT2_RELEASE
        else:
            raise SaelineageError(
                f"no SAEs given for model '{model}'.",
                "pass --saes FOLDER (SAELens or sparsify format), a SAELens release name "
                "(`saelineage releases --model MODEL` lists them), or train some first with `saelineage train`.",
            )
    if is_folder(spec):
        saes = load_saes(spec, device=device, dtype=dtype)
    else:
        ids = release_ids(spec, layers, choice)
        from saelineage.saes.release import load_release

        saes = {l: load_release(spec, sid, device=device, dtype=dtype) for l, sid in ids.items()}
        moved = {l: s.hook.layer for l, s in saes.items() if s.hook.layer != l}
        if moved:
            raise SaelineageError(
                f"release '{spec}': SAE ids name layers {sorted(moved)} but their configs hook layers "
                f"{sorted(moved.values())}.",
                "pass --sae-id naming the SAEs of the layers you want.",
            )
    if layers is not None:
        missing = sorted(set(layers) - set(saes))
        if missing:
            raise SaelineageError(
                f"no SAE for layers {missing} in {spec} (it has {sorted(saes)}).", "choose --layers among those."
            )
        saes = {l: saes[l] for l in layers}
    return saes


def release_ids(spec: str, layers: list[int] | None, choice: ReleaseChoice | None = None) -> dict[int, str]:
    """{layer: sae id} of release `spec` for the user's choice (one error listing the choices when ambiguous)."""
    from saelineage.saes import catalog

    c = choice or ReleaseChoice()
    return catalog.select(
        catalog.get_release(spec), sae_id=c.sae_id, width=c.width, l0=c.l0, seed=c.seed, layers=layers
    )
