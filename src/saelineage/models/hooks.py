"""Hook points on the residual stream, and the names that refer to them.

We accept our own short names (``resid_pre``, ``resid_post`` with a layer) and
TransformerLens-style names (``blocks.{l}.hook_resid_pre``) so that SAELens configs map
onto the adapter unchanged.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from saelineage.errors import SaelineageError

KINDS = ("resid_pre", "resid_post")
_TL = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post)$")
_SHORT = re.compile(r"^(resid_pre|resid_post)[.:@ ]?(\d+)$")
_SPARSIFY = re.compile(r"^(?:[\w.]*\.)?(?:layers|h)\.(\d+)$")


class HookPoint(NamedTuple):
    """A residual-stream position: before (`resid_pre`) or after (`resid_post`) block `layer`."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        """TransformerLens-style name, e.g. ``blocks.3.hook_resid_pre``."""
        return f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def order(self) -> int:
        """Depth in the residual stream: resid_post of l equals resid_pre of l+1."""
        return self.layer + (1 if self.kind == "resid_post" else 0)


def parse_hook(name: str, default_kind: str = "resid_pre") -> HookPoint:
    """Parse ``blocks.3.hook_resid_pre``, ``resid_pre.3``, ``layers.3`` (sparsify: block output) or ``3``."""
    s = str(name).strip()
    if m := _TL.match(s):
        return HookPoint(int(m.group(1)), m.group(2))
    if m := _SHORT.match(s):
        return HookPoint(int(m.group(2)), m.group(1))
    if m := _SPARSIFY.match(s):
        return HookPoint(int(m.group(1)), "resid_post")
    if s.isdigit():
        return HookPoint(int(s), default_kind)
    raise SaelineageError(
        f"unknown hook point '{name}'.",
        "use a residual-stream hook such as 'blocks.3.hook_resid_pre', 'blocks.3.hook_resid_post' "
        "or a layer number with --hook-kind resid_pre|resid_post.",
    )
