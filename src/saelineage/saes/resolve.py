"""Turn the `--saes` option into SAEs per layer: a local folder, a SAELens release, or the default set."""

from __future__ import annotations

from pathlib import Path

from saelineage.errors import SaelineageError
from saelineage.models.presets import GPT2, GPT2_RELEASE, SMOLLM2

# Public SAELens releases we know the hook layout of: release -> (sae_id template, layers).
RELEASES = {GPT2_RELEASE: ("blocks.{l}.hook_resid_pre", list(range(12)))}


def resolve_saes(
    spec: str | None, model: str, device: str = "cpu", dtype: str = "float32", layers: list[int] | None = None
) -> dict:
    """SAEs keyed by layer for `spec` (folder, release name, or None = the model's default set)."""
    from saelineage.saes.loading import load_saes
    from saelineage.saes.release import load_release

    if spec is None:
        if model == SMOLLM2:
            from saelineage.saes.defaults import default_saes

            spec = str(default_saes())
        elif model == GPT2:
            spec = GPT2_RELEASE
        else:
            raise SaelineageError(
                f"no SAEs given for model '{model}'.",
                "pass --saes FOLDER (SAELens or sparsify format), a SAELens release name, "
                "or train some first with `saelineage train`.",
            )
    if Path(spec).exists():
        saes = load_saes(spec, device=device, dtype=dtype)
    elif spec in RELEASES:
        template, default_layers = RELEASES[spec]
        saes = {
            l: load_release(spec, template.format(l=l), device=device, dtype=dtype) for l in (layers or default_layers)
        }
    else:
        raise SaelineageError(
            f"SAE source '{spec}' is neither a folder nor a known release.",
            f"pass a folder of SAE directories or one of {sorted(RELEASES)}.",
        )
    if layers is not None:
        missing = sorted(set(layers) - set(saes))
        if missing:
            raise SaelineageError(
                f"no SAE for layers {missing} in {spec} (it has {sorted(saes)}).", "choose --layers among those."
            )
        saes = {l: saes[l] for l in layers}
    return saes
