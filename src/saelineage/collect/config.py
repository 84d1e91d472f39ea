"""`CollectConfig`: what `saelineage collect` runs (the command's options are generated from it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from saelineage.config import CLUSTER_FIELDS, ClusterOptions, cli


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
    """What `saelineage collect` runs; its hash guards a run directory against mixing configs."""

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

    def identity(self) -> dict:
        d = asdict(self)
        for key in ("device", "extra", "batch_windows", *CLUSTER_FIELDS):
            d.pop(key)
        for key in ("sae_id", "width", "l0", "blocks_path"):  # unset options leave earlier runs' hashes as they were
            if d[key] is None:
                d.pop(key)
        return d
