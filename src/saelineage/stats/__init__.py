"""Cross-layer co-activation statistics: kernels, measures, edge selection (docs/design.md §4).

Entry point: ``saelineage.stats.stage.run_stats(run, StatsConfig(...))``; the config is
``saelineage.stats.config.StatsConfig`` (the `saelineage stats` options are generated from it).
"""
