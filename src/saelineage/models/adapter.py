"""Residual-stream capture for any Hugging Face decoder-only model.

One forward pass captures every requested hook point and stops right after the deepest
one (no later blocks, no LM head). Hooks live only for the duration of a call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from saelineage.errors import SaelineageError
from saelineage.models.hooks import HookPoint

# Attribute paths of the decoder-block list in common architectures; others are found by search.
_KNOWN_BLOCK_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "layers", "h")


class _Stop(Exception):
    """Raised inside a hook to end the forward pass once all hooks are captured."""


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks (Llama/SmolLM2, GPT-2, GPT-NeoX/Pythia, OPT, ...)."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for path in _KNOWN_BLOCK_PATHS:
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and (n is None or len(obj) == n):
            return obj
    candidates = [m for _, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if candidates:
        return candidates[0]
    raise SaelineageError(
        f"cannot find the decoder blocks of {type(model).__name__}.",
        "use a decoder-only causal LM (Llama, GPT-2, GPT-NeoX, ...), or open an issue with the model id.",
    )


@dataclass
class ModelAdapter:
    """A causal LM with residual-stream hook points."""

    model: nn.Module
    tokenizer: object | None = None
    center_residual: bool = False
    """Subtract each token's mean over d_model (TransformerLens `center_writing_weights` SAEs)."""
    name: str = ""
    identity: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.eval()
        self.blocks = find_blocks(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def check_hooks(self, hooks: Sequence[HookPoint]) -> None:
        for h in hooks:
            if not 0 <= h.layer < self.n_layers:
                raise SaelineageError(
                    f"hook {h.name} is beyond the model's depth ({self.n_layers} blocks, 0..{self.n_layers - 1}).",
                    f"choose layers between 0 and {self.n_layers - 1}.",
                )

    def _post(self, x: torch.Tensor) -> torch.Tensor:
        if self.center_residual:
            x = x - x.mean(dim=-1, keepdim=True)
        return x

    @torch.no_grad()
    def residuals(
        self,
        input_ids: torch.Tensor,
        hooks: Sequence[HookPoint],
        edit: Callable[[HookPoint, torch.Tensor], torch.Tensor | None] | None = None,
    ) -> dict[HookPoint, torch.Tensor]:
        """Residual stream at each hook point, in one forward pass that stops after the deepest.

        input_ids: int64 [B, S]. Returns {hook: float [B, S, d_model]} in the model's dtype,
        centred when `center_residual`. `edit(hook, x)` may return a replacement residual
        (uncentred space) that the rest of the forward pass then sees (used by ablations).
        """
        self.check_hooks(hooks)
        want = set(hooks)
        out: dict[HookPoint, torch.Tensor] = {}
        last = max(want, key=lambda h: (h.order, h.kind == "resid_post"))
        handles = []

        def capture(h: HookPoint, x: torch.Tensor) -> torch.Tensor | None:
            new = edit(h, x) if edit is not None else None
            out[h] = self._post(x if new is None else new)
            if len(out) == len(want):
                raise _Stop
            return new

        def pre_hook(h: HookPoint):
            def fn(module, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                new = capture(h, x)
                if new is None:
                    return None
                if args:
                    return (new, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": new}

            return fn

        def post_hook(h: HookPoint):
            def fn(module, args, output):
                x = output[0] if isinstance(output, tuple) else output
                new = capture(h, x)
                if new is None:
                    return None
                return (new, *output[1:]) if isinstance(output, tuple) else new

            return fn

        try:
            for h in sorted(want, key=lambda h: (h.order, h.kind)):
                block = self.blocks[h.layer]
                if h.kind == "resid_pre":
                    handles.append(block.register_forward_pre_hook(pre_hook(h), with_kwargs=True))
                else:
                    handles.append(block.register_forward_hook(post_hook(h)))
            try:
                self.model(input_ids=input_ids.to(self.device), use_cache=False)
            except _Stop:
                pass
        finally:
            for handle in handles:
                handle.remove()
        missing = want - set(out)
        if missing:
            raise RuntimeError(f"hooks never ran: {sorted(missing)} (last={last})")
        return out

    @torch.no_grad()
    def logits_with(
        self, input_ids: torch.Tensor, hook: HookPoint, replace: Callable[[torch.Tensor], torch.Tensor] | None
    ) -> torch.Tensor:
        """Full forward pass to the logits, optionally replacing the residual at `hook`.

        replace receives and returns the residual in uncentred model space [B, S, d_model].
        """
        self.check_hooks([hook])
        block = self.blocks[hook.layer]
        handle = None
        if replace is not None:
            if hook.kind == "resid_pre":

                def fn(module, args, kwargs):
                    if args:
                        return (replace(args[0]), *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": replace(kwargs["hidden_states"])}

                handle = block.register_forward_pre_hook(fn, with_kwargs=True)
            else:

                def fn_post(module, args, output):
                    if isinstance(output, tuple):
                        return (replace(output[0]), *output[1:])
                    return replace(output)

                handle = block.register_forward_hook(fn_post)
        try:
            return self.model(input_ids=input_ids.to(self.device), use_cache=False).logits
        finally:
            if handle is not None:
                handle.remove()
