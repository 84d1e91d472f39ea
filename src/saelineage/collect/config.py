"""`CollectConfig`: what `saelineage collect` runs (the command's options are generated from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from saelineage.config import ClusterOptions, cli
from saelineage.errors import SaelineageError


def parse_layers(text: str) -> list[int]:
    """'0-11' or '2,4,6' (or both: '0-3,8') -> sorted unique layer indices."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return sorted(set(out))


def format_layers(layers: list[int]) -> str:
    return ",".join(str(int(l)) for l in layers)


@dataclass
class CollectConfig(ClusterOptions):
    """What `saelineage collect` runs; its identity's hash guards a run directory against mixing configs."""

    NOT_IDENTITY: ClassVar[tuple[str, ...]] = ("device", "extra", "batch_windows")
    """Fields that say where or how collect runs (or record provenance), not what it collects; with
    the cluster options they are left out of the identity (saelineage.run.identity)."""
    LATE_FIELDS: ClassVar[tuple[str, ...]] = ("sae_id", "width", "l0", "blocks_path")
    """Identity fields added after runs existed: left out while unset, so those runs' hashes stay."""

    model: str | None = None
    """Preset name (`smollm2`, `gpt2`), local HF folder or hub id (default: the release's model with a release
    name in --saes, else smollm2)."""
    saes: str | None = None
    """Folder of SAELens/sparsify SAE folders, or a SAELens release name (`saelineage releases` lists them)."""
    sae_id: str | None = None
    """With a release: an SAE id, or an id template with {layer} (`saelineage releases` shows the choices)."""
    width: str | None = None
    """With a release: the SAE width to use where it has several (e.g. 16k, 262k)."""
    l0: str | None = None
    """With a release: the sparsity variant to use where it has several (e.g. small, medium, big; 105)."""
    blocks_path: str | None = None
    """Attribute path of the model's decoder-block list (e.g. model.layers) when it is not found by itself."""
    layers: list[int] | None = field(default=None, metadata=cli(parse=parse_layers, show=format_layers))
    """Layers to encode, e.g. '0-11' or '2,4,6' (default: every layer that has an SAE)."""
    corpus: str = "default"
    """Text file, folder, .jsonl, .parquet, or `default` (bundled English text)."""
    text_column: str = "text"
    """Field holding the text in JSONL/Parquet corpora."""
    window: int = 128
    """Tokens per window, BOS included."""
    max_tokens: int | None = None
    """Cap on tokens collected (whole windows)."""
    first_window: int = 0
    """Skip this many corpus windows (e.g. those used to train the SAEs)."""
    batch_windows: int = 16
    """Windows per forward pass."""
    shard_windows: int = 64
    """Windows per shard file (a multiple of batch_windows keeps batches identical on resume)."""
    examples_k: int = field(default=20, metadata=cli(flag="--examples"))
    """Top activating examples kept per feature."""
    include_bos: bool = False
    """Count position 0 of BOS-led windows in feature statistics."""
    dtype: str = "float32"
    """Model and SAE dtype (bf16 is very slow on CPUs)."""
    device: str = "cpu"
    """cpu or cuda."""
    center_residual: bool | None = field(default=None, metadata=cli(flag="--center/--no-center"))
    """Mean-centre residuals before encoding (default: on for the gpt2 preset, as TransformerLens SAEs expect)."""
    extra: dict = field(default_factory=dict, metadata=cli(hidden=True))
    """Free-form provenance (not part of the identity hash)."""

    def __post_init__(self) -> None:
        """Refuse impossible options when the config is made, from Python or the command line alike."""
        for name, least in (("window", 2), ("batch_windows", 1), ("shard_windows", 1), ("first_window", 0),
                            ("examples_k", 0)):  # fmt: skip
            if getattr(self, name) < least:
                flag = "--examples" if name == "examples_k" else f"--{name.replace('_', '-')}"
                raise SaelineageError(
                    f"{flag} must be at least {least} (got {getattr(self, name)}).", f"pass {flag} {least} or more."
                )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise SaelineageError(f"--max-tokens must be positive (got {self.max_tokens}).", "e.g. --max-tokens 20000.")
        if self.shard_windows % self.batch_windows:
            raise SaelineageError(
                f"--shard-windows {self.shard_windows} is not a multiple of --batch-windows {self.batch_windows}.",
                "choose shard windows as a multiple of batch windows.",
            )
