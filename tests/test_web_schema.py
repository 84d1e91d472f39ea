"""The browser's OpenAPI document tells the truth about the JSON API.

schemathesis (its CLI, as a user would run it) generates requests for every `/api` operation
from `/openapi.json`, sends them to the app served by uvicorn on 127.0.0.1, and checks every
answer: no server error, status code documented, body valid against the declared schema,
schema-valid requests accepted and invalid ones rejected.

The schemathesis pytest plugin is not used: its fixture-based loader breaks on pytest 9, and a
module-level schema would build the sample run at collection time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from saelineage.data.importer import write_run
from saelineage.run import RunDir, write_parquet
from saelineage.testing.sample_run import build_sample_run, synthetic_codes
from saelineage.web.app import create_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MIN_CASES = 100
"""Generated cases per operation that has parameters (fuzzing phase alone; the coverage phase adds more)."""

# Deterministic generation, and no example database (nothing written into the checkout).
GENERATION = f"""
[generation]
max-examples = {MIN_CASES}
deterministic = true
database = "none"
"""

# A schema-valid request may only be refused with a documented answer that depends on the data:
# 404 for a feature or community the run lacks; without a model, 503 from the prompt operations.
NO_MODEL_CONFIG = (
    GENERATION
    + """
[checks]
positive_data_acceptance.expected-statuses = ["2xx"]

[[operations]]
include-path-regex = "^/api/(features|communities)/"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404"]

[[operations]]
include-path-regex = "^/api/prompt/(tokens|graph)$"
checks.not_a_server_error.expected-statuses = ["2xx", "4xx", "503"]
checks.positive_data_acceptance.expected-statuses = ["503"]
"""
)

# With a model, a position past the prompt's last token is the one documented refusal (400).
WITH_MODEL_CONFIG = (
    GENERATION
    + """
[checks]
positive_data_acceptance.expected-statuses = ["2xx"]

[[operations]]
include-path = "/api/prompt/graph"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]
"""
)


class ReplayBackend:
    """A stand-in model for the synthetic run: a prompt's codes are the run's own codes at the first
    corpus position of each token, so prompt graphs hold the run's planted features and edges."""

    def __init__(self) -> None:
        self.layer_codes, tokens, vocab = synthetic_codes()  # build_sample_run's defaults
        self.n_vocab = len(vocab)
        self.first: dict[int, int] = {}
        for i, t in enumerate(tokens.tolist()):
            self.first.setdefault(int(t), i)

    def tokenize(self, text: str) -> list[int]:
        return [0] + [1 + ord(c) % (self.n_vocab - 1) for c in text]

    def codes(self, ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        rows = [self.first.get(t, 0) for t in ids]
        return {l: (m[rows].indptr, m[rows].indices, m[rows].data) for l, m in self.layer_codes.items()}


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on a free port of 127.0.0.1 in a thread, until the block ends."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that name it, and without it
    # every answer waits ~40 ms for a delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def schemathesis_run(url: str, config: str, folder: Path, *args: str) -> Counter:
    """Run the schemathesis CLI against `url`; fail with its report unless every check passed.
    Returns the number of generated cases per operation ("GET /api/status": n)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schemathesis.toml").write_text(config)
    events = folder / "events.ndjson"
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--no-color",
        "--config-file",
        str(folder / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(events),
        *args,
    ]
    res = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-20_000:] + res.stderr[-5_000:]
    cases: Counter = Counter()
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if "ScenarioFinished" in event:
            rec = event["ScenarioFinished"]["recorder"]
            cases[rec["label"]] += len(rec.get("cases", {}))
    return cases


def client(app: FastAPI) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1")  # a Host the app's loopback guard admits


def api_operations(app: FastAPI) -> dict[str, dict]:
    """{"GET /api/status": operation} of every /api operation in the app's OpenAPI document."""
    doc = client(app).get("/openapi.json").json()
    return {f"{m.upper()} {p}": op for p, ops in doc["paths"].items() if p.startswith("/api/") for m, op in ops.items()}


def takes_input(op: dict) -> bool:
    return bool(op.get("parameters") or op.get("requestBody"))


def add_ablations(run: RunDir, n: int = 12) -> None:
    """Ablation results for `n` edges (what `ablate` writes), so neighbours carry `ablation` objects."""
    edges = pq.read_table(run.file("edges.parquet")).slice(0, n).to_pydict()
    write_parquet(
        run.file("ablations.parquet"),
        pa.table(
            {
                "measure": ["jaccard"] * n,
                **{c: pa.array(edges[c], pa.int32()) for c in ("src_layer", "src", "dst_layer", "dst")},
                "mean_drop": np.linspace(-0.5, 2.0, n),
                "rel_drop": [float("nan")] + [0.25] * (n - 1),
                "frac_off": [0.0] * n,
                "n_tokens": pa.array(range(n), pa.int64()),
            }
        ),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = build_sample_run(tmp_path_factory.mktemp("webschema") / "run")
    add_ablations(run)
    return run


@pytest.fixture(scope="module")
def app(run):
    return create_app(run.path)


def test_no_json_response_is_declared_a_bare_string(app):
    """Every /api operation declares an object (a named model) as its JSON 200 body."""
    doc = client(app).get("/openapi.json").json()
    ops = api_operations(app)
    assert len(ops) == 14
    for name, op in ops.items():
        body = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert body != {"type": "string"}, name
        model = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
        assert model["type"] == "object" and model["properties"], name
        for code, answer in op["responses"].items():
            if code != "200":  # every error answer has a body of its own model
                assert answer["content"]["application/json"]["schema"]["$ref"], (name, code)


def test_error_answers_are_documented(app):
    """The 4xx/5xx answers the app gives outside generated input are in the document too."""
    ops = api_operations(app)
    c = client(app)
    big = b'{"text": "' + b"a" * 70_000 + b'"}'
    for path in ("/api/prompt/tokens", "/api/prompt/graph"):
        r = c.post(path, content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "413" in ops[f"POST {path}"]["responses"]
        assert r.json()["detail"]
        r = c.post(path, json={"text": "hello", "position": 0})
        assert r.status_code == 503 and "503" in ops[f"POST {path}"]["responses"]  # the sample run has no model
    r = c.get("/api/features/0/999999")
    assert r.status_code == 404 and "404" in ops["GET /api/features/{layer}/{feature}"]["responses"]
    assert r.json() == {"detail": "feature 0:999999 is not in this run"}
    r = c.delete("/api/status")  # a 405 names the allowed methods
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_api_conforms_to_its_schema(app, tmp_path):
    """Every /api operation, over the sample run (no model: the prompt operations answer 503)."""
    with served(app) as url:
        cases = schemathesis_run(url, NO_MODEL_CONFIG, tmp_path)
    ops = api_operations(app)
    assert set(cases) == set(ops)
    for name, op in ops.items():
        assert cases[name] >= (MIN_CASES if takes_input(op) else 1), (name, cases[name])


def test_prompt_api_with_a_model_conforms_to_its_schema(run, tmp_path):
    """The prompt operations when a model is there: tokens, per-token graphs, 400 past the last token."""
    app = create_app(run.path, prompt_backend=ReplayBackend())
    g = client(app).post("/api/prompt/graph", json={"text": "the cat", "position": 3, "rel": 0.0}).json()
    assert g["nodes"]["layer"] and g["edges"]["src"]  # the replayed codes give a graph with edges to check
    with served(app) as url:
        cases = schemathesis_run(url, WITH_MODEL_CONFIG, tmp_path, "--include-path-regex", "^/api/prompt/")
    ops = {k: v for k, v in api_operations(app).items() if k.startswith(("GET /api/prompt/", "POST /api/prompt/"))}
    assert set(cases) == set(ops)
    for name, op in ops.items():
        assert cases[name] >= (MIN_CASES if takes_input(op) else 1), (name, cases[name])


# One request per operation and answer shape: (method, path template, path, body)
FIXED_REQUESTS = [
    ("GET", "/api/status", "/api/status", None),
    ("GET", "/api/overview", "/api/overview", None),
    ("GET", "/api/features/{layer}/{feature}", "/api/features/1/2", None),
    ("GET", "/api/features/{layer}/{feature}", "/api/features/0/99999", None),
    ("GET", "/api/features/{layer}/{feature}/neighbours", "/api/features/1/2/neighbours?limit=500", None),
    ("GET", "/api/features/{layer}/{feature}/neighbours", "/api/features/0/2/neighbours?direction=up", None),
    ("GET", "/api/features/{layer}/{feature}/relations", "/api/features/1/2/relations", None),
    ("GET", "/api/graph", "/api/graph?max_nodes=2000", None),
    ("GET", "/api/graph", "/api/graph?edges_per_node=1&min_value=0.1", None),
    ("GET", "/api/graph", "/api/graph?community=0", None),
    ("GET", "/api/graph", "/api/graph?layer_min=1&layer_max=1", None),
    ("GET", "/api/communities", "/api/communities", None),
    ("GET", "/api/communities/{community}", "/api/communities/0", None),
    ("GET", "/api/gates", "/api/gates", None),
    ("GET", "/api/splits", "/api/splits", None),
    ("GET", "/api/search", "/api/search?q=1:2", None),
    ("GET", "/api/search", "/api/search?q=the", None),
    ("GET", "/api/prompt/status", "/api/prompt/status", None),
    ("POST", "/api/prompt/tokens", "/api/prompt/tokens", {"text": "the cat"}),
    ("POST", "/api/prompt/graph", "/api/prompt/graph", {"text": "the cat", "position": 1}),
]


def answers_conform(app: FastAPI, requests: list[tuple]) -> Counter:
    """Send each request; fail unless its status is documented and its body valid. Returns the statuses seen."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"host": "127.0.0.1"})
    c = client(app)
    seen: Counter = Counter()
    for method, template, path, body in requests:
        r = c.request(method, path, json=body)
        seen[r.status_code] += 1
        schema[template][method].validate_response(r)
    return seen


def test_full_run_with_ablations_conforms(run, app):
    """The sample run with every stage, ablation results on some edges included."""
    e = pq.read_table(run.file("ablations.parquet")).slice(0, 1).to_pylist()[0]
    down = f"/api/features/{e['src_layer']}/{e['src']}/neighbours?direction=down&limit=500"
    nb = client(app).get(down).json()
    assert sum(x["ablation"] is not None for x in nb["down"]) >= 1
    tpl = "/api/features/{layer}/{feature}/neighbours"
    seen = answers_conform(app, FIXED_REQUESTS + [("GET", tpl, down, None)])
    assert seen[200] == len(FIXED_REQUESTS) - 2 and seen[404] == 1 and seen[503] == 2


@pytest.mark.parametrize("stages", [(), ("stats",)])
def test_runs_without_later_stages_conform(tmp_path, stages):
    """Runs that lack the later stages' files (only collect; collect + stats, no analyze or ablate) answer
    with shapes the schema allows: optional keys absent, nulls where the schema admits them."""
    # fixed requests rather than generated ones: what varies here is the run, not the input
    from saelineage.stats.stage import run_stats

    codes, tokens, vocab = synthetic_codes(n_layers=3, d_sae=12, n_windows=32, window=16)
    run = write_run(tmp_path / "r", codes, tokens, window_len=16, bos=True, vocab=vocab)
    if "stats" in stages:
        run_stats(run.path, progress=False)
    app = create_app(run.path)
    seen = answers_conform(app, FIXED_REQUESTS)
    c = client(app)
    st = c.get("/api/status").json()
    assert {m["stage"] for m in st["missing"]} == {"stats", "analyze", "ablate"} - set(stages)
    ov = c.get("/api/overview").json()
    if stages:  # edges, but without dec_cosine: the run has no decoders
        assert ov["counts"]["edges"] > 0 and "jaccard" in ov["histograms"] and "dec_cosine" not in ov["histograms"]
    else:
        assert ov["counts"]["edges"] is None and ov["histograms"] == {}
    assert seen[200] >= len(FIXED_REQUESTS) - 4 and seen[404] >= 2 and seen[503] == 2


def test_features_outside_the_index_are_briefed_like_the_rest(app):
    """An edge or split may name a feature that features.parquet lacks; it is shown with the same keys."""
    g = app.state.data.g
    known, unknown = g.brief_at(1, 2), g.brief_at(1, 10**6)
    assert known == g.brief(g.idx(1, 2)) and set(unknown) == set(known)
    assert unknown == {
        "layer": 1,
        "feature": 10**6,
        "label": "",
        "density": None,
        "act_max": None,
        "lifecycle": None,
        "community": None,
    }
