"""`AnalyzeConfig`: what `saelineage analyze` computes (the command's options are generated from it)."""

from __future__ import annotations

from dataclasses import dataclass

from saelineage.contract import DATA_MEASURES
from saelineage.errors import SaelineageError


@dataclass
class AnalyzeConfig:
    """Options of the analyze stage (docs/design.md §4 defines each rule)."""

    measure: str = "pearson"
    """Lifecycle measure M: jaccard, sufficiency, necessity, mutual_info, pearson, act_cosine (best match over
    all pairs, feature_links)."""
    threshold: float = 0.5
    """Lifecycle threshold τ: a feature is carried when its best predecessor has M ≥ τ, and continues when its
    best successor does (the paper, arXiv:2410.08869: Pearson, 0.4-0.95)."""
    gate_test: str = "evidence"
    """How gates and splits are decided: evidence (likelihood-ratio tests with exact bounds and a false discovery
    rate over all candidates) or threshold (the reference's rule: fixed scores τ_g / τ_v / τ_s)."""
    candidate_floor: float | None = None
    """evidence test: AND parents need necessity ≥ this, OR parents sufficiency ≥ this, split children necessity ≥
    this, to be tested at all (default: --min-prob, which an AND gate's and a split child's lower bounds imply)."""
    fdr: float = 0.01
    """evidence test: Benjamini–Hochberg false discovery rate over all tested gates (and, apart, split children)."""
    min_prob: float = 0.6
    """evidence test: lower confidence bounds of P(child | condition) and P(condition | child) (split children:
    P(parent | child)) must reach it."""
    min_gain: float = 0.1
    """evidence test: the condition must explain this much more of the child's entropy than the better parent
    alone; below it one parent carries the child and there is no gate."""
    confidence: float = 0.95
    """Level of the exact (Clopper–Pearson) bounds reported on every score."""
    gate_threshold: float = 0.95
    """τ_g (threshold test): AND parents need necessity ≥ τ_g, OR parents sufficiency ≥ τ_g."""
    gate_valid: float | None = None
    """τ_v (threshold test): a gate is reported when P(condition | child) and P(child | condition) both reach it
    (default: τ_g)."""
    min_support: int = 5
    """Minimum tokens: the child, each parent–child pair, and the gate's support (child ∧ condition). Gates
    below it are never reported."""
    max_parents: int = 8
    """Candidate parents paired per child (best first)."""
    pair_measure: str = "jaccard"
    """Measure ranking each child's two strongest parents (best_pairs.parquet)."""
    split_threshold: float | None = None
    """τ_s (threshold test): split children need necessity(parent→child) ≥ τ_s (default: τ_g)."""
    exclusivity: float = 0.1
    """τ_x: children of a split have pairwise Jaccard ≤ τ_x."""
    min_coverage: float = 0.5
    """Minimum share of the parent's tokens its split children cover (evidence test: the lower bound's)."""
    max_children: int = 16
    """Candidate children considered per split parent (best first)."""
    bootstrap: int = 100
    """Bootstrap replicates over whole windows for the intervals on lifecycle shares and gate counts (0: none)."""
    community_bootstrap: int = 10
    """Replicates (of the --bootstrap ones) that re-run Leiden for the community-count interval (0: none)."""
    bootstrap_groups: int = 32
    """Random groups the windows are dealt into; a replicate resamples groups (each a set of whole windows)."""
    community_measure: str = "jaccard"
    """Edge measure of the community graph."""
    community_threshold: float = 0.1
    """τ_c: community graph edges need measure ≥ τ_c."""
    quality: str = "modularity"
    """Leiden quality function: modularity, rb (RB configuration, uses --resolution), cpm (uses --resolution)."""
    resolution: float = 1.0
    """Resolution γ of rb / cpm (modularity with γ ≠ 1 runs as rb)."""
    seed: int = 42
    """Leiden seed (same seed, same communities)."""
    leiden_backend: str = "igraph"
    """Leiden implementation: igraph (C community_leiden, fast) or leidenalg (as the reference code; slow with
    many small communities)."""
    prompt_samples: int = 32
    """Corpus windows whose last token gets a precomputed prompt graph."""
    prompt_rel: float = 0.1
    """Prompt graphs keep features with activation ≥ this × their max."""
    prompt_measure: str = "jaccard"
    """Edge measure of the precomputed prompt graphs."""
    prompt_max_nodes: int = 256
    """Most features kept in a precomputed prompt graph (strongest relative activation first)."""
    top_examples: int = 10
    """Top examples per member feature used for a community's top tokens."""

    def __post_init__(self) -> None:
        """Refuse impossible options when the config is made, from Python or the command line alike
        (every field is identity; the checks that need the run's edges are the stage's)."""
        if self.measure not in DATA_MEASURES:  # lifecycle.LIFECYCLE_MEASURES: feature_links has each
            raise SaelineageError(
                f"unknown lifecycle measure {self.measure!r}.", f"choose one of {', '.join(DATA_MEASURES)}."
            )
        if self.gate_test not in ("evidence", "threshold"):
            raise SaelineageError(f"unknown --gate-test {self.gate_test!r}.", "choose evidence (default) or threshold.")
        for name in ("gate_threshold", "exclusivity", "min_coverage", "fdr", "min_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise SaelineageError(
                    f"--{name.replace('_', '-')} must lie in [0, 1] (got {getattr(self, name)}).", "pick a share."
                )
        if self.candidate_floor is not None and not 0 <= self.candidate_floor <= 1:
            raise SaelineageError(
                f"--candidate-floor must lie in [0, 1] (got {self.candidate_floor}).", "pick a share."
            )
        if not 0 < self.confidence < 1:
            raise SaelineageError(f"--confidence must lie in (0, 1) (got {self.confidence}).", "use e.g. 0.95.")
        if self.min_support < 1:
            raise SaelineageError("--min-support must be at least 1.", "use e.g. --min-support 5.")
