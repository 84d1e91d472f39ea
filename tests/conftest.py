"""Suite-wide settings: offline hub, and which test modules count as numeric.

`numeric` tests compare floating-point results; `make test-simd` (and `.ci/run`) re-runs them
under every lower SIMD level of the machine (tests/simd.py), so a test that only passes at
one SIMD level fails wherever the suite runs.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NUMERIC_MODULES = {
    "test_causal",
    "test_causal_stage",
    "test_collect",
    "test_crash_safety",
    "test_gpt2_preset",
    "test_lineage",
    "test_lineage_prompt",
    "test_lineage_units",
    "test_models",
    "test_portability",
    "test_saes",
    "test_stats",
    "test_stats_stage",
    "test_store",
    "test_train",
    "test_web_prompt",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__ in NUMERIC_MODULES:
            item.add_marker(pytest.mark.numeric)
