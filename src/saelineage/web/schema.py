"""Response models of the JSON API: what each `/api` endpoint returns, for `/openapi.json` and `/docs`.

The endpoints build plain dicts and encode them with orjson (see `api.JSON`); these models are
declared as each route's `response_model` so the OpenAPI document describes the real payloads,
but they are not applied per request (a 2,000-node graph would cost tens of milliseconds to
validate). `tests/test_web_schema.py` checks that every response conforms. The static site
(`site.py`) writes its data files through them (`dump`), so a file it writes is an API answer.

Keys that exist only in some runs (optional stages, columns a stage may or may not write) are
not required; numbers computed from data are nullable wherever NaN or a missing value can occur
(NaN is sent as null). Rows copied from a stage's Parquet table (gates, splits, edges) document
the columns the browser relies on and admit the stage's other columns.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from saelineage import contract

Measure = Literal[contract.EDGE_MEASURES]  # type: ignore[valid-type]
SortKey = Literal[(*contract.EDGE_MEASURES, "n_co")]  # type: ignore[valid-type]
Order = Literal["barycenter", "community", "feature"]
Scalar = Union[str, int, float, bool, None]


def _no_default(field_schema: dict[str, Any]) -> None:
    field_schema.pop("default", None)


def absent(description: str, **kw: Any) -> Any:
    """A key that is left out rather than sent as null: neither required nor nullable in the schema."""
    return Field(None, description=description, json_schema_extra=_no_default, **kw)


def dump(model: type[BaseModel], answer: dict[str, Any]) -> dict[str, Any]:
    """An API answer as `model` writes it: validated (an answer that does not conform fails here, not in a
    reader of the file), keys the answer leaves out left out, aliases (`_parent`, ...) as the API sends them."""
    return model.model_validate(answer).model_dump(mode="json", by_alias=True, exclude_unset=True)


class Closed(BaseModel):
    """An object whose keys are all listed (additionalProperties: false)."""

    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    """A row of a stage's table: the listed columns, plus whichever others the stage wrote."""

    model_config = ConfigDict(extra="allow")


class Problem(Closed):
    """An error answer (4xx/5xx other than 422)."""

    detail: str = Field(..., description="What went wrong, in words")


# ---- run level -------------------------------------------------------------------------------


class MissingStage(Closed):
    stage: str = Field(..., description="Stage name (collect, stats, analyze, ablate)")
    status: str = Field(..., description="Its status in the manifest, or 'not run'")
    fix: str = Field(..., description="The command that fills the gap")


class Have(Closed):
    """Which optional parts of a run are present."""

    edges: bool
    examples: bool
    lifecycle: bool
    communities: bool
    gates: bool
    splits: bool
    ablations: bool
    vocab: bool
    labels: bool = Field(..., description="Whether imported labels (labels.parquet) exist")


class Status(Closed):
    stages: dict[str, Optional[str]] = Field(..., description="Stage name -> status in the manifest")
    missing: list[MissingStage] = Field(..., description="Stages not complete, with the command to run")
    have: Have
    notes: list[str] = Field(..., description="Hints about what the browser shows in place of missing parts")


class SaeInfo(Closed):
    """The identity of one layer's SAE, as recorded in the manifest (keys present only when recorded)."""

    hook_name: Optional[str] = None
    d_sae: Optional[int] = Field(None, description="Number of latents")
    architecture: Optional[str] = None
    release: Optional[str] = Field(None, description="SAELens release, for SAEs from the hub")
    sae_id: Optional[str] = None
    path: Optional[str] = Field(None, description="Local folder of the SAE")
    format: Optional[str] = Field(None, description="saelens or sparsify")


class LayerSummary(Closed):
    layer: int
    features: int = Field(..., description="Features of the layer")
    dead: int = Field(..., description="Features that never fire")
    lifecycle: dict[str, int] = Field(..., description="Lifecycle class -> count (empty before analyze)")


class Rate(Closed):
    """Shares of new and ending features of one layer (lifecycle.parquet, the chosen threshold)."""

    layer: int
    share_new: Optional[float] = Field(..., description="Share of live features without predecessor")
    share_ending: Optional[float] = Field(..., description="Share of live features without successor")
    ref_share_new: Optional[float] = Field(None, description="Same, counting dead features as new")
    ref_share_ending: Optional[float] = Field(None, description="Same, counting dead features as ending")
    share_new_lo: Optional[float] = Field(None, description="95% bootstrap interval of share_new over windows: low")
    share_new_hi: Optional[float] = Field(None, description="95% bootstrap interval of share_new: high")
    share_ending_lo: Optional[float] = Field(None, description="95% bootstrap interval of share_ending: low")
    share_ending_hi: Optional[float] = Field(None, description="95% bootstrap interval of share_ending: high")
    share_continuing: Optional[float] = Field(None, description="Share of live features with a successor")
    seed_ceiling: Optional[float] = Field(
        None, description="Share of live features a second SAE training of this layer reproduces (`saelineage ceiling`)"
    )
    share_continuing_normalised: Optional[float] = Field(None, description="share_continuing / seed_ceiling")


HistogramBin = tuple[float, float, int]


class Counts(Closed):
    features: int
    live: int = Field(..., description="Features that fire at least once")
    edges: Optional[int] = Field(..., description="Kept edges; null before stats")
    splits: Optional[int] = Field(..., description="Splits; null before analyze")
    communities: int
    gates: dict[str, int] = absent("Gate kind (and/or) -> count; absent before analyze")


class MatchAgreement(Closed):
    """One adjacent layer pair: the data-free match (SAE Match) against the data's best successors."""

    src_layer: int
    dst_layer: int
    n_live: Optional[int] = Field(..., description="Live features of the source layer; null without decoder weights")
    n_matched: Optional[int] = Field(..., description="Live features with a data-free partner")
    agreement: Optional[dict[str, Optional[float]]] = Field(
        ...,
        description="Measure -> share of live features whose best successor by that measure "
        "(feature_links.parquet) is their data-free partner; null without decoder weights",
    )
    mean_similarity: Optional[float] = Field(..., description="Mean folded decoder similarity of the matched pairs")


class SaeMatch(Closed):
    method: str = Field(..., description="exact, greedy or off (stats' --sae-match)")
    note: str
    pairs: list[MatchAgreement]


class Overview(Closed):
    run: str = Field(..., description="Run directory")
    model: Optional[dict[str, Any]] = Field(..., description="Model identity from the manifest")
    saes: dict[str, SaeInfo] = Field(..., description="Layer -> SAE identity")
    corpus: Optional[dict[str, Any]] = Field(..., description="Corpus identity from the manifest")
    n_tokens: Optional[int]
    window: Optional[int] = Field(..., description="Window length in tokens")
    layers: list[int]
    per_layer: list[LayerSummary]
    rates: list[Rate]
    histograms: dict[str, list[HistogramBin]] = Field(
        ..., description="Measure -> bins [lo, hi, count] over the kept edges (empty before stats)"
    )
    counts: Counts
    status: Status
    sae_match: Optional[SaeMatch] = Field(
        ...,
        description="The data-free match's agreement with the data per layer pair (stats_summary.json); or null",
    )


# ---- features --------------------------------------------------------------------------------


class FeatureBrief(Closed):
    """What lists, tooltips and tables show about a feature."""

    layer: int
    feature: int
    label: str = Field(
        ..., description="Imported label, else an automatic label from top tokens; empty for a feature not in the run"
    )
    density: Optional[float] = Field(..., description="Share of tokens on which the feature fires")
    act_max: Optional[float] = Field(..., description="Largest activation over the corpus")
    lifecycle: Optional[str] = Field(..., description="dead, new, carried, ending or new+ending; null before analyze")
    community: Optional[int] = Field(..., description="Community id; null when in none")


class ExampleToken(Closed):
    text: str
    id: int
    hit: bool = Field(..., description="The token the example is about")


class Example(Closed):
    """One top-activating token of a feature, with its context."""

    rank: int
    value: Optional[float] = Field(..., description="Activation")
    window: int
    pos: int = Field(..., description="Position in the window")
    token: int = Field(..., description="Token id")
    tokens: list[ExampleToken] = Field(..., description="Context around the token (empty if the window is gone)")
    truncated_left: bool
    truncated_right: bool


class Feature(FeatureBrief):
    label_source: Literal["imported", "auto"]
    auto_label: Optional[str]
    imported_label: Optional[str]
    n_active: int = Field(..., description="Tokens on which the feature fires")
    neuronpedia: Optional[str] = Field(..., description="Neuronpedia page, for SAEs of a known public release")
    act_mean: Optional[float] = Field(..., description="Mean activation where active")
    extra: dict[str, Any] = Field(
        ...,
        description="Further non-null per-feature columns (features.parquet, "
        "feature_analysis.parquet, error_projection.parquet)",
    )
    explanation: Optional[str] = Field(..., description="Imported explanation (labels.parquet); null when none")
    examples: list[Example]


class Edge(Open):
    """An edge of edges.parquet (every measure it holds) and the feature at its other end."""

    src_layer: int
    src: int
    dst_layer: int
    dst: int
    n_co: Optional[int] = Field(None, description="Tokens on which both features fire")
    jaccard: Optional[float] = None
    sufficiency: Optional[float] = None
    necessity: Optional[float] = None
    mutual_info: Optional[float] = None
    pearson: Optional[float] = None
    act_cosine: Optional[float] = None
    dec_cosine: Optional[float] = None
    sae_match: Optional[float] = Field(None, description="Folded decoder similarity when the pair is a data-free match")
    sufficiency_lo: Optional[float] = None
    necessity_lo: Optional[float] = None
    other: FeatureBrief = Field(..., description="The feature at the other end")
    ablation: Optional[dict[str, Any]] = Field(..., description="Result of `ablate` for this edge, when sampled")


class Neighbours(Closed):
    up: list[Edge] = absent("Edges into the feature, strongest first (direction up or both)")
    down: list[Edge] = absent("Edges out of the feature, strongest first (direction down or both)")
    sort: SortKey


class Gate(Open):
    """A validated AND/OR gate (a row of gates.parquet, with labels)."""

    kind: str = Field(..., description="and / or")
    layer: int = Field(..., description="Layer of the child")
    feature: int = Field(..., description="The child feature")
    parent_layer: int
    parent_a: int
    parent_b: int
    support: int
    score_forward: Optional[float] = Field(..., description="P(child | condition)")
    score_backward: Optional[float] = Field(..., description="P(condition | child)")
    child_label: str
    a_label: str
    b_label: str


class SplitChild(FeatureBrief):
    per_child: dict[str, Any] = absent("This child's entries of the split's per-child lists", alias="_per_child")


class Split(Open):
    """A split (a row of splits.parquet) with its parent and children resolved to features."""

    parent: Optional[FeatureBrief] = Field(..., alias="_parent")
    children: list[Optional[SplitChild]] = Field(..., alias="_children")
    details: dict[str, Scalar] = Field(..., alias="_details", description="The row's scalar columns")


class SplitColumns(Closed):
    """Which columns of splits.parquet hold the parent and the children."""

    layer: Optional[str]
    feature: Optional[str]
    child_layer: Optional[str]
    children: Optional[str]


class Relations(Closed):
    gates: list[Gate] = Field(..., description="Gates with the feature as child or parent")
    splits: list[Split] = Field(..., description="Splits with the feature as parent or child")


# ---- lists -----------------------------------------------------------------------------------


class GatePage(Closed):
    total: int
    rows: list[Gate]
    missing: str = absent("What to run when the run has no gates")


class SplitPage(Closed):
    total: int
    rows: list[Split]
    columns: SplitColumns = absent("Where the parent and children are in splits.parquet (absent without splits)")
    missing: str = absent("What to run when the run has no splits")


class CommunityRow(Closed):
    community: int
    size: int
    layer_min: int
    layer_max: int
    top: list[FeatureBrief] = Field(..., description="Its three densest members")
    top_tokens: list[str]


class CommunityPage(Closed):
    total: int
    rows: list[CommunityRow]
    missing: str = absent("What to run when the run has no communities")


class Community(Closed):
    community: int
    size: int
    info: dict[str, Scalar] = Field(..., description="Scalar columns of communities.parquet")
    top_tokens: list[str]
    members: list[FeatureBrief] = Field(..., description="Members by layer and feature (at most 2,000)")


class TokenHit(FeatureBrief):
    n: int = Field(..., description="Top examples of the feature on the token")
    top: Optional[float] = Field(..., description="Largest such activation")


class SearchResult(Closed):
    query: str
    feature: Optional[FeatureBrief] = Field(..., description="The feature named by an L:F query, if any")
    labels: list[FeatureBrief] = Field(..., description="Features whose label contains the query")
    tokens: list[TokenHit] = Field(..., description="Features whose top examples fire on the token spelled so")
    token_ids: list[int] = Field(..., description="Token ids spelled like the query")


# ---- graphs ----------------------------------------------------------------------------------


class GraphNodes(Closed):
    """Node columns: node i is position i of every list."""

    layer: list[int]
    feature: list[int]
    label: list[str]
    community: list[Optional[int]]
    density: list[float]
    lifecycle: list[Optional[str]]
    pos: list[int] = Field(..., description="Position in its row")
    row: list[int] = Field(..., description="Row (index into `layers`)")
    n_row: list[int] = Field(..., description="Nodes in the same row")


class GraphEdges(Closed):
    src: list[int] = Field(..., description="Node positions")
    dst: list[int] = Field(..., description="Node positions")
    value: list[float] = Field(..., description="The measure")


class Crossings(Closed):
    shown: int = Field(..., description="Edge crossings of the order shown")
    by_feature: int = Field(..., description="Edge crossings of the plain feature-id order")


class GraphBase(Closed):
    measure: Measure
    order: Order
    layers: list[int] = Field(..., description="Layers shown, one row each")
    edges: GraphEdges
    crossings: Optional[Crossings] = Field(..., description="Null when there is nothing to show")
    truncated: bool = Field(..., description="Whether max_nodes cut the graph")
    missing: Optional[str] = Field(..., description="What to run when the run has no edges")


class Graph(GraphBase):
    nodes: GraphNodes
    community: Optional[int] = Field(..., description="The community filter")
    edges_per_node: int = absent("The backbone filter applied (absent when no edges were fetched)")
    edges_dropped: int = absent("Edges the backbone filter removed (present when it was applied)")


class PromptGraphNodes(GraphNodes):
    activation: list[float] = Field(..., description="Activation on the chosen token")
    rel_activation: list[Optional[float]] = Field(..., description="Activation / the feature's corpus maximum")


class PromptGraph(GraphBase):
    nodes: PromptGraphNodes
    position: int
    token: str = Field(..., description="The chosen token")
    rel: float
    edges_per_node: int = Field(..., description="The backbone filter applied (0: every edge)")
    edges_dropped: int = absent("Edges the backbone filter removed (present when it was applied)")


class PromptStatus(Closed):
    available: bool
    state: Literal["idle", "loading", "ready", "unavailable"] = Field(
        ...,
        description="The model: idle (loads on the first prompt), loading (in the background since the "
        "server started), ready, or unavailable (`reason` says why)",
    )
    reason: Optional[str] = Field(..., description="Why prompts are not available")
    max_chars: int
    max_tokens: int


class PromptToken(Closed):
    i: int = Field(..., description="Position in the prompt")
    id: int
    text: str


class PromptTokens(Closed):
    tokens: list[PromptToken]
