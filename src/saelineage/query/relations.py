"""Queries about relations between features: gates, splits, communities, and search.

A mixin of `RunData` (see `run_data.py`); `self.g` is the current `Generation`.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

import numpy as np

from saelineage.query.generation import ID_RE, STAGE_HINTS, Generation


class RelationQueries:
    """Gates, splits, communities and search over the current generation."""

    if TYPE_CHECKING:

        @property
        def g(self) -> Generation: ...  # RunData's (read-only) current generation

    def feature_gates(self, layer: int, feature: int) -> list[dict[str, Any]]:
        if "gates" not in self.g.tables:
            return []
        return self._label_gates(
            self.g.q(
                "SELECT * FROM gates WHERE (layer = ? AND feature = ?) "
                "OR (parent_layer = ? AND (parent_a = ? OR parent_b = ?)) "
                "ORDER BY support DESC LIMIT 100",
                [layer, feature, layer, feature, feature],
            )
        )

    def gates(
        self, kind: str | None = None, layer: int | None = None, limit: int = 100, offset: int = 0
    ) -> dict[str, Any]:
        if "gates" not in self.g.tables:
            return {"total": 0, "rows": [], "missing": STAGE_HINTS["analyze"]}
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if kind in ("and", "or"):
            where.append("kind = ?")
            params.append(kind)
        if layer is not None:
            where.append("layer = ?")
            params.append(layer)
        w = " AND ".join(where)
        total = self.g.q(f"SELECT count(*) AS n FROM gates WHERE {w}", params)[0]["n"]
        res = self.g.q(
            f"SELECT * FROM gates WHERE {w} ORDER BY score_forward * score_backward DESC NULLS LAST, "
            f"support DESC, layer, feature LIMIT ? OFFSET ?",
            params + [limit, offset],
        )
        return {"total": total, "rows": self._label_gates(res)}

    def _label_gates(self, res: list[dict[str, Any]]) -> list[dict[str, Any]]:
        g = self.g
        for r in res:
            for key, l, f in (
                ("child", r["layer"], r["feature"]),
                ("a", r["parent_layer"], r["parent_a"]),
                ("b", r["parent_layer"], r["parent_b"]),
            ):
                i = g.idx(l, f)
                r[key + "_label"] = g.label[i] if i is not None else ""
        return res

    # ---- splits (columns as written by analyze; parent = (layer, feature)) -----------
    def _split_cols(self) -> dict[str, str | None]:
        cols = [
            r["column_name"]
            for r in self.g.q("SELECT column_name FROM information_schema.columns WHERE table_name = 'splits'")
        ]
        pick = lambda *names: next((c for c in names if c in cols), None)  # noqa: E731
        return {
            "layer": pick("layer", "parent_layer"),
            "feature": pick("feature", "parent"),
            "child_layer": pick("child_layer", "children_layer"),
            "children": pick("children", "child"),
        }

    def splits(
        self, layer: int | None = None, limit: int = 100, offset: int = 0, feature: int | None = None
    ) -> dict[str, Any]:
        g = self.g
        if "splits" not in g.tables:
            return {"total": 0, "rows": [], "missing": STAGE_HINTS["analyze"]}
        c = self._split_cols()
        where, params = ["TRUE"], []
        if layer is not None and c["layer"]:
            if feature is not None and c["feature"]:
                cond = f"({c['layer']} = ? AND {c['feature']} = ?)"
                params += [layer, feature]
                if c["child_layer"] and c["children"]:
                    child = (
                        f"list_contains({c['children']}, ?)" if self._is_list(c["children"]) else f"{c['children']} = ?"
                    )
                    cond = f"({cond} OR ({c['child_layer']} = ? AND {child}))"
                    params += [layer, feature]
                where.append(cond)
            else:
                where.append(f"{c['layer']} = ?")
                params.append(layer)
        w = " AND ".join(where)
        total = g.q(f"SELECT count(*) AS n FROM splits WHERE {w}", params)[0]["n"]
        order = f"{c['layer']}, {c['feature']}" if c["layer"] and c["feature"] else "1"
        res = g.q(f"SELECT * FROM splits WHERE {w} ORDER BY {order} LIMIT ? OFFSET ?", params + [limit, offset])
        for r in res:
            r["_parent"] = self._ref(r.get(c["layer"] or ""), r.get(c["feature"] or ""))
            kids = r.get(c["children"] or "")
            kids = kids if isinstance(kids, list) else [kids] if kids is not None else []
            r["_children"] = [self._ref(r.get(c["child_layer"] or ""), k) for k in kids]
            for col, vals in r.items():  # per-child lists (e.g. children_necessity) go beside each child
                if (
                    col != c["children"]
                    and not col.startswith("_")
                    and isinstance(vals, list)
                    and len(vals) == len(kids)
                ):
                    for ch, x in zip(r["_children"], vals):
                        if ch is not None:
                            ch.setdefault("_per_child", {})[col.removeprefix("children_")] = x
            r["_details"] = {
                k: v
                for k, v in r.items()
                if not k.startswith("_") and k not in c.values() and not isinstance(v, (list, dict))
            }
        return {"total": total, "rows": res, "columns": c}

    def _is_list(self, col: str) -> bool:
        t = self.g.q(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'splits' AND column_name = ?", [col]
        )
        return bool(t) and t[0]["data_type"].endswith("[]")

    def _ref(self, layer: Any, feature: Any) -> dict[str, Any] | None:
        if layer is None or feature is None:
            return None
        return self.g.brief_at(int(layer), int(feature))

    # ---- communities ----------------------------------------------------------------
    def communities(self, limit: int = 100, offset: int = 0, min_size: int = 1) -> dict[str, Any]:
        g = self.g
        if not g.n or not (g.community >= 0).any():
            return {"total": 0, "rows": [], "missing": STAGE_HINTS["analyze"]}
        ids, sizes = np.unique(g.comm_sorted[g.comm_sorted >= 0], return_counts=True)
        keep = sizes >= min_size
        ids, sizes = ids[keep], sizes[keep]
        order = np.lexsort((ids, -sizes))
        out: list[dict[str, Any]] = []
        for k in order[offset : offset + limit]:
            mem = g.members(int(ids[k]))
            top = mem[np.argsort(-g.density[mem], kind="stable")[:3]]
            ls = g.layer[mem]
            out.append(
                {
                    "community": int(ids[k]),
                    "size": int(sizes[k]),
                    "layer_min": int(ls.min()),
                    "layer_max": int(ls.max()),
                    "top": [g.brief(int(i)) for i in top],
                    "top_tokens": [],
                }
            )
        info = self._community_rows([r["community"] for r in out])
        for r in out:
            r["top_tokens"] = (info.get(r["community"]) or {}).get("top_tokens") or []
        return {"total": int(len(ids)), "rows": out}

    def community(self, community: int) -> dict[str, Any] | None:
        g = self.g
        mem = g.members(community) if g.n else np.zeros(0, np.int64)
        if len(mem) == 0:
            return None
        info = self._community_rows([community]).get(community, {})
        mem = mem[np.lexsort((g.feature[mem], g.layer[mem]))]
        return {
            "community": community,
            "size": int(len(mem)),
            "info": {k: v for k, v in info.items() if not isinstance(v, (list, dict)) and k != "community"},
            "top_tokens": info.get("top_tokens") or [],
            "members": [g.brief(int(i)) for i in mem[:2000]],
        }

    def _community_rows(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """Rows of communities.parquet (one per community, as analyze writes it) for `ids`."""
        g = self.g
        if "communities" not in g.tables or not ids:
            return {}
        cols = {
            r["column_name"]
            for r in g.q("SELECT column_name FROM information_schema.columns WHERE table_name = 'communities'")
        }
        if "community" not in cols or "layer" in cols:
            return {}
        got = g.q(f"SELECT * FROM communities WHERE community IN ({', '.join('?' * len(ids))})", list(ids))
        return {int(r["community"]): r for r in got}

    # ---- search ---------------------------------------------------------------------
    def search(self, q: str, limit: int = 50) -> dict[str, Any]:
        g = self.g
        q = q.strip()[:200]
        out: dict[str, Any] = {"query": q, "feature": None, "labels": [], "tokens": [], "token_ids": []}
        if not q or not g.n:
            return out
        m = ID_RE.match(q)
        if m:
            i = g.idx(int(m.group(1)), int(m.group(2)))
            out["feature"] = g.brief(i) if i is not None else None
        needle, pos = q.lower(), 0
        hits: list[int] = []
        while len(hits) < limit:
            pos = g.blob.find(needle, pos)
            if pos < 0:
                break
            i = bisect.bisect_right(g.blob_off, pos) - 1
            hits.append(i)
            pos = g.blob_off[i + 1] if i + 1 < len(g.blob_off) else len(g.blob)
        out["labels"] = [g.brief(i) for i in hits]
        out["tokens"], out["token_ids"] = self.search_token(q, limit)
        return out

    def search_token(self, q: str, limit: int = 50) -> tuple[list[dict[str, Any]], list[int]]:
        """Features whose top examples fire on a token spelled `q` (case and outer spaces ignored)."""
        g = self.g
        if "ex_tok" not in g.tables or g.vocab is None:
            return [], []
        if not hasattr(g, "vocab_norm"):
            norm: dict[str, list[int]] = {}
            for t, s in enumerate(g.vocab):
                norm.setdefault(s.strip().lower(), []).append(t)
            g.vocab_norm = norm
        ids = g.vocab_norm.get(q.strip().lower(), [])[:64]
        if not ids:
            return [], []
        res = g.q(
            "SELECT layer, feature, count(*) AS n, max(value) AS top FROM ex_tok WHERE token IN "
            f"({', '.join('?' * len(ids))}) GROUP BY layer, feature ORDER BY n DESC, top DESC, layer, feature "
            "LIMIT ?",
            ids + [limit],
        )
        for r in res:
            r.update(g.brief_at(r["layer"], r["feature"]))
        return res, ids
