"""Neuronpedia: its source ids for a run's SAEs, links to its feature pages, and the formats it imports
(explanation records, feature lists with a quick-list URL).

What maps to what (Neuronpedia's explanation records and list entries):
``modelId`` + ``layer`` (the SAE's Neuronpedia source id, e.g. "gpt2-small" + "6-res-jb") ↔ the
run's layer (and its SAE), ``index`` ↔ feature, ``description`` ↔ label. For SAEs of a public
SAELens release the source id comes from sae_lens's release table (`neuronpedia_ids`); for other
SAEs the caller names one (``{layer}`` in a template), as uploaded to Neuronpedia.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from saelineage.errors import SaelineageError

# Neuronpedia source ids of public SAE releases we know without sae_lens (release -> template).
KNOWN_NEURONPEDIA = {"gpt2-small-res-jb": "gpt2-small/{layer}-res-jb"}


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
