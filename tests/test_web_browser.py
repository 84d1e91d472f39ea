"""Browser tests of the feature browser: Debian chromium driven by Playwright, server in-process.

Screenshots go to artifacts/screens/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from chromium import CHROMIUM, launch

pytestmark = pytest.mark.browser

SCREENS = Path(__file__).resolve().parents[1] / "artifacts" / "screens"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium); browser tests skipped", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

from saelineage.testing.sample_run import HOSTILE_LABEL, build_sample_run  # noqa: E402
from saelineage.web.app import create_app  # noqa: E402


class FakeBackend:
    """Stands in for the model in the live-prompt view: words -> vocab ids, deterministic codes."""

    def __init__(self, vocab: list[str], d_sae: int, layers: list[int]):
        self.index = {w.strip(): i for i, w in enumerate(vocab)}
        self.d_sae, self.layers = d_sae, layers

    def tokenize(self, text: str) -> list[int]:
        return [0] + [self.index.get(w, 1) for w in text.split()]

    def codes(self, ids: list[int]):
        out = {}
        for l in self.layers:
            rows = [np.array(sorted({(t * 7 + k * 13 + l) % self.d_sae for k in range(25)}), np.int32) for t in ids]
            indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
            idx = np.concatenate(rows)
            out[l] = (indptr, idx, np.full(len(idx), 50.0, np.float32))
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    import json

    import uvicorn

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run = build_sample_run(tmp_path_factory.mktemp("web") / "run", n_layers=6, d_sae=400)
    vocab = json.loads(run.file("vocab.json").read_text())["decoded"]
    app = create_app(run.path, prompt_backend=FakeBackend(vocab, 400, list(range(6))))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page that records console errors, page errors, dialogs and requests leaving the machine."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.problems = []  # type: ignore[attr-defined]
    pg.dialogs = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: m.type == "error" and pg.problems.append(f"console: {m.text}"))
    pg.on("pageerror", lambda e: pg.problems.append(f"pageerror: {e}"))
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on(
        "request", lambda r: r.url.startswith(("http://127.0.0.1", "data:")) or pg.problems.append(f"external: {r.url}")
    )
    yield pg
    problems = list(pg.problems)
    ctx.close()
    assert not problems, problems


def shot(pg, name: str, full_page: bool = True) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SCREENS / f"{name}.png"), full_page=full_page)


def wait_js(pg, expr: str, timeout: float = 15.0) -> None:
    """Poll a JS expression from Python (wait_for_function would need 'unsafe-eval', which our CSP forbids)."""
    deadline = time.time() + timeout
    while not pg.evaluate(expr):
        assert time.time() < deadline, f"timed out waiting for {expr}"
        pg.wait_for_timeout(50)


def _api(base_url: str, path: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(base_url + path) as r:
        return json.loads(r.read())


def _wait_graph(pg) -> None:
    pg.wait_for_selector("#graph-info[data-ready='1']", timeout=15000)


def test_overview(page, base_url):
    page.goto(base_url + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#lifecycle-chart .main-svg").count() >= 1
    assert page.locator("#rates-chart .main-svg").count() >= 1
    # the new / ending shares carry their bootstrap intervals as error bars, drawn from lifecycle.parquet
    assert page.locator("#rates-chart .errorbar").count() >= 4
    err = page.evaluate(
        "(() => { const d = document.getElementById('rates-chart').data[1];"
        " return [d.y[0], d.error_y.array[0], d.error_y.arrayminus[0]]; })()"
    )
    rates = {r["layer"]: r for r in _api(base_url, "/api/overview")["rates"]}
    first = rates[min(rates)]
    assert err[0] == pytest.approx(100 * first["share_ending"])
    assert err[1] == pytest.approx(100 * (first["share_ending_hi"] - first["share_ending"]))
    assert err[2] == pytest.approx(100 * (first["share_ending"] - first["share_ending_lo"]))
    assert page.locator("#hist-charts .js-plotly-plot .bars").count() >= 5  # one subplot per measure
    assert "synthetic" in page.inner_text("#model-name")
    assert page.locator("#sae-table tbody tr").count() == 6
    # the data-free match's agreement: one row per adjacent layer pair, as the API gives them
    pairs = _api(base_url, "/api/overview")["sae_match"]["pairs"]
    assert page.locator("#sae-match-table tbody tr").count() == len(pairs) == 5
    assert page.locator("#sae-match-table tbody tr").first.inner_text().startswith(f"{pairs[0]['src_layer']} → ")
    shot(page, "overview")


def test_graph_hover_click_opens_feature(page, base_url):
    page.goto(base_url + "/graph")
    _wait_graph(page)
    shot(page, "graph")
    node = page.evaluate(
        "(() => { const n = window.saelineageGraph.data.nodes.find(x => x.row === 1);"
        " return {x: n.x, y: n.y, layer: n.layer, feature: n.feature}; })()"
    )
    box = page.locator("#graph-canvas").bounding_box()
    page.mouse.move(box["x"] + node["x"], box["y"] + node["y"])
    page.wait_for_selector("#tooltip:not([hidden])")
    assert f"L{node['layer']}:{node['feature']}" in page.inner_text("#tooltip")
    shot(page, "graph-hover")
    page.mouse.click(box["x"] + node["x"], box["y"] + node["y"])
    page.wait_for_selector("#open-feature")
    # the panel: the feature page's card (server-rendered), its edges as lists strongest first
    assert 0 < page.locator("#feature-panel .examples li").count() <= 6
    vals = [float(v) for v in page.locator("#feature-panel ul.nb .nbv").all_inner_texts() if v != "n/a"]
    assert vals and page.locator("#feature-panel ul.nb li").count() <= 16
    shot(page, "graph-panel")
    page.click("#open-feature")
    page.wait_for_url(f"**/feature/{node['layer']}/{node['feature']}")
    assert page.locator("#examples li").count() > 0
    assert page.locator("#examples .tok.hit").count() == page.locator("#examples li").count()
    assert page.locator("#up-table tbody tr").count() > 0
    assert page.locator("#down-table tbody tr, #down-none").count() > 0
    shot(page, "feature")


def test_graph_filters_and_crossing_order(page, base_url):
    page.goto(base_url + "/graph?max_nodes=2000&min_value=&order=feature")
    _wait_graph(page)
    by_id = page.evaluate("window.saelineageGraph.data.crossings")
    assert by_id["shown"] == by_id["by_feature"]
    page.select_option("#order", "barycenter")
    wait_js(page, "window.saelineageGraph.data.order === 'barycenter'")
    data = page.evaluate(
        "(() => { const d = window.saelineageGraph.data; return {n: d.nodes.length, c: d.crossings}; })()"
    )
    assert data["n"] == 2000
    assert data["c"]["shown"] < 0.5 * data["c"]["by_feature"]
    # responsiveness with 2,000 nodes: a redraw per hover stays well under a frame budget
    ms = page.evaluate("""(() => { const g = window.saelineageGraph; const t0 = performance.now();
        for (const n of g.data.nodes.slice(0, 40)) { g.hover = n; g._draw(); }
        return (performance.now() - t0) / 40; })()""")
    assert ms < 50, f"{ms:.1f} ms per redraw with 2,000 nodes"
    shot(page, "graph-2000")
    page.fill("#community", "0")
    page.fill("#min_value", "")
    page.click("#graph-controls button[type=submit]")
    wait_js(page, "window.saelineageGraph.data.nodes.every(n => n.community === 0)")


def test_search(page, base_url):
    page.goto(base_url + "/search")
    page.fill("header .search input", "1:3")
    page.keyboard.press("Enter")
    page.wait_for_url("**/search?q=1%3A3")
    assert page.locator("#result-id a.fref").count() == 1
    page.fill("#search-q", "the")
    page.keyboard.press("Enter")
    page.wait_for_selector("#result-tokens table")
    assert page.locator("#result-tokens tbody tr").count() > 0
    shot(page, "search", full_page=False)


def test_hostile_label_renders_as_text(page, base_url):
    page.goto(base_url + "/feature/0/0")
    assert page.inner_text("#feature-label") == HOSTILE_LABEL
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    shot(page, "hostile-feature")
    page.goto(base_url + "/search?q=onerror")
    assert HOSTILE_LABEL in page.inner_text("#result-labels")
    comm = page.evaluate("fetch('/api/features/0/0').then(r => r.json()).then(f => f.community)")
    page.goto(base_url + f"/graph?community={comm}&min_value=&max_nodes=2000")
    _wait_graph(page)
    page.evaluate("window.saelineageGraph.selectById(0, 0)")
    page.wait_for_selector("#feature-panel #feature-label")
    assert page.inner_text("#feature-panel #feature-label") == HOSTILE_LABEL
    assert page.locator("#feature-panel img").count() == 0
    page.wait_for_timeout(300)
    assert page.dialogs == []  # nothing ran


def test_other_views(page, base_url):
    for path, sel, name in [
        ("/communities", "#communities-table tbody tr", "communities"),
        ("/community/0", "#members-table tbody tr", "community"),
        ("/gates", "#gates-table tbody tr", "gates"),
        ("/splits", "#splits-table tbody tr", "splits"),
    ]:
        page.goto(base_url + path)
        assert page.locator(sel).count() > 0, path
        if path.startswith("/community/"):
            _wait_graph(page)
        shot(page, name, full_page=False)
    page.goto(base_url + "/docs")  # Swagger UI from the fastapi-offline wheel, under the same CSP
    page.wait_for_selector(".opblock", timeout=15000)
    assert page.locator(".opblock").count() >= 10
    shot(page, "api-docs", full_page=False)


def test_live_prompt(page, base_url):
    page.goto(base_url + "/prompt")
    page.fill("#prompt-text", "the cat and the dog")
    page.click("#tokenize")
    page.wait_for_selector("#prompt-tokens button.token")
    assert page.locator("#prompt-tokens button.token").count() == 6
    page.locator("#prompt-tokens button.token").nth(2).click()
    _wait_graph(page)
    assert page.evaluate("window.document.getElementById('graph-info').textContent").startswith("token")
    assert page.get_attribute("#model-state", "data-state") == "ready"
    # the layered graph's "edges per node" cap thins a token's hairball; "all" shows every link
    page.evaluate("document.getElementById('graph-info').dataset.ready = ''")
    page.select_option("#edges_per_node", "1")
    _wait_graph(page)
    assert "weaker edges hidden (1 per node)" in page.inner_text("#graph-info")
    page.evaluate("document.getElementById('graph-info').dataset.ready = ''")
    page.select_option("#edges_per_node", "0")
    _wait_graph(page)
    assert "per node" not in page.inner_text("#graph-info")
    shot(page, "prompt")
