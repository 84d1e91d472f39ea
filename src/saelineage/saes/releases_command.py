"""`saelineage releases`: the SAELens releases usable for lineage, offline from the installed sae_lens."""

from __future__ import annotations

from typing import Optional

import typer


def releases_command(
    model: Optional[str] = typer.Option(
        None, "--model", help="Only releases of this model (hub id or TransformerLens name, e.g. google/gemma-3-270m)."
    ),
    site: Optional[str] = typer.Option(
        None,
        "--site",
        help="Only releases reading this site: resid_pre, resid_mid, resid_post, mlp_out, attn_out, transcoder.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the releases as a JSON list."),
    all_releases: bool = typer.Option(False, "--all", help="Also list releases that cannot feed lineage."),
) -> None:
    """List SAELens releases with their layers, site, widths, sparsity variants and second seeds.

    Sites, widths and variants are read from the names each release publishes; the hook of each
    SAE comes from its own config when `collect --saes RELEASE` loads it.
    """
    import json

    from rich.console import Console
    from rich.markup import escape

    from saelineage.progress import console
    from saelineage.saes import catalog

    found = [r for r in catalog.usable_with(model, site) if all_releases or r.unusable is None]
    rows = [catalog.summary(r) for r in found]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        console.print(
            f"no SAELens release{f' for {model}' if model else ''}{f' at {site}' if site else ''} in the installed "
            "sae_lens; `saelineage releases` lists them all."
        )
        return
    # a stacked layout (name line, detail line) stays readable in an 80-column terminal or a log
    out = Console(highlight=False, soft_wrap=False)
    for r in rows:
        tags = [r["site"] or "site ?", r["architecture"] or "architecture ?"]
        if r["second_seed"]:
            tags.append("second seed")
        if not r["usable"]:
            tags.append("not for lineage: " + str(r["why_not"]))
        out.print(f"[bold]{escape(r['release'])}[/]  ({', '.join(tags)})")
        detail = [f"layers {_layers(r['layers'])}", f"widths {' '.join(r['widths']) or '-'}", f"L0 {_short(r['l0'])}"]
        if model is None:
            detail.insert(0, f"model {r['hub_model']}")
        out.print("    " + " · ".join(detail))
    console.print(
        f"{len(rows)} release(s). Use one with `saelineage collect RUN --saes RELEASE` (add --width / --l0 / "
        "--sae-id where a release has several SAEs per layer)."
    )


def _layers(layers: list[int]) -> str:
    if not layers:
        return "-"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers)) if len(layers) <= 6 else f"{len(layers)} of {layers[0]}-{layers[-1]}"


def _short(values: list[str]) -> str:
    if not values:
        return "-"
    return " ".join(values) if len(values) <= 4 else f"{len(values)} ({values[0]}…{values[-1]})"
