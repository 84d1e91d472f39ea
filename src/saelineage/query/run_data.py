"""Queries over a run for the browser, the notebook and the exports: every answer comes from the
query cache (see `cache.py`).

`RunData` holds one *generation* of the cache (a read-only DuckDB connection, the token
arrays, and a small in-memory index of per-feature columns). When a stage rewrites one of
the run's files, the next request (at most every `refresh_s` seconds) notices the new
signature and switches to a freshly built generation, so a browser left open while
`analyze` runs picks up its results.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from saelineage import contract
from saelineage.query import cache
from saelineage.query.generation import (
    ABLATION_SHOWN,
    SORTABLE,
    STAGE_HINTS,
    Generation,
    json_safe,
)
from saelineage.query.neuronpedia import neuronpedia_url
from saelineage.query.relations import RelationQueries
from saelineage.run import RunDir, read_verified


class RunData(RelationQueries):
    """Queries over one run directory, for the API and the pages."""

    def __init__(self, run_dir: str | Path, cache_folder: Path | None = None, refresh_s: float = 2.0):
        self.run = RunDir(run_dir)
        self.run.load()  # fails early with a clear message when RUN is not a run
        self.cache_folder = cache_folder
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._checked = 0.0
        self._building: threading.Thread | None = None
        self.refresh_error: str | None = None
        self._gen = self._build()

    def _build(self) -> Generation:
        files = cache.ensure_cache(self.run, self.cache_folder)
        return Generation(self.run, files)

    def _rebuild(self) -> None:
        try:
            self._gen = self._build()
            self.refresh_error = None
        except Exception as exc:  # noqa: BLE001 - keep serving the previous generation, say why
            self.refresh_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._building = None

    @property
    def g(self) -> Generation:
        """The current generation. When the run's files changed (checked every `refresh_s`), a new
        one is built in the background while requests keep being answered from this one."""
        now = time.monotonic()
        if now - self._checked >= self.refresh_s:
            with self._lock:
                if now - self._checked >= self.refresh_s and self._building is None:
                    self._checked = now
                    # while a stage writes, its outputs are a mix of old and new files: keep
                    # answering from the last consistent state and look again after it finishes
                    if self.run.writer() is None and cache.signature(self.run) != self._gen.sig:
                        self._building = threading.Thread(target=self._rebuild, daemon=True, name="cache-rebuild")
                        self._building.start()
        return self._gen

    def wait_for_refresh(self, timeout: float = 60.0) -> None:
        """Block until a background rebuild (if any) is done (for tests and scripts)."""
        t = self._building
        if t is not None:
            t.join(timeout)

    # ---- run level ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Stages, present files and what is missing, with the command that fills each gap."""
        g = self.g
        if "status" not in g.memo:
            g.memo["status"] = self._status(g)
        if self.refresh_error:
            st = dict(g.memo["status"])
            st["notes"] = st["notes"] + [
                f"the run's files changed but could not be reloaded ({self.refresh_error}); showing the previous state."
            ]
            return st
        return g.memo["status"]

    def _status(self, g: Generation) -> dict[str, Any]:
        stages = g.manifest.stages
        out: list[dict[str, str]] = []
        for stage, hint in STAGE_HINTS.items():
            st = (stages.get(stage) or {}).get("status")
            if st != "complete":
                out.append({"stage": stage, "status": st or "not run", "fix": hint})
        have = {
            "edges": "edges_dn" in g.tables,
            "examples": "examples" in g.tables,
            "lifecycle": any(x is not None for x in g.lifecycle),
            "communities": bool(g.n and (g.community >= 0).any()),
            "gates": "gates" in g.tables,
            "splits": "splits" in g.tables,
            "ablations": "ablations" in g.tables,
            "vocab": g.vocab is not None,
            "labels": "imported" in set(g.label_src),
        }
        notes = []
        if not have["vocab"]:
            notes.append("the run has no vocab.json: tokens are shown as ids.")
        if not have["labels"]:
            notes.append(
                "no imported labels: features are labelled by their most frequent top tokens "
                "(`saelineage labels import RUN FILE` adds Neuronpedia/CSV explanations)."
            )
        return {
            "stages": {k: (v or {}).get("status") for k, v in stages.items()},
            "missing": out,
            "have": have,
            "notes": notes,
        }

    def overview(self) -> dict[str, Any]:
        g = self.g
        if "overview" not in g.memo:
            g.memo["overview"] = self._overview(g)
        return g.memo["overview"]

    def _overview(self, g: Generation) -> dict[str, Any]:
        m = g.manifest
        per_layer = []
        for l in g.layers:
            s = g.start.get(l)
            if s is None:
                continue
            e = g.start.get(next((x for x in g.layers if x > l and x in g.start), -1), g.n)
            kinds = Counter(x for x in g.lifecycle[s:e] if x is not None)
            per_layer.append(
                {"layer": l, "features": e - s, "dead": int((g.n_active[s:e] == 0).sum()), "lifecycle": dict(kinds)}
            )
        hist: dict[str, list[list[Any]]] = {}
        if "hist" in g.tables:
            for r in g.q("SELECT measure, lo, hi, n FROM hist ORDER BY measure, bin"):
                hist.setdefault(r["measure"], []).append([r["lo"], r["hi"], r["n"]])
        rates = []
        if "lifecycle" in g.tables:
            cols = {
                r["column_name"]
                for r in g.q("SELECT column_name FROM information_schema.columns WHERE table_name = 'lifecycle'")
            }
            want = [
                c
                for c in ("layer", "share_new", "share_ending", "ref_share_new", "ref_share_ending", "share_new_lo",
                          "share_new_hi", "share_ending_lo", "share_ending_hi", "share_continuing", "seed_ceiling",
                          "share_continuing_normalised")
                if c in cols
            ]  # fmt: skip
            if {"layer", "share_new", "share_ending"} <= set(want):
                where = "WHERE chosen" if "chosen" in cols else ""
                rates = g.q(f"SELECT {', '.join(want)} FROM lifecycle {where} ORDER BY layer")
        counts: dict[str, Any] = {
            "features": g.n,
            "live": int((g.n_active > 0).sum()) if g.n else 0,
            "edges": self._count("edges_dn"),
            "splits": self._count("splits"),
            "communities": int(len(np.unique(g.community[g.community >= 0]))) if g.n else 0,
        }
        if "gates" in g.tables:
            counts["gates"] = {r["kind"]: r["n"] for r in g.q("SELECT kind, count(*) AS n FROM gates GROUP BY kind")}
        saes = {
            str(l): {
                k: v
                for k, v in (meta or {}).items()
                if k in ("hook_name", "d_sae", "architecture", "release", "sae_id", "path", "format")
            }
            for l, meta in m.saes.items()
        }
        return {
            "run": str(self.run.path),
            "model": m.model,
            "saes": saes,
            "corpus": m.corpus,
            "n_tokens": m.n_tokens,
            "window": m.window,
            "layers": g.layers,
            "per_layer": per_layer,
            "rates": rates,
            "histograms": hist,
            "counts": counts,
            "status": self.status(),
            "sae_match": self._sae_match(),
        }

    def _sae_match(self) -> dict[str, Any] | None:
        """The data-free match's agreement table from stats_summary.json (None before stats or
        from a stats version without it)."""
        try:
            s = json.loads(read_verified(self.run.file(contract.STATS_SUMMARY))).get("sae_match")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(s, dict):
            return None
        keys = ("src_layer", "dst_layer", "n_live", "n_matched", "agreement", "mean_similarity")
        return {
            "method": str(s.get("method", "")),
            "note": str(s.get("note", "")),
            "pairs": [{k: r.get(k) for k in keys} for r in s.get("pairs", [])],
        }

    def _count(self, table: str) -> int | None:
        return self.g.q(f"SELECT count(*) AS n FROM {table}")[0]["n"] if table in self.g.tables else None

    # ---- one feature ----------------------------------------------------------------
    def feature(self, layer: int, feature: int) -> dict[str, Any] | None:
        g = self.g
        i = g.idx(layer, feature)
        if i is None:
            return None
        r = g.row(i)
        out = g.brief(i) | {
            "label_source": g.label_src[i],
            "auto_label": r.pop("auto_label"),
            "imported_label": r.pop("imported_label"),
            "n_active": int(g.n_active[i]),
            "neuronpedia": neuronpedia_url(g.np_ids, layer, feature),
        }
        out["act_mean"] = (r["act_sum"] / r["n_active"]) if r.get("n_active") else None
        out["extra"] = {
            k: v
            for k, v in r.items()
            if k not in out and v is not None and k not in ("layer", "feature", "act_sum", "act_sumsq")
        }
        out["explanation"] = out["imported_label"]
        return out

    def examples(
        self, layer: int, feature: int, limit: int = 20, before: int = 12, after: int = 4
    ) -> list[dict[str, Any]]:
        g = self.g
        if "examples" not in g.tables:
            return []
        i = g.idx(layer, feature)
        if i is None:
            return []
        x = g.arr.examples(i)
        ex = [
            {"rank": int(r), "value": json_safe(float(v)), "window": int(w), "pos": int(p), "token": int(t)}
            for r, v, w, p, t in zip(*(x[c][:limit].tolist() for c in ("rank", "value", "window", "pos", "token")))
        ]
        for e in ex:
            w = e["window"]
            if not 0 <= w < len(g.win_start) - 1:
                e["tokens"], e["truncated_left"], e["truncated_right"] = [], False, False
                continue
            lo, hi = int(g.win_start[w]), int(g.win_start[w + 1])
            at = lo + int(np.searchsorted(g.tok["pos"][lo:hi], e["pos"]))
            a, b = max(lo, at - before), min(hi, at + after + 1)
            e["tokens"] = [
                {"text": g.token_text(t), "id": int(t), "hit": bool(k == at)}
                for k, t in zip(range(a, b), g.tok["tokens"][a:b])
            ]
            e["truncated_left"], e["truncated_right"] = bool(a > lo), bool(b < hi)
        return ex

    def neighbours(
        self, layer: int, feature: int, direction: str = "down", sort: str = "jaccard", limit: int = 50
    ) -> list[dict[str, Any]]:
        """Edges into (`up`) or out of (`down`) a feature, every measure, strongest first."""
        g = self.g
        if "edges_dn" not in g.tables or sort not in SORTABLE:
            return []
        i = g.idx(layer, feature)
        if i is None:
            return []
        sort = sort if sort in g.arr.edge_cols else "n_co"
        here, there = (
            (("dst_layer", "dst"), ("src_layer", "src"))
            if direction == "up"
            else (("src_layer", "src"), ("dst_layer", "dst"))
        )
        r = g.arr.edge_rows(i, direction)
        v = np.asarray(g.arr.col(sort)[r], np.float64)
        o = np.lexsort((g.arr.col(there[1])[r], g.arr.col(there[0])[r], np.where(np.isnan(v), np.inf, -v)))
        r = r[o[:limit]]
        cols = {c: g.arr.col(c)[r].tolist() for c in g.arr.edge_cols}
        out = [{c: json_safe(cols[c][k]) for c in cols} for k in range(len(r))]
        abl = self._ablations(layer, feature, here) if "ablations" in g.tables else {}
        for e in out:
            e["other"] = g.brief_at(e[there[0]], e[there[1]])
            e["ablation"] = abl.get((e["src_layer"], e["src"], e["dst_layer"], e["dst"]))
        return out

    def _ablations(self, layer: int, feature: int, here: tuple[str, str]) -> dict[tuple, dict]:
        """Ablation results of the edges at (layer, feature), keyed by (src_layer, src, dst_layer, dst)."""
        by_end = self._ablation_index()[0 if here[0] == "src_layer" else 1]
        return by_end.get((int(layer), int(feature)), {})

    def _ablation_index(self) -> tuple[dict, dict]:
        """ablations.parquet (a sample, small) indexed by source and by target feature, once per generation."""
        g = self.g
        if "ablations_index" not in g.memo:
            by_src: dict[tuple, dict] = {}
            by_dst: dict[tuple, dict] = {}
            cols = {
                r["column_name"]
                for r in g.q("SELECT column_name FROM information_schema.columns WHERE table_name = 'ablations'")
            }
            if {"src_layer", "src", "dst_layer", "dst"} <= cols:
                show = [c for c in ABLATION_SHOWN if c in cols] or sorted(
                    cols - {"src_layer", "src", "dst_layer", "dst"}
                )
                for r in g.q(f"SELECT DISTINCT src_layer, src, dst_layer, dst, {', '.join(show)} FROM ablations"):
                    key = (r["src_layer"], r["src"], r["dst_layer"], r["dst"])
                    val = {c: r[c] for c in show}
                    by_src.setdefault(key[:2], {})[key] = val
                    by_dst.setdefault(key[2:], {})[key] = val
            g.memo["ablations_index"] = (by_src, by_dst)
        return g.memo["ablations_index"]
