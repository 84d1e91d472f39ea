"""Live prompts: tokens of a typed text, and the graph of features active on one token.

`PromptService` answers the browser's and the notebook's prompts; `prompt` is the `saelineage prompt`
command's graph. Both select features and edges with `prompt_graph.prompt_graph`. The model and SAEs
the run was collected with are loaded through
`saelineage.run_model.load_run_model`: in the background as soon as `serve` starts (`preload`), so
the first prompt does not wait for it, or else on first use. `status()` says which state the model
is in (idle / loading / ready / unavailable). A run imported without a model, or whose model/SAE
files are gone, gets a clear "not available" status instead. A token's graph can be thinned to
each feature's strongest links with the layered graph's own cap (`edges_per_node`). The per-token graph holds the
features of every layer whose activation on the chosen token exceeds `rel` × their maximum
over the corpus (the reference work, arXiv:2410.08869, used 0.1), joined by the run's edges between consecutive
layers, coloured by global community.

Under load the server sends live prompts through a `PromptQueue`: one runs, a bounded number wait,
and the rest are refused at once (`PromptBusy`, a 503 with Retry-After) rather than piling up
behind a model that serves one prompt at a time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from saelineage.contract import Manifest
from saelineage.data.finalize import read_vocab
from saelineage.errors import SaelineageError
from saelineage.query.generation import MEASURES, Generation
from saelineage.query.graph import MAX_NODES, between_rows, edges_among, empty_layout, layout, strongest_per_node
from saelineage.query.prompt_graph import PromptGraph, codes_at, load_context, prompt_graph
from saelineage.query.run_data import RunData
from saelineage.run import RunDir

MAX_CHARS = 2000
MAX_TOKENS = 256
MAX_WAITING = 8
"""Live prompts that may wait behind the running one by default (`ServeConfig.prompt_queue`)."""
QUEUE_LIMIT = 32
"""Largest queue accepted: each waiting prompt holds a worker thread, and the server's pool has 40
(AnyIO's default), which the other synchronous routes and file responses share."""

T = TypeVar("T")


class PromptBackend(Protocol):
    """What the prompt view needs from a model: token ids, their strings, and per-layer codes."""

    def tokenize(self, text: str) -> list[int]: ...

    def codes(self, ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """{layer: (indptr [T+1], feature ids, values)} — CSR, one row per token."""
        ...


MODEL_STATES = ("idle", "loading", "ready", "unavailable")
"""What `PromptService.status()["state"]` reports: not loaded yet (it loads on first use), loading in
the background, ready, or unavailable (`reason` says why)."""


class ModelBackend:
    """The run's own model and SAEs, loaded once: in the background (`preload`) or on first use.

    `model`: a `RunModel` loaded already (the prompt command's `--device`)."""

    def __init__(self, run_path: Path, manifest: Manifest, model: Any = None):
        self.run_path, self.manifest = run_path, manifest
        self._model = model
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self.error: str | None = None

    @property
    def state(self) -> str:
        if self._model is not None:
            return "ready"
        if self.error is not None:
            return "unavailable"
        return "loading" if self._loader is not None else "idle"

    def preload(self) -> None:
        """Start loading the model in a background thread (a first prompt then waits only for the rest)."""
        if self._loader is None and self._model is None:
            self._loader = threading.Thread(target=self._load_quietly, daemon=True, name="model-preload")
            self._loader.start()

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until a background load is done (for tests and scripts)."""
        if self._loader is not None:
            self._loader.join(timeout)

    def _load_quietly(self) -> None:
        try:
            self._load()
        except Exception:  # noqa: BLE001 - recorded in self.error by _load; status() reports it
            pass

    def check(self) -> str | None:
        """Why the model cannot be used, or None when it can (without loading it)."""
        cfg = self.manifest.config or {}
        spec = cfg.get("model") or self.manifest.model.get("spec")
        if not spec or spec == "imported":
            return "this run was imported without a model, so live prompts are not available."
        for layer, meta in self.manifest.saes.items():
            meta = meta or {}
            if not meta.get("release") and not (meta.get("path") and Path(meta["path"]).exists()):
                return f"the SAE of layer {layer} is no longer at {meta.get('path')!r}, so live prompts are off."
        return None

    def _load(self):
        with self._lock:
            if self._model is None:
                if self.error is not None:
                    raise SaelineageError(self.error)
                from saelineage.run_model import load_run_model

                try:
                    self._model = load_run_model(self.run_path)
                except Exception as exc:
                    self.error = f"the model could not be loaded ({type(exc).__name__}: {exc})."
                    raise
        return self._model

    def tokenize(self, text: str) -> list[int]:
        tok = self._load().adapter.tokenizer
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if self.manifest.bos and getattr(tok, "bos_token_id", None) is not None:
            ids = [int(tok.bos_token_id)] + ids
        return [int(i) for i in ids]

    def codes(self, ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        import torch

        rm = self._load()
        saes = rm.saes
        with self._lock, torch.no_grad():
            res = rm.adapter.residuals(torch.tensor([ids], dtype=torch.long), [saes[l].hook for l in sorted(saes)])
            out = {}
            for l in sorted(saes):
                x = res[saes[l].hook].reshape(-1, rm.adapter.width(saes[l].hook)).to(saes[l].W_enc.dtype)
                c = saes[l].encode_sparse(x)
                out[int(l)] = (np.asarray(c.indptr), np.asarray(c.indices), np.asarray(c.values))
        return out


class PromptBusy(SaelineageError):
    """Refused at once: one live prompt is running and the queue behind it is full."""

    def __init__(self, waiting: int, retry_after: int):
        self.waiting, self.retry_after = waiting, retry_after
        super().__init__(
            f"the model is busy: {waiting} live prompts are waiting already.",
            f"try again in {retry_after} s.",
        )


class PromptQueue:
    """Admission to the model: one live prompt runs at a time, at most `max_waiting` wait for it, and
    the others are refused at once with `PromptBusy`.

    The model runs one prompt at a time anyway (a forward pass uses every core), so an unbounded
    queue would only turn a burst into minutes-long waits and threads held by clients that gave up;
    a bounded one answers the excess in milliseconds with a time to come back.

    `admit()` is the non-blocking check (the route calls it on the event loop, before taking a worker
    thread); `run(fn)` waits for the turn and runs `fn` in the calling (worker) thread. Retry-After
    is the mean service time of recent prompts times the prompts ahead, so that a client that
    comes back then finds a free place."""

    def __init__(self, max_waiting: int = MAX_WAITING):
        if not 0 <= max_waiting <= QUEUE_LIMIT:
            raise SaelineageError(
                f"--prompt-queue must be between 0 and {QUEUE_LIMIT} (got {max_waiting}).",
                f"use e.g. --prompt-queue {MAX_WAITING}.",
            )
        self.max_waiting = max_waiting
        self.admitted = 0  # running + waiting
        self.refused = 0
        self._count = threading.Lock()  # guards admitted/refused: routes may run on several loops (tests)
        self._turn = threading.Lock()  # held while a prompt runs
        self._mean_s = 1.0  # before any prompt has run: a guess, corrected by the first one

    @property
    def waiting(self) -> int:
        return max(self.admitted - 1, 0)

    def retry_after(self) -> int:
        """Seconds after which a refused client may expect a place: the prompts ahead × their mean time."""
        return max(1, min(600, math.ceil(self._mean_s * (self.waiting + 1))))

    @contextmanager
    def admit(self) -> Iterator[None]:
        """A place in the queue for the `with` block, or `PromptBusy` at once when none is left."""
        with self._count:
            if self.admitted > self.max_waiting:  # one running and max_waiting waiting already
                self.refused += 1
                raise PromptBusy(self.waiting, self.retry_after())
            self.admitted += 1
        try:
            yield
        finally:
            with self._count:
                self.admitted -= 1

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Wait for the turn (inside `admit()`), then run `fn(*args)` and time it."""
        with self._turn:
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                # a moving mean: follows a model that got faster once loaded, without one outlier ruling
                self._mean_s = 0.7 * self._mean_s + 0.3 * (time.perf_counter() - t)


class CacheContext:
    """The query cache as a prompt graph's context (live prompts): edges from its memory-mapped CSR
    arrays, only those with a finite value between consecutive layers of the run, since the layered
    view draws an edge from one row to the next."""

    measures = MEASURES
    explanation = None

    def __init__(self, g: Generation):
        self.g = g
        self.layer, self.feature, self.act_max, self.community = g.layer, g.feature, g.act_max, g.community
        self.rows = g.rows

    def edges_among(self, nodes: np.ndarray, measure: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u, w, v = edges_among(self.g, nodes, measure, -np.inf)  # −inf keeps every finite value, drops NaN
        keep = between_rows(self.g, self.g.layers, u, w) & np.isfinite(v)
        return u[keep], w[keep], v[keep]


class PromptService:
    """Availability, tokenisation and per-token graphs for the prompt view."""

    def __init__(
        self,
        data: RunData,
        backend: PromptBackend | None = None,
        preload: bool = False,
        max_waiting: int = MAX_WAITING,
    ):
        """`preload`: start loading the run's model in the background now (`serve` does; tests and the
        notebook API load it on first use). A given `backend` is ready as it is. `max_waiting`: the
        server's queue of live prompts (`queue`; direct calls of `tokens`/`graph` do not use it)."""
        self.data = data
        self.backend = backend
        self.reason: str | None = None
        self.queue = PromptQueue(max_waiting)
        if backend is None:
            mb = ModelBackend(data.run.path, data.g.manifest)
            self.reason = mb.check()
            self.backend = None if self.reason else mb
            if preload and self.backend is not None:
                mb.preload()

    def state(self) -> str:
        """One of MODEL_STATES."""
        if self.backend is None:
            return "unavailable"
        return self.backend.state if isinstance(self.backend, ModelBackend) else "ready"

    def status(self) -> dict[str, Any]:
        state = self.state()
        if state == "unavailable" and isinstance(self.backend, ModelBackend):
            self.reason, self.backend = self.backend.error, None  # a failed background load turns the view off
        return {
            "available": self.backend is not None,
            "state": state,
            "reason": self.reason,
            "max_chars": MAX_CHARS,
            "max_tokens": MAX_TOKENS,
        }

    def require(self) -> PromptBackend:
        """The backend, or the `SaelineageError` saying why live prompts are off."""
        if self.backend is None:
            raise SaelineageError(self.reason or "live prompts are not available for this run.")
        return self.backend

    def tokens(self, text: str) -> list[dict[str, Any]]:
        ids = self._ids(text)
        g = self.data.g
        return [{"i": i, "id": t, "text": g.token_text(t)} for i, t in enumerate(ids)]

    def _ids(self, text: str) -> list[int]:
        backend = self.require()
        try:
            ids = backend.tokenize(text[:MAX_CHARS])
        except SaelineageError:
            raise
        except Exception as exc:  # noqa: BLE001 - model loading failed: say so and switch the view off
            self.reason = (
                getattr(backend, "error", None) or f"the model could not be loaded ({type(exc).__name__}: {exc})."
            )
            self.backend = None
            raise SaelineageError(self.reason) from exc
        return ids[:MAX_TOKENS]

    def graph(
        self,
        text: str,
        position: int,
        rel: float = 0.1,
        measure: str = "jaccard",
        min_value: float | None = None,
        max_nodes: int = 500,
        order: str = "barycenter",
        edges_per_node: int = 0,
    ) -> dict[str, Any]:
        """Features active on token `position` of `text` in every layer, and the edges among them.

        edges_per_node k > 0 keeps each feature's k strongest in- and out-links only, with the layered
        graph's rule (`graph.strongest_per_node`); 0 keeps every link."""
        ids = self._ids(text)
        if not 0 <= position < len(ids):
            raise SaelineageError(f"token position {position} is outside the prompt (0..{len(ids) - 1}).")
        codes = self.require().codes(ids)
        g = self.data.g
        measure = measure if measure in MEASURES else "jaccard"
        pg = prompt_graph(
            codes_at(codes, position),
            CacheContext(g),
            rel=rel,
            measure=measure,
            min_value=min_value,
            max_nodes=min(max_nodes, MAX_NODES),
        )
        u, w, v = pg.rows[pg.src], pg.rows[pg.dst], pg.value
        cap: dict[str, int] = {"edges_per_node": int(max(edges_per_node, 0))}
        if edges_per_node > 0 and len(u):
            keep = strongest_per_node(u, w, v, edges_per_node)
            cap["edges_dropped"] = int((~keep).sum())
            u, w, v = u[keep], w[keep], v[keep]
        # layout lists nodes by feature row, which is pg's (layer, feature) order in the cache's index
        out = layout(g, pg.rows, u, w, v, g.layers, order) if len(pg.rows) else empty_layout()
        out["nodes"]["activation"] = pg.activation.tolist()
        out["nodes"]["rel_activation"] = [r if np.isfinite(r) else None for r in pg.rel_activation.tolist()]
        return (
            out
            | cap
            | {
                "measure": measure,
                "order": order,
                "layers": g.layers,
                "truncated": pg.truncated,
                "position": position,
                "token": g.token_text(ids[position]),
                "rel": rel,
                "missing": None if "edges_dn" in g.tables else "run `saelineage stats RUN` for edges",
            }
        )


def prompt(
    run_dir: str | Path,
    text: str,
    position: int = -1,
    *,
    rel: float = 0.1,
    measure: str = "jaccard",
    min_value: float | None = None,
    max_nodes: int | None = None,
    model: Any = None,
) -> tuple[PromptGraph, dict[str, Any]]:
    """Run the run's model + SAEs (or `model`) on `text`; the graph at token `position` (−1: last), with
    edges from edges.parquet, and what it was made from: {text, position, token, tokens}."""
    run = RunDir(run_dir)
    ctx = load_context(run)
    backend = ModelBackend(run.path, run.load(), model)
    ids = backend.tokenize(text)
    if not ids:
        raise SaelineageError("the prompt has no tokens.", "pass some text.")
    p = position if position >= 0 else len(ids) + position
    if not 0 <= p < len(ids):
        raise SaelineageError(
            f"token position {position} is outside the prompt ({len(ids)} tokens).",
            f"choose a position between {-len(ids)} and {len(ids) - 1}.",
        )
    graph = prompt_graph(
        codes_at(backend.codes(ids), p), ctx, rel=rel, measure=measure, min_value=min_value, max_nodes=max_nodes
    )
    vocab = read_vocab(run)
    tokens = [vocab[i] if vocab and 0 <= i < len(vocab) else str(i) for i in ids]
    return graph, {"text": text, "position": p, "token": tokens[p], "tokens": tokens}
