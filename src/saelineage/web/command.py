"""CLI: `saelineage serve RUN`, `saelineage export-site RUN OUT` and `saelineage labels import RUN FILE`.

Register with ``app.command("serve")(serve_command)``, ``app.command("export-site")(export_site_command)``
and ``app.add_typer(labels_app, name="labels")``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from saelineage.config import with_config
from saelineage.progress import console
from saelineage.web.config import ServeConfig, SiteConfig


@with_config(ServeConfig)
def serve_command(
    run: Path = typer.Argument(..., help="Run directory (any stage complete; the browser says what is missing)."),
    cfg: ServeConfig = ServeConfig(),
) -> None:
    """Serve the web feature browser over a run directory (offline; API docs at /docs).

    On an address other than loopback (--host) every request must carry an access token: --auth-token,
    or better $SAELINEAGE_AUTH_TOKEN, which stays out of shell history and process lists.
    """
    from saelineage.web.app import serve

    serve(run, cfg)


@with_config(SiteConfig)
def export_site_command(
    run: Path = typer.Argument(..., help="Run directory (after `saelineage analyze` for the full site)."),
    out: Path = typer.Argument(..., help="Folder to write the site to (new, empty, or an earlier export: replaced)."),
    cfg: SiteConfig = SiteConfig(),
) -> None:
    """Write a read-only copy of the browser as static files, for any static file host (e.g. GitHub Pages).

    Overview, layered graph, communities, gates, splits, and a page per live feature (or --features, --top-n).
    Data sits in JSON files loaded on demand; no server, no CDN.
    Live prompts need the model and are left out (the prompt page says so).
    Try it with a static file server: python -m http.server -d OUT
    """
    from saelineage.web.site import export_site

    res = export_site(run, out, cfg, progress=lambda msg: console.print(f"  {msg}…"))
    console.print(
        f"[green]static site written[/]: {res.out} — {res.files:,} files, {res.bytes / 1e6:.1f} MB, "
        f"{res.features:,} feature pages, {res.seconds:.1f} s. Try it: python -m http.server -d {res.out}"
    )


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
