"""SAELens hub releases (e.g. `gpt2-small-res-jb`), loaded through sae_lens.

The only place saelineage imports sae_lens. sae_lens maps the release to a hub repository,
downloads once (then reads the Hugging Face cache), and folds any release-specific activation
scaling into the weights; we copy the resulting tensors into our `SAE`.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
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


# sae_lens inference architectures → how saelineage encodes them. A transcoder's latents are read
# at its input site exactly like an SAE's; only its decoder writes elsewhere (docs/design.md).
_ENCODE_AS = {
    "standard": "standard",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "transcoder": "standard",
    "skip_transcoder": "standard",
    "jumprelu_transcoder": "jumprelu",
    "jumprelu_skip_transcoder": "jumprelu",
}


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
            f"offline (HF_HUB_OFFLINE=1): it would fetch https://huggingface.co/{repo_id} files '{folder}/…' into "
            f"{_hub_cache_dir()}.",
            f"run once online (unset HF_HUB_OFFLINE) to cache it, {local_fix}",
        )
    try:
        with shapes_from_hub_cache():
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


@contextlib.contextmanager
def shapes_from_hub_cache() -> Iterator[None]:
    """While open, sae_lens reads safetensors tensor shapes from the local hub cache when the file is there.

    sae_lens's Gemma Scope 2 and CLT config getters ask the hub for a weights file's header by HTTP
    range request (`get_safetensors_tensor_shapes`), which ignores HF_HUB_OFFLINE and the cache; a
    cached release would then fail to load offline. A cached file answers from its own header; any
    other file goes to sae_lens's function unchanged.
    """
    from sae_lens.loading import pretrained_sae_loaders as loaders

    original = loaders.get_safetensors_tensor_shapes

    def shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        cached = _cached_file(repo_id, filename)
        if cached is None:
            return original(repo_id, filename)
        return safetensors_shapes(Path(cached))

    loaders.get_safetensors_tensor_shapes = shapes
    try:
        yield
    finally:
        loaders.get_safetensors_tensor_shapes = original


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """{tensor name: shape} from a safetensors file's header (8-byte length + JSON), reading nothing else."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {name: info["shape"] for name, info in header.items() if name != "__metadata__"}


def _hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return "the Hugging Face cache"
    return str(constants.HF_HUB_CACHE)


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
    encode_as = _ENCODE_AS.get(arch)
    if encode_as is None:
        raise SaelineageError(
            f"release '{release}' / '{sae_id}' has architecture '{arch}', which saelineage cannot encode.",
            "use a release of standard (ReLU), JumpReLU or TopK SAEs, or of transcoders "
            "(`saelineage releases` lists them with their architecture).",
        )
    w = {n: getattr(sl, n).detach() for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold") if hasattr(sl, n)}
    md = sl.cfg.metadata
    norm = {
        "architecture": encode_as,
        "hook_name": md.hook_name,
        "k": getattr(sl.cfg, "k", None),
        "apply_b_dec_to_input": sl.cfg.apply_b_dec_to_input,
        "normalize_activations": sl.cfg.normalize_activations,
        "rescale_acts_by_decoder_norm": getattr(sl.cfg, "rescale_acts_by_decoder_norm", False),
        "transcoder": "transcoder" in arch,
    }
    meta: dict[str, Any] = {"path": None, "format": "saelens", "release": release, "sae_id": sae_id, "repo_id": repo_id}
    if arch != encode_as:
        meta["saelens_architecture"] = arch
    for key in ("hf_hook_name", "hook_name_out", "hf_hook_name_out"):  # where a transcoder writes; HF site names
        if getattr(md, key, None):
            meta[key] = getattr(md, key)
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
