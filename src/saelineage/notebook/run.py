"""`saelineage.Run(path)`: a finished run, explored from Python.

Tables come back as pandas DataFrames (``Run(path, frames="polars")`` for polars): the per-feature
table, edges, lifecycle, gates, splits and communities, read from the run's Parquet files with every
column they hold (a column a newer stage adds comes through unchanged). `feature(layer, index)` gives
a feature's card (the browser's), `graph(...)` the layered graph as a plotly figure, and
`prompt(text)` the live per-token graph when the run's model is at hand.

Feature cards and graphs are answered by the browser's query layer (`query.run_data.RunData`), which
builds the browser's cache (``RUN/.browser-cache/``, or `cache_folder`) on first use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from saelineage import contract
from saelineage.contract import Manifest
from saelineage.errors import SaelineageError
from saelineage.notebook.feature import Feature, example_text, neighbour_rows
from saelineage.notebook.figures import layered_figure
from saelineage.run import RunDir, read_parquet

FRAMES = ("pandas", "polars")
TABLES = {
    "lifecycle": (contract.LIFECYCLE, "analyze"),
    "gates": (contract.GATES, "analyze"),
    "splits": (contract.SPLITS, "analyze"),
    "communities": (contract.COMMUNITIES, "analyze"),
}


def _frame(table: pa.Table, frames: str) -> Any:
    if frames == "polars":
        try:
            import polars as pl
        except ImportError as exc:
            raise SaelineageError(
                "polars is not installed.", "pip install polars, or use Run(path) for pandas DataFrames."
            ) from exc
        return pl.from_arrow(table)
    try:
        import pandas  # noqa: F401 - to_pandas needs it; say so in one line rather than pyarrow's message
    except ImportError as exc:
        raise SaelineageError("pandas is not installed.", "pip install 'saelineage[notebook]'.") from exc
    return table.to_pandas()


def _and(a: Any, b: Any) -> Any:
    """a ∧ b of two boolean arrays, `a` None meaning no condition yet."""
    import pyarrow.compute as pc

    return b if a is None else pc.and_(a, b)


def _rows_frame(rows: list[dict[str, Any]], frames: str, columns: Sequence[str] = ()) -> Any:
    """A DataFrame of dict rows (the browser's records); `columns` when there are none."""
    if not rows:
        return _frame(pa.table({c: pa.array([], pa.null()) for c in columns}), frames)
    # every row gets every column: from_pylist takes its columns from the first row, and a neighbour
    # with an ablation result after one without would otherwise lose (or fail on) its ablation_* columns
    names = list(dict.fromkeys(k for r in rows for k in r))
    return _frame(pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows]), frames)


@dataclass
class PromptGraph:
    """The features active on one token of a prompt and the run's edges among them.

    `nodes`: layer, feature, label, community, activation, rel_activation, ...; `edges`: src and dst
    (layer, feature) with the measure's value; `figure`: the layered plotly figure (shown inline)."""

    text: str
    position: int
    token: str
    nodes: Any
    edges: Any
    figure: Any
    raw: dict[str, Any]

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.figure._repr_mimebundle_(include, exclude)


class Run:
    """A finished (or partly finished) run directory.

    >>> run = Run("runs/demo")
    >>> run.features().query("lifecycle == 'new'")
    >>> run.edges(measure="pearson", min=0.5, layers=3)      # edges out of layer 3 with pearson >= 0.5
    >>> run.feature(3, 17)                                    # the browser's card, inline in Jupyter
    >>> run.graph(measure="jaccard", edges_per_node=2)        # plotly figure of the layered graph
    """

    def __init__(self, path: str | Path, frames: str = "pandas", cache_folder: str | Path | None = None):
        if frames not in FRAMES:
            raise SaelineageError(f"unknown frames {frames!r}.", f"choose one of {', '.join(FRAMES)}.")
        self.dir = RunDir(path)
        self.manifest: Manifest = self.dir.load()  # a clear error when `path` is not a run
        self.frames = frames
        self.cache_folder = Path(cache_folder) if cache_folder is not None else None
        self._data: Any = None
        self._prompts: Any = None

    def __repr__(self) -> str:
        st = {s: self.manifest.status(s) for s in contract.STAGES if self.manifest.status(s)}
        return f"Run({str(self.path)!r}, layers={self.layers}, stages={st})"

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def layers(self) -> list[int]:
        return list(self.manifest.layers)

    # ---- tables ---------------------------------------------------------------------------------
    def features(self) -> Any:
        """Per feature: collect's statistics joined with analyze's (lifecycle, community, ...) and ablate's
        columns, plus `explanation` (labels imported with `saelineage labels import`, else null)."""
        from saelineage.feature_table import read_features
        from saelineage.lineage.export import explanations

        self.dir.require("collect")
        table = read_features(self.dir)
        expl = explanations(self.dir, table)
        values = [None] * table.num_rows if expl is None else expl.tolist()
        return _frame(table.append_column("explanation", pa.array(values, pa.string())), self.frames)

    def edges(
        self,
        measure: str = "jaccard",
        min: float | None = None,  # noqa: A002 - the name researchers type: run.edges(min=0.5)
        layers: int | Iterable[int] | None = None,
    ) -> Any:
        """Kept edges (edges.parquet, every column), strongest `measure` first.

        min: only edges with `measure` ≥ min. layers: an int l keeps the edges out of layer l; a list or
        range keeps the edges whose two ends both lie in it (None: every layer)."""
        import pyarrow.compute as pc

        table = read_parquet(self._file(contract.EDGES, "stats"))  # one verified read; filtered in memory
        names = table.schema.names
        if measure not in names or measure in contract.EDGE_KEY:
            choices = [c for c in contract.EDGE_MEASURES if c in names] + ["n_co"]
            raise SaelineageError(f"edges.parquet has no measure {measure!r}.", f"choose one of {', '.join(choices)}.")
        keep_row = None
        if min is not None:
            keep_row = pc.greater_equal(table[measure], float(min))
        if isinstance(layers, int):
            keep_row = _and(keep_row, pc.equal(table["src_layer"], layers))
        elif layers is not None:
            keep = pa.array(sorted({int(l) for l in layers}), table.schema.field("src_layer").type)
            both = pc.and_(pc.is_in(table["src_layer"], keep), pc.is_in(table["dst_layer"], keep))
            keep_row = _and(keep_row, both)
        if keep_row is not None:
            table = table.filter(pc.fill_null(keep_row, False))
        order = [(measure, "descending"), *((c, "ascending") for c in contract.EDGE_KEY)]
        return _frame(table.sort_by(order), self.frames)

    def lifecycle(self) -> Any:
        """lifecycle.parquet: per (threshold, layer) counts and shares of new / carried / ending features."""
        return self._table("lifecycle")

    def gates(self) -> Any:
        """gates.parquet: validated AND/OR gates (kind, child, parents, support, both scores, ...)."""
        return self._table("gates")

    def splits(self) -> Any:
        """splits.parquet: parents whose children divide their activity."""
        return self._table("splits")

    def communities(self) -> Any:
        """communities.parquet: per community its size, layers spanned and top tokens."""
        return self._table("communities")

    def _table(self, name: str) -> Any:
        file, stage = TABLES[name]
        return _frame(read_parquet(self._file(file, stage)), self.frames)

    def _file(self, name: str, stage: str) -> Path:
        p = self.dir.file(name)
        if not p.is_file():
            raise SaelineageError(
                f"the run {self.path} has no {name} (the {stage} stage writes it).",
                f"run `saelineage {stage} {self.path}`.",
            )
        return p

    # ---- one feature ----------------------------------------------------------------------------
    @property
    def data(self) -> Any:
        """The browser's query layer over this run (built on first use)."""
        if self._data is None:
            from saelineage.query.run_data import RunData

            self._data = RunData(self.path, cache_folder=self.cache_folder)
        return self._data

    def feature(self, layer: int, index: int, examples: int = 20, neighbours: int = 50) -> Feature:
        """The feature `layer:index`: statistics, label, top examples, neighbours, gates and splits,
        with the browser's card as its HTML view."""
        d = self.data
        f = d.feature(int(layer), int(index))
        if f is None:
            known = ", ".join(f"{l}: 0..{self.manifest.d_sae[l] - 1}" for l in self.layers)
            raise SaelineageError(f"feature {layer}:{index} is not in this run.", f"features per layer are {known}.")
        ex = d.examples(int(layer), int(index), limit=examples)
        ex_rows = [
            {k: e[k] for k in ("rank", "value", "window", "pos", "token")} | {"text": example_text(e)} for e in ex
        ]
        up = neighbour_rows(d.neighbours(int(layer), int(index), "up", "jaccard", neighbours))
        down = neighbour_rows(d.neighbours(int(layer), int(index), "down", "jaccard", neighbours))
        stats = {k: f[k] for k in ("density", "n_active", "act_max", "act_mean", "lifecycle", "community")}
        stats |= f.get("extra") or {}
        brief = ("layer", "feature", "label", "community", "lifecycle", "density")
        return Feature(
            layer=int(layer),
            index=int(index),
            label=f["label"],
            label_source=f["label_source"],
            stats=stats,
            neuronpedia=f["neuronpedia"],
            examples=_rows_frame(ex_rows, self.frames, ("rank", "value", "window", "pos", "token", "text")),
            upstream=_rows_frame(up, self.frames, brief),
            downstream=_rows_frame(down, self.frames, brief),
            gates=_rows_frame(d.feature_gates(int(layer), int(index)), self.frames, contract.GATE_COLUMNS),
            splits=d.splits(layer=int(layer), feature=int(index))["rows"],
            card={"f": f, "examples": ex, "status": d.status()},
        )

    # ---- graphs ---------------------------------------------------------------------------------
    def graph(
        self,
        measure: str = "jaccard",
        min_value: float | None = 0.1,
        layers: Sequence[int] | None = None,
        community: int | None = None,
        max_nodes: int = 400,
        order: str = "barycenter",
        edges_per_node: int = 0,
        title: str | None = None,
    ) -> Any:
        """The layered graph as a plotly figure (shown inline in Jupyter), chosen as the browser's graph
        view chooses it (same defaults). `figure.layout.meta` holds the graph's nodes and edges."""
        from saelineage.query.graph import graph

        if measure not in contract.EDGE_MEASURES:
            raise SaelineageError(
                f"unknown measure {measure!r}.", f"choose one of {', '.join(contract.EDGE_MEASURES)}."
            )
        lo, hi = (min(layers), max(layers)) if layers else (None, None)
        g = graph(self.data, measure, min_value, lo, hi, community, max_nodes, order, edges_per_node)
        if g.get("missing"):
            raise SaelineageError(f"the run has no graph yet: {g['missing']}.", g["missing"] + ".")
        fig = layered_figure(g, title=title or f"{self.path.name}: {measure}")
        fig.layout.meta = {"nodes": g["nodes"], "edges": g["edges"], "layers": g["layers"]}
        return fig

    def prompt(
        self,
        text: str,
        position: int = -1,
        rel: float = 0.1,
        measure: str = "jaccard",
        max_nodes: int = 500,
        edges_per_node: int = 3,
        backend: Any = None,
    ) -> PromptGraph:
        """The live graph of one token of `text` (default: the last): features active above rel × their
        corpus maximum in every layer, joined by the run's edges (each feature's `edges_per_node`
        strongest; 0 for all). Needs the run's model and SAEs (or a `backend`, see query.prompt)."""
        from saelineage.query.prompt import PromptService

        if self._prompts is None or backend is not None:
            self._prompts = PromptService(self.data, backend)
        svc = self._prompts
        if svc.backend is None:
            raise SaelineageError(
                f"live prompts are not available for this run: {svc.reason}",
                "explore the run's tables, features and graph instead; prompts need the model it was collected with.",
            )
        n = len(svc.tokens(text))
        pos = position + n if position < 0 else position
        g = svc.graph(text, pos, rel, measure, None, max_nodes, "barycenter", edges_per_node)
        nodes = _frame(pa.table(g["nodes"]), self.frames)
        nl, nf = g["nodes"]["layer"], g["nodes"]["feature"]
        e = g["edges"]
        edges = _frame(
            pa.table(
                {
                    "src_layer": [nl[i] for i in e["src"]],
                    "src": [nf[i] for i in e["src"]],
                    "dst_layer": [nl[i] for i in e["dst"]],
                    "dst": [nf[i] for i in e["dst"]],
                    measure: pa.array(e["value"], pa.float64()),
                }
            ),
            self.frames,
        )
        fig = layered_figure(g, title=f"token {g['token']!r} (#{pos})")
        return PromptGraph(text=text, position=pos, token=g["token"], nodes=nodes, edges=edges, figure=fig, raw=g)
