"""Lineage analysis: lifecycle, gates, splits, communities, per-prompt graphs, exports.

Imports are lazy so that `saelineage --help` does not load igraph, leidenalg or plotly.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "analyze": "saelineage.lineage.stage",
    "AnalyzeOptions": "saelineage.lineage.stage",
    "print_lifecycle": "saelineage.lineage.lifecycle",
    "prompt": "saelineage.lineage.prompt_graph",
    "prompt_graph": "saelineage.lineage.prompt_graph",
    "export": "saelineage.lineage.export",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'saelineage.lineage' has no attribute {name!r}")
