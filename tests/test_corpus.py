"""Corpora and windowing."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saelineage.data.corpus import clean_wiki, load_corpus
from saelineage.data.windowing import make_windows
from saelineage.errors import SaelineageError
from saelineage.testing.tokenizers import gpt2_tokenizer


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


def test_formats_agree(tmp_path):
    docs = ["The cat sat on the mat.", "A second document, longer than the first one.", "Third."]
    (tmp_path / "folder").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "folder" / f"{i}.txt").write_text(d)
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)))
    pq.write_table(pa.table({"body": docs}), tmp_path / "c.parquet")
    assert load_corpus(tmp_path / "folder").docs == docs
    assert load_corpus(tmp_path / "c.jsonl").docs == docs
    assert load_corpus(tmp_path / "c.parquet", text_column="body").docs == docs
    assert load_corpus(tmp_path / "c.jsonl").identity["sha256"] == load_corpus(tmp_path / "folder").identity["sha256"]


def test_bad_corpora(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(SaelineageError, match="holds no text"):
        load_corpus(tmp_path / "empty.txt")
    with pytest.raises(SaelineageError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(SaelineageError, match="--text-column"):
        load_corpus(tmp_path / "c.jsonl")


def test_windows_are_bos_plus_stream(tok):
    docs = ["alpha beta gamma delta " * 20, "one two three four five " * 20]
    w = make_windows(tok, docs, window=16)
    assert w.bos and (w.ids[:, 0] == tok.bos_token_id).all()
    stream = (
        tok(docs[0], add_special_tokens=False)["input_ids"]
        + [tok.eos_token_id]
        + tok(docs[1], add_special_tokens=False)["input_ids"]
    )
    body = w.ids[:, 1:].reshape(-1)
    assert list(body) == stream[: len(body)]
    assert len(body) == (len(stream) // 15) * 15
    again = make_windows(tok, docs, window=16)
    assert np.array_equal(w.ids, again.ids)
    capped = make_windows(tok, docs, window=16, max_tokens=64)
    assert capped.ids.shape == (4, 16) and np.array_equal(capped.ids, w.ids[:4])


def test_windows_too_short(tok):
    with pytest.raises(SaelineageError, match="fewer than one window"):
        make_windows(tok, ["tiny"], window=128)


def test_clean_wiki():
    assert clean_wiki("'''Bold''' and ''it''\n==History==\n* item") == "Bold and it\nHistory\nitem"


def test_bundled_default_corpus(tok):
    c = load_corpus("default")
    assert c.identity["n_docs"] > 350
    w = make_windows(tok, c.docs, window=128)
    assert w.ids.size > 400_000
