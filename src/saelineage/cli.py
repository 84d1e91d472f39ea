"""The `saelineage` command line: one sub-command per pipeline stage, plus `demo`."""

from __future__ import annotations

import sys

import typer

from saelineage.causal.command import ablate_command
from saelineage.ceiling.command import ceiling_command
from saelineage.collect.command import collect_command
from saelineage.config import command_help
from saelineage.demo import demo_command
from saelineage.errors import SaelineageError
from saelineage.lineage.command import analyze_command, export_command, prompt_command
from saelineage.progress import console
from saelineage.saes.releases_command import releases_command
from saelineage.saes.train_command import train_command
from saelineage.stats.command import stats_command
from saelineage.verify import verify_command
from saelineage.web.command import export_site_command, labels_app, serve_command

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


# Each stage's command lives next to its stage; those modules import only typer and the
# stage's config, so building the app (and `--help`) loads no stage code.
app.command("collect")(collect_command)
app.command("train")(train_command)
app.command("releases")(releases_command)
app.command("stats")(stats_command)
app.command("ceiling")(ceiling_command)
app.command("analyze")(analyze_command)
app.command("prompt")(prompt_command)
app.command("export")(export_command)
app.command("ablate")(ablate_command)
app.command("serve")(serve_command)
app.command("export-site")(export_site_command)
app.command("verify")(verify_command)
app.add_typer(labels_app, name="labels")
app.command("demo")(demo_command)


def _unwrap_help(t: typer.Typer) -> None:
    """Help of every command (and group) from its docstring, unwrapped once here for all of them
    (see `command_help`) so that a terminal of any width wraps whole paragraphs."""
    for info in t.registered_commands:
        if info.help is None and info.callback is not None:
            info.help = command_help(info.callback.__doc__)
    for group in t.registered_groups:
        if group.typer_instance is not None:
            if isinstance(group.typer_instance.info.help, str):
                group.typer_instance.info.help = command_help(group.typer_instance.info.help)
            _unwrap_help(group.typer_instance)


_unwrap_help(app)


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
