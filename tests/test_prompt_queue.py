"""Live prompts under load: one runs, at most N wait, and the rest are refused at once with 503 and
Retry-After in the API's problem shape; the admitted ones all finish once the model frees up."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import httpx
import pytest
from test_web_prompt_state import DenseBackend

from saelineage.errors import SaelineageError
from saelineage.query.prompt import PromptBusy, PromptQueue
from saelineage.testing.sample_run import build_sample_run
from saelineage.web.app import create_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LAYERS = [0, 1, 2]


class GatedBackend(DenseBackend):
    """A model that holds every prompt until the test opens the gate, and counts the prompts it ran."""

    def __init__(self) -> None:
        super().__init__(8, LAYERS)
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.ran = 0
        self._n = threading.Lock()

    def tokenize(self, text: str) -> list[int]:
        self.entered.release()
        assert self.gate.wait(30), "the test never opened the gate"
        with self._n:
            self.ran += 1
        return super().tokenize(text)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return build_sample_run(tmp_path_factory.mktemp("queue") / "run", n_layers=3, d_sae=8, n_windows=8)


async def _burst(app, requests: list[tuple[str, dict]], backend: GatedBackend, n_refused: int) -> list[httpx.Response]:
    """Send all requests at once; once `n_refused` have answered (and none other can, the gate being
    shut), open the gate and collect the rest."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
        tasks = [asyncio.create_task(c.post(path, json=body)) for path, body in requests]
        done: set[asyncio.Task] = set()
        deadline = time.monotonic() + 20
        while len(done) < n_refused and time.monotonic() < deadline:
            finished, _ = await asyncio.wait(tasks, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
            done = set(finished)
        await asyncio.sleep(0.2)  # room for a wrong extra answer to show up before the gate opens
        early = [t for t in tasks if t.done()]
        assert len(early) == n_refused, f"{len(early)} answered while the model was held, want {n_refused}"
        assert backend.ran == 0 and backend.entered.acquire(timeout=5)  # exactly one is in the model…
        assert not backend.entered.acquire(timeout=0.2)  # …and the others wait their turn outside it
        backend.gate.set()
        return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize("waiting,extra", [(2, 3), (0, 2), (4, 1)])
def test_full_queue_answers_503_with_retry_after(sample, waiting, extra):
    backend = GatedBackend()
    app = create_app(sample.path, prompt_backend=backend, allowed_hosts=None)
    app.state.prompts.queue = PromptQueue(max_waiting=waiting)
    body = {"text": "the cat and the dog", "position": 1, "rel": 0.0}
    # tokens and graph share the one model, hence the one queue
    reqs = [("/api/prompt/graph" if i % 2 else "/api/prompt/tokens", body) for i in range(1 + waiting + extra)]
    res = asyncio.run(_burst(app, reqs, backend, extra))
    busy = [r for r in res if r.status_code == 503]
    ok = [r for r in res if r.status_code == 200]
    assert len(busy) == extra and len(ok) == 1 + waiting, [r.status_code for r in res]
    assert backend.ran == 1 + waiting
    for r in busy:
        assert r.headers["content-type"] == "application/json"
        assert set(r.json()) == {"detail"} and "busy" in r.json()["detail"]  # the API's Problem shape
        assert int(r.headers["Retry-After"]) >= 1
    for r in ok:
        assert "Retry-After" not in r.headers
        assert "tokens" in r.json() or r.json()["token"]
    q = app.state.prompts.queue
    assert (q.admitted, q.refused) == (0, extra)
    # with the burst over, the queue has room again
    again = asyncio.run(_one(app, "/api/prompt/tokens", body))
    assert again.status_code == 200


async def _one(app, path: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        return await c.post(path, json=body)


def test_unavailable_model_is_not_queued(sample):
    """A run without a model answers its own 503 (no Retry-After), however full the queue is."""
    app = create_app(sample.path, allowed_hosts=None)
    q = app.state.prompts.queue = PromptQueue(max_waiting=0)
    q.admitted = 5  # as if the queue were full
    r = asyncio.run(_one(app, "/api/prompt/tokens", {"text": "the cat"}))
    assert r.status_code == 503 and "Retry-After" not in r.headers
    assert "imported" in r.json()["detail"] and q.refused == 0


def test_retry_after_follows_the_service_time_and_the_queue():
    q = PromptQueue(max_waiting=1)
    for _ in range(20):
        q.run(time.sleep, 0.05)
    assert q.retry_after() == 1  # ~0.05 s a prompt: come back in a second
    q._mean_s = 2.5
    with q.admit(), q.admit():
        with pytest.raises(PromptBusy) as exc, q.admit():
            pass
        assert exc.value.retry_after == 5 == q.retry_after()  # one waiting + the one running, 2.5 s each
    assert q.admitted == 0


def test_queue_bound_is_checked():
    with pytest.raises(SaelineageError, match="prompt-queue"):
        PromptQueue(-1)
    with pytest.raises(SaelineageError, match="prompt-queue"):
        PromptQueue(10_000)


def test_openapi_documents_retry_after(sample):
    spec = create_app(sample.path, allowed_hosts=None).openapi()
    for path in ("/api/prompt/tokens", "/api/prompt/graph"):
        r503 = spec["paths"][path]["post"]["responses"]["503"]
        assert "Retry-After" in r503["headers"] and r503["content"]["application/json"]["schema"]["$ref"].endswith(
            "/Problem"
        )
