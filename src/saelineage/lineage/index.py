"""Row lookup: (layer, feature) pairs → rows of features.parquet, vectorised."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def feature_rows(f_layer: np.ndarray, f_id: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A vectorised map (layer int [E], feature int [E]) → row of the table whose rows are
    (f_layer [N], f_id [N]); −1 where the pair is not in the table."""
    f_layer, f_id = np.asarray(f_layer, np.int64), np.asarray(f_id, np.int64)
    top = int(f_layer.max()) + 1 if len(f_layer) else 0
    size = np.zeros(top + 1, np.int64)
    if len(f_layer):
        np.maximum.at(size, f_layer, f_id + 1)
    off = np.zeros(top + 1, np.int64)
    off[1:] = np.cumsum(size)[:-1]
    dense = np.full(int(size.sum()), -1, np.int64)
    dense[off[f_layer] + f_id] = np.arange(len(f_layer))

    def rows(layer: np.ndarray, feature: np.ndarray) -> np.ndarray:
        layer, feature = np.asarray(layer, np.int64), np.asarray(feature, np.int64)
        out = np.full(len(layer), -1, np.int64)
        ok = (layer >= 0) & (layer < top) & (feature >= 0)
        ok[ok] &= feature[ok] < size[layer[ok]]
        out[ok] = dense[off[layer[ok]] + feature[ok]]
        return out

    return rows
