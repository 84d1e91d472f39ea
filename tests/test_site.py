"""`saelineage export-site`: the static copy of the browser. Its files (links all resolve, feature pages
are the server's pages, data files are the API's answers, selections, size budget), then the site in
chromium behind a plain static file server (python -m http.server on 127.0.0.1): every page loads
without console errors or foreign requests, the graph's side panel shows the feature page's card, a
feature page opens from the graph, and a hostile label stays text."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import markupsafe
import pyarrow.parquet as pq
import pytest
from chromium import CHROMIUM, launch

from saelineage.errors import SaelineageError
from saelineage.query.run_data import RunData
from saelineage.testing.sample_run import HOSTILE_LABEL, build_sample_run
from saelineage.web import schema
from saelineage.web.config import SiteConfig
from saelineage.web.site import ABSENT_FEATURE, Rewriter, export_site, shown_rows

FEATURE_BUDGET = 15 * 1024
"""Bytes per exported feature at the default options: its page, rendered by the server's template, and
nothing else (the graphs' side panel reads the page). About 14.3 KB on this run (10 examples of 14
tokens, 10 edges each way); the export's size grows with its features, and this keeps that in check."""


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return build_sample_run(tmp_path_factory.mktemp("site") / "run", n_layers=4, d_sae=96)


@pytest.fixture(scope="module")
def site(sample, tmp_path_factory):
    return export_site(sample.path, tmp_path_factory.mktemp("out") / "site", SiteConfig(max_table_rows=20))


def _links(html: str) -> list[str]:
    return [m.group(2).replace("&amp;", "&") for m in re.finditer(r'\b(href|src|action)="([^"]*)"', html)]


def test_every_link_resolves_to_a_file_of_the_site(site):
    pages = sorted(site.out.glob("*.html"))
    names = {p.name for p in pages}
    assert {"index.html", "graph.html", "communities.html", "gates.html", "splits.html", "prompt.html"} <= names
    assert {"feature-0-0.html", ABSENT_FEATURE, "community-0.html"} <= names
    tables = json.loads((site.out / "data" / "site.json").read_text())["tables"]
    for name, t in tables.items():  # one page per 100 rows shown, the browser's pager
        assert t["shown"] == min(t["total"], 100)  # 20 rows asked: one whole page
        want = {f"{name}.html"} | {f"{name}-{k}.html" for k in range(100, t["shown"], 100)}
        assert {n for n in names if re.fullmatch(rf"{name}(-\d+)?\.html", n)} == want
        assert ("site-truncated" in (site.out / f"{name}.html").read_text()) == (t["total"] > t["shown"])
    assert (site.out / "gates.html").read_text().count('<span class="kind ') == tables["gates"]["shown"]

    for p in pages:
        html = p.read_text()
        assert 'data-site="static"' in html and "Content-Security-Policy" in html, p.name
        for url in _links(html):
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") or url.startswith(("#", "data:")):
                assert "neuronpedia.org" in url or url.startswith(("#", "data:")), (p.name, url)
                continue
            assert not url.startswith("/"), f"{p.name}: root-relative link {url}"
            if parts.path:
                assert (site.out / parts.path).is_file(), f"{p.name}: {url} has no file"
    assert (site.out / "vendor" / "plotly.min.js").stat().st_size > 1_000_000  # no CDN: plotly ships with the site


def test_table_rows_shown_in_whole_pages():
    assert [shown_rows(t, m) for t, m in [(53, 20), (530, 20), (530, 100), (530, 101), (530, 2000), (0, 5)]] == [
        53, 100, 100, 200, 530, 0,
    ]  # fmt: skip


def _pages(out: Path) -> set[tuple[int, int]]:
    """(layer, feature) of the exported feature pages."""
    return {
        (int(layer), int(feature)) for layer, feature in (p.stem.split("-")[1:] for p in out.glob("feature-*-*.html"))
    }


def test_feature_pages_and_data_files(site, sample):
    info = json.loads((site.out / "data" / "site.json").read_text())
    g = RunData(sample.path).g
    live = [(int(l), int(f)) for l, f, n in zip(g.layer, g.feature, g.n_active) if n > 0]
    assert info["features"] == len(live) == site.features
    assert _pages(site.out) == set(live)
    # the side panel reads the feature pages: no second copy of their data
    assert sorted(p.name for p in (site.out / "data").iterdir()) == ["graph", "site.json"]
    html = (site.out / "feature-0-0.html").read_text()
    assert str(markupsafe.escape(HOSTILE_LABEL)) in html and HOSTILE_LABEL not in html
    for p in (site.out / "data" / "graph").glob("*.json"):
        gr = json.loads(p.read_text())
        assert gr == schema.dump(schema.Graph, gr), p.name


def test_feature_page_is_the_servers_page(sample, tmp_path):
    """With the server's sizes, an exported feature page is the server's page with its links mapped to files."""
    from fastapi.testclient import TestClient

    from saelineage.web.app import create_app

    res = export_site(
        sample.path,
        tmp_path / "same",
        SiteConfig(features="0:0, 2:7", examples=20, neighbours=50, context_before=12, context_after=4),
    )
    info = json.loads((res.out / "data" / "site.json").read_text())
    rw = Rewriter(set(info["communities"]), {k: t["shown"] for k, t in info["tables"].items()}, {(0, 0), (2, 7)})
    client = TestClient(create_app(sample.path, allowed_hosts=None))
    for layer, feature in [(0, 0), (2, 7)]:
        html = (res.out / f"feature-{layer}-{feature}.html").read_text()
        assert html == rw.page(client.get(f"/feature/{layer}/{feature}").text)
    assert f'href="{ABSENT_FEATURE}"' in (res.out / "feature-2-7.html").read_text()  # neighbours without a page


def test_size_budget(site):
    pages = sum(p.stat().st_size for p in site.out.glob("feature-*-*.html"))
    assert pages / site.features < FEATURE_BUDGET, f"{pages / site.features:.0f} bytes per feature"
    assert site.bytes == sum(p.stat().st_size for p in site.out.rglob("*") if p.is_file())


def test_selection_and_refusals(sample, tmp_path):
    res = export_site(sample.path, tmp_path / "sel", SiteConfig(features="0:1, 2:5"))
    assert _pages(res.out) == {(0, 1), (2, 5)}
    top = export_site(sample.path, tmp_path / "sel", SiteConfig(top_n=3))  # an earlier export is replaced
    recs = _pages(top.out)
    feats = pq.read_table(sample.file("features.parquet")).to_pandas()
    want = {
        (int(r.layer), int(r.feature))
        for _, grp in feats[feats.n_active > 0].groupby("layer")
        for r in grp.sort_values(["n_active", "feature"], ascending=[False, True]).head(3).itertuples()
    }
    assert top.features == 12 and recs == want
    with pytest.raises(SaelineageError, match="not a feature id"):
        export_site(sample.path, tmp_path / "bad", SiteConfig(features="3-17"))
    with pytest.raises(SaelineageError, match="layer 9"):
        export_site(sample.path, tmp_path / "bad", SiteConfig(features="9:1"))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(SaelineageError, match="not an earlier saelineage site export"):
        export_site(sample.path, other, SiteConfig(top_n=1))
    assert (other / "notes.txt").read_text() == "keep me"


# ---- in chromium, behind a plain static file server ----------------------------------------------


@pytest.fixture(scope="module")
def server(site):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site.out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.problems, pg.dialogs = [], []
    pg.on("console", lambda m: m.type == "error" and pg.problems.append(f"console: {m.text}"))
    pg.on("pageerror", lambda e: pg.problems.append(f"pageerror: {e}"))
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("request", lambda r: r.url.startswith("http://127.0.0.1") or pg.problems.append(f"external: {r.url}"))
    yield pg
    problems = list(pg.problems)
    ctx.close()
    assert not problems, problems


def _ready(pg, selector: str) -> None:
    pg.wait_for_selector(selector, timeout=15000)


@pytest.mark.browser
def test_every_page_loads_without_errors(page, server, site):
    checks = {
        "index.html": "body[data-ready='1']",
        "graph.html": "#graph-info[data-ready='1']",
        "communities.html": "#communities-table tbody tr",
        "community-0.html": "#graph-info[data-ready='1']",
        "gates.html": "#gates-table tbody tr",
        "splits.html": "#splits-table tbody tr",
        "prompt.html": "#prompt-unavailable",
        "feature-1-3.html": "#examples li",
        ABSENT_FEATURE: ".error-message",
    }
    for path, selector in checks.items():
        page.goto(f"{server}/{path}")
        _ready(page, selector)
    page.goto(f"{server}/prompt.html")
    assert "Live prompts are not part of a static export" in page.inner_text("#prompt-unavailable")
    page.goto(f"{server}/index.html")
    _ready(page, "body[data-ready='1']")
    assert page.locator("#lifecycle-chart .main-svg").count() >= 1  # plotly from the site itself
    assert page.locator("header .search").is_hidden()


@pytest.mark.browser
def test_feature_page_from_the_graph(page, server):
    page.goto(f"{server}/graph.html")
    _ready(page, "#graph-info[data-ready='1']")
    node = page.evaluate(
        "(() => { const n = window.saelineageGraph.data.nodes.find(x => x.row === 1);"
        " return {x: n.x, y: n.y, layer: n.layer, feature: n.feature}; })()"
    )
    box = page.locator("#graph-canvas").bounding_box()
    page.mouse.click(box["x"] + node["x"], box["y"] + node["y"])
    page.wait_for_selector("#open-feature")
    # the panel shows the card of the feature's page, and its edges as lists
    assert 0 < page.locator("#feature-panel .examples li").count() <= 6
    assert (
        page.locator("#feature-panel .examples .tok.hit").count() == page.locator("#feature-panel .examples li").count()
    )
    assert page.locator("#feature-panel ul.nb li, #feature-panel p.note").count() > 0
    page.click("#open-feature")
    page.wait_for_url(f"**/feature-{node['layer']}-{node['feature']}.html")
    assert page.inner_text("#feature-label").strip() != ""
    assert page.locator("#examples li").count() > 0
    assert page.locator("#examples .tok.hit").count() == page.locator("#examples li").count()
    assert page.locator("#up-table tbody tr").count() > 0
    # edges-per-node switches to the exported variant; the graph is still drawn
    page.goto(f"{server}/graph.html?edges_per_node=1&measure=pearson")
    _ready(page, "#graph-info[data-ready='1']")
    assert "(pearson)" in page.inner_text("#graph-info")
    page.goto(f"{server}/{ABSENT_FEATURE}")  # where links to a feature without a page lead
    assert "no page here" in page.inner_text(".error-message")


@pytest.mark.browser
def test_hostile_label_stays_text(page, server):
    page.goto(f"{server}/feature-0-0.html")
    assert page.inner_text("#feature-label") == HOSTILE_LABEL
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    comm = page.get_attribute("#feature-card a.comm", "data-community")
    page.goto(f"{server}/graph.html?community={comm}&min_value=")
    _ready(page, "#graph-info[data-ready='1']")
    page.evaluate("window.saelineageGraph.selectById(0, 0)")
    page.wait_for_selector("#feature-panel #feature-label")
    assert page.inner_text("#feature-panel #feature-label") == HOSTILE_LABEL
    assert page.locator("#feature-panel img").count() == 0
    page.goto(f"{server}/community-{comm}.html")
    assert HOSTILE_LABEL in page.inner_text("#members-table")
    assert page.locator("main img").count() == 0
    page.wait_for_timeout(300)
    assert page.dialogs == []
