"""Live prompts: tokens of a typed text, and the graph of features active on one token.

The model and SAEs the run was collected with are loaded through
`saelineage.run_model.load_run_model`: in the background as soon as `serve` starts (`preload`), so
the first prompt does not wait for it, or else on first use. `status()` says which state the model
is in (idle / loading / ready / unavailable). A run imported without a model, or whose model/SAE
files are gone, gets a clear "not available" status instead. A token's graph can be thinned to
each feature's strongest links with the layered graph's own cap (`edges_per_node`). The per-token graph holds the
features of every layer whose activation on the chosen token exceeds `rel` × their maximum
over the corpus (the reference work, arXiv:2410.08869, used 0.1), joined by the run's edges between consecutive
layers, coloured by global community.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from saelineage.contract import Manifest
from saelineage.errors import SaelineageError
from saelineage.web.cache_view import Generation
from saelineage.web.graph import MAX_NODES, empty_layout, feature_indices, layout, strongest_per_node
from saelineage.web.queries import MEASURES, RunData

MAX_CHARS = 2000
MAX_TOKENS = 256


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
    """The run's own model and SAEs, loaded once: in the background (`preload`) or on first use."""

    def __init__(self, run_path: Path, manifest: Manifest):
        self.run_path, self.manifest = run_path, manifest
        self._model = None
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


class PromptService:
    """Availability, tokenisation and per-token graphs for the prompt view."""

    def __init__(self, data: RunData, backend: PromptBackend | None = None, preload: bool = False):
        """`preload`: start loading the run's model in the background now (`serve` does; tests and the
        notebook API load it on first use). A given `backend` is ready as it is."""
        self.data = data
        self.backend = backend
        self.reason: str | None = None
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

    def _require(self) -> PromptBackend:
        if self.backend is None:
            raise SaelineageError(self.reason or "live prompts are not available for this run.")
        return self.backend

    def tokens(self, text: str) -> list[dict[str, Any]]:
        ids = self._ids(text)
        g = self.data.g
        return [{"i": i, "id": t, "text": g.token_text(t)} for i, t in enumerate(ids)]

    def _ids(self, text: str) -> list[int]:
        backend = self._require()
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
        codes = self._require().codes(ids)
        g = self.data.g
        measure = measure if measure in MEASURES else "jaccard"
        rows, acts = [], []
        for layer, (indptr, idx, val) in sorted(codes.items()):
            a, b = int(indptr[position]), int(indptr[position + 1])
            for f, v in zip(idx[a:b].tolist(), val[a:b].tolist()):
                i = g.idx(layer, f)
                mx = g.act_max[i] if i is not None else np.nan
                if i is None or v <= 0 or (np.isfinite(mx) and mx > 0 and v < rel * mx):
                    continue  # active = > 0 and >= rel x the feature's corpus max (as `saelineage prompt`)
                rows.append(i)
                acts.append(v)
        nodes, act = np.array(rows, np.int64), np.array(acts, np.float64)
        u, w, v = self._edges(nodes, measure, min_value)
        nodes, act, u, w, v, truncated = _select(g, nodes, act, u, w, v, rel, measure, min(max_nodes, MAX_NODES))
        cap: dict[str, int] = {"edges_per_node": int(max(edges_per_node, 0))}
        if edges_per_node > 0 and len(u):
            keep = strongest_per_node(u, w, v, edges_per_node)
            cap["edges_dropped"] = int((~keep).sum())
            u, w, v = u[keep], w[keep], v[keep]
        out = layout(g, nodes, u, w, v, g.layers, order) if len(nodes) else empty_layout()
        by_row = dict(zip(nodes.tolist(), act.tolist()))
        shown = np.unique(nodes).tolist()
        out["nodes"]["activation"] = [by_row[i] for i in shown]
        out["nodes"]["rel_activation"] = [
            by_row[i] / g.act_max[i] if np.isfinite(g.act_max[i]) and g.act_max[i] > 0 else None for i in shown
        ]
        return (
            out
            | cap
            | {
                "measure": measure,
                "order": order,
                "layers": g.layers,
                "truncated": truncated,
                "position": position,
                "token": g.token_text(ids[position]),
                "rel": rel,
                "missing": None if "edges_dn" in g.tables else "run `saelineage stats RUN` for edges",
            }
        )

    def _edges(self, nodes: np.ndarray, measure: str, min_value: float | None):
        """Kept edges between the given feature rows in consecutive layers: (u, w, value)."""
        g = self.data.g
        if not g.arr.has_edges or len(nodes) == 0 or measure not in g.arr.edge_cols:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        rows = np.concatenate([g.arr.edge_rows(int(i), "down") for i in nodes])
        sl, s, dl, d = (np.asarray(g.arr.col(c)[rows], np.int64) for c in ("src_layer", "src", "dst_layer", "dst"))
        v = np.asarray(g.arr.col(measure)[rows], np.float64)
        nxt = np.full(max(g.layers + [0]) + 2, -1, np.int64)
        nxt[g.layers[:-1]] = g.layers[1:]
        u, w = feature_indices(g, sl, s), feature_indices(g, dl, d)
        keep = np.isin(w, nodes) & (nxt[sl] == dl) & np.isfinite(v)
        if min_value is not None:
            keep &= v >= min_value
        return u[keep], w[keep], v[keep]


def _select(
    g: Generation,
    nodes: np.ndarray,
    act: np.ndarray,
    u: np.ndarray,
    w: np.ndarray,
    v: np.ndarray,
    rel: float,
    measure: str,
    max_nodes: int,
) -> tuple:
    """Keep at most `max_nodes` nodes and the links among them, with the same rule as `saelineage prompt`
    (saelineage.lineage.prompt_graph) when that module is present: strongest relative activation first."""
    try:
        from saelineage.lineage.prompt_graph import GraphContext, prompt_graph
    except ImportError:
        prompt_graph = None
    if prompt_graph is not None and len(nodes):
        ctx = GraphContext(
            g.layer[nodes],
            g.feature[nodes],
            g.act_max[nodes],
            g.community[nodes],
            None,
            {"src_layer": g.layer[u], "src": g.feature[u], "dst_layer": g.layer[w], "dst": g.feature[w], measure: v},
        )
        codes: dict[int, tuple[list, list]] = {}
        for i, a in zip(nodes.tolist(), act.tolist()):
            codes.setdefault(int(g.layer[i]), ([], []))[0].append(int(g.feature[i]))
            codes[int(g.layer[i])][1].append(a)
        res = prompt_graph(
            {l: (np.array(f), np.array(x)) for l, (f, x) in codes.items()},
            ctx,
            rel=rel,
            measure=measure,
            max_nodes=max_nodes,
        )
        kept = np.array([g.idx(n["layer"], n["feature"]) for n in res["nodes"]], np.int64)
        act = np.array([n["activation"] for n in res["nodes"]], np.float64)
        key = lambda node: g.idx(*(int(x) for x in node.split("_")))  # noqa: E731 - ids are "L_F"
        links = [(key(e["source"]), key(e["target"]), e["similarity"]) for e in res["links"]]
        u = np.array([a for a, _, _ in links], np.int64)
        w = np.array([b for _, b, _ in links], np.int64)
        v = np.array([np.nan if x is None else x for _, _, x in links], np.float64)
        ok = np.isfinite(v)
        return kept, act, u[ok], w[ok], v[ok], bool(res["graph"].get("truncated"))
    truncated = len(nodes) > max_nodes
    if truncated:
        mx = g.act_max[nodes]
        relv = np.where(np.isfinite(mx) & (mx > 0), act / np.where(mx > 0, mx, 1), np.inf)
        keep = np.lexsort((nodes, -act, -relv))[:max_nodes]
        nodes, act = nodes[keep], act[keep]
        inside = np.isin(u, nodes) & np.isin(w, nodes)
        u, w, v = u[inside], w[inside], v[inside]
    return nodes, act, u, w, v, truncated
