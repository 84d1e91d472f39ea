"""Forward passes for ablations: capture uncentred residuals, and restart a pass at a hook.

An ablation at hook l changes nothing before l, so the blocks before l need not run again:
`resume_from` turns those blocks into pass-throughs for the duration of one call and
injects the (edited) cached residual at hook l; the adapter then runs blocks l.. and stops
after the deepest requested hook. In a causal LM without a KV cache each block reads only
its own input residual, so this is exact; `ablate.py` still checks it once per layer
against a full pass and falls back to full passes if a model does not allow it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from saelineage.models.hooks import HookPoint


def blocks_before(hook: HookPoint) -> int:
    """How many decoder blocks run before `hook` (resid_pre l: l; resid_post l: l + 1)."""
    return hook.layer + (1 if hook.kind == "resid_post" else 0)


class BlockFormat:
    """How a model's decoder blocks return their output: a tensor, or a tuple of `n` items."""

    def __init__(self) -> None:
        self.tuple_len: int | None = None
        self.known = False

    def record(self, output: object) -> None:
        self.tuple_len = len(output) if isinstance(output, tuple) else None
        self.known = True

    def passthrough(self, *args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        if self.tuple_len is None:
            return x
        return (x,) + (None,) * (self.tuple_len - 1)


@contextmanager
def _skipping(blocks, n: int, fmt: BlockFormat) -> Iterator[None]:
    """Replace `forward` of blocks[:n] by a pass-through; restore it afterwards (even on error)."""
    patched = []
    try:
        for k in range(n):
            block = blocks[k]
            patched.append((block, "forward" in block.__dict__, block.__dict__.get("forward")))
            block.forward = fmt.passthrough
        yield
    finally:
        for block, had, old in patched:
            if had:
                block.forward = old
            else:
                del block.forward


@torch.no_grad()
def capture(
    adapter,
    ids: torch.Tensor,
    raw_hooks: Sequence[HookPoint],
    outs: Sequence[HookPoint],
    fmt: BlockFormat | None = None,
) -> tuple[dict[HookPoint, torch.Tensor], dict[HookPoint, torch.Tensor]]:
    """Clean pass: ({hook: uncentred residual [B,S,d]} for raw_hooks, {hook: SAE-space residual [B,S,d]}).

    SAE-space = centred when `adapter.center_residual`; returned for raw_hooks and outs.
    Records the blocks' output format in `fmt`."""
    raw: dict[HookPoint, torch.Tensor] = {}
    want = set(raw_hooks)

    def edit(h: HookPoint, x: torch.Tensor) -> None:
        if h in want:
            raw[h] = x.detach().clone()
        return None

    handle = None
    if fmt is not None and not fmt.known:
        handle = adapter.blocks[0].register_forward_hook(lambda mod, a, out: fmt.record(out))
    try:
        res = adapter.residuals(ids, list(dict.fromkeys([*raw_hooks, *outs])), edit=edit)
    finally:
        if handle is not None:
            handle.remove()
    return raw, res


@torch.no_grad()
def resume_from(
    adapter,
    ids: torch.Tensor,
    hook_l: HookPoint,
    outs: Sequence[HookPoint],
    replace: Callable[[torch.Tensor], torch.Tensor],
    skip: BlockFormat | None,
) -> dict[HookPoint, torch.Tensor]:
    """Pass with the residual at hook_l replaced by `replace(x)` (uncentred, [B,S,d]).

    With `skip` (a known BlockFormat) the blocks before hook_l are pass-throughs, so `replace`
    receives a meaningless tensor and must build the residual from a cache. Returns the
    SAE-space residuals at `outs` (and hook_l)."""

    def edit(h: HookPoint, x: torch.Tensor) -> torch.Tensor | None:
        return replace(x) if h == hook_l else None

    hooks = list(dict.fromkeys([hook_l, *outs]))
    if skip is None or not skip.known:
        return adapter.residuals(ids, hooks, edit=edit)
    with _skipping(adapter.blocks, blocks_before(hook_l), skip):
        return adapter.residuals(ids, hooks, edit=edit)
