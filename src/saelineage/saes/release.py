"""SAELens hub releases (e.g. `gpt2-small-res-jb`), loaded through sae_lens.

The only place saelineage imports sae_lens. sae_lens maps the release to a hub repository,
downloads once (then reads the Hugging Face cache), and folds any release-specific activation
scaling into the weights; we copy the resulting tensors into our `SAE`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from saelineage.errors import SaelineageError
from saelineage.run import sha256_file
from saelineage.saes.loading import SAELENS_WEIGHTS, sae_from_tensors
from saelineage.saes.sae import SAE, dtype_name, to_dtype, weights_sha256_of_tensors


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def load_release(
    release: str, sae_id: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
) -> SAE:
    """Load SAE `sae_id` of a SAELens release (e.g. 'gpt2-small-res-jb', 'blocks.3.hook_resid_pre')
    through sae_lens. Needs the Hugging Face hub once (then the hub cache); offline without a
    cached copy it raises SaelineageError saying how to pass a local folder instead."""
    local_fix = (
        "or pass a local folder instead: --saes FOLDER with one SAELens folder per layer "
        "(cfg.json + sae_weights.safetensors, e.g. FOLDER/blocks.3.hook_resid_pre/)."
    )
    try:
        from sae_lens import SAE as SaeLensSAE
        from sae_lens.loading.pretrained_saes_directory import (
            get_config_overrides,
            get_pretrained_saes_directory,
            get_repo_id_and_folder_name,
        )
    except ImportError as exc:
        raise SaelineageError(
            f"loading the SAELens release '{release}' needs the sae_lens package.",
            "pip install sae-lens (the release also needs the Hugging Face hub once), " + local_fix,
        ) from exc
    directory = get_pretrained_saes_directory()
    if release not in directory and "/" not in release:
        close = sorted(r for r in directory if release.split("-")[0] in r)[:6]
        raise SaelineageError(
            f"'{release}' is not a SAELens release.",
            "use a release name from sae_lens's pretrained_saes.yaml"
            f"{f' (e.g. {close})' if close else ''}, {local_fix}",
        )
    if release in directory and sae_id not in directory[release].saes_map:
        ids = list(directory[release].saes_map)
        raise SaelineageError(
            f"release '{release}' has no SAE '{sae_id}'.", f"choose one of {ids[:6]}{' ...' if len(ids) > 6 else ''}."
        )
    repo_id, folder = get_repo_id_and_folder_name(release, sae_id)
    if _hub_offline() and not _in_hub_cache(repo_id, folder):
        raise SaelineageError(
            f"the SAELens release '{release}' ({sae_id}) is not in the local Hugging Face cache, and the hub is "
            "offline (HF_HUB_OFFLINE=1).",
            f"the release needs the hub once: run once online (unset HF_HUB_OFFLINE) to cache it, {local_fix}",
        )
    try:
        sl = SaeLensSAE.from_pretrained(release, sae_id, device=str(device), dtype=dtype_name(to_dtype(dtype)))
    except ValueError as exc:
        raise SaelineageError(
            f"cannot load release '{release}' / '{sae_id}': {exc}", f"check the release name and sae_id, {local_fix}"
        ) from exc
    except (OSError, ConnectionError) as exc:  # hub errors: offline, not cached, network down
        raise SaelineageError(
            f"could not fetch the SAELens release '{release}' ({sae_id}) from the Hugging Face hub "
            f"({type(exc).__name__}).",
            f"the release needs the hub once: run once with network access to cache it, {local_fix}",
        ) from exc
    overrides = get_config_overrides(release, sae_id) if release in directory else {}
    return _from_saelens_object(sl, release, sae_id, repo_id, folder, overrides or {}, device, to_dtype(dtype))


def _in_hub_cache(repo_id: str, folder: str) -> bool:
    """Whether any snapshot of `repo_id` in the local hub cache holds `folder` (no network)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    snaps = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snaps.is_dir() and any((s / folder).exists() for s in snaps.iterdir())


def _from_saelens_object(
    sl: Any, release: str, sae_id: str, repo_id: str, folder: str, overrides: dict, device, dtype
) -> SAE:
    """Our SAE from a loaded sae_lens SAE (weights already folded by sae_lens)."""
    arch = sl.cfg.architecture()
    w = {n: getattr(sl, n).detach() for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold") if hasattr(sl, n)}
    norm = {
        "architecture": arch,
        "hook_name": sl.cfg.metadata.hook_name,
        "k": getattr(sl.cfg, "k", None),
        "apply_b_dec_to_input": sl.cfg.apply_b_dec_to_input,
        "normalize_activations": sl.cfg.normalize_activations,
        "rescale_acts_by_decoder_norm": getattr(sl.cfg, "rescale_acts_by_decoder_norm", False),
    }
    if arch not in ("standard", "jumprelu", "topk"):
        raise SaelineageError(
            f"release '{release}' / '{sae_id}' has unsupported architecture '{arch}'.",
            "saelineage encodes standard, jumprelu and topk SAEs.",
        )
    meta: dict[str, Any] = {"path": None, "format": "saelens", "release": release, "sae_id": sae_id, "repo_id": repo_id}
    kwargs = sl.cfg.metadata.model_from_pretrained_kwargs or overrides.get("model_from_pretrained_kwargs")
    if kwargs:  # e.g. center_writing_weights=True: the residual stream must be mean-centred to match
        meta["model_from_pretrained_kwargs"] = dict(kwargs)
    cached = _cached_file(repo_id, f"{folder}/{SAELENS_WEIGHTS}")
    meta["sha256"] = sha256_file(cached) if cached else weights_sha256_of_tensors(w)
    meta["sha256_of"] = "file" if cached else "tensors"
    return sae_from_tensors(w, norm, meta, device, dtype)


def _cached_file(repo_id: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        got = try_to_load_from_cache(repo_id, filename)
    except Exception:  # noqa: BLE001 - the hash falls back to hashing tensors; never fail a load on this
        return None
    return got if isinstance(got, str) else None
