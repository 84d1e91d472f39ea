"""Hook points inside decoder blocks, and the names that refer to them.

We accept our own short names (``resid_pre.3``), TransformerLens names
(``blocks.3.hook_resid_pre``, ``blocks.3.attn.hook_z``, ...) and sparsify names (``layers.3``), so
that SAELens and sparsify configs map onto the adapter unchanged. Where each kind sits in a
Hugging Face block is decided in `saelineage.models.adapter.hook_site`; docs/model_families.md
maps both onto TransformerLens.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from saelineage.errors import SaelineageError

# Depth order inside a block. resid_pre/resid_post stay first: `--hook-kind` lists KINDS as-is.
KINDS = ("resid_pre", "resid_post", "attn_z", "attn_out", "resid_mid", "mlp_in", "mlp_out")
RESIDUAL_KINDS = frozenset({"resid_pre", "resid_mid", "resid_post"})

# Fraction of a block at which each kind is read. Binary fractions keep `order` exact, so
# resid_post of l compares equal to resid_pre of l + 1 (the same tensor).
_DEPTH = {
    "resid_pre": 0.0,
    "attn_z": 0.125,
    "attn_out": 0.25,
    "resid_mid": 0.375,
    "mlp_in": 0.5,
    "mlp_out": 0.625,
    "resid_post": 1.0,
}

# TransformerLens hook suffix of each kind (after ``blocks.{l}.``), plus accepted aliases.
_TL_NAMES = {
    "hook_resid_pre": "resid_pre",
    "attn.hook_z": "attn_z",
    "hook_z": "attn_z",
    "hook_attn_out": "attn_out",
    "hook_resid_mid": "resid_mid",
    "hook_mlp_in": "mlp_in",
    "ln2.hook_normalized": "mlp_in",
    "mlp.hook_in": "mlp_in",
    "hook_mlp_out": "mlp_out",
    "hook_resid_post": "resid_post",
}
_CANONICAL = {
    "resid_pre": "hook_resid_pre",
    "attn_z": "attn.hook_z",
    "attn_out": "hook_attn_out",
    "resid_mid": "hook_resid_mid",
    "mlp_in": "hook_mlp_in",
    "mlp_out": "hook_mlp_out",
    "resid_post": "hook_resid_post",
}
_TL = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(s) for s in _TL_NAMES) + r")$")
_SHORT = re.compile(r"^(" + "|".join(KINDS) + r")[.:@ ]?(\d+)$")
_SPARSIFY = re.compile(r"^(?:[\w.]*\.)?(?:layers|h)\.(\d+)$")


class HookPoint(NamedTuple):
    """A site in decoder block `layer`; `kind` is one of KINDS (see docs/model_families.md)."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        """TransformerLens name, e.g. ``blocks.3.hook_resid_pre`` or ``blocks.3.attn.hook_z``."""
        return f"blocks.{self.layer}.{_CANONICAL[self.kind]}"

    @property
    def order(self) -> float:
        """Depth in the forward pass: resid_post of l equals resid_pre of l+1; sub-block kinds lie between."""
        return self.layer + _DEPTH[self.kind]


def parse_hook(name: str, default_kind: str = "resid_pre") -> HookPoint:
    """Parse ``blocks.3.hook_resid_pre``, ``blocks.3.attn.hook_z``, ``resid_pre.3``, ``layers.3``
    (sparsify: block output) or ``3`` (with `default_kind`)."""
    s = str(name).strip()
    if m := _TL.match(s):
        return HookPoint(int(m.group(1)), _TL_NAMES[m.group(2)])
    if m := _SHORT.match(s):
        return HookPoint(int(m.group(2)), m.group(1))
    if m := _SPARSIFY.match(s):
        return HookPoint(int(m.group(1)), "resid_post")
    if s.isdigit():
        return HookPoint(int(s), default_kind)
    raise SaelineageError(
        f"unknown hook point '{name}'.",
        "use a TransformerLens name blocks.L.<hook> with <hook> one of "
        f"{', '.join(_TL_NAMES)}; a short name <kind>.L with <kind> one of {', '.join(KINDS)}; "
        "a sparsify name layers.L; or a layer number with --hook-kind.",
    )
