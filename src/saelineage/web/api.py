"""The JSON API (`/api/...`): every view of the browser is built from these endpoints.

Request parameters are bounded (sizes, ranges, enumerations) and never name a file: the
run directory is fixed when the app is created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional, TypeVar

import orjson
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field, StrictFloat, StrictStr
from starlette.concurrency import run_in_threadpool

from saelineage.errors import SaelineageError
from saelineage.query.graph import MAX_NODES, graph
from saelineage.query.prompt import MAX_CHARS, PromptBusy, PromptService
from saelineage.query.run_data import RunData
from saelineage.web import schema as s
from saelineage.web.schema import Measure, Order, SortKey

LayerP = Path(..., ge=0, le=100_000, description="Layer index")
FeatureP = Path(..., ge=0, le=1_000_000_000, description="Feature (latent) index")


class JSON(JSONResponse):
    """Compact JSON by orjson, without FastAPI's generic encoder (the payloads are plain dicts already).

    A 2,000-node graph with 50k edges encodes in ~3 ms instead of ~50 ms with the json module.
    NaN and infinity (none should reach here) become null rather than invalid JSON.

    A JSONResponse subclass so that FastAPI documents each route's `response_model` as its 200
    body; the route returns this response itself, so the model is never applied per request."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def _json_number(v: Any) -> Any:
    """Refuse what pydantic's lax mode would turn into an integer but the schema does not allow (true, "3");
    StrictInt would go too far and refuse 3.0, which JSON Schema counts as an integer."""
    if isinstance(v, (bool, str, bytes)):
        raise ValueError("must be a JSON number")
    return v


Int = Annotated[int, BeforeValidator(_json_number)]


class PromptText(BaseModel):
    text: StrictStr = Field(..., min_length=1, max_length=MAX_CHARS, description="Prompt text (bounded length)")


class PromptGraphRequest(PromptText):
    position: Int = Field(..., ge=0, le=10_000, description="Token index in the prompt")
    rel: StrictFloat = Field(
        0.1, ge=0.0, le=1.0, description="Active = activation above rel x the feature's corpus max"
    )
    measure: Measure = "jaccard"
    min_value: Optional[StrictFloat] = Field(None, ge=-1.0, le=1e6, description="Drop edges below this value")
    max_nodes: Int = Field(500, ge=1, le=MAX_NODES)
    order: Order = "barycenter"
    edges_per_node: Int = Field(
        0, ge=0, le=100, description="Keep each feature's k strongest in- and out-links only (0: every link)"
    )


MAX_BODY = 64 * 1024
"""Largest request body accepted (the app's middleware answers 413 above it)."""


def _problem(description: str) -> dict[str, Any]:
    return {"model": s.Problem, "description": description}


Responses = dict[int | str, dict[str, Any]]
"""FastAPI's `responses=`: status code → OpenAPI description."""

NO_FEATURE: Responses = {404: _problem("The feature is not in this run")}
TOO_LARGE: Responses = {413: _problem(f"Request body larger than {MAX_BODY} bytes")}
UNREADABLE = "The body could not be parsed (bytes that are not UTF-8 text)"
UNAVAILABLE: Responses = {
    503: _problem(
        "Live prompts are not available: the run has no model, its model or SAE files are "
        "gone, or the model failed to load (`reason` of /api/prompt/status says which). Or, with a "
        "Retry-After header, the model is busy: one prompt runs at a time and the queue behind it "
        "(`serve --prompt-queue`) is full; try again after that many seconds"
    )
    | {
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before trying again (sent only when the model is busy)",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    }
}

T = TypeVar("T")


def feature_answer(data: RunData, layer: int, feature: int, examples: int = 20) -> dict[str, Any] | None:
    """The answer of /api/features/{layer}/{feature} (`schema.Feature`); None when the run lacks the feature."""
    f = data.feature(layer, feature)
    if f is not None:
        f["examples"] = data.examples(layer, feature, limit=examples)
    return f


def neighbours_answer(
    data: RunData, layer: int, feature: int, direction: str = "both", sort: str = "jaccard", limit: int = 50
) -> dict[str, Any]:
    """The answer of /api/features/{layer}/{feature}/neighbours (`schema.Neighbours`)."""
    out: dict[str, Any] = {}
    for d in ("up", "down") if direction == "both" else (direction,):
        out[d] = data.neighbours(layer, feature, d, sort, limit)
    return out | {"sort": sort}


def relations_answer(data: RunData, layer: int, feature: int) -> dict[str, Any]:
    """The answer of /api/features/{layer}/{feature}/relations (`schema.Relations`)."""
    return {"gates": data.feature_gates(layer, feature), "splits": data.splits(layer=layer, feature=feature)["rows"]}


def build_router(data: RunData, prompts: PromptService) -> APIRouter:
    r = APIRouter(prefix="/api", default_response_class=JSON)

    def _exists_or_404(layer: int, feature: int) -> None:
        if data.g.idx(layer, feature) is None:
            raise HTTPException(404, f"feature {layer}:{feature} is not in this run")

    @r.get("/status", response_model=s.Status, summary="Stages of the run, what is present and what is missing")
    async def status() -> JSON:
        return JSON(data.status())

    @r.get(
        "/overview",
        response_model=s.Overview,
        summary="Model, SAEs, corpus, per-layer lifecycle, measure histograms, counts",
    )
    async def overview() -> JSON:
        return JSON(data.overview())

    @r.get(
        "/features/{layer}/{feature}",
        response_model=s.Feature,
        responses=NO_FEATURE,
        summary="One feature: label, statistics, top examples",
    )
    async def feature(
        layer: int = LayerP,
        feature: int = FeatureP,
        examples: int = Query(20, ge=0, le=100, description="Top examples to return"),
    ) -> JSON:
        f = feature_answer(data, layer, feature, examples)
        if f is None:
            raise HTTPException(404, f"feature {layer}:{feature} is not in this run")
        return JSON(f)

    @r.get(
        "/features/{layer}/{feature}/neighbours",
        response_model=s.Neighbours,
        responses=NO_FEATURE,
        summary="Upstream/downstream edges with every measure",
    )
    async def neighbours(
        layer: int = LayerP,
        feature: int = FeatureP,
        direction: Literal["up", "down", "both"] = "both",
        sort: SortKey = "jaccard",
        limit: int = Query(50, ge=1, le=500),
    ) -> JSON:
        _exists_or_404(layer, feature)
        return JSON(neighbours_answer(data, layer, feature, direction, sort, limit))

    @r.get(
        "/features/{layer}/{feature}/relations",
        response_model=s.Relations,
        responses=NO_FEATURE,
        summary="Gates and splits the feature takes part in",
    )
    async def relations(layer: int = LayerP, feature: int = FeatureP) -> JSON:
        _exists_or_404(layer, feature)
        return JSON(relations_answer(data, layer, feature))

    @r.get(
        "/graph",
        response_model=s.Graph,
        summary="Layered graph: nodes, edges and a crossing-reducing row order",
        description="`nodes` holds columns (layer, feature, label, community, density, lifecycle, pos, row, "
        "n_row; node i is position i of every list); `edges` holds src, dst (node positions) and "
        "value (the measure); `crossings` gives the edge crossings of the order shown and of the "
        "plain feature-id order. Without `community`, the strongest edges of every layer pair are "
        "taken in turn until `max_nodes` features are shown.",
    )
    async def graph_(
        measure: Measure = "jaccard",
        min_value: Optional[float] = Query(None, ge=-1.0, le=1e6),
        layer_min: Optional[int] = Query(None, ge=0, le=100_000),
        layer_max: Optional[int] = Query(None, ge=0, le=100_000),
        community: Optional[int] = Query(None, ge=0, le=10**9),
        max_nodes: int = Query(500, ge=1, le=MAX_NODES),
        order: Order = "barycenter",
        edges_per_node: int = Query(
            0, ge=0, le=100, description="Keep each node's k strongest in- and out-edges only (0: every edge)"
        ),
    ) -> JSON:
        return JSON(graph(data, measure, min_value, layer_min, layer_max, community, max_nodes, order, edges_per_node))

    @r.get("/communities", response_model=s.CommunityPage, summary="Communities, largest first")
    async def communities(
        limit: int = Query(100, ge=1, le=500),
        offset: int = Query(0, ge=0, le=10**9),
        min_size: int = Query(1, ge=1, le=10**6),
    ) -> JSON:
        return JSON(data.communities(limit, offset, min_size))

    @r.get(
        "/communities/{community}",
        response_model=s.Community,
        responses={404: _problem("The community is not in this run")},
        summary="One community: members",
    )
    async def community(community: int = Path(..., ge=0, le=10**9)) -> JSON:
        c = data.community(community)
        if c is None:
            raise HTTPException(404, f"community {community} is not in this run")
        return JSON(c)

    @r.get("/gates", response_model=s.GatePage, summary="Quasi-boolean AND/OR gates")
    async def gates(
        kind: Optional[Literal["and", "or"]] = None,
        layer: Optional[int] = Query(None, ge=0, le=100_000),
        limit: int = Query(100, ge=1, le=500),
        offset: int = Query(0, ge=0, le=10**9),
    ) -> JSON:
        return JSON(data.gates(kind, layer, limit, offset))

    @r.get("/splits", response_model=s.SplitPage, summary="Splits: a parent feature whose children divide its activity")
    async def splits(
        layer: Optional[int] = Query(None, ge=0, le=100_000),
        limit: int = Query(100, ge=1, le=500),
        offset: int = Query(0, ge=0, le=10**9),
    ) -> JSON:
        return JSON(data.splits(layer, limit, offset))

    @r.get("/search", response_model=s.SearchResult, summary="Search by feature id (L:F), label text, or token")
    async def search(q: str = Query(..., min_length=1, max_length=200), limit: int = Query(50, ge=1, le=200)) -> JSON:
        return JSON(data.search(q, limit))

    async def live(fn: Callable[..., T], *args: Any) -> T:
        """Run a live prompt through the queue. The checks that need no model (available? room in the
        queue?) answer on the event loop, so a refusal costs no worker thread and no wait."""
        prompts.require()  # unavailable: its own 503, not a place in the queue
        try:
            with prompts.queue.admit():
                return await run_in_threadpool(prompts.queue.run, fn, *args)
        except PromptBusy as exc:
            raise HTTPException(503, exc.problem, headers={"Retry-After": str(exc.retry_after)}) from exc

    @r.get(
        "/prompt/status",
        response_model=s.PromptStatus,
        summary="Whether live prompts are available (model and SAEs present) and whether the model is loaded",
    )
    def prompt_status() -> JSON:
        return JSON(prompts.status())

    @r.post(
        "/prompt/tokens",
        response_model=s.PromptTokens,
        responses=Responses({400: _problem(UNREADABLE)}) | TOO_LARGE | UNAVAILABLE,
        summary="Tokens of a prompt",
    )
    async def prompt_tokens(body: PromptText) -> JSON:
        try:
            return JSON({"tokens": await live(prompts.tokens, body.text)})
        except SaelineageError as exc:
            raise HTTPException(503, exc.problem) from exc

    @r.post(
        "/prompt/graph",
        response_model=s.PromptGraph,
        responses=Responses({400: _problem(f"`position` is outside the prompt's tokens. {UNREADABLE}")})
        | TOO_LARGE
        | UNAVAILABLE,
        summary="Graph of the features active on one token of a prompt",
    )
    async def prompt_graph(body: PromptGraphRequest) -> JSON:
        try:
            return JSON(
                await live(
                    prompts.graph,
                    body.text,
                    body.position,
                    body.rel,
                    body.measure,
                    body.min_value,
                    body.max_nodes,
                    body.order,
                    body.edges_per_node,
                )
            )
        except SaelineageError as exc:
            code = 400 if "outside the prompt" in exc.problem else 503
            raise HTTPException(code, exc.problem) from exc

    return r
