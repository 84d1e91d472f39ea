"""`AblateConfig`: what `saelineage ablate` checks (the command's options are generated from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from saelineage.config import ClusterOptions, cli
from saelineage.errors import SaelineageError


def parse_layer_pairs(text: str) -> list[tuple[int, int]]:
    """'0:1,5:6' (or '0-1', '0->1') -> [(0, 1), (5, 6)]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        a, sep, b = part.replace("->", ":").replace("-", ":").partition(":")
        if not sep or not a.strip().isdigit() or not b.strip().isdigit():
            raise SaelineageError(f"cannot read layer pair '{part}'.", "write layer pairs as '0:1,5:6'.")
        out.append((int(a), int(b)))
    return out


def format_layer_pairs(pairs: list[tuple[int, int]]) -> str:
    return ",".join(f"{a}:{b}" for a, b in pairs)


def _measures(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


@dataclass
class AblateConfig(ClusterOptions):
    """Options of the ablate stage (the README's "Causal checks" describes the method)."""

    NOT_IDENTITY: ClassVar[tuple[str, ...]] = ("device", "batch_rows")
    """Fields that say where or how ablate runs, not what it measures; with the cluster options they
    are left out of the identity (saelineage.run.identity)."""

    measures: list[str] | None = field(default=None, metadata=cli(parse=_measures, show=",".join))
    """Comma-separated measures to sample edges by: jaccard, sufficiency, necessity, mutual_info, pearson,
    act_cosine, dec_cosine. Default: every measure edges.parquet has."""
    bins: int = 10
    """Similarity bins per measure and layer pair."""
    per_bin: int = 10
    """Edges drawn per bin (fewer when a bin holds fewer)."""
    seed: int = 0
    """Seed of the edge and window draws (same seed, same sample)."""
    binning: str = "width"
    """'width': equal-width bins from min to max similarity (as the paper, arXiv:2410.08869); 'quantile':
    equal-count bins."""
    windows_per_pair: int = 8
    """Windows per downstream feature on which its drop is measured (drawn among the windows where it is
    active)."""
    layer_pairs: list[tuple[int, int]] | None = field(
        default=None, metadata=cli(parse=parse_layer_pairs, show=format_layer_pairs)
    )
    """Only these layer pairs, e.g. '0:1,5:6' (default: all in edges)."""
    threshold: float | None = None
    """Activation above which a downstream feature counts as active (default: the run's active threshold, 0)."""
    batch_rows: int = 32
    """(feature, window) rows per forward pass: different upstream features are ablated in different rows of
    one batch."""
    hidden: bool = field(default=True, metadata=cli(flag="--hidden/--no-hidden"))
    """Also project the next layer's SAE error onto the direction of each feature without a successor
    (lifecycle ending or new+ending)."""
    hidden_windows: int = 256
    """Windows per run for the error projections (spread over features)."""
    hidden_windows_per_feature: int = 4
    """Windows per feature for its error projection."""
    ending_measure: str = "pearson"
    """Without analyze's lifecycle: a feature 'ends' when no edge to the next layer has this measure ≥
    --ending-threshold."""
    ending_threshold: float = 0.5
    """See --ending-measure."""
    layers_per_part: int = 8
    """Upstream layers ablated together: they share clean forward passes; work is saved per part (an
    interrupted stage resumes per part) and parts are what --ray spreads over workers."""
    plot: bool = field(default=True, metadata=cli(flag="--plot/--no-plot"))
    """Write ablations.html (effect vs similarity)."""
    device: str | None = None
    """cpu or cuda (default: the device the run was collected on)."""

    def __post_init__(self) -> None:
        """Refuse impossible options when the config is made, from Python or the command line alike."""
        if self.batch_rows < 1 or self.windows_per_pair < 1 or self.layers_per_part < 1:
            raise SaelineageError(
                "--batch-rows, --windows-per-pair and --layers-per-part must be at least 1.", "pass positive numbers."
            )
