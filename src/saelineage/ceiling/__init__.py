"""The seed ceiling: how reproducibly two trainings of one layer's SAE cut its residual stream into features."""
