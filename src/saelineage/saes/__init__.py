"""SAEs: loading (SAELens, sparsify, releases), fast sparse encoding, saving, training."""
