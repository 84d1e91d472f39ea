"""Load a causal LM (preset name, local folder or hub id) into a ModelAdapter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from saelineage.errors import SaelineageError
from saelineage.models.adapter import ModelAdapter
from saelineage.models.presets import GPT2, SMOLLM2, smollm2_folder
from saelineage.run import sha256_file

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise SaelineageError(f"unknown dtype '{name}'.", f"use one of {sorted(DTYPES)}") from None


def weights_sha256(folder: Path) -> str:
    """sha256 over a folder's weight files (cached next to them, keyed by size and mtime)."""
    import hashlib

    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        stamp = folder / f".{p.name}.{st.st_size}.{int(st.st_mtime)}.sha256"
        if stamp.is_file():
            digest = stamp.read_text().strip()
        else:
            digest = sha256_file(p)
            try:
                stamp.write_text(digest)
            except OSError:
                pass
        h.update(p.name.encode() + digest.encode())
    return h.hexdigest()


def resolve_model(spec: str) -> tuple[str, bool]:
    """Map a model spec to (path-or-hub-id, center_residual default)."""
    if spec == SMOLLM2:
        return str(smollm2_folder()), False
    if spec == GPT2:
        return "gpt2", True
    return spec, False


def load_model(
    spec: str = SMOLLM2,
    dtype: str = "float32",
    device: str = "cpu",
    center_residual: bool | None = None,
    blocks_path: str | None = None,
) -> ModelAdapter:
    """Load a model by preset name (`smollm2`, `gpt2`), local folder or hub id.

    blocks_path: attribute path of the decoder-block list (e.g. ``model.layers``) for models
    whose blocks are not found automatically.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SaelineageError("--device cuda was asked for but no CUDA device is available.", "use --device cpu")
    path, centre_default = resolve_model(spec)
    local = Path(path).is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=parse_dtype(dtype))
    except OSError as exc:
        if local:
            raise SaelineageError(
                f"cannot load a model from {path} ({exc}).",
                "point to a Hugging Face model folder (config.json + weights).",
            ) from exc
        from huggingface_hub import constants

        raise SaelineageError(
            f"model '{spec}' is not a local folder and could not be fetched from the Hugging Face hub"
            + (" (HF_HUB_OFFLINE=1)" if offline else "")
            + f": it needs https://huggingface.co/{path} (config, weights, tokenizer) in {constants.HF_HUB_CACHE}.",
            "connect to the internet once to cache it, or pass a local model folder; "
            "the embedded default needs no network: --model smollm2.",
        ) from exc
    model.to(device)  # type: ignore[arg-type]  # transformers types PreTrainedModel.to via a wrapper mypy misreads
    identity: dict[str, Any] = {"spec": spec, "path": path, "class": type(model).__name__, "dtype": dtype}
    if local:
        identity["sha256"] = weights_sha256(Path(path))
    else:
        identity["revision"] = getattr(model.config, "_commit_hash", None)
    centre = centre_default if center_residual is None else center_residual
    return ModelAdapter(
        model=model, tokenizer=tok, center_residual=centre, name=spec, identity=identity, blocks_path=blocks_path
    )
