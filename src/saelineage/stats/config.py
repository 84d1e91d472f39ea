"""`StatsConfig`: what `saelineage stats` computes (the command's options are generated from it)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from saelineage.config import ClusterOptions, cli, usable_cpus
from saelineage.contract import DATA_MEASURES, PRIMARY
from saelineage.errors import SaelineageError

ACCUMULATE = ("auto", "dense", "sparse")
"""How a pair's accumulators are stored (StatsConfig.accumulate; stats/engine.py)."""

DEFAULT_KEEP = {"sufficiency": 0.99, "necessity": 0.99}
"""Keep every supported pair with P(j|i) or P(i|j) >= 0.99 besides the top-k, so that
quasi-boolean gates (AND: necessity, OR: sufficiency, docs/design.md) never lose a parent to
the top-k cut. At most ~L0/0.99 such partners exist per feature."""

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5GiB', '1000000' -> bytes (powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise SaelineageError(f"cannot read the memory size '{text}'.", "write e.g. 8G, 512M or a number of bytes.")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index((m.group(2) or "_").lower()))


def _keep_item(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise SaelineageError(
            f"cannot read --keep '{text}'.", "write MEASURE=VALUE, e.g. --keep pearson=0.5."
        ) from None


def _primary(text: str) -> tuple[str, ...]:
    return DATA_MEASURES if text.strip() == "all" else tuple(m.strip() for m in text.split(",") if m.strip())


@dataclass
class StatsConfig(ClusterOptions):
    """Options of the stats stage."""

    NOT_IDENTITY: ClassVar[tuple[str, ...]] = ("memory_limit", "workers", "accumulate")
    """Fields that say how stats runs, not what it computes; with the cluster options they are left
    out of the identity (saelineage.run.identity; `canonical` spells the rest)."""

    span: int = 1
    """Pair each layer with the next SPAN layers (1 = adjacent only)."""
    threshold: float = 0.0
    """Absolute activation threshold: active means a > THRESHOLD."""
    relative_threshold: float | None = None
    """Active means a > R * (feature's max activation), e.g. 0.2 as in the paper (arXiv:2410.08869).
    Overrides --threshold."""
    include_bos: bool = False
    """Count BOS positions (position 0) as tokens."""
    min_support: int = 5
    """An edge needs at least this many co-active tokens."""
    top_k: int = 16
    """Keep the top-K partners of each feature under each primary measure."""
    keep: dict[str, float] | None = field(
        default=None, metadata=cli(repeat=True, parse=_keep_item, show=lambda kv: f"{kv[0]}={kv[1]}")
    )
    """Also keep pairs with MEASURE >= VALUE (repeatable, e.g. --keep pearson=0.5). Default:
    sufficiency=0.99 and necessity=0.99."""
    no_keep: bool = False
    """Keep top-K partners only (no threshold edges)."""
    primary: tuple[str, ...] = field(default=PRIMARY, metadata=cli(parse=_primary, show=",".join))
    """Measures whose top-K partners are kept (comma list, or 'all' to add mutual_info and act_cosine)."""
    memory_limit: int | None = field(default=None, metadata=cli(parse=parse_size, show=str))
    """Memory for accumulators and buffers in bytes, e.g. 8G (default: 70% of the RAM available
    when the stage starts, as the OS reports it; the README's timings use 8G). More memory means
    fewer passes over the shards; the result is the same under any limit. With --ray: per worker
    (default: the cluster's memory shared among the workers)."""
    workers: int | None = None
    """Threads for the compiled kernels (default: every CPU this process may use, i.e. its CPU
    affinity, else the machine's CPU count). The result is the same for any number."""
    accumulate: str = "auto"
    """How co-activation counts are held: 'dense' (every cell of a pair), 'sparse' (only the cells
    each feature touches, bounded by a census pass over the shards: wide SAEs) or 'auto' (dense
    when it fits one pass, else sparse for the pairs where that takes half the memory or less).
    The results are the same."""
    sae_match: str = "exact"
    """Data-free match of adjacent layers' features from SAE weights (arXiv:2410.07656): 'exact'
    (optimal assignment, ~2 s per pair at 4,608 features), 'greedy' (nearest candidates first; for
    wide SAEs) or 'off'. Matched pairs are kept as edges (column sae_match)."""

    def __post_init__(self) -> None:
        """Refuse impossible options when the config is made, from Python or the command line alike
        (the checks that need the run, such as --span against its layers, are the stage's)."""
        if self.span < 1:
            raise SaelineageError(f"--span must be >= 1 (got {self.span}).", "use --span 1 for adjacent layers.")
        if self.relative_threshold is not None and not 0 < self.relative_threshold <= 1:
            raise SaelineageError(
                f"--relative-threshold must be in (0, 1] (got {self.relative_threshold}).",
                "e.g. --relative-threshold 0.2 (the choice of arXiv:2410.08869).",
            )
        if self.threshold < 0 or not math.isfinite(self.threshold):
            raise SaelineageError(
                f"--threshold must be a finite number >= 0 (got {self.threshold}).", "use 0 (default)."
            )
        if not self.primary:
            raise SaelineageError("no primary measure given.", f"choose among {', '.join(DATA_MEASURES)}.")
        if self.min_support < 1 or self.top_k < 1:
            raise SaelineageError("--min-support and --top-k must be >= 1.", "e.g. --min-support 5 --top-k 16.")
        bad = [m for m in [*self.keep_thresholds(), *self.primary] if m not in DATA_MEASURES]
        if bad:
            raise SaelineageError(f"unknown measure(s) {bad}.", f"choose among {', '.join(DATA_MEASURES)}.")
        if self.accumulate not in ACCUMULATE:
            raise SaelineageError(
                f"--accumulate must be one of {', '.join(ACCUMULATE)} (got {self.accumulate!r}).",
                "leave it out (auto) unless you are comparing the two paths.",
            )
        if self.workers is not None and self.workers < 1:
            raise SaelineageError(
                f"--workers must be >= 1 (got {self.workers}).",
                f"leave it out to use every CPU this process may use ({usable_cpus()} here).",
            )

    def canonical(self, ident: dict[str, Any]) -> dict[str, Any]:
        """The identity in one spelling, recorded as the manifest's stats `options`: keep and no_keep
        as the thresholds they mean, primary measures in contract order, numbers as numbers."""
        keep = self.keep_thresholds()
        return {
            "span": int(ident["span"]),
            "threshold": float(ident["threshold"]),
            "relative_threshold": None if ident["relative_threshold"] is None else float(ident["relative_threshold"]),
            "include_bos": bool(ident["include_bos"]),
            "min_support": int(ident["min_support"]),
            "top_k": int(ident["top_k"]),
            "primary": [m for m in DATA_MEASURES if m in ident["primary"]],
            "keep_thresholds": {m: float(keep[m]) for m in sorted(keep)},
            "sae_match": ident["sae_match"],
        }

    def threads(self) -> int:
        """The kernels' thread count: --workers, else the CPUs this process may use."""
        return self.workers or usable_cpus()

    def keep_thresholds(self) -> dict[str, float]:
        """The threshold edges kept besides the top-k ({} with no_keep)."""
        return {} if self.no_keep else dict(DEFAULT_KEEP if self.keep is None else self.keep)
