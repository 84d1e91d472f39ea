"""The feature browser: a FastAPI app over one run directory (JSON API + HTML pages).

Everything is served locally: our own JS/CSS from `static/`, plotly.js from the installed
plotly wheel. Pages are Jinja2 templates with autoescaping; the JS builds the DOM with
`textContent` only, and a Content-Security-Policy forbids inline and foreign scripts, so a
label such as ``<script>alert(1)</script>`` is shown as text and never runs.

Served beyond loopback, every request needs the access token (`TokenAuth`): a Bearer header, or
the cookie that a one-time ``?token=`` visit sets.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote, unquote_plus

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from saelineage.errors import SaelineageError
from saelineage.query.generation import MEASURES, SORTABLE
from saelineage.query.layout import warm_up
from saelineage.query.prompt import MAX_WAITING, PromptBackend, PromptService
from saelineage.query.run_data import RunData
from saelineage.version import __version__
from saelineage.web.api import MAX_BODY, build_router
from saelineage.web.config import ServeConfig

HERE = Path(__file__).parent
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


AUTH_ENV = "SAELINEAGE_AUTH_TOKEN"
"""Environment variable `serve` reads the access token from when --auth-token is not given."""
AUTH_COOKIE = "saelineage_auth"
MIN_TOKEN_CHARS = 16
TOKEN_HELP = (
    "This feature browser needs its access token. Send the header 'Authorization: Bearer TOKEN', or open "
    "any page once with ?token=TOKEN added to the address (a cookie then keeps this browser signed in)."
)
_TOKEN_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Access token needed</title></head>'
    "<body><h1>Access token needed</h1><p>This feature browser needs its access token. Open this page "
    "again with <code>?token=TOKEN</code> added to the address; a cookie then keeps this browser signed "
    "in. Scripts send the header <code>Authorization: Bearer TOKEN</code>.</p></body></html>"
)
JSON_PREFIXES = ("/api", "/openapi.json", "/static", "/vendor")
"""Paths answered in JSON (the API's `Problem` shape) rather than with an HTML page when refused."""


def check_token(token: str) -> None:
    """Refuse a token too short to resist guessing over the network, or one that cannot travel in an
    HTTP header (whitespace, control or non-ASCII characters)."""
    if len(token) < MIN_TOKEN_CHARS or not all(33 <= ord(c) <= 126 for c in token):
        raise SaelineageError(
            f"the access token must have at least {MIN_TOKEN_CHARS} characters, all printable ASCII without "
            "spaces (it travels in an HTTP header).",
            'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"',
        )


def cookie_value(token: str) -> str:
    """What the login cookie holds: derived from the token, so the browser's cookie store never holds the
    token itself, and always hex, so no cookie quoting can alter it."""
    return hmac.new(token.encode(), b"saelineage browser cookie", hashlib.sha256).hexdigest()


class TokenAuth:
    """ASGI middleware: a request passes with a valid `Authorization: Bearer` header or login cookie.

    A GET or HEAD with a valid ``?token=`` gets the cookie (HttpOnly, SameSite=Strict) and a redirect to the
    same URL without it. Every ``token`` query parameter, valid or not, is cut from the request's query
    string in place first: uvicorn's access log prints the path from this same scope dict once the app
    answers, so the token never reaches a log. Comparisons take constant time (`hmac.compare_digest`)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()
        self.cookie = cookie_value(token).encode()

    def _valid(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        kept, given = [], []
        for part in scope.get("query_string", b"").split(b"&"):
            key, _, value = part.partition(b"=")
            if unquote_plus(key.decode("latin-1")) == "token":
                given.append(unquote_plus(value.decode("latin-1")))
            elif part:
                kept.append(part)
        if given:
            scope["query_string"] = b"&".join(kept)
        conn = HTTPConnection(scope)
        if given and scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            if any([self._valid(g) for g in given]):
                await self._login(scope, conn)(scope, receive, send)
                return
        scheme, _, credential = conn.headers.get("authorization", "").partition(" ")
        if (scheme.lower() == "bearer" and self._valid(credential.strip())) or hmac.compare_digest(
            conn.cookies.get(AUTH_COOKIE, "").encode(), self.cookie
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = {"WWW-Authenticate": 'Bearer realm="saelineage"', "Cache-Control": "no-store"}
        refusal: Response
        if scope["path"].startswith(JSON_PREFIXES):
            refusal = JSONResponse({"detail": TOKEN_HELP}, status_code=401, headers=headers)
        else:
            refusal = HTMLResponse(_TOKEN_PAGE, status_code=401, headers=headers)
        await refusal(scope, receive, send)

    def _login(self, scope: Scope, conn: HTTPConnection) -> Response:
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else quote(scope["path"])
        # one leading slash: '//host' or '/\host' would send the browser to another site
        location = "/" + path.lstrip("/\\")
        if scope["query_string"]:
            location += "?" + scope["query_string"].decode("latin-1")
        response = RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            AUTH_COOKIE,
            self.cookie.decode(),
            httponly=True,
            samesite="strict",
            secure=conn.url.scheme == "https",
            path="/",
        )
        return response


def plotly_js_path() -> Path:
    """plotly.min.js inside the installed plotly package (no CDN, nothing vendored in the repo)."""
    import importlib.util

    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "package_data" / "plotly.min.js"


def swagger_ui_dir() -> Optional[Path]:
    """Swagger UI files shipped in the fastapi-offline wheel (no CDN); None when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "static"
    return path if (path / "swagger-ui-bundle.js").is_file() and (path / "swagger-ui.css").is_file() else None


def page_context(data: RunData) -> dict[str, Any]:
    """What every page template gets (base.html): run name, version, measures, layers, status."""
    return {
        "run_name": data.run.path.name,
        "version": __version__,
        "measures": MEASURES,
        "layers": data.g.layers,
        "status": data.status(),
    }


def feature_page_context(
    data: RunData,
    f: dict[str, Any],
    sort: str = "jaccard",
    *,
    examples: int = 20,
    neighbours: int = 50,
    context: tuple[int, int] = (12, 4),
    relations: bool = True,
) -> dict[str, Any]:
    """What templates/feature.html gets besides `page_context`, for the feature `f` (`RunData.feature`):
    the server's feature page and the static site's are both rendered from it.

    examples, neighbours: rows shown; context: tokens shown before and after an example's token;
    relations=False leaves out the gate and split queries for a feature known to be in none (the static
    site knows which are, and skips two queries per feature)."""
    layer, feature, layers = f["layer"], f["feature"], data.g.layers
    return {
        "f": f,
        "sort": sort,
        "examples": data.examples(layer, feature, limit=examples, before=context[0], after=context[1]),
        "first": bool(layers) and layer == layers[0],
        "last": bool(layers) and layer == layers[-1],
        "up": data.neighbours(layer, feature, "up", sort, neighbours),
        "down": data.neighbours(layer, feature, "down", sort, neighbours),
        "gates": data.feature_gates(layer, feature) if relations else [],
        "splits": data.splits(layer=layer, feature=feature)["rows"] if relations else [],
        "sortable": SORTABLE,
    }


def create_app(
    run_dir: str | Path,
    *,
    prompt_backend: Optional[PromptBackend] = None,
    allowed_hosts: Optional[Sequence[str]] = LOOPBACK_HOSTS,
    cache_folder: Optional[Path] = None,
    preload_model: bool = False,
    auth_token: Optional[str] = None,
    prompt_queue: int = MAX_WAITING,
) -> FastAPI:
    """The browser app for `run_dir`. `allowed_hosts` guards against DNS rebinding (None = any host).

    `preload_model`: start loading the run's model for live prompts in the background now (`serve`
    does), so that the first prompt does not wait ~10 s for it. `auth_token`: every request must carry
    it (`TokenAuth`); None or empty: no token asked. `prompt_queue`: live prompts that may wait for
    the model; more are answered 503 with Retry-After."""
    if auth_token:
        check_token(auth_token)  # before the run's data is read: a bad token is refused at once
    data = RunData(run_dir, cache_folder=cache_folder)
    warm_up()  # jitted row ordering, compiled (or loaded from cache) now rather than on a first request
    prompts = PromptService(data, prompt_backend, preload=preload_model, max_waiting=prompt_queue)
    app = FastAPI(
        title="saelineage feature browser",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        description=f"Features, edges, communities, gates and splits of the run {data.run.path.name}.",
    )
    app.state.data, app.state.prompts = data, prompts
    if auth_token:
        # added first, so it sits inside `_guard`: a refusal gets the same security headers as any answer
        app.add_middleware(TokenAuth, token=auth_token)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            return JSONResponse({"detail": f"request body larger than {MAX_BODY} bytes"}, status_code=413)
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    app.include_router(build_router(data, prompts))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    plotly_path = plotly_js_path()

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(
            plotly_path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
        )

    def page(request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, page_context(data) | ctx, status_code=status_code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if request.url.path.startswith("/api") or request.url.path.startswith("/static"):
            # exc.headers carries e.g. the Allow header a 405 must send
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return page(request, "error.html", exc.status_code, message=str(exc.detail), code=exc.status_code)

    swagger = swagger_ui_dir()
    if swagger is not None:
        app.mount("/vendor/swagger-ui", StaticFiles(directory=swagger), name="swagger")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs_page(request: Request) -> HTMLResponse:
        if swagger is not None:
            return templates.TemplateResponse(request, "docs.html", {})
        api_paths = [
            (m.upper(), p, op.get("summary", "")) for p, ops in app.openapi()["paths"].items() for m, op in ops.items()
        ]
        return page(request, "docs_plain.html", paths=api_paths)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def overview_page(request: Request) -> HTMLResponse:
        return page(request, "overview.html", ov=data.overview())

    @app.get("/graph", response_class=HTMLResponse, include_in_schema=False)
    async def graph_page(request: Request) -> HTMLResponse:
        return page(request, "graph.html")

    @app.get("/feature/{layer}/{feature}", response_class=HTMLResponse, include_in_schema=False)
    async def feature_page(
        request: Request,
        layer: int = PathParam(..., ge=0, le=100_000),
        feature: int = PathParam(..., ge=0, le=10**9),
        sort: str = Query("jaccard", max_length=32),
    ) -> HTMLResponse:
        f = data.feature(layer, feature)
        if f is None:
            raise StarletteHTTPException(404, f"Feature {layer}:{feature} is not in this run.")
        return page(request, "feature.html", **feature_page_context(data, f, sort if sort in SORTABLE else "jaccard"))

    @app.get("/feature/{layer}/{feature}/card", response_class=HTMLResponse, include_in_schema=False)
    async def feature_card(
        request: Request,
        layer: int = PathParam(..., ge=0, le=100_000),
        feature: int = PathParam(..., ge=0, le=10**9),
        sort: str = Query("jaccard", max_length=32),
        examples: int = Query(6, ge=0, le=100),
        neighbours: int = Query(8, ge=1, le=500),
    ) -> HTMLResponse:
        """The top of the feature page alone (templates/_feature_summary.html): what the graph's side panel
        shows, so that the panel and the page are one rendering (a static export's panel reads the page)."""
        f = data.feature(layer, feature)
        if f is None:
            raise StarletteHTTPException(404, f"Feature {layer}:{feature} is not in this run.")
        ctx = feature_page_context(
            data, f, sort if sort in SORTABLE else "jaccard", examples=examples, neighbours=neighbours, relations=False
        )
        return page(request, "_feature_summary.html", **ctx)

    @app.get("/communities", response_class=HTMLResponse, include_in_schema=False)
    async def communities_page(
        request: Request, offset: int = Query(0, ge=0, le=10**9), min_size: int = Query(2, ge=1, le=10**6)
    ) -> HTMLResponse:
        return page(
            request, "communities.html", res=data.communities(100, offset, min_size), offset=offset, min_size=min_size
        )

    @app.get("/community/{community}", response_class=HTMLResponse, include_in_schema=False)
    async def community_page(request: Request, community: int = PathParam(..., ge=0, le=10**9)) -> HTMLResponse:
        c = data.community(community)
        if c is None:
            raise StarletteHTTPException(404, f"Community {community} is not in this run.")
        return page(request, "community.html", c=c)

    @app.get("/gates", response_class=HTMLResponse, include_in_schema=False)
    async def gates_page(
        request: Request,
        kind: str = Query("", max_length=3),
        layer: Optional[int] = Query(None, ge=0, le=100_000),
        offset: int = Query(0, ge=0, le=10**9),
    ) -> HTMLResponse:
        kind_ = kind if kind in ("and", "or") else None
        return page(
            request,
            "gates.html",
            res=data.gates(kind_, layer, 100, offset),
            kind=kind_ or "",
            layer=layer,
            offset=offset,
        )

    @app.get("/splits", response_class=HTMLResponse, include_in_schema=False)
    async def splits_page(
        request: Request, layer: Optional[int] = Query(None, ge=0, le=100_000), offset: int = Query(0, ge=0, le=10**9)
    ) -> HTMLResponse:
        return page(request, "splits.html", res=data.splits(layer, 100, offset), layer=layer, offset=offset)

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    async def search_page(request: Request, q: str = Query("", max_length=200)) -> HTMLResponse:
        return page(request, "search.html", q=q, res=data.search(q) if q.strip() else None)

    @app.get("/prompt", response_class=HTMLResponse, include_in_schema=False)
    def prompt_page(request: Request) -> HTMLResponse:
        return page(request, "prompt.html", prompt=prompts.status())

    return app


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost. By address, not by prefix: '127.example.com' is a name that may
    point anywhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_token(cfg: ServeConfig) -> Optional[str]:
    """The token `serve` asks of every request (--auth-token, else $SAELINEAGE_AUTH_TOKEN; None: none).

    Refuses a host other than loopback with neither a token nor --insecure, before anything is bound."""
    token = cfg.auth_token or os.environ.get(AUTH_ENV, "")
    if token:
        check_token(token)
        return token
    if not is_loopback(cfg.host) and not cfg.insecure:
        raise SaelineageError(
            f"--host {cfg.host} would let other machines use the browser, and no access token is set.",
            f"set ${AUTH_ENV} (or pass --auth-token TOKEN; the variable keeps it out of shell history and "
            'process lists), e.g. from python -c "import secrets; print(secrets.token_urlsafe(32))"; '
            "or pass --insecure to serve without one, or keep the default --host 127.0.0.1.",
        )
    return None


MALLOC_ARENAS = 2
"""glibc malloc arenas the server's threads share (`limit_malloc_arenas`)."""


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas at `n` for this process (Linux; a MALLOC_ARENA_MAX the user set wins).

    Each request thread otherwise gets an arena of its own (up to 8 per core), and memory freed in
    one is not reused by another: under 50 clients for 300 s (`benchmarks/bench_serve_load.py`) the
    server's resident memory crept up by ~25 MB/min; with 2 arenas it levels off and falls back when
    the load ends."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # another C library: nothing to tune
        pass


def serve(run_dir: str | Path, cfg: ServeConfig | None = None, *, progress: bool = True) -> None:
    """Serve the browser for `run_dir` until interrupted (the demo and `saelineage serve` call this).

    Builds (or reuses) the query cache first, then prints the URL when `progress`."""
    limit_malloc_arenas()  # before the server's threads start
    cfg = cfg or ServeConfig()
    host, port, log_level, announce = cfg.host, cfg.port, cfg.log_level, progress
    token = serve_token(cfg)  # first: a refused host costs neither the cache build nor a bound port
    import uvicorn

    from saelineage.progress import console

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    loop = is_loopback(host)
    if not loop and token is None:
        console.print(
            f"[bold yellow]warning:[/] serving on {host} without an access token (--insecure): anyone who "
            "reaches this port can use the browser. Bind to 127.0.0.1 (the default) unless you mean it."
        )
    elif not loop:
        console.print(
            f"[bold yellow]note:[/] serving on {host} over plain HTTP: the token and the pages travel "
            "unencrypted. Put a TLS proxy or an SSH tunnel in front on networks you do not trust."
        )
    from saelineage.query.cache import CacheFiles, cache_dir_for, signature
    from saelineage.run import RunDir

    run = RunDir(run_dir)
    if run.exists() and not CacheFiles(cache_dir_for(run), signature(run)).complete():
        console.print(f"preparing the browser's query cache for {run.path} (once per change of the run's files)…")
    app = create_app(
        run_dir,
        allowed_hosts=(LOOPBACK_HOSTS + (host,)) if loop else None,
        preload_model=True,
        auth_token=token,
        prompt_queue=cfg.prompt_queue,
    )
    shown = f"[{host}]" if ":" in host else host
    if announce:
        console.print(f"[bold green]Feature browser:[/] http://{shown}:{port}/   (API docs: /docs; Ctrl-C to stop)")
        if token is not None:  # how to sign in, never the token itself
            console.print(
                f"  access token required: open http://{shown}:{port}/?token=TOKEN once, or send "
                "'Authorization: Bearer TOKEN'"
            )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
