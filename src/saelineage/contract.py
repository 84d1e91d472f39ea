"""The run-directory contract in one place: file names, which stage writes each, column sets,
measure names, and the typed manifest (docs/design.md §3).

Every module that reads or writes a run file takes its name and columns from here, so a file
or column is named once. Pure definitions: no I/O (`saelineage.run` reads and writes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# ---- files ---------------------------------------------------------------------------------------
MANIFEST = "manifest.json"
ACTIVATIONS = "activations"
FEATURES = "features.parquet"
EXAMPLES = "examples.parquet"
VOCAB = "vocab.json"
DECODERS = "decoders.safetensors"
EDGES = "edges.parquet"
FEATURE_LINKS = "feature_links.parquet"
STATS_SUMMARY = "stats_summary.json"
LIFECYCLE = "lifecycle.parquet"
LIFECYCLE_HTML = "lifecycle.html"
GATES = "gates.parquet"
BEST_PAIRS = "best_pairs.parquet"
SPLITS = "splits.parquet"
COMMUNITIES = "communities.parquet"
FEATURE_ANALYSIS = "feature_analysis.parquet"
PROMPT_GRAPHS = "prompt_graphs.json"
ABLATIONS = "ablations.parquet"
ABLATIONS_HTML = "ablations.html"
ERROR_PROJECTION = "error_projection.parquet"
ABLATE_PARTS = ".ablate-parts"
SUMMARY_PARTS = ".summary-parts"
STATS_PARTS = ".stats-parts"
STATS_SPILL = ".stats-spill"
SEED_CEILING = "seed_ceiling.parquet"
CEILING_CODES = ".ceiling-codes"
LABELS = "labels.parquet"
BROWSER_CACHE = ".browser-cache"
LOCK = ".lock"

WRITER = {
    FEATURES: "collect", EXAMPLES: "collect", VOCAB: "collect", DECODERS: "collect",
    EDGES: "stats", FEATURE_LINKS: "stats", STATS_SUMMARY: "stats",
    LIFECYCLE: "analyze", LIFECYCLE_HTML: "analyze", GATES: "analyze", BEST_PAIRS: "analyze", SPLITS: "analyze",
    COMMUNITIES: "analyze", FEATURE_ANALYSIS: "analyze", PROMPT_GRAPHS: "analyze",
    ABLATIONS: "ablate", ABLATIONS_HTML: "ablate", ERROR_PROJECTION: "ablate",
    LABELS: "labels import", SEED_CEILING: "ceiling",
}  # fmt: skip
"""The one stage that writes each top-level run file (the store API stands in for collect;
the manifest is shared: each stage records its own entry)."""

STAGES = ("collect", "stats", "analyze", "ablate")

# ---- measures ------------------------------------------------------------------------------------
DATA_MEASURES = ("jaccard", "sufficiency", "necessity", "mutual_info", "pearson", "act_cosine")
"""Measures computed from co-activation statistics, in the order the stats kernels compute them."""
PRIMARY = ("jaccard", "sufficiency", "necessity", "pearson")
"""Default measures whose top-k partners are kept as edges."""
BOUND_MEASURES = ("sufficiency_lo", "necessity_lo")
"""Wilson 95% lower bounds of sufficiency and necessity."""
SIMILARITY_MEASURES = (*DATA_MEASURES, "dec_cosine", "sae_match")
"""Measures an edge can be sampled, thresholded or drawn by (data measures, the decoder cosine and
the data-free match's folded similarity, NaN on edges that are not a match)."""
EDGE_MEASURES = (*SIMILARITY_MEASURES, *BOUND_MEASURES)
"""Every measure column of edges.parquet, in the order the browser lists them."""

# ---- columns -------------------------------------------------------------------------------------
KEY = ("layer", "feature")
EDGE_KEY = ("src_layer", "src", "dst_layer", "dst")
FEATURE_COLUMNS = (*KEY, "n_active", "density", "act_sum", "act_sumsq", "act_max")
EXAMPLE_COLUMNS = (*KEY, "rank", "value", "window", "pos")
EDGE_COLUMNS = (*EDGE_KEY, "n_co", *DATA_MEASURES, "dec_cosine", *BOUND_MEASURES, "p_sum", "sae_match")
GATE_COLUMNS = ("kind", "layer", "feature", "parent_layer", "parent_a", "parent_b", "support",
                "score_forward", "score_backward")  # fmt: skip
ANALYSIS_COLUMNS = (*KEY, "lifecycle", "has_pred", "has_succ", "community")
CEILING_COLUMNS = (*KEY, "live", *(c for m in DATA_MEASURES for c in (f"best_{m}", f"best_{m}_id")))


# ---- the manifest --------------------------------------------------------------------------------
@dataclass
class Manifest:
    """manifest.json: what a run is made of, and what each stage did.

    Written by collect (or the store API) through `new_manifest`; each later stage adds only its
    own entry under `stages`. Keys of other versions are kept in `extra`, so a round trip never
    loses them."""

    layers: list[int]
    """Layers with codes, ascending."""
    d_sae: dict[int, int]
    """Latents per layer."""
    hooks: dict[int, str]
    """Hook point per layer (TransformerLens names, e.g. blocks.3.hook_resid_pre)."""
    saes: dict[int, dict[str, Any]]
    """Per layer: the SAE's identity (path or release + id, sha256, architecture, ...)."""
    model: dict[str, Any]
    """The model's identity (spec, sha256, dtype, ...); {"spec": "imported"} for the store API."""
    corpus: dict[str, Any]
    """The corpus' identity (spec, sha256, ...)."""
    window: int
    """Tokens per window, BOS included."""
    bos: bool
    """Windows start with BOS (position 0 then leaves the token set)."""
    n_windows: int
    n_tokens: int
    shard_windows: int
    """Windows per activation shard."""
    config_hash: str
    """Hash of the collect configuration: a run directory never mixes two."""
    include_bos: bool = False
    """Statistics count BOS positions too (collect's --include-bos)."""
    first_window: int | None = None
    """Windows of the corpus skipped before the first collected one (collect); None for the store API."""
    n_shards: int | None = None
    d_model: int | None = None
    center_residual: bool | None = None
    """Residuals are centred over d_model before encoding (collect); None for the store API."""
    thresholds: dict[str, float] = field(default_factory=lambda: {"active": 0.0})
    config: dict[str, Any] | None = None
    """collect's configuration (CollectConfig fields); None for the store API."""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per stage: status ("running" / "complete"), its options, counts and timings."""
    schema_version: int = SCHEMA_VERSION
    saelineage_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know (a newer writer's), written back unchanged."""

    # -- stage entries ------------------------------------------------------------------------------
    def stage(self, name: str) -> dict[str, Any]:
        """The entry of stage `name` ({} when it never ran; edit `stages` to record one)."""
        return self.stages.get(name) or {}

    def status(self, name: str) -> str | None:
        return self.stage(name).get("status")

    # -- JSON ---------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The JSON object of manifest.json: layer keys as strings, keys in the order collect has
        always written them, unknown keys kept. An optional field that is None is left out, as
        writers before the typed manifest did (the store API records no collect configuration)."""
        out: dict[str, Any] = {}
        for name in _JSON_FIELDS:
            v = getattr(self, name)
            if v is None and name in _OPTIONAL:
                continue
            out[name] = {str(k): x for k, x in v.items()} if name in _INT_KEYED else v
        return out | self.extra

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse manifest.json's object; ValueError says what is missing or malformed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        missing = [name for name in _REQUIRED if name not in data]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        kw = {name: data[name] for name in _JSON_FIELDS if name in data}
        try:
            kw["layers"] = [int(x) for x in kw["layers"]]
            kw["d_sae"] = {int(l): int(d) for l, d in kw["d_sae"].items()}
            for name in ("hooks", "saes"):
                kw[name] = {int(l): v for l, v in kw[name].items()}
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"its layer fields are malformed ({exc})") from exc
        if kw.get("stages") is None:
            kw["stages"] = {}
        return cls(**kw, extra={k: v for k, v in data.items() if k not in _JSON_FIELDS})


_INT_KEYED = ("d_sae", "hooks", "saes")
"""Fields keyed by layer: int keys in Python, string keys in JSON."""
_JSON_ORDER = ("schema_version", "saelineage_version", "config_hash", "config", "model", "saes", "layers", "hooks",
               "d_sae", "d_model", "corpus", "window", "bos", "include_bos", "first_window", "n_windows", "n_tokens",
               "shard_windows", "n_shards", "center_residual", "thresholds", "stages")  # fmt: skip
_JSON_FIELDS = tuple(
    sorted((f.name for f in dataclasses.fields(Manifest) if f.name != "extra"), key=_JSON_ORDER.index)
)  # a field missing from _JSON_ORDER fails here, at import
_REQUIRED = tuple(
    f.name
    for f in dataclasses.fields(Manifest)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
_OPTIONAL = tuple(f.name for f in dataclasses.fields(Manifest) if f.default is None)


def new_manifest(
    *,
    layers: list[int],
    d_sae: dict[int, int],
    hooks: dict[int, str],
    saes: dict[int, dict[str, Any]],
    model: dict[str, Any],
    corpus: dict[str, Any],
    window: int,
    bos: bool,
    n_windows: int,
    shard_windows: int,
    config_hash: str,
    **optional: Any,
) -> Manifest:
    """The one builder of a run's manifest (collect, the store API and the benchmarks use it).

    n_tokens defaults to n_windows × window; `optional` sets the other Manifest fields (an unknown
    name is a TypeError)."""
    from saelineage.version import __version__

    layers = sorted(int(l) for l in layers)
    d_sae = {int(l): int(d) for l, d in d_sae.items()}
    if set(d_sae) != set(layers):
        # every reader sizes a layer's codes by d_sae[layer]
        raise ValueError(f"d_sae covers layers {sorted(d_sae)}, the run has {layers}")
    n_tokens = int(optional.pop("n_tokens", int(n_windows) * int(window)))
    return Manifest(layers=layers, d_sae=d_sae,
                    hooks={int(l): str(h) for l, h in hooks.items()}, saes={int(l): dict(v) for l, v in saes.items()},
                    model=dict(model), corpus=dict(corpus), window=int(window), bos=bool(bos),
                    n_windows=int(n_windows), n_tokens=n_tokens, shard_windows=int(shard_windows),
                    config_hash=config_hash, saelineage_version=__version__, **optional)  # fmt: skip
