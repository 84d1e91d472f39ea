"""feature_table.read_features on hand-made stage tables: key matching, absent stages, legacy runs."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saelineage.feature_table import read_features

LAYERS = [0, 0, 0, 1, 1, 1]
IDS = [0, 1, 2, 0, 1, 2]


def collected(path, **extra) -> None:
    """A features.parquet with collect's columns (+ `extra`, as a run of an older version had)."""
    n = len(LAYERS)
    pq.write_table(
        pa.table(
            {
                "layer": pa.array(LAYERS, pa.int32()),
                "feature": pa.array(IDS, pa.int32()),
                "n_active": [5, 0, 7, 1, 2, 3],
                "density": [0.5, 0.0, 0.7, 0.1, 0.2, 0.3],
                "act_sum": [1.0] * n,
                "act_sumsq": [1.0] * n,
                "act_max": [2.0] * n,
                **extra,
            }
        ),
        path / "features.parquet",
    )


def test_without_later_stages_only_collects_columns(tmp_path):
    collected(tmp_path)
    t = read_features(tmp_path)
    assert t.equals(pq.read_table(tmp_path / "features.parquet"))


def test_rows_matched_on_layer_and_feature_whatever_their_order(tmp_path):
    collected(tmp_path)
    # analyze's rows shuffled and one missing; ablate measured two features only
    pq.write_table(
        pa.table(
            {
                "layer": [1, 0, 1, 0, 1],
                "feature": [2, 0, 0, 2, 1],
                "lifecycle": ["ending", "carried", "new", "dead", "carried"],
                "community": [3, 1, None, None, 3],
            }
        ),
        tmp_path / "feature_analysis.parquet",
    )
    pq.write_table(
        pa.table({"layer": [1, 0], "feature": [2, 2], "error_proj_rel": [0.25, 0.5]}),
        tmp_path / "error_projection.parquet",
    )
    t = read_features(tmp_path)
    assert t.column_names == [
        "layer",
        "feature",
        "n_active",
        "density",
        "act_sum",
        "act_sumsq",
        "act_max",
        "lifecycle",
        "community",
        "error_proj_rel",
    ]
    got = {(r["layer"], r["feature"]): (r["lifecycle"], r["community"], r["error_proj_rel"]) for r in t.to_pylist()}
    assert list(got) == list(zip(LAYERS, IDS))  # features.parquet's row order
    assert got == {
        (0, 0): ("carried", 1, None),
        (0, 1): (None, None, None),
        (0, 2): ("dead", None, 0.5),
        (1, 0): ("new", None, None),
        (1, 1): ("carried", 3, None),
        (1, 2): ("ending", 3, 0.25),
    }
    assert t.schema.field("community").type == pa.int64() and t.schema.field("n_active").type == pa.int64()


def test_column_selection(tmp_path):
    collected(tmp_path)
    pq.write_table(
        pa.table({"layer": LAYERS, "feature": IDS, "lifecycle": ["new"] * 6, "community": [1] * 6}),
        tmp_path / "feature_analysis.parquet",
    )
    t = read_features(tmp_path, columns=["act_max", "lifecycle", "no_such_column"])
    assert t.column_names == ["layer", "feature", "act_max", "lifecycle"]
    assert t.column("lifecycle").to_pylist() == ["new"] * 6


@pytest.mark.parametrize("analysed_again", [False, True])
def test_legacy_run_with_analyze_columns_in_features_parquet(tmp_path, analysed_again):
    """A run analysed by an older version keeps its columns until analyze writes its own table,
    which then wins over the stale copy."""
    collected(tmp_path, lifecycle=["new"] * 6, explanation=pa.nulls(6, pa.string()))
    if analysed_again:
        pq.write_table(
            pa.table({"layer": LAYERS, "feature": IDS, "lifecycle": ["carried"] * 6}),
            tmp_path / "feature_analysis.parquet",
        )
    t = read_features(tmp_path)
    assert t.column_names.count("lifecycle") == 1
    assert t.column("lifecycle").to_pylist() == ["carried" if analysed_again else "new"] * 6


def test_an_empty_stage_table_gives_null_columns(tmp_path):
    collected(tmp_path)
    pq.write_table(
        pa.table(
            {
                "layer": pa.array([], pa.int32()),
                "feature": pa.array([], pa.int32()),
                "error_proj_rel": pa.array([], pa.float64()),
            }
        ),
        tmp_path / "error_projection.parquet",
    )
    t = read_features(tmp_path)
    assert t.column("error_proj_rel").to_pylist() == [None] * 6
    assert t.schema.field("error_proj_rel").type == pa.float64()
