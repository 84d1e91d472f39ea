"""The read layer over a run: the query cache, `RunData`, the layered graph, prompt graphs (docs/design.md §2)."""
