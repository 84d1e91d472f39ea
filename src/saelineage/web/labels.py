"""Feature labels: importing explanations (Neuronpedia exports, CSV) into the run.

Imported labels go to ``RUN/labels.parquet`` (layer, feature, explanation, source). The
browser shows, for each feature, the imported label, else the analysis stage's
`explanation`, else an automatic label from the tokens it fires on most among its top
examples (built in `saelineage.query.cache`).

A Neuronpedia record's ``layer`` is its SAE's source id ("6-res-jb"), ``index`` the feature and
``description`` the label (`saelineage.query.neuronpedia` writes the same records).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from saelineage import contract
from saelineage.errors import SaelineageError
from saelineage.run import RunDir, writes_run

MAX_LABEL_CHARS = 1000
_LAYER_RE = re.compile(r"^\s*(?:blocks\.)?(\d+)")


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


STAGE = "labels import"
"""The manifest entry of label imports (contract.WRITER names it as labels.parquet's writer)."""


@writes_run(STAGE, again="`saelineage labels import {run} FILE` with the same FILE")
def import_labels(run_dir: str | Path, path: str | Path, replace: bool = False) -> dict[str, int]:
    """Merge explanations from `path` into RUN/labels.parquet; returns counts (read, kept, unknown).

    The manifest's "labels import" entry records each imported file in order (`imports`), so the
    labels can be written again from the same files (hints.regenerate) and the file's checksum."""
    from saelineage.run import read_parquet, write_parquet

    run = RunDir(run_dir)
    manifest = run.load()
    d_sae = manifest.d_sae
    rows = read_label_file(path)
    if not rows:
        raise SaelineageError(
            f"no explanations found in {path}.",
            "a Neuronpedia export needs layer/index/description per entry; a CSV needs layer,feature,explanation.",
        )
    merged: dict[tuple[int, int], tuple[str, str]] = {}
    out = run.file(contract.LABELS)
    imports = [] if replace else list(manifest.stage(STAGE).get("imports") or [])
    if out.is_file() and not replace:
        old = read_parquet(out).to_pydict()  # verified: a damaged file is not merged into a new one
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
    imports.append({"file": str(Path(path).absolute()), "replace": bool(replace)})
    with run.stage(STAGE, imports=imports):
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
