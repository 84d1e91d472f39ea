"""`saelineage export-site RUN OUT/`: a read-only copy of the browser as static files.

The site is the browser itself, frozen: its pages (overview, layered graph, communities, gates,
splits, and one page per exported feature) are rendered by the app's own routes and templates, with
root-relative links mapped to files (`/feature/3/17` → `feature-3-17.html`, `/community/5` →
`community-5.html`, ...). Its scripts run unchanged: the graphs' side panel shows the top of a feature's
page (the live server renders that part alone), so it reads the exported page and no feature data is
written twice; in a page marked ``data-site="static"``, `common.js` answers the graph calls from JSON
files (`static/static_api.js`), each an API answer written through its response model (`schema.dump`):

- `data/site.json`: what the export holds (layers, selection, communities with a page, graph variants);
- `data/graph/MEASURE-K.json`: `/api/graph` per measure and "edges per node" K, with the graph
  page's default filters; `data/graph/community-C.json`: each community's subgraph.

Nothing is loaded from another host (plotly.js is copied from the installed wheel); every page
carries a Content-Security-Policy that forbids inline and foreign scripts, and the scripts put
data into the page as text only, so a hostile label stays text. The live prompt needs the model
and is absent: its page says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jinja2
import numpy as np

from saelineage.errors import SaelineageError
from saelineage.feature_table import parse_feature_ids
from saelineage.query.generation import MEASURES
from saelineage.version import __version__
from saelineage.web import schema
from saelineage.web.config import SiteConfig

GRAPH_EDGES_PER_NODE = (0, 1, 2, 3, 5)
"""The choices of the graph page's "edges per node" control, each exported per measure."""
GRAPH_MIN_VALUE, GRAPH_MAX_NODES, GRAPH_ORDER = 0.1, 400, "barycenter"
"""The graph page's default filters (templates/graph.html): the exported graphs use them."""
GRAPH_DEFAULTS = {"min_value": GRAPH_MIN_VALUE, "max_nodes": GRAPH_MAX_NODES, "order": GRAPH_ORDER}
"""The same, as site.json tells the graph page."""
COMMUNITY_GRAPH_NODES = 2000
"""Nodes of a community's subgraph, as the community page asks for them."""
PAGE_ROWS = 100
"""Rows per page of the gates, splits and communities tables (the browser's pager)."""
STATIC_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'"
)
ABSENT_FEATURE = "feature-absent.html"
"""Where links to a feature without a page of its own lead (a dead feature, or one outside --features/--top-n)."""
MARKER = "site.json"
"""data/site.json marks a folder as an export (a later export may replace it)."""


@dataclass
class SiteResult:
    """What `export_site` wrote."""

    out: Path
    files: int
    bytes: int
    features: int
    seconds: float


def shown_rows(total: int, max_rows: int) -> int:
    """Rows of a table the export shows: the first `max_rows`, rounded up to whole pages of PAGE_ROWS
    (a page is the browser's own page of the table)."""
    pages = max(1, -(-max(max_rows, 1) // PAGE_ROWS))
    return min(total, pages * PAGE_ROWS)


class Rewriter:
    """Maps the browser's root-relative URLs to the files of the export."""

    def __init__(self, communities: set[int], pages: dict[str, int], features: set[tuple[int, int]]):
        self.communities = communities
        self.pages = pages  # "gates" -> rows exported (pages beyond it are absent)
        self.features = features  # (layer, feature) of the exported feature pages

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        path, q = parts.path, parse_qs(parts.query, keep_blank_values=True)
        if path == "/":
            return "index.html"
        if path.startswith(("/static/", "/vendor/")):
            return path[1:]
        m = re.fullmatch(r"/feature/(\d+)/(\d+)", path)
        if m:
            layer, feature = int(m.group(1)), int(m.group(2))
            return f"feature-{layer}-{feature}.html" if (layer, feature) in self.features else ABSENT_FEATURE
        m = re.fullmatch(r"/community/(\d+)", path)
        if m:
            c = int(m.group(1))
            return f"community-{c}.html" if c in self.communities else "communities.html"
        if path in ("/gates", "/splits", "/communities"):
            name = path[1:]
            offset = int((q.get("offset") or ["0"])[0] or 0)
            if offset >= self.pages.get(name, 0):
                offset = 0
            return f"{name}.html" if offset == 0 else f"{name}-{offset}.html"
        if path == "/graph":
            return "graph.html" + (f"?{parts.query}" if parts.query else "")
        if path in ("/prompt", "/search", "/docs"):
            return "prompt.html" if path == "/prompt" else "index.html"
        raise ValueError(f"no file of the static site stands for {url!r}")

    def page(self, html: str) -> str:
        """A rendered page made static: links mapped, marked static, the CSP as a meta tag."""

        def sub(m: re.Match) -> str:
            return f'{m.group(1)}="{self.url(m.group(2).replace("&amp;", "&")).replace("&", "&amp;")}"'

        html = html.replace('<a href="/docs">API</a>', "")  # no API in a static copy
        html = re.sub(r'<a href="\?sort=[^"]*">(.*?)</a>', r"\1", html)  # re-sorting a table needs the server
        html = re.sub(r'\b(href|src|action)="(/[^"]*)"', sub, html)
        html = html.replace("<body ", '<body data-site="static" ', 1)
        html = html.replace(
            '<meta charset="utf-8">',
            f'<meta charset="utf-8">\n<meta http-equiv="Content-Security-Policy" content="{STATIC_CSP}">',
            1,
        )
        return html.replace(
            "everything here is served from this machine",
            "a read-only static export of the run: no server, no live prompts",
        )


def _select(g: Any, cfg: SiteConfig) -> np.ndarray:
    """Feature rows (of the browser's feature index) to export: the chosen ids, else every live feature
    (or the top-n most active of each layer)."""
    if cfg.features:
        rows = []
        for layer, feature in parse_feature_ids(cfg.features, g.layers):
            i = g.idx(layer, feature)
            if i is None:
                raise SaelineageError(f"feature {layer}:{feature} is not in the run.", "check the ids in --features.")
            rows.append(i)
        return np.unique(np.asarray(rows, np.int64))
    live = np.flatnonzero(g.n_active > 0)
    if cfg.top_n <= 0:
        return live
    keep = []
    for layer in g.layers:
        mine = live[g.layer[live] == layer]
        keep.append(mine[np.lexsort((g.feature[mine], -g.n_active[mine]))[: cfg.top_n]])
    return np.sort(np.concatenate(keep)) if keep else live[:0]


def _related(data: Any) -> set[tuple[int, int]]:
    """Features that take part in a gate or a split (the others' pages skip those queries)."""
    g = data.g
    out: set[tuple[int, int]] = set()
    if "gates" in g.tables:
        for r in g.q("SELECT DISTINCT layer, feature, parent_layer, parent_a, parent_b FROM gates"):
            out |= {(r["layer"], r["feature"]), (r["parent_layer"], r["parent_a"]), (r["parent_layer"], r["parent_b"])}
    if "splits" in g.tables:
        for s in data.splits(None, 10**9, 0)["rows"]:
            for ref in [s["_parent"], *s["_children"]]:
                if ref is not None:
                    out.add((ref["layer"], ref["feature"]))
    return out


def _write(path: Path, payload: Any) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
    path.write_bytes(raw)
    return len(raw)


def _prepare_out(out: Path) -> Path:
    """A fresh staging folder beside `out`; `out` may be absent, empty, or an earlier export."""
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / "data" / MARKER).is_file()):
            raise SaelineageError(
                f"{out} exists and is not an earlier saelineage site export.",
                "choose a new or empty folder (an earlier export is replaced).",
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    return stage


def export_site(
    run_dir: str | Path,
    out: str | Path,
    cfg: SiteConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    cache_folder: Path | None = None,
) -> SiteResult:
    """Write the static site of `run_dir` to `out` (replacing an earlier export there, atomically at the end)."""
    from fastapi.testclient import TestClient

    from saelineage.query.graph import graph
    from saelineage.web.app import HERE, create_app, feature_page_context, page_context, plotly_js_path

    cfg = cfg or SiteConfig()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    out = Path(out).resolve()
    app = create_app(run_dir, allowed_hosts=None, cache_folder=cache_folder)
    data = app.state.data
    g = data.g
    if not g.n:
        raise SaelineageError(f"the run {run_dir} has no features yet.", f"run `saelineage collect {run_dir}` first.")
    stage = _prepare_out(out)
    try:
        client = TestClient(app)
        rows = _select(g, cfg)
        comms = data.communities(10**9, 0, 2)["rows"] if (g.community >= 0).any() else []
        community_ids = {r["community"] for r in comms}
        totals = {
            "gates": data.gates(None, None, 1, 0)["total"],
            "splits": data.splits(None, 1, 0)["total"],
            "communities": len(comms),
        }
        pages = {k: shown_rows(v, cfg.max_table_rows) for k, v in totals.items()}
        exported = {(int(g.layer[i]), int(g.feature[i])) for i in rows.tolist()}
        rw = Rewriter(community_ids, pages, exported)
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True)
        common = page_context(data)

        def render(template: str, name: str, **ctx: Any) -> None:
            (stage / name).write_text(rw.page(env.get_template(template).render(**common, **ctx)))

        # assets: the browser's own scripts and styles, plotly.js from the wheel
        shutil.copytree(HERE / "static", stage / "static")
        (stage / "vendor").mkdir()
        shutil.copyfile(plotly_js_path(), stage / "vendor" / "plotly.min.js")

        def page(url: str, name: str, table: str | None = None) -> None:
            r = client.get(url)
            if r.status_code != 200:
                raise RuntimeError(f"{url} answered {r.status_code}")
            html = rw.page(r.text)
            if table and totals[table] > pages[table]:
                note = (
                    f'<p class="note site-note" id="site-truncated">This export holds the first {pages[table]:,} of '
                    f"{totals[table]:,} rows; the run's Parquet files and the notebook API hold all.</p>"
                )
                html = html.replace("</h1>", "</h1>\n" + note, 1)
            (stage / name).write_text(html)

        say("pages")
        page("/", "index.html")
        page("/graph", "graph.html")
        for name, base in (
            ("gates", "/gates?kind="),  # the pages' own pager links also send `layer=`, which FastAPI refuses
            ("splits", "/splits?"),
            ("communities", "/communities?min_size=2"),
        ):
            for offset in range(0, max(pages[name], 1), PAGE_ROWS):
                page(f"{base}&offset={offset}", f"{name}.html" if offset == 0 else f"{name}-{offset}.html", name)
        # live prompts need the model: the prompt page says so
        render("site_prompt.html", "prompt.html")
        render(
            "error.html",
            ABSENT_FEATURE,
            code="Not in this export",
            message=f"This feature has no page here: the export holds {_selection(cfg)} features. "
            "`saelineage serve RUN` shows every feature.",
        )
        say(f"{len(community_ids)} community pages")
        for c in sorted(community_ids):
            page(f"/community/{c}", f"community-{c}.html")
            _write(
                stage / "data" / "graph" / f"community-{c}.json",
                schema.dump(schema.Graph, graph(data, community=c, max_nodes=COMMUNITY_GRAPH_NODES)),
            )

        say("layered graphs")
        measures = [m for m in g.arr.edge_cols if m in MEASURES] if g.arr.has_edges else []
        for m in measures:
            for k in GRAPH_EDGES_PER_NODE:
                gr = graph(data, m, GRAPH_MIN_VALUE, None, None, None, GRAPH_MAX_NODES, GRAPH_ORDER, k)
                _write(stage / "data" / "graph" / f"{m}-{k}.json", schema.dump(schema.Graph, gr))

        say(f"{len(rows):,} feature pages")
        related = _related(data)
        for i in rows.tolist():
            layer, feature = int(g.layer[i]), int(g.feature[i])
            f = data.feature(layer, feature)
            page_of = feature_page_context(
                data,
                f,
                examples=cfg.examples,
                neighbours=cfg.neighbours,
                context=(cfg.context_before, cfg.context_after),
                relations=(layer, feature) in related,
            )
            render("feature.html", f"feature-{layer}-{feature}.html", **page_of)
        _write(
            stage / "data" / MARKER,
            {
                "run": data.run.path.name,
                "version": __version__,
                "layers": g.layers,
                "features": len(rows),
                "live": int((g.n_active > 0).sum()),
                "selection": _selection(cfg),
                "examples": cfg.examples,
                "neighbours": cfg.neighbours,
                "graph": {"measures": measures, "edges_per_node": list(GRAPH_EDGES_PER_NODE), **GRAPH_DEFAULTS},
                "communities": sorted(community_ids),
                "tables": {k: {"total": totals[k], "shown": pages[k]} for k in totals},
            },
        )
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    files = [p for p in out.rglob("*") if p.is_file()]
    return SiteResult(out, len(files), sum(p.stat().st_size for p in files), len(rows), time.perf_counter() - t0)


def _selection(cfg: SiteConfig) -> str:
    """Which features the export has pages for, in words."""
    return "the chosen" if cfg.features else (f"the top {cfg.top_n} per layer" if cfg.top_n > 0 else "all live")
