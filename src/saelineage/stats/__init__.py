"""Cross-layer co-activation statistics: kernels, measures, edge selection (DESIGN §4).

Public API::

    from saelineage.stats import compute_stats
    summary = compute_stats("runs/demo", span=2, relative_threshold=0.2)
"""

from saelineage.stats.measures import MEASURES
from saelineage.stats.stage import DEFAULT_KEEP, StatsSummary, compute_stats

__all__ = ["compute_stats", "StatsSummary", "MEASURES", "DEFAULT_KEEP"]
