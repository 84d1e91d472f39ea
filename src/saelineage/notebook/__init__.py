"""Exploring a finished run from Python and Jupyter: `saelineage.Run(path)` (in `run.py`), a feature's
card and neighbours (`feature.py`), and plotly figures of layered graphs (`figures.py`)."""
