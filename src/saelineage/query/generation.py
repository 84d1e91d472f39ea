"""One built generation of the query cache, opened read-only, with an in-memory feature index.

Holds the shared constants and row helpers of the query modules.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import duckdb
import numpy as np

from saelineage.config import usable_cpus
from saelineage.data.finalize import read_vocab
from saelineage.feature_table import feature_rows
from saelineage.query import cache
from saelineage.query.arrays import Arrays
from saelineage.query.neuronpedia import neuronpedia_ids
from saelineage.run import RunDir

MEASURES = cache.MEASURES
SORTABLE = MEASURES + ("n_co",)
ABLATION_SHOWN = ("mean_drop", "rel_drop", "frac_off", "n_tokens")
"""Columns of ablations.parquet shown beside an edge (all numeric ones when these are absent)."""
ID_RE = re.compile(r"^\s*[Ll]?(\d{1,4})\s*[:/]\s*(\d{1,9})\s*$")
STAGE_HINTS = {
    "collect": "run `saelineage collect RUN`",
    "stats": "run `saelineage stats RUN` (edges, neighbours and the layered graph need it)",
    "analyze": "run `saelineage analyze RUN` (lifecycle, communities, gates and splits need it)",
    "ablate": "run `saelineage ablate RUN` (causal checks of edges)",
}


def json_safe(v: Any) -> Any:
    """JSON-safe scalar: NaN/inf become None, numpy scalars become Python ones."""
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def _unmask(v: np.ndarray) -> np.ndarray:
    """A fetched column without its mask: NaN (numbers) or None (anything else) where NULL."""
    if not np.ma.isMaskedArray(v):
        return np.asarray(v)
    mask = np.ma.getmaskarray(v)
    if v.dtype.kind in "iuf":
        return np.where(mask, np.nan, v.data.astype(np.float64))
    out = np.asarray(v.data, object).copy()
    out[mask] = None
    return out


def rows(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [{n: json_safe(v) for n, v in zip(names, r)} for r in cur.fetchall()]


class Generation:
    """One built cache, opened read-only, plus the in-memory feature index."""

    vocab_norm: dict[str, list[int]]
    """token ids per normalised spelling; set on first use (relations.search_token)"""

    def __init__(self, run: RunDir, files: cache.CacheFiles):
        self.sig = files.sig
        self.con = duckdb.connect(str(files.db), read_only=True, config={"threads": usable_cpus()})
        self.tables = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        self.manifest = run.load()
        self.vocab = read_vocab(run)
        with np.load(files.tokens) as z:
            self.tok = {k: z[k] for k in z.files}
        wins = self.tok["window"].astype(np.int64)
        n_win = int(wins.max()) + 1 if len(wins) else 0
        self.win_start = np.searchsorted(wins, np.arange(n_win + 1))  # tokens of window w: [start[w], start[w+1])
        self.np_ids = neuronpedia_ids(self.manifest.saes)
        self.layers = list(self.manifest.layers)
        self.arr = Arrays(files.arrays)
        self._index_features()
        self._load_graph_top()
        self.local = threading.local()
        self.memo: dict[str, Any] = {}

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self.local, "cur", None)
        if cur is None:
            cur = self.local.cur = self.con.cursor()
        return cur

    def q(self, sql: str, params: list | None = None) -> list[dict[str, Any]]:
        return rows(self.cursor().execute(sql, params or []))

    def _index_features(self) -> None:
        self.n = 0
        self.start: dict[int, int] = {}
        self.rows = feature_rows(np.zeros(0, np.int64), np.zeros(0, np.int64))
        if "features" not in self.tables:
            return
        r = self.con.execute("""SELECT layer, feature, n_active, density, act_max,
            coalesce(TRY_CAST(community AS BIGINT), -1) AS community, CAST(lifecycle AS VARCHAR) AS lifecycle,
            coalesce(nullif(trim(imported_label), ''), auto_label, '') AS label,
            CASE WHEN nullif(trim(imported_label), '') IS NOT NULL THEN 'imported' ELSE 'auto' END AS src
            FROM features ORDER BY layer, feature""").fetchnumpy()
        full = self.con.execute("SELECT * FROM features ORDER BY layer, feature").fetchnumpy()
        self.fcols = {k: _unmask(v) for k, v in full.items()}  # every column, for feature pages without a query
        self.layer = r["layer"].astype(np.int64)
        self.feature = r["feature"].astype(np.int64)
        self.n_active = r["n_active"].astype(np.int64)
        self.density = np.ma.filled(r["density"].astype(np.float64), np.nan)
        self.act_max = np.ma.filled(r["act_max"].astype(np.float64), np.nan)
        self.community = np.asarray(r["community"], np.int64)
        self.lifecycle = [None if x is None else str(x) for x in np.asarray(r["lifecycle"], object)]
        self.label = [str(x) for x in np.asarray(r["label"], object)]
        self.label_src = [str(x) for x in np.asarray(r["src"], object)]
        self.n = len(self.layer)
        for l in np.unique(self.layer):
            self.start[int(l)] = int(np.searchsorted(self.layer, l))
        self.rows = feature_rows(self.layer, self.feature)  # (layer [E], feature [E]) → index row [E], −1 if absent
        if not self.layers:
            self.layers = sorted(self.start)
        texts = [f"{lab}\n".lower() for lab in self.label]
        self.blob = "".join(texts)
        self.blob_off = np.cumsum([0] + [len(t) for t in texts[:-1]]).tolist()
        order = np.argsort(self.community, kind="stable")
        self.comm_order = order
        self.comm_sorted = self.community[order]

    def _load_graph_top(self) -> None:
        """The strongest edges per (measure, layer pair), in memory: {measure: {(src_layer, dst_layer): arrays}}."""
        self.top: dict[str, dict[tuple[int, int], dict[str, np.ndarray]]] = {}
        if "graph_top" not in self.tables:
            return
        r = self.con.execute("SELECT measure, src_layer, dst_layer, src, dst, value FROM graph_top").fetchnumpy()
        m = np.asarray(r["measure"], object)
        sl, dl = np.asarray(r["src_layer"], np.int64), np.asarray(r["dst_layer"], np.int64)
        if not len(m):
            return
        cut = np.nonzero((m[1:] != m[:-1]) | (sl[1:] != sl[:-1]) | (dl[1:] != dl[:-1]))[0] + 1
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(m)]):  # rows are in (measure, pair, rank) order
            self.top.setdefault(str(m[a]), {})[(int(sl[a]), int(dl[a]))] = {
                "src": np.asarray(r["src"][a:b], np.int64),
                "dst": np.asarray(r["dst"][a:b], np.int64),
                "value": np.asarray(r["value"][a:b], np.float64),
            }

    def idx(self, layer: int, feature: int) -> int | None:
        """Row of one (layer, feature) in the feature index, or None (`rows` for many)."""
        i = int(self.rows(np.array([layer]), np.array([feature]))[0])
        return i if i >= 0 else None

    def row(self, i: int) -> dict[str, Any]:
        """Every column of features row `i` (JSON-safe)."""
        return {k: json_safe(v[i]) for k, v in self.fcols.items()}

    def brief(self, i: int) -> dict[str, Any]:
        """What the browser shows about a feature in lists, tooltips and tables."""
        c = int(self.community[i])
        return {
            "layer": int(self.layer[i]),
            "feature": int(self.feature[i]),
            "label": self.label[i],
            "density": json_safe(float(self.density[i])),
            "act_max": json_safe(float(self.act_max[i])),
            "lifecycle": self.lifecycle[i],
            "community": c if c >= 0 else None,
        }

    def brief_at(self, layer: int, feature: int) -> dict[str, Any]:
        """`brief` of (layer, feature); for a feature the index lacks (an edge or split naming a feature
        outside features.parquet) the same keys, with an empty label and nulls."""
        i = self.idx(layer, feature)
        if i is not None:
            return self.brief(i)
        return {
            "layer": int(layer),
            "feature": int(feature),
            "label": "",
            "density": None,
            "act_max": None,
            "lifecycle": None,
            "community": None,
        }

    def members(self, community: int) -> np.ndarray:
        lo = np.searchsorted(self.comm_sorted, community, "left")
        hi = np.searchsorted(self.comm_sorted, community, "right")
        return self.comm_order[lo:hi]

    def token_text(self, t: int) -> str:
        return cache.token_text(self.vocab, int(t))
