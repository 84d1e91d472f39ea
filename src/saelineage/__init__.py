"""saelineage: trace how SAE features connect across the layers of a language model.

The whole pipeline from Python, in the names the command line uses::

    from saelineage import CollectConfig, run_collect, run_stats, run_analyze, Run

    run_collect("runs/r", CollectConfig(max_tokens=20_000))
    run_stats("runs/r")
    run_analyze("runs/r")
    Run("runs/r").feature(3, 120)

Each name is imported on first access (PEP 562), so `import saelineage` (and the command line)
stays cheap: torch, numba and the stages load only when used.
"""

from importlib import import_module

from saelineage.errors import SaelineageError
from saelineage.version import __version__

_LAZY = {
    "Run": "saelineage.notebook.run",
    "RunDir": "saelineage.run",
    "CollectConfig": "saelineage.collect.config",
    "StatsConfig": "saelineage.stats.config",
    "AnalyzeConfig": "saelineage.lineage.config",
    "AblateConfig": "saelineage.causal.config",
    "CeilingConfig": "saelineage.ceiling.config",
    "ServeConfig": "saelineage.web.config",
    "run_collect": "saelineage.collect.stage",
    "run_stats": "saelineage.stats.stage",
    "run_analyze": "saelineage.lineage.stage",
    "run_ablate": "saelineage.causal.stage",
    "run_ceiling": "saelineage.ceiling.stage",
    "write_run": "saelineage.data.importer",
}
"""Public name → the module that defines it."""

__all__ = ["SaelineageError", "__version__", *_LAZY]


def __getattr__(name: str) -> object:
    """A public name, imported from its module on first access."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module 'saelineage' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
