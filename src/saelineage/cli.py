"""The `saelineage` command line: one sub-command per pipeline stage, plus `demo`."""

from __future__ import annotations

import sys

import typer

from saelineage.errors import SaelineageError
from saelineage.progress import console

app = typer.Typer(
    name="saelineage",
    help="Trace how SAE features connect across the layers of a language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """saelineage: where does an SAE feature come from, and where does it go?"""


def _register_optional() -> None:
    """Stage commands live next to their stage; each registers itself here."""
    import importlib

    for module, attr, name in [
        ("saelineage.collect.command", "collect_command", "collect"),
        ("saelineage.saes.train_command", "train_command", "train"),
        ("saelineage.stats.command", "stats_command", "stats"),
        ("saelineage.lineage.command", "analyze_command", "analyze"),
        ("saelineage.lineage.command", "prompt_command", "prompt"),
        ("saelineage.lineage.command", "export_command", "export"),
        ("saelineage.causal.command", "ablate_command", "ablate"),
        ("saelineage.web.command", "serve_command", "serve"),
        ("saelineage.web.command", "labels_app", "labels"),
        ("saelineage.demo", "demo_command", "demo"),
    ]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("saelineage"):
                continue  # that stage is not part of this build
            raise
        obj = getattr(mod, attr)
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=name)
        else:
            app.command(name)(obj)


_register_optional()


def main() -> None:
    """Console entry point: user errors print one message (problem + fix) and exit 2."""
    try:
        app()
    except SaelineageError as exc:
        console.print(f"[bold red]error:[/] {exc.problem}")
        if exc.fix:
            console.print(f"[bold]fix:[/] {exc.fix}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; completed work is kept — run the same command again to resume.")
        sys.exit(130)


if __name__ == "__main__":
    main()
