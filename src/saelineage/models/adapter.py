"""Activation capture at hook points inside the decoder blocks of a Hugging Face causal LM.

One forward pass captures every requested hook point and stops right after the deepest
one (no later blocks, no LM head). Hooks live only for the duration of a call. Where each
hook kind sits in a block is decided by `hook_site`; docs/model_families.md gives the mapping
per family and its TransformerLens equivalent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from saelineage.errors import SaelineageError
from saelineage.models.hooks import RESIDUAL_KINDS, HookPoint

# Attribute paths of the decoder-block list in common architectures; others are found by search.
_KNOWN_BLOCK_PATHS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "layers",
    "h",
)
# Child names of the attention and MLP sublayers, and of the attention output projection.
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_OUT_PROJ_NAMES = ("o_proj", "c_proj", "dense", "out_proj")
# What TransformerLens' center_writing_weights makes mean-zero over d_model: the residual
# stream and what attention/MLP write into it. attn_z and mlp_in are read, never written.
CENTRED_KINDS = RESIDUAL_KINDS | {"attn_out", "mlp_out"}

Edit = Callable[[HookPoint, torch.Tensor], torch.Tensor | None]


class _Stop(Exception):
    """Raised inside a hook to end the forward pass once all hooks are captured."""


def _attr_path(root: object, path: str) -> object | None:
    obj: object | None = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module, blocks_path: str | None = None) -> nn.ModuleList:
    """The ModuleList of decoder blocks: at `blocks_path` when given (e.g. ``model.layers``),
    else at a known path (Llama/Gemma/Qwen, GPT-2, GPT-NeoX, OPT, ...) or the only ModuleList
    with `num_hidden_layers` entries."""
    if blocks_path:
        obj = _attr_path(model, blocks_path)
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
        found = "nothing" if obj is None else f"a {type(obj).__name__}"
        raise SaelineageError(
            f"--blocks-path '{blocks_path}' names {found} in {type(model).__name__}, not a list of decoder blocks.",
            "pass the attribute path of the nn.ModuleList holding the decoder blocks, e.g. --blocks-path model.layers "
            "(print(model) shows the module tree).",
        )
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for path in _KNOWN_BLOCK_PATHS:
        obj = _attr_path(model, path)
        if isinstance(obj, nn.ModuleList) and (n is None or len(obj) == n):
            return obj
    candidates = [m for _, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(candidates) == 1:
        return candidates[0]
    searched = f"; no single nn.ModuleList of num_hidden_layers={n} entries either" if n else ""
    raise SaelineageError(
        f"cannot find the decoder blocks of {type(model).__name__} (tried {', '.join(_KNOWN_BLOCK_PATHS)}{searched}).",
        "pass the attribute path of the nn.ModuleList holding the decoder blocks with --blocks-path PATH, "
        "e.g. --blocks-path model.layers (print(model) shows the module tree).",
    )


def _child(module: nn.Module, names: Sequence[str], what: str) -> nn.Module:
    for name in names:
        sub = getattr(module, name, None)
        if isinstance(sub, nn.Module):
            return sub
    raise SaelineageError(
        f"cannot find the {what} in decoder block {type(module).__name__} (looked for {', '.join(names)}).",
        "use resid_pre / resid_post hooks with this model, which need no sublayer.",
    )


def _is_sandwich(block: nn.Module) -> bool:
    """Gemma 2/3 (and OLMo 2): norms applied to what attention and MLP write, before the residual add."""
    return isinstance(getattr(block, "post_feedforward_layernorm", None), nn.Module)


def _pre_mlp_norm(block: nn.Module) -> nn.Module | None:
    """The norm between resid_mid and the MLP (TransformerLens ln2), None when the block has none."""
    if _is_sandwich(block):
        # Sandwich blocks name their attention-output norm post_attention_layernorm, so ln2 is the other one.
        names: tuple[str, ...] = ("pre_feedforward_layernorm",)
    else:
        # Llama-style blocks call ln2 post_attention_layernorm (it follows attention, before the MLP).
        names = ("post_attention_layernorm", "ln_2", "ln2")
    return next((m for n in names if isinstance(m := getattr(block, n, None), nn.Module)), None)


def _is_parallel(block: nn.Module) -> bool:
    """Attention and MLP both read resid_pre (GPT-NeoX use_parallel_residual, GPT-J, Phi-2)."""
    if getattr(block, "use_parallel_residual", False):
        return True
    return not _is_sandwich(block) and _pre_mlp_norm(block) is None


def hook_site(block: nn.Module, kind: str) -> tuple[nn.Module, str]:
    """(submodule, 'input' | 'output') of decoder `block` whose first tensor is the activation at `kind`.

    resid_pre/resid_post: the block's input/output. attn_z: input of the attention output projection.
    attn_out: the sandwich post-attention norm's output (Gemma 2/3), else the attention's first output.
    resid_mid: input of the pre-MLP norm. mlp_in: the MLP's input. mlp_out: the sandwich post-MLP norm's
    output (Gemma 2/3), else the MLP's output.
    """
    if kind == "resid_pre":
        return block, "input"
    if kind == "resid_post":
        return block, "output"
    if kind == "attn_z":
        return _child(_child(block, _ATTN_NAMES, "attention"), _OUT_PROJ_NAMES, "attention output projection"), "input"
    if kind == "attn_out":
        if _is_sandwich(block):
            return _child(block, ("post_attention_layernorm",), "post-attention norm"), "output"
        return _child(block, _ATTN_NAMES, "attention"), "output"
    if kind == "mlp_in":
        return _child(block, _MLP_NAMES, "MLP"), "input"
    if kind == "mlp_out":
        if _is_sandwich(block):
            return _child(block, ("post_feedforward_layernorm",), "post-MLP norm"), "output"
        return _child(block, _MLP_NAMES, "MLP"), "output"
    if kind == "resid_mid":
        if _is_parallel(block):
            raise SaelineageError(
                f"hook kind resid_mid does not exist in {type(block).__name__}: its attention and MLP run in "
                "parallel on resid_pre, so there is no residual stream between them.",
                "use resid_pre, attn_out, mlp_in, mlp_out or resid_post on this model.",
            )
        norm = _pre_mlp_norm(block)
        # OLMo 2 style: post-norms only, so the MLP reads the residual stream directly.
        return (norm if norm is not None else _child(block, _MLP_NAMES, "MLP")), "input"
    raise SaelineageError(f"unknown hook kind '{kind}'.", "use one of saelineage.models.hooks.KINDS.")


def _register(
    block: nn.Module, kind: str, fn: Callable[[torch.Tensor], torch.Tensor | None]
) -> torch.utils.hooks.RemovableHandle:
    """Hook `fn(x) -> replacement | None` at `kind` of `block`; a replacement is what the forward pass sees next."""
    module, where = hook_site(block, kind)
    if where == "output":

        def post(module, args, output):
            new = fn(output[0] if isinstance(output, tuple) else output)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return module.register_forward_hook(post)
    # resid_mid is read at the pre-MLP norm, but the block also keeps that very tensor as the skip
    # connection; only an in-place write reaches both (safe: hooks run under no_grad).
    inplace = kind == "resid_mid"

    def pre(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        new = fn(x)
        if new is None or new is x:
            return None
        if inplace:
            x.copy_(new)
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return module.register_forward_pre_hook(pre, with_kwargs=True)


@dataclass
class ModelAdapter:
    """A causal LM with hook points at every kind in saelineage.models.hooks.KINDS."""

    model: nn.Module
    tokenizer: object | None = None
    center_residual: bool = False
    """Subtract each token's mean over d_model at CENTRED_KINDS (TransformerLens `center_writing_weights` SAEs)."""
    name: str = ""
    identity: dict = field(default_factory=dict)
    blocks_path: str | None = None
    """Attribute path of the decoder-block ModuleList (e.g. ``model.layers``); None finds it."""

    def __post_init__(self) -> None:
        self.model.eval()
        self.blocks = find_blocks(self.model, self.blocks_path)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        cfg: Any = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    def width(self, hook: HookPoint) -> int:
        """Last dimension of the activation at `hook`: n_heads * head_dim for attn_z, else d_model."""
        if hook.kind != "attn_z":
            return self.d_model
        cfg: Any = self.model.config
        n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
        # Gemma sets head_dim explicitly (n_heads * head_dim != d_model); elsewhere it is derived.
        head_dim = getattr(cfg, "head_dim", None) or self.d_model // n_heads
        return n_heads * int(head_dim)

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

    def _post(self, hook: HookPoint, x: torch.Tensor) -> torch.Tensor:
        if self.center_residual and hook.kind in CENTRED_KINDS:
            x = x - x.mean(dim=-1, keepdim=True)
        return x

    @torch.no_grad()
    def residuals(
        self,
        input_ids: torch.Tensor,
        hooks: Sequence[HookPoint],
        edit: Edit | None = None,
    ) -> dict[HookPoint, torch.Tensor]:
        """Activations at each hook point, in one forward pass that stops after the deepest.

        input_ids: int64 [B, S]. Returns {hook: float [B, S, width(hook)]} in the model's dtype,
        centred at CENTRED_KINDS when `center_residual`. `edit(hook, x)` may return a replacement
        (uncentred, same shape) that the rest of the forward pass then sees (used by ablations).
        """
        self.check_hooks(hooks)
        want = set(hooks)
        out: dict[HookPoint, torch.Tensor] = {}

        def capture(h: HookPoint) -> Callable[[torch.Tensor], torch.Tensor | None]:
            def fn(x: torch.Tensor) -> torch.Tensor | None:
                new = edit(h, x) if edit is not None else None
                out[h] = self._post(h, x if new is None else new)
                if len(out) == len(want):
                    raise _Stop
                return new

            return fn

        handles = []
        try:
            for h in sorted(want, key=lambda h: (h.order, h.kind)):
                handles.append(_register(self.blocks[h.layer], h.kind, capture(h)))
            try:
                self.model(input_ids=input_ids.to(self.device), use_cache=False)
            except _Stop:
                pass
        finally:
            for handle in handles:
                handle.remove()
        missing = want - set(out)
        if missing:
            raise RuntimeError(f"hooks never ran: {sorted(missing)}")
        return out

    @torch.no_grad()
    def logits_with(
        self, input_ids: torch.Tensor, hook: HookPoint, replace: Callable[[torch.Tensor], torch.Tensor] | None
    ) -> torch.Tensor:
        """Full forward pass to the logits [B, S, vocab], optionally replacing the activation at `hook`.

        replace receives and returns the activation in uncentred model space [B, S, width(hook)].
        """
        self.check_hooks([hook])
        handle = _register(self.blocks[hook.layer], hook.kind, replace) if replace is not None else None
        try:
            return self.model(input_ids=input_ids.to(self.device), use_cache=False).logits
        finally:
            if handle is not None:
                handle.remove()
