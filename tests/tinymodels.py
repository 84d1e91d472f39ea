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
