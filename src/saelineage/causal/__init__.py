"""Causal checks of edges: batched ablations (`saelineage ablate`) and "hidden in the SAE error".

Modules: sampling (which edges), ablate (the batched engine and the ablation definition),
forward (restarting passes at a hook), windows (which corpus windows, from the store),
error_projection (ending features vs the next SAE's error), report (correlations, plot),
stage (the run-directory stage), command (the typer command).
"""

from __future__ import annotations


def demo_ablation(run_dir, **kwargs):
    """Small ablation sample on a run (used by `saelineage demo`); prints and returns the correlations."""
    from saelineage.causal.stage import demo_ablation as _demo

    return _demo(run_dir, **kwargs)


def ablate_run(run_dir, cfg=None, **kwargs):
    """The `ablate` stage (see saelineage.causal.stage.ablate_run)."""
    from saelineage.causal.stage import ablate_run as _run

    return _run(run_dir, cfg, **kwargs)


__all__ = ["demo_ablation", "ablate_run"]
