"""Per-feature summaries and top activating examples, streamed over the store.

Each shard is summarised on its own (a *partial*: `LayerSummary.partial`), and a run's summary is
the reduction of its shards' partials in shard order (`LayerSummary.merge`), so a summary made by
one process and one made by many workers, each summarising its own shards, are identical byte for
byte. Counts are integers, sums are float64 (token by token within a shard, then shard by shard),
and the top-K examples use the total order (value desc, window asc, pos asc), so the kept set does
not depend on the order examples are offered in.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from saelineage.data.store import LayerCodes


@numba.njit(cache=True, nogil=True, inline="always")
def _offer(f, v, w, p, k, topv, topw, topp, topn):
    """Keep (v, w, p) among feature f's top-k under the total order (value desc, window asc, pos asc)."""
    n = topn[f]
    if n < k:
        topv[f, n] = v
        topw[f, n] = w
        topp[f, n] = p
        topn[f] = n + 1
        return
    # find the worst kept example: lowest value, then latest (window, pos)
    worst = 0
    for r in range(1, k):
        if topv[f, r] < topv[f, worst] or (
            topv[f, r] == topv[f, worst]
            and (topw[f, r] > topw[f, worst] or (topw[f, r] == topw[f, worst] and topp[f, r] > topp[f, worst]))
        ):
            worst = r
    bv = topv[f, worst]
    if v > bv or (v == bv and (w < topw[f, worst] or (w == topw[f, worst] and p < topp[f, worst]))):
        topv[f, worst] = v
        topw[f, worst] = w
        topp[f, worst] = p


@numba.njit(cache=True, nogil=True)
def _accumulate(indptr, indices, values, mask, window, pos, count, s, q, mx, topv, topw, topp, topn):
    k = topv.shape[1]
    for t in range(len(indptr) - 1):
        if not mask[t]:
            continue
        w = window[t]
        p = pos[t]
        for e in range(indptr[t], indptr[t + 1]):
            f = indices[e]
            v = np.float64(values[e])
            if v <= 0.0:
                continue
            count[f] += 1
            s[f] += v
            q[f] += v * v
            if v > mx[f]:
                mx[f] = v
            _offer(f, v, w, p, k, topv, topw, topp, topn)


@numba.njit(cache=True, nogil=True)
def _merge_top(feats, vals, wins, poss, topv, topw, topp, topn):
    k = topv.shape[1]
    for e in range(len(feats)):
        _offer(feats[e], vals[e], wins[e], poss[e], k, topv, topw, topp, topn)


PARTIAL_FIELDS = ("feature", "count", "sum", "sumsq", "max", "top_feature", "top_value", "top_window", "top_pos")
"""Arrays of a partial summary (LayerSummary.partial): live features' statistics, kept examples."""


class LayerSummary:
    """Streaming accumulator for one layer: feature statistics and top-K examples."""

    def __init__(self, layer: int, d_sae: int, k: int = 20):
        self.layer, self.d_sae, self.k = layer, d_sae, k
        self.count = np.zeros(d_sae, np.int64)
        self.sum = np.zeros(d_sae, np.float64)
        self.sumsq = np.zeros(d_sae, np.float64)
        self.max = np.zeros(d_sae, np.float64)
        self.topv = np.full((d_sae, k), -np.inf)
        self.topw = np.zeros((d_sae, k), np.int32)
        self.topp = np.zeros((d_sae, k), np.int32)
        self.topn = np.zeros(d_sae, np.int64)
        self.n_tokens = 0

    def add(self, codes: LayerCodes, mask: np.ndarray, window: np.ndarray, pos: np.ndarray) -> None:
        """Add a block of tokens. mask: bool [T] token set; window, pos: int32 [T]."""
        if len(codes.indices) and int(codes.indices.max()) >= self.d_sae:
            raise ValueError(f"layer {self.layer}: feature id {int(codes.indices.max())} >= d_sae {self.d_sae}")
        self.n_tokens += int(mask.sum())
        _accumulate(
            codes.indptr,
            codes.indices,
            codes.values,
            mask,
            window,
            pos,
            self.count,
            self.sum,
            self.sumsq,
            self.max,
            self.topv,
            self.topw,
            self.topp,
            self.topn,
        )

    def partial(self) -> dict[str, np.ndarray]:
        """This summary as compact arrays (PARTIAL_FIELDS): statistics of the features seen, and
        every kept example (feature, value, window, pos)."""
        live = np.flatnonzero(self.count > 0)
        feats, ranks = np.nonzero(np.arange(self.k)[None, :] < self.topn[:, None])
        return {
            "feature": live.astype(np.int32),
            "count": self.count[live],
            "sum": self.sum[live],
            "sumsq": self.sumsq[live],
            "max": self.max[live],
            "top_feature": feats.astype(np.int32),
            "top_value": self.topv[feats, ranks],
            "top_window": self.topw[feats, ranks],
            "top_pos": self.topp[feats, ranks],
        }

    def merge(self, part: dict[str, np.ndarray], n_tokens: int) -> None:
        """Fold in the partial summary of the next shard (merge shards in shard order: the sums are
        float64 and addition order decides their last bits)."""
        f = part["feature"]
        if len(f) and int(f.max()) >= self.d_sae:
            raise ValueError(f"layer {self.layer}: feature id {int(f.max())} >= d_sae {self.d_sae}")
        self.n_tokens += int(n_tokens)
        self.count[f] += part["count"]
        self.sum[f] += part["sum"]
        self.sumsq[f] += part["sumsq"]
        self.max[f] = np.maximum(self.max[f], part["max"])
        _merge_top(
            part["top_feature"].astype(np.int64),
            part["top_value"].astype(np.float64),
            part["top_window"].astype(np.int32),
            part["top_pos"].astype(np.int32),
            self.topv,
            self.topw,
            self.topp,
            self.topn,
        )

    def features(self) -> pa.Table:
        n = max(self.n_tokens, 1)
        return pa.table(
            {
                "layer": pa.array(np.full(self.d_sae, self.layer, np.int32)),
                "feature": pa.array(np.arange(self.d_sae, dtype=np.int32)),
                "n_active": pa.array(self.count),
                "density": pa.array(self.count / n),
                "act_sum": pa.array(self.sum),
                "act_sumsq": pa.array(self.sumsq),
                "act_max": pa.array(self.max),
            }
        )

    def examples(self) -> pa.Table:
        feats, ranks = np.nonzero(np.arange(self.k)[None, :] < self.topn[:, None])
        v = self.topv[feats, ranks]
        w = self.topw[feats, ranks]
        p = self.topp[feats, ranks]
        order = np.lexsort((p, w, -v, feats))
        feats, v, w, p = feats[order], v[order], w[order], p[order]
        starts = np.searchsorted(feats, feats, side="left")
        rank = np.arange(len(feats)) - starts
        return pa.table(
            {
                "layer": pa.array(np.full(len(feats), self.layer, np.int32)),
                "feature": pa.array(feats.astype(np.int32)),
                "rank": pa.array(rank.astype(np.int32)),
                "value": pa.array(v.astype(np.float32)),
                "window": pa.array(w.astype(np.int32)),
                "pos": pa.array(p.astype(np.int32)),
            }
        )
