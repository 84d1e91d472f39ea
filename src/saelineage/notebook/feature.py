"""One feature in a notebook: its statistics, label, top examples as highlighted text, neighbours
as DataFrames, and the browser's card as `_repr_html_`.

Everything comes from the browser's queries (`query.run_data.RunData`), so the notebook, the browser
and the static site show the same numbers; the card is the browser's own template
(`web/templates/_feature_card.html`), rendered with autoescaping, so a label is always text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

HIT_OPEN, HIT_CLOSE = "«", "»"
"""Marks around the token an example fires on, in `Feature.examples["text"]`."""

NEIGHBOUR_BRIEF = ("layer", "feature", "label", "community", "lifecycle", "density")
"""Columns of the feature at the other end of an edge, first in a neighbours DataFrame."""

# The card's look in a notebook: the browser's stylesheet is not there, so the few rules that matter
# (highlighted token, cards in a row) are scoped to the card.
CARD_CSS = """<style>
.saelineage-card .cards{display:flex;flex-wrap:wrap;gap:8px}
.saelineage-card .card{border:1px solid #e5e7eb;border-radius:6px;padding:6px 10px;min-width:110px}
.saelineage-card .card .k{font-size:11px;color:#6b7280;text-transform:uppercase}
.saelineage-card .card .v{font-size:16px;font-weight:600}
.saelineage-card .card .s,.saelineage-card .sub,.saelineage-card .where{color:#6b7280;font-size:12px}
.saelineage-card .fid{font-family:monospace;background:#eef2f7;border-radius:3px;padding:0 4px}
.saelineage-card .ctx{font-family:monospace;white-space:pre-wrap}
.saelineage-card .tok.hit{background:#ffd166;font-weight:700}
.saelineage-card .val{display:inline-block;min-width:48px;color:#6b7280}
.saelineage-card h1{font-size:18px}.saelineage-card h2{font-size:15px}
</style>"""


@lru_cache(maxsize=1)
def _templates() -> Any:
    from pathlib import Path

    import jinja2

    folder = Path(__file__).parents[1] / "web" / "templates"  # the browser's templates, shipped in the package
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), autoescape=True)


def example_text(ex: dict[str, Any]) -> str:
    """An example's context as one string, the token it fires on between « and »."""
    parts = [(HIT_OPEN + t["text"] + HIT_CLOSE) if t["hit"] else t["text"] for t in ex.get("tokens", [])]
    return ("…" if ex.get("truncated_left") else "") + "".join(parts) + ("…" if ex.get("truncated_right") else "")


def neighbour_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The browser's neighbour list flattened: the other feature's brief, then the edge's columns, then
    the ablation result (when `saelineage ablate` measured the edge) as `ablation_*` columns."""
    out = []
    for r in rows:
        other = r.get("other") or {}
        row = {k: other.get(k) for k in NEIGHBOUR_BRIEF}
        row |= {k: v for k, v in r.items() if k not in ("other", "ablation")}
        for k, v in (r.get("ablation") or {}).items():
            row[f"ablation_{k}"] = v
        out.append(row)
    return out


@dataclass
class Feature:
    """A feature of a run, as the browser's feature page shows it.

    `stats`: density, act_max, act_mean, n_active, lifecycle, community and every other per-feature
    column; `examples`: top activating examples (DataFrame, `text` marks the hit token «so»);
    `upstream` / `downstream`: kept edges into and out of it, strongest first (DataFrames);
    `neuronpedia`: the feature's Neuronpedia page, for SAEs of a public SAELens release."""

    layer: int
    index: int
    label: str
    label_source: str
    stats: dict[str, Any]
    neuronpedia: str | None
    examples: Any
    upstream: Any
    downstream: Any
    gates: Any
    splits: list[dict[str, Any]] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict, repr=False)
    """What the card template is rendered from (the browser's feature and examples records)."""

    def __repr__(self) -> str:
        return (
            f"Feature({self.layer}:{self.index} {self.label!r}, density={self.stats.get('density')}, "
            f"lifecycle={self.stats.get('lifecycle')}, community={self.stats.get('community')}, "
            f"{len(self.upstream)} upstream / {len(self.downstream)} downstream edges)"
        )

    def _repr_html_(self) -> str:
        body = _templates().get_template("_feature_card.html").render(**self.card, standalone=True)
        return f'{CARD_CSS}<div class="saelineage-card">{body}</div>'
