"""Tokenise documents into fixed-length windows.

Documents are tokenised without special tokens, joined with the EOS token into one
stream, and cut into windows of `window` tokens; where the tokenizer has a BOS token each
window is BOS + (window - 1) stream tokens. Deterministic, so a run can be resumed or
reproduced from its manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from saelineage.errors import SaelineageError


class Windows(NamedTuple):
    ids: np.ndarray
    """int64 [n_windows, window] token ids"""
    bos: bool
    """True when every window starts with the BOS token"""


def _token_stream(tokenizer, docs: Sequence[str], need: int | None) -> np.ndarray:
    eos = tokenizer.eos_token_id
    parts: list[np.ndarray] = []
    total = 0
    batch = 64
    for start in range(0, len(docs), batch):
        enc = tokenizer(list(docs[start : start + batch]), add_special_tokens=False)["input_ids"]
        for ids in enc:
            if eos is not None and parts:
                parts.append(np.array([eos], np.int64))
                total += 1
            parts.append(np.asarray(ids, np.int64))
            total += len(ids)
        if need is not None and total >= need:
            break
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def make_windows(
    tokenizer,
    docs: Sequence[str],
    window: int = 128,
    max_tokens: int | None = None,
    bos: bool = True,
) -> Windows:
    """Cut `docs` into windows; `max_tokens` caps the total tokens (window count = max_tokens // window)."""
    if window < 2:
        raise SaelineageError(f"window length {window} is too short.", "use --window 2 or more (default 128).")
    bos_id = tokenizer.bos_token_id if bos else None
    body = window - 1 if bos_id is not None else window
    max_windows = None if max_tokens is None else max_tokens // window
    if max_windows == 0:
        raise SaelineageError(
            f"--max-tokens {max_tokens} is less than one window of {window} tokens.",
            "raise --max-tokens or lower --window.",
        )
    stream = _token_stream(tokenizer, docs, None if max_windows is None else max_windows * body)
    n = len(stream) // body
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise SaelineageError(
            f"the corpus yields {len(stream)} tokens, fewer than one window of {window}.",
            "use a larger corpus or a shorter --window.",
        )
    ids = stream[: n * body].reshape(n, body)
    if bos_id is not None:
        ids = np.concatenate([np.full((n, 1), bos_id, np.int64), ids], axis=1)
    return Windows(ids, bos_id is not None)
