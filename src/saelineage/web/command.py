"""CLI: `saelineage serve RUN` and `saelineage labels import RUN FILE`.

Register with ``app.command("serve")(serve_command)`` and ``app.add_typer(labels_app, name="labels")``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from saelineage.config import with_config
from saelineage.progress import console
from saelineage.web.config import ServeConfig


@with_config(ServeConfig)
def serve_command(
    run: Path = typer.Argument(..., help="Run directory (any stage complete; the browser says what is missing)."),
    cfg: ServeConfig = ServeConfig(),
) -> None:
    """Serve the web feature browser over a run directory (offline; API docs at /docs)."""
    from saelineage.web.app import serve

    serve(run, cfg)


labels_app = typer.Typer(help="Feature labels shown by the browser.", no_args_is_help=True, add_completion=False)


@labels_app.callback()
def _labels() -> None:
    """Feature labels shown by the browser (imported explanations; automatic top-token labels otherwise)."""


@labels_app.command("import")
def labels_import_command(
    run: Path = typer.Argument(..., help="Run directory."),
    file: Path = typer.Argument(
        ...,
        help="Neuronpedia explanation export (.json, .jsonl, .jsonl.gz) or a CSV with "
        "columns layer,feature,explanation.",
    ),
    replace: bool = typer.Option(False, "--replace", help="Drop previously imported labels first."),
) -> None:
    """Import feature explanations; features without one keep their automatic label (top tokens)."""
    from saelineage.web.labels import import_labels

    n = import_labels(run, file, replace=replace)
    console.print(
        f"[green]labels imported[/]: {n['kept']:,} of {n['read']:,} explanations matched features of the run "
        f"({n['unknown']:,} did not); {n['total']:,} labelled features in {Path(run) / 'labels.parquet'}"
    )


labels_command = labels_app
