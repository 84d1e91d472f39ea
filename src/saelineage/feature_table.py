"""A run's per-feature table: collect's columns joined with analyze's and ablate's.

Every run file has one writing stage (docs/design.md §3), so the per-feature columns live in three files:

- ``features.parquet`` (collect, or the store API): ``layer, feature, n_active, density, act_sum,
  act_sumsq, act_max``; one row per (layer, feature);
- ``feature_analysis.parquet`` (analyze): ``layer, feature, lifecycle, has_pred, has_succ,
  community``, rows in features.parquet's order;
- ``error_projection.parquet`` (ablate): ``layer, feature`` and the ``error_proj*`` columns, only
  for the features it measured.

`read_features` joins them on (layer, feature) for readers that want one table (the browser, the
exports, Python users). A column of a stage that has not run is absent; a row the stage did not
cover is null in its columns. `explanations` aligns the imported labels (labels.parquet) with such
a table, and `feature_rows` is the one (layer, feature) → row lookup every reader uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from saelineage import contract
from saelineage.errors import SaelineageError
from saelineage.run import RunDir, parquet_file, present, read_parquet

JOINED_FILES = (contract.FEATURE_ANALYSIS, contract.ERROR_PROJECTION)
"""Per-feature tables joined onto features.parquet, in the order their columns are appended."""


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


def read_features(run: RunDir | str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """features.parquet with the per-feature columns of feature_analysis.parquet and
    error_projection.parquet appended, matched on (layer, feature), in features.parquet's row order.

    columns: only these (plus layer and feature); a name no file holds is left out. A run made
    before analyze had its own table keeps analyze's columns in features.parquet; when
    feature_analysis.parquet exists its columns replace those (it is the newer analysis).
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    want = None if columns is None else set(columns) | set(contract.KEY)
    # each file read once and verified; schema and columns come from the same bytes
    parts = [(name, parquet_file(run.file(name))) for name in JOINED_FILES if present(run.file(name))]
    owned = {c for _, f in parts for c in f.schema_arrow.names if c not in contract.KEY}
    base = parquet_file(run.file(contract.FEATURES))
    base_names = [c for c in base.schema_arrow.names if c not in owned and (want is None or c in want)]
    table = base.read(columns=base_names)
    for _name, f in parts:
        take = [c for c in f.schema_arrow.names if c not in contract.KEY and (want is None or c in want)]
        if take:
            table = _left_join(table, f.read(columns=[*contract.KEY, *take]), take)
    return table


def _left_join(left: pa.Table, right: pa.Table, columns: list[str]) -> pa.Table:
    """`left` with `columns` of `right` appended where (layer, feature) matches; null elsewhere."""
    ll, lf = (left.column(c).to_numpy().astype(np.int64) for c in contract.KEY)
    rl, rf = (right.column(c).to_numpy().astype(np.int64) for c in contract.KEY)
    if len(ll) == len(rl) and np.array_equal(ll, rl) and np.array_equal(lf, rf):
        picked = [right.column(c) for c in columns]  # the same rows in the same order: nothing to match
    else:
        at = feature_rows(rl, rf)(ll, lf) if len(rl) else np.full(len(ll), -1, np.int64)
        index = pa.array(np.maximum(at, 0), pa.int64(), mask=at < 0)
        picked = [
            right.column(c).take(index) if len(rl) else pa.nulls(len(ll), right.schema.field(c).type) for c in columns
        ]
    for c, col in zip(columns, picked):
        left = left.append_column(right.schema.field(c), col)
    return left


def explanations(run: RunDir, feats: pa.Table) -> np.ndarray | None:
    """object [N] explanation per row of `feats` (layer, feature): the imported label
    (labels.parquet, `saelineage labels import`), None where there is none; None when the run
    has no labels."""
    lp = run.file(contract.LABELS)
    if not present(lp):
        return None
    lab = read_parquet(lp)
    if not ({"layer", "feature", "explanation"} <= set(lab.column_names) and lab.num_rows):
        return None
    out = np.full(feats.num_rows, None, dtype=object)
    at = feature_rows(*(feats.column(c).to_numpy() for c in contract.KEY))(
        *(lab.column(c).to_numpy() for c in contract.KEY)
    )
    vals = np.asarray(lab.column("explanation").to_pylist(), dtype=object)
    out[at[at >= 0]] = vals[at >= 0]
    return out


def parse_feature_ids(text: str, layers: Iterable[int]) -> list[tuple[int, int]]:
    """Feature ids "3:17, 4:2" (or a file of such ids) as [(3, 17), (4, 2)]; layers must be the run's."""
    p = Path(text)
    if text and p.is_file():
        text = p.read_text()
    out = []
    known = set(layers)
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        m = re.fullmatch(r"[Ll]?(\d+)[:/_](\d+)", part)
        if m is None:
            raise SaelineageError(
                f"{part!r} is not a feature id.", "give features as LAYER:FEATURE, e.g. --features 3:17,4:2."
            )
        layer, feature = int(m.group(1)), int(m.group(2))
        if layer not in known:
            raise SaelineageError(f"layer {layer} of {part!r} is not in the run.", f"layers are {sorted(known)}.")
        out.append((layer, feature))
    return out
