"""`CeilingConfig`: what `saelineage ceiling` measures (the command's options are generated from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from saelineage.config import cli
from saelineage.errors import SaelineageError


@dataclass
class CeilingConfig:
    """Options of the seed-ceiling stage (docs/design.md, "Seed ceiling")."""

    LATE_FIELDS: ClassVar[tuple[str, ...]] = ("sae_id",)
    """Identity fields added after runs existed: left out while unset, so those runs' records stay
    (every field is identity; saelineage.run.identity)."""

    saes: str = field(default="", metadata=cli(flag="--saes"))
    """A second SAE set for some of the run's layers (a folder of SAELens folders, e.g. the same training with
    another seed; `saelineage train --seed 1 --hooks 3,8`), or a SAELens release whose second-seed twins
    (`…_seed_1`) of the run's SAEs are used. Its hooks pick the layers measured. Default: the run's release."""
    sae_id: str | None = None
    """With a release: the SAE id or {layer} template whose second-seed twins to use (default: the run's SAEs)."""
    tokens: int = 50_000
    """Tokens of the run (its first windows) that both SAE sets encode and are matched on."""
    batch_windows: int = 16
    """Windows per forward pass while encoding with the second set."""

    def __post_init__(self) -> None:
        """Refuse impossible options when the config is made (--tokens against the run's window is the
        stage's check)."""
        if self.tokens < 1 or self.batch_windows < 1:
            raise SaelineageError("--tokens and --batch-windows must be at least 1.", "pass positive numbers.")
