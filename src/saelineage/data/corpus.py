"""Corpora: text files and folders, JSONL, Parquet, and the bundled English default.

The bundled default is the English text that ships inside the gensim wheel: 300 news
articles (`lee_background.cor`) and ~100 cleaned articles from a shortened English
Wikipedia dump. Documents are shuffled with a fixed seed so that any prefix/suffix split
(training vs held-out) holds both genres.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any, NamedTuple

from saelineage.errors import SaelineageError

DEFAULT = "default"
TEXT_SUFFIXES = (".txt", ".md", ".cor")


class Corpus(NamedTuple):
    """Documents plus an identity for the manifest."""

    docs: list[str]
    identity: dict


_WIKI_MARKUP = [
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"\(\s*[,;]?\s*\)"), ""),
    (re.compile(r"[ \t]+"), " "),
    (re.compile(r"\n{3,}"), "\n\n"),
]


def clean_wiki(text: str) -> str:
    """Plain prose from gensim's `filter_wiki` output (bold/italic quotes, headings, lists)."""
    for pattern, repl in _WIKI_MARKUP:
        text = pattern.sub(repl, text)
    return text.strip()


BUNDLED_VERSION = 1


def bundled_docs() -> list[str]:
    """The bundled English default corpus (news + Wikipedia), deterministic order.

    Parsing the Wikipedia dump takes seconds, so the cleaned documents are cached as JSON.
    """
    from saelineage.models.presets import cache_dir

    cached = cache_dir() / "corpus" / f"bundled-v{BUNDLED_VERSION}.json"
    if cached.is_file():
        try:
            return json.loads(cached.read_text(encoding="utf8"))
        except (OSError, json.JSONDecodeError):
            pass
    docs = _parse_bundled()
    try:
        from saelineage.run import atomic_write_bytes

        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, json.dumps(docs).encode("utf8"))
    except OSError:
        pass  # a read-only cache only costs time
    return docs


def _parse_bundled() -> list[str]:
    try:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
        from gensim.test.utils import datapath
    except ImportError as exc:  # pragma: no cover - gensim is a dependency
        raise SaelineageError("the bundled corpus needs gensim.", "pip install gensim") from exc
    news = [line.strip() for line in open(datapath("lee_background.cor"), encoding="utf8") if line.strip()]
    wiki_file = datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    wiki = []
    with bz2.BZ2File(wiki_file) as fh:
        for _title, text, _pid in extract_pages(fh):
            if text.lstrip().upper().startswith("#REDIRECT"):
                continue
            body = clean_wiki(filter_wiki(text))
            if len(body.split()) >= 50:
                wiki.append(body)
    docs = news + wiki
    random.Random(0).shuffle(docs)
    return docs


def _read_jsonl(path: Path, column: str) -> list[str]:
    docs = []
    with open(path, encoding="utf8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SaelineageError(f"{path}:{n} is not valid JSON ({exc.msg}).", "fix or remove that line.") from exc
            if column not in row:
                raise SaelineageError(
                    f"{path}:{n} has no '{column}' field (fields: {sorted(row)[:8]}).",
                    "name the text field with --text-column.",
                )
            docs.append(str(row[column]))
    return docs


def _read_parquet(path: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    if column not in schema.names:
        raise SaelineageError(
            f"{path} has no '{column}' column (columns: {schema.names[:8]}).",
            "name the text column with --text-column.",
        )
    return [str(x) for x in pq.read_table(path, columns=[column]).column(column).to_pylist() if x is not None]


def _read_path(path: Path, column: str) -> list[str]:
    if path.is_dir():
        docs: list[str] = []
        for p in sorted(path.rglob("*")):
            if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.suffix in (".jsonl", ".parquet")):
                docs.extend(_read_path(p, column))
        return docs
    if path.suffix == ".jsonl":
        return _read_jsonl(path, column)
    if path.suffix == ".parquet":
        return _read_parquet(path, column)
    return [path.read_text(encoding="utf8", errors="replace")]


def load_corpus(spec: str | Path | None = None, text_column: str = "text") -> Corpus:
    """Load documents from `spec`: None/'default' (bundled), a text file, a folder, .jsonl or .parquet."""
    if spec is None or str(spec) == DEFAULT:
        docs = bundled_docs()
        ident: dict[str, Any] = {"spec": DEFAULT, "source": "gensim test data: lee_background.cor + enwiki shortened"}
    else:
        path = Path(spec)
        if not path.exists():
            raise SaelineageError(
                f"corpus {path} does not exist.",
                "pass a text file, a folder of .txt files, a .jsonl or .parquet file, or 'default'.",
            )
        docs = _read_path(path, text_column)
        ident = {"spec": str(path.resolve())}
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise SaelineageError(f"the corpus '{spec}' holds no text.", "point --corpus at files that contain text.")
    h = hashlib.sha256()
    for d in docs:
        h.update(hashlib.sha256(d.encode("utf8")).digest())
    ident.update({"n_docs": len(docs), "sha256": h.hexdigest()})
    return Corpus(docs, ident)
