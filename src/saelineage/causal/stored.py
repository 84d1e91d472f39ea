"""Clean codes as the collect stage stored them, for the windows an ablation runs on.

The store already says, without a forward pass, in which windows an upstream feature fires
and where a downstream feature is active and how strongly. The engine uses that to run
clean and ablated passes only on windows where the upstream feature fires: in the other
windows the ablation removes nothing (its write a_i(t)·W_dec[i] is zero on every token), so
the downstream feature's drop is exactly 0 and its clean activations are the stored ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp


class StoredCodes:
    """Stored clean codes of W windows of S tokens, for chosen features of chosen layers.

    codes[layer]: CSR [W*S, d_sae], row w*S + s = token s of window w (windows in the order
    of the ablation's `ids`); mask: bool [W, S] token set; keep[layer]: the features needed
    (upstream features and downstream targets). Only those columns are kept, as CSC."""

    def __init__(self, codes: Mapping[int, sp.spmatrix], mask: np.ndarray, keep: Mapping[int, np.ndarray]) -> None:
        self.mask = np.asarray(mask, bool)
        self.n_windows, self.seq = self.mask.shape
        self.cols: dict[int, sp.csc_matrix] = {}
        self.pos: dict[int, dict[int, int]] = {}
        for layer, feats in keep.items():
            feats = np.unique(np.asarray(feats, np.int64))
            m = sp.csr_matrix(codes[layer])
            if m.shape[0] != self.n_windows * self.seq:
                raise ValueError(
                    f"stored codes of layer {layer} have {m.shape[0]} rows, expected "
                    f"{self.n_windows} windows x {self.seq} tokens"
                )
            on = self.mask.reshape(-1)
            c = sp.csc_matrix(m[:, feats].multiply(on[:, None]))
            c.eliminate_zeros()
            c.sort_indices()
            self.cols[int(layer)] = c
            self.pos[int(layer)] = {int(f): k for k, f in enumerate(feats)}

    @classmethod
    def from_dense(
        cls, codes: Mapping[int, np.ndarray], mask: np.ndarray, keep: Mapping[int, np.ndarray]
    ) -> StoredCodes:
        """From dense clean codes {layer: [W, S, d_sae]} (tests and benchmarks; the stage reads shards)."""
        return cls(
            {l: sp.csr_matrix(np.asarray(c).reshape(-1, np.asarray(c).shape[-1])) for l, c in codes.items()}, mask, keep
        )

    def _column(self, layer: int, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """Token rows (w*S + s, ascending) and values of one feature's non-zero codes on the token set."""
        m, k = self.cols[int(layer)], self.pos[int(layer)][int(feature)]
        a, b = m.indptr[k], m.indptr[k + 1]
        return m.indices[a:b].astype(np.int64), m.data[a:b]

    def fires(self, layer: int, feature: int) -> np.ndarray:
        """bool [W]: windows where the feature's code is non-zero on some token of the token set."""
        rows, vals = self._column(layer, feature)
        out = np.zeros(self.n_windows, bool)
        out[rows[vals != 0] // self.seq] = True
        return out

    def active(self, layer: int, feature: int, window: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Positions (ascending) and float32 clean codes of the feature's active tokens (> threshold) in a window."""
        rows, vals = self._column(layer, feature)
        lo, hi = np.searchsorted(rows, [window * self.seq, (window + 1) * self.seq])
        r, v = rows[lo:hi], vals[lo:hi]
        on = v > threshold
        return r[on] - window * self.seq, v[on].astype(np.float32)
