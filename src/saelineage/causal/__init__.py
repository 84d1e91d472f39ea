"""Causal checks of edges: batched ablations (`saelineage ablate`) and "hidden in the SAE error"."""
