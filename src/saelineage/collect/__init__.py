"""Collection: the model over a corpus once, every layer encoded by its SAE, codes stored.

`saelineage.collect.stage.collect(run, CollectConfig(...))`; the config lives in
`saelineage.collect.config` and generates the `saelineage collect` options.
"""
