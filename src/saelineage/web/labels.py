"""Feature labels and Neuronpedia: importing explanations (Neuronpedia exports, CSV), exporting
them and feature lists in the formats Neuronpedia imports, and Neuronpedia links.

Imported labels go to ``RUN/labels.parquet`` (layer, feature, explanation, source). The
browser shows, for each feature, the imported label, else the analysis stage's
`explanation`, else an automatic label from the tokens it fires on most among its top
examples (built in `cache.py`).

What maps to what (Neuronpedia's explanation records and list entries):
``modelId`` + ``layer`` (the SAE's Neuronpedia source id, e.g. "gpt2-small" + "6-res-jb") ↔ the
run's layer (and its SAE), ``index`` ↔ feature, ``description`` ↔ label. For SAEs of a public
SAELens release the source id comes from sae_lens's release table (`neuronpedia_ids`); for other
SAEs the caller names one (``{layer}`` in a template), as uploaded to Neuronpedia.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from saelineage import contract
from saelineage.errors import SaelineageError
from saelineage.run import RunDir, writes_run

MAX_LABEL_CHARS = 1000
_LAYER_RE = re.compile(r"^\s*(?:blocks\.)?(\d+)")

# Neuronpedia source ids of public SAE releases we know without sae_lens (release -> template).
KNOWN_NEURONPEDIA = {"gpt2-small-res-jb": "gpt2-small/{layer}-res-jb"}


def _layer_of(value: Any) -> int | None:
    """Layer from an int, '6', '6-res-jb' (Neuronpedia source id) or 'blocks.6.hook_resid_pre'."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    m = _LAYER_RE.match(str(value))
    if m is None:
        m = re.search(r"blocks\.(\d+)\.", str(value))
    return int(m.group(1)) if m else None


def _records_from_json(text: str) -> list[dict]:
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # JSON lines
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        for key in ("explanations", "features", "data", "results"):
            if isinstance(data.get(key), list):
                return data[key]
        return [data]
    if not isinstance(data, list):
        raise SaelineageError(
            "the label file holds neither a list nor an object of explanations.",
            "pass a Neuronpedia explanation export (a JSON list) or a CSV.",
        )
    return data


def _from_record(r: dict) -> tuple[int, int, str] | None:
    """(layer, feature, text) of one Neuronpedia-style record, or None when it lacks a part."""
    if not isinstance(r, dict):
        return None
    text = next((r[k] for k in ("description", "explanation", "label", "text") if isinstance(r.get(k), str)), None)
    layer = next((_layer_of(r[k]) for k in ("layer", "saeId", "sae_id", "source") if r.get(k) is not None), None)
    feat = next((r[k] for k in ("index", "feature", "featureIndex", "feature_index") if r.get(k) is not None), None)
    try:
        feat = int(feat) if feat is not None else None
    except (TypeError, ValueError):
        feat = None
    if text is None or layer is None or feat is None:
        return None
    return layer, feat, text


def _records_from_csv(text: str) -> Iterable[tuple[int, int, str]]:
    reader = csv.DictReader(io.StringIO(text))
    fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
    need = [
        next((fields[k] for k in names if k in fields), None)
        for names in (("layer",), ("feature", "index"), ("explanation", "description", "label"))
    ]
    if None in need:
        raise SaelineageError(
            f"the CSV header {reader.fieldnames} lacks layer, feature or explanation.",
            "use a header row: layer,feature,explanation",
        )
    for row in reader:
        layer, feat = _layer_of(row[need[0]]), row[need[1]]
        try:
            yield int(layer), int(feat), row[need[2]] or ""  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue


def read_label_file(path: str | Path) -> list[tuple[int, int, str]]:
    """(layer, feature, explanation) rows from a Neuronpedia export (.json/.jsonl[.gz]) or a CSV."""
    p = Path(path)
    if not p.is_file():
        raise SaelineageError(f"label file {p} does not exist.", "check the path.")
    raw = p.read_bytes()
    if p.suffix == ".gz":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig", errors="replace")
    name = p.name.lower().removesuffix(".gz")
    if name.endswith(".csv") or name.endswith(".tsv"):
        rows = list(_records_from_csv(text if name.endswith(".csv") else text.replace("\t", ",")))
    else:
        try:
            recs = _records_from_json(text)
        except json.JSONDecodeError as exc:
            raise SaelineageError(
                f"{p} is neither JSON, JSON lines nor CSV ({exc}).",
                "pass a Neuronpedia explanation export or a CSV with layer,feature,explanation.",
            ) from exc
        rows = [x for x in map(_from_record, recs) if x is not None]
    return [(l, f, t.strip()[:MAX_LABEL_CHARS]) for l, f, t in rows]


@writes_run("labels import", again="`saelineage labels import {run} FILE` with the same FILE")
def import_labels(run_dir: str | Path, path: str | Path, replace: bool = False) -> dict[str, int]:
    """Merge explanations from `path` into RUN/labels.parquet; returns counts (read, kept, unknown)."""
    import pyarrow.parquet as pq

    from saelineage.run import write_parquet

    run = RunDir(run_dir)
    d_sae = run.load().d_sae
    rows = read_label_file(path)
    if not rows:
        raise SaelineageError(
            f"no explanations found in {path}.",
            "a Neuronpedia export needs layer/index/description per entry; a CSV needs layer,feature,explanation.",
        )
    merged: dict[tuple[int, int], tuple[str, str]] = {}
    out = run.file(contract.LABELS)
    if out.is_file() and not replace:
        old = pq.read_table(out).to_pydict()
        for l, f, e, s in zip(
            old["layer"], old["feature"], old["explanation"], old.get("source", [""] * len(old["layer"]))
        ):
            merged[(int(l), int(f))] = (e, s)
    unknown = 0
    for l, f, text in rows:
        if l not in d_sae or not 0 <= f < d_sae[l]:
            unknown += 1
            continue
        if (l, f) not in merged or merged[(l, f)][1] != Path(path).name:
            merged[(l, f)] = (text, Path(path).name)
    if not merged:
        raise SaelineageError(
            f"none of the {len(rows)} explanations in {path} match a layer and feature of this run "
            f"(layers {sorted(d_sae)}).",
            "check that the export is for this model and these SAEs.",
        )
    keys = sorted(merged)
    write_parquet(
        out,
        pa.table(
            {
                "layer": pa.array([k[0] for k in keys], pa.int64()),
                "feature": pa.array([k[1] for k in keys], pa.int64()),
                "explanation": [merged[k][0] for k in keys],
                "source": [merged[k][1] for k in keys],
            }
        ),
    )
    return {"read": len(rows), "kept": len(rows) - unknown, "unknown": unknown, "total": len(keys)}


# ---- Neuronpedia links ------------------------------------------------------------------


def _from_saelens_yaml(release: str, sae_id: str) -> str | None:
    """Neuronpedia id of (release, sae_id) from sae_lens's pretrained_saes.yaml, without importing sae_lens."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained_saes.yaml"
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    start = re.search(rf"^{re.escape(release)}:\s*$", text, re.M)
    if start is None:
        return None
    nxt = re.search(r"^\S", text[start.end() :], re.M)
    block = text[start.end() : start.end() + nxt.start() if nxt else len(text)]
    m = re.search(rf"- id: {re.escape(sae_id)}\s*\n((?:\s{{4,}}.*\n)*)", block + "\n")
    if m is None:
        return None
    np_m = re.search(r"neuronpedia:\s*(\S+)", m.group(1))
    return np_m.group(1) if np_m and np_m.group(1) not in ("null", "~") else None


def neuronpedia_ids(saes: Mapping[int, dict[str, Any]]) -> dict[int, str]:
    """{layer: Neuronpedia source id} for the SAEs (the manifest's `saes`) that belong to a known public release."""
    out: dict[int, str] = {}
    for layer, meta in saes.items():
        meta = meta or {}
        if meta.get("neuronpedia"):
            out[int(layer)] = str(meta["neuronpedia"])
            continue
        release, sae_id = meta.get("release"), meta.get("sae_id")
        if not release:
            continue
        if release in KNOWN_NEURONPEDIA:
            out[int(layer)] = KNOWN_NEURONPEDIA[release].format(layer=int(layer))
        elif sae_id:
            found = _from_saelens_yaml(str(release), str(sae_id))
            if found:
                out[int(layer)] = found
    return out


def neuronpedia_url(ids: dict[int, str], layer: int, feature: int) -> str | None:
    src = ids.get(int(layer))
    return f"https://www.neuronpedia.org/{src}/{int(feature)}" if src else None


# ---- exports in Neuronpedia's formats ------------------------------------------------------------

NEURONPEDIA_QUICK_LIST = "https://www.neuronpedia.org/quick-list/"
QUICK_LIST_MAX = 100
"""Features up to which a list also gets a quick-list URL (the features travel in the URL)."""


def neuronpedia_sources(saes: Mapping[int, dict[str, Any]], template: str | None = None) -> dict[int, tuple[str, str]]:
    """{layer: (modelId, source)} for Neuronpedia records: `template` ("MODEL/{layer}-SOURCE", e.g.
    "gpt2-small/{layer}-res-jb") when given, else the SAEs' release ids (`neuronpedia_ids`)."""
    out: dict[int, tuple[str, str]] = {}
    known = neuronpedia_ids(saes)
    for layer in saes:
        full = template.format(layer=int(layer)) if template else known.get(int(layer))
        if full is None:
            continue
        model, _, source = full.partition("/")
        if not model or not source:
            fix = "e.g. --neuronpedia-id 'gpt2-small/{layer}-res-jb'."
            raise SaelineageError(f"the Neuronpedia id {full!r} is not MODEL/SOURCE.", fix)
        out[int(layer)] = (model, source)
    return out


def _sources_or_fail(saes: Mapping[int, dict[str, Any]], template: str | None, layers: set[int]) -> dict:
    src = neuronpedia_sources(saes, template)
    missing = sorted(layers - set(src))
    if missing:
        raise SaelineageError(
            f"the SAEs of layers {missing} have no Neuronpedia id (they are no public SAELens release).",
            "name the Neuronpedia source they were uploaded as: --neuronpedia-id 'MODEL/{layer}-SOURCE'.",
        )
    return src


def neuronpedia_explanations(
    saes: Mapping[int, dict[str, Any]],
    labels: Iterable[tuple[int, int, str, str]],
    template: str | None = None,
) -> list[dict[str, str]]:
    """Explanation records as Neuronpedia exports and imports them, one per (layer, feature, label, kind):
    modelId, layer (source id), index, description, explanationModelName ("saelineage") and typeName
    (`kind`: "imported" or "top-tokens"). `saelineage labels import` reads them back."""
    rows = list(labels)
    src = _sources_or_fail(saes, template, {int(l) for l, _, _, _ in rows})
    return [
        {
            "modelId": src[int(l)][0],
            "layer": src[int(l)][1],
            "index": str(int(f)),
            "description": text,
            "explanationModelName": "saelineage",
            "typeName": kind,
        }
        for l, f, text, kind in rows
    ]


def neuronpedia_list(
    saes: Mapping[int, dict[str, Any]],
    features: Iterable[tuple[int, int, str]],
    name: str,
    template: str | None = None,
) -> dict[str, Any]:
    """A feature list as Neuronpedia's lists take it: entries {modelId, layer, index, description}, plus
    a quick-list URL that opens the list on neuronpedia.org (for up to QUICK_LIST_MAX features)."""
    import urllib.parse

    rows = list(features)
    src = _sources_or_fail(saes, template, {int(l) for l, _, _ in rows})
    entries = [
        {"modelId": src[int(l)][0], "layer": src[int(l)][1], "index": str(int(f)), "description": text}
        for l, f, text in rows
    ]
    out: dict[str, Any] = {"name": name, "features": entries}
    if len(entries) <= QUICK_LIST_MAX:
        out["url"] = (
            f"{NEURONPEDIA_QUICK_LIST}?name={urllib.parse.quote(name)}"
            f"&features={urllib.parse.quote(json.dumps(entries, separators=(',', ':')))}"
        )
    return out
