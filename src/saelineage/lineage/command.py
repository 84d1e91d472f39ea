"""`saelineage analyze`, `saelineage prompt`, `saelineage export`: typer commands (registered in cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from saelineage.config import with_config
from saelineage.errors import SaelineageError
from saelineage.lineage.config import AnalyzeConfig


@with_config(AnalyzeConfig)
def analyze_command(
    run: Path = typer.Argument(..., help="Run directory (after `saelineage stats`)."),
    quiet: bool = typer.Option(False, "--quiet", help="Do not print the lifecycle table."),
    force: bool = typer.Option(False, "--force", help="Redo a completed analyze stage."),
    cfg: AnalyzeConfig = AnalyzeConfig(),
) -> None:
    """Lifecycle, AND/OR gates, splits and communities of a run's features.

    Writes lifecycle.parquet (per layer: counts and shares of new / carried / ending features,
    for a sweep of thresholds; `chosen` marks --threshold), lifecycle.html (Sankey diagram),
    gates.parquet (validated AND/OR gates with support and both scores), best_pairs.parquet
    (every child's two strongest parents scored as AND and as OR), splits.parquet,
    communities.parquet (size, layers spanned, top tokens), prompt_graphs.json, and
    feature_analysis.parquet (per feature: lifecycle / has_pred / has_succ / community). Gates and
    splits are validated by re-reading the stored codes with the stats stage's threshold.
    """
    from saelineage.lineage.lifecycle import print_lifecycle
    from saelineage.lineage.stage import run_analyze

    r = run_analyze(run, cfg, force=force, progress=not quiet)
    if not quiet:
        print_lifecycle(r.run.path)
        _print_counts(r.run.path)


def _print_counts(run: Path) -> None:
    from saelineage.progress import console
    from saelineage.run import RunDir

    info = RunDir(run).load().stage("analyze")
    g, c, ci = info.get("gates", {}), info.get("communities", {}), info.get("intervals") or {}

    def n(value, key: str) -> str:
        """A count with its bootstrap interval, when analyze computed one."""
        lo_hi = ci.get(key)
        return f"{value:,}" if not lo_hi else f"{value:,} [{lo_hi[0]:,.0f}–{lo_hi[1]:,.0f}]"

    console.print(
        f"gates: {n(g.get('and', 0), 'gates_and')} AND, {n(g.get('or', 0), 'gates_or')} OR; "
        f"splits: {n(info.get('splits', 0), 'splits')}; communities: {n(c.get('communities', 0), 'communities')} "
        f"over {c.get('nodes', 0):,} live features ({c.get('edges', 0):,} edges)"
        + (f"; [95% bootstrap intervals over windows, {ci['replicates']} replicates]" if ci.get("replicates") else "")
        + f"; figure: {Path(run) / 'lifecycle.html'}"
    )


def prompt_command(
    run: Path = typer.Argument(..., help="Run directory (after `saelineage analyze`, collected with a model)."),
    text: str = typer.Argument(..., help="The prompt text."),
    position: int = typer.Option(-1, help="Token position to inspect (negative: from the end; BOS counts as 0)."),
    rel: float = typer.Option(0.1, help="Keep features whose activation is ≥ this × their max over the corpus."),
    measure: str = typer.Option("jaccard", help="Edge measure shown as link similarity."),
    min_value: Optional[float] = typer.Option(None, help="Only links whose measure is ≥ this."),
    max_nodes: Optional[int] = typer.Option(None, help="Keep only the strongest N features (by relative activation)."),
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="Write the graph (node-link JSON) to this file; '-' prints it to stdout."
    ),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: the device the run was collected on)."),
) -> None:
    """Features active on one token of a prompt, and the run's edges among them.

    Runs the run's model and SAEs on TEXT, keeps the features active at --position above
    --rel × their corpus maximum, and returns the subgraph of kept edges among them,
    coloured by global community: a terminal summary, and node-link JSON with --json
    (nodes {id "L_F", layer, feature, activation, rel_activation, community, explanation},
    links {source, target, similarity}).
    """
    from saelineage.lineage.export import prompt_nodelink
    from saelineage.progress import console
    from saelineage.query.prompt import prompt
    from saelineage.query.prompt_graph import summary_table

    model = None
    if device is not None:
        from saelineage.run_model import load_run_model

        model = load_run_model(run, device=device)
    graph, meta = prompt(
        run, text, position, rel=rel, measure=measure, min_value=min_value, max_nodes=max_nodes, model=model
    )
    if json_out is not None:
        data = json.dumps(prompt_nodelink(graph, meta), indent=1, allow_nan=False)
        if str(json_out) == "-":
            typer.echo(data)
        else:
            json_out.write_text(data)
            console.print(f"graph written to {json_out}")
    console.print(summary_table(graph, meta["token"], meta["position"]))


def export_command(
    run: Path = typer.Argument(..., help="Run directory (after `saelineage stats`; communities after analyze)."),
    format: str = typer.Option(
        "nodelink",
        "--format",
        help="nodelink (JSON for networkx/D3), graphml (Gephi), "
        "parquet (nodes.parquet + links.parquet), features "
        "(every per-feature column of the run, joined), neuronpedia (explanations as Neuronpedia "
        "exports and imports them), neuronpedia-list (a Neuronpedia feature list, with a quick-list URL).",
    ),
    out: Optional[Path] = typer.Option(
        None,
        help="Output file (folder for parquet). Default: RUN/export/graph.json, "
        "RUN/export/graph.graphml, RUN/export/, RUN/export/features.parquet, "
        "RUN/export/neuronpedia-explanations.json or RUN/export/neuronpedia-list.json.",
    ),
    measure: str = typer.Option("jaccard", help="Edge measure exported as link `similarity`."),
    min_value: Optional[float] = typer.Option(
        None, help="Only edges whose measure is ≥ this (default: all kept edges)."
    ),
    features: str = typer.Option(
        "", help="Neuronpedia formats: only these features (LAYER:FEATURE ids, comma-separated, or a file of them)."
    ),
    community: Optional[int] = typer.Option(None, help="Neuronpedia formats: the members of this community."),
    neuronpedia_id: Optional[str] = typer.Option(
        None,
        help="Neuronpedia formats: the SAEs' Neuronpedia id as MODEL/SOURCE with {layer}, e.g. "
        "'gpt2-small/{layer}-res-jb' (default: from the SAELens release the SAEs come from).",
    ),
) -> None:
    """Export the feature graph: live features as nodes, kept edges as links.

    Nodes: id "L_F", layer, feature, explanation, community, lifecycle, density.
    Links: source, target, similarity (= --measure). Node-link JSON reads back with
    `networkx.node_link_graph(data, edges="links")`; GraphML opens in Gephi (edge weight =
    similarity). `--format features` instead writes one Parquet file: collect's features.parquet
    joined with analyze's feature_analysis.parquet and ablate's error_projection.parquet.
    `--format neuronpedia` writes the features' labels as Neuronpedia explanation records (modelId,
    layer = source id, index, description), which `saelineage labels import` also reads;
    `--format neuronpedia-list` writes a Neuronpedia feature list (--features or --community).
    """
    from saelineage.lineage.export import FORMATS, export
    from saelineage.progress import console

    if format not in FORMATS:
        raise SaelineageError(f"unknown format {format!r}.", f"choose one of {', '.join(FORMATS)}.")
    path = export(
        run, format, out, measure, min_value, features=features, community=community, neuronpedia_id=neuronpedia_id
    )
    console.print(f"exported to {path}")
    if format == "neuronpedia-list":
        url = json.loads(path.read_text()).get("url")
        if url:
            console.print(f"open it on Neuronpedia: {url}", soft_wrap=True)
