"""Lineage analysis: lifecycle, gates, splits, communities, per-prompt graphs, exports."""
