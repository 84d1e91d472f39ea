"""Tiny random causal LMs with real tokenizers, saved as local HF folders (offline, seconds)."""

from __future__ import annotations

from pathlib import Path

import torch

from saelineage.testing.tokenizers import gpt2_tokenizer


def _save(model, tok, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_llama(folder: Path, n_layers: int = 4, d: int = 64, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = gpt2_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d,
        intermediate_size=2 * d,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    return _save(LlamaForCausalLM(cfg), tok, folder)


def tiny_gpt2(folder: Path, n_layers: int = 3, d: int = 64, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tok = gpt2_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=d, n_layer=n_layers, n_head=4, n_positions=256)
    return _save(GPT2LMHeadModel(cfg), tok, folder)


def tiny_neox(folder: Path, n_layers: int = 3, d: int = 64, seed: int = 0) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    tok = gpt2_tokenizer()
    cfg = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=d,
        intermediate_size=2 * d,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return _save(GPTNeoXForCausalLM(cfg), tok, folder)


# Tiny in-memory models of each supported family (random weights, vocab 512), for hook-mapping tests.
FAMILIES = (
    "gpt2",
    "neox",
    "neox_sequential",
    "llama3",
    "gemma2",
    "gemma3",
    "qwen2",
    "qwen3",
    "mistral",
    "phi3",
    "phi",
)


def tiny_family(family: str, n_layers: int = 2, d: int = 64, vocab: int = 512, seed: int = 0):
    """A random-weight causal LM of `family` (one of FAMILIES) in float32, eval mode."""
    import transformers as T

    common = dict(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=2 * d,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    # Sliding window smaller than the test sequences, so local attention is exercised.
    gemma = dict(common, head_dim=24, query_pre_attn_scalar=24, sliding_window=6)
    layer_types = ["sliding_attention", "full_attention"] * (n_layers // 2) + ["sliding_attention"] * (n_layers % 2)
    builders = {
        "gpt2": lambda: T.GPT2Config(
            vocab_size=vocab,
            n_embd=d,
            n_layer=n_layers,
            n_head=4,
            n_positions=128,
            bos_token_id=1,
            eos_token_id=2,
            n_ctx=128,  # transformers 5 dropped it; real GPT-2 configs still carry it and TransformerLens reads it
        ),
        "neox": lambda: T.GPTNeoXConfig(**dict(common, num_key_value_heads=None), rotary_pct=0.25),
        "neox_sequential": lambda: T.GPTNeoXConfig(
            **dict(common, num_key_value_heads=None), rotary_pct=0.25, use_parallel_residual=False
        ),
        "llama3": lambda: T.LlamaConfig(
            **common,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        "gemma2": lambda: T.Gemma2Config(**gemma, layer_types=layer_types),
        "gemma3": lambda: T.Gemma3TextConfig(**gemma, layer_types=layer_types),
        "qwen2": lambda: T.Qwen2Config(**common),
        "qwen3": lambda: T.Qwen3Config(**common, head_dim=16),
        "mistral": lambda: T.MistralConfig(**common, sliding_window=None),
        "phi3": lambda: T.Phi3Config(**common),
        "phi": lambda: T.PhiConfig(**dict(common, num_key_value_heads=None), partial_rotary_factor=0.5),
    }
    cfg = builders[family]()
    cfg.architectures = None
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.config.architectures = [type(model).__name__]
    # Norm weights start at exactly 1 (0 for Gemma's 1 + w) and biases at 0; perturb every vector
    # parameter so the tests see whether a norm weight or a bias is inside a captured site.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()
