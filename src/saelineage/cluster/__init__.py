"""Scale-out on Ray: each stage's units of work (collect: shards, stats: layer pair × source
block, ablate: parts) run on a Ray cluster and end in the same files, value for value, as one
process (docs/design.md §5.16). Needs `pip install 'saelineage[ray]'`."""
