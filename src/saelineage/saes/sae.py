"""A sparse autoencoder as plain tensors, with a reference encode and a fast sparse one.

`encode_dense` reproduces sae_lens's `SAE.encode` operation for operation (same order of
floating-point operations), so that codes we store are the codes SAELens users see.
`encode_sparse` does the same single matmul and then extracts the nonzeros straight into
CSR form, without materialising a dense [N, d_sae] result tensor a second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from saelineage.data.store import LayerCodes
from saelineage.errors import SaelineageError
from saelineage.models.hooks import HookPoint, parse_hook

if TYPE_CHECKING:
    from saelineage.models.adapter import ModelAdapter

ARCHITECTURES = ("standard", "jumprelu", "topk")
# sae_lens inference SAEs treat expected_average_only_in and covariance_whitening as identity at
# encode time (the scale / whitening is folded into the weights when training ends or when a
# release is loaded), so only the two run-time normalisations change the input here.
NORMALIZATIONS = ("none", "expected_average_only_in", "covariance_whitening", "constant_norm_rescale", "layer_norm")
_LN_EPS = 1e-5
_EMBED_HOOKS = ("embed_tokens", "embed_in", "wte", "hook_embed")
# Rows per chunk in encode_sparse are chosen so one chunk's pre-activations stay ~256 MB (fp32).
_CHUNK_ELEMENTS = 1 << 26

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float": torch.float32,
    "double": torch.float64,
    "half": torch.float16,
}


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'torch.float32' / torch.float32 -> torch.float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise SaelineageError(f"unknown dtype '{dtype}'.", f"use one of {sorted(DTYPES)} (float32 on CPU).")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> 'float32' (the spelling sae_lens writes in cfg.json)."""
    return str(dtype).removeprefix("torch.")


@dataclass(eq=False)  # tensors have no boolean equality
class SAE:
    """One sparse autoencoder on one residual-stream hook point.

    Shapes: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in],
    threshold [d_sae] (jumprelu only). `meta` is JSON-serialisable: path, format
    ('saelens' | 'saelens-legacy' | 'sparsify'), sha256 of the weights file, release/sae_id.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    architecture: str
    hook_name: str
    threshold: torch.Tensor | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    rescale_acts_by_decoder_norm: bool = False
    """TopK only (sae_lens option): rank and scale pre-activations by each decoder row's norm."""
    transcoder: bool = False
    """A transcoder: encodes its input site like an SAE, but W_dec [d_sae, d_out] / b_dec [d_out] write
    another site (meta['hook_name_out']), so it has no reconstruction of its input."""
    meta: dict[str, Any] = field(default_factory=dict)
    hook: HookPoint = field(init=False)

    def __post_init__(self) -> None:
        where = self.meta.get("path") or self.meta.get("sae_id") or self.hook_name
        if self.architecture not in ARCHITECTURES:
            raise SaelineageError(
                f"SAE {where}: unsupported architecture '{self.architecture}'.",
                f"saelineage encodes {', '.join(ARCHITECTURES)} SAEs; convert the SAE to one of these.",
            )
        if self.normalize_activations not in NORMALIZATIONS:
            raise SaelineageError(
                f"SAE {where}: unsupported normalize_activations '{self.normalize_activations}'.",
                f"use one of {', '.join(NORMALIZATIONS)}.",
            )
        d_in, d_sae = (tuple(self.W_enc.shape) + (None, None))[:2]
        d_out = int(self.W_dec.shape[-1]) if self.transcoder and self.W_dec is not None else d_in
        if self.transcoder and self.apply_b_dec_to_input:
            raise SaelineageError(
                f"SAE {where}: a transcoder with apply_b_dec_to_input (its b_dec lives in the output space).",
                "set apply_b_dec_to_input to false in its config.",
            )
        want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
        if self.architecture == "jumprelu":
            want["threshold"] = (d_sae,)
        for name, shape in want.items():
            t = getattr(self, name)
            if t is None or tuple(t.shape) != shape:
                got = None if t is None else tuple(t.shape)
                raise SaelineageError(
                    f"SAE {where}: weight '{name}' has shape {got}, expected {shape} "
                    f"(d_in={d_in}, d_sae={d_sae} from W_enc).",
                    "the weights file does not belong to this config, or is damaged; re-export the SAE.",
                )
        assert d_in is not None and d_sae is not None  # the shape checks above pinned W_enc to 2-D
        if self.architecture == "topk":
            if self.k is None or not 0 < int(self.k) <= d_sae:
                raise SaelineageError(
                    f"SAE {where}: TopK k={self.k} must be between 1 and d_sae={d_sae}.",
                    "fix 'k' in the SAE's cfg.json.",
                )
            self.k = int(self.k)
        self.hook = sae_hook(self.hook_name, where)
        if self.hook.name != self.hook_name:  # keep TransformerLens names throughout; remember the source's
            self.meta.setdefault("source_hook_name", self.hook_name)
            self.hook_name = self.hook.name

    # -- shape and placement -------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.W_enc.dtype)

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> SAE:
        """A copy on `device` with float tensors in `dtype` (None keeps the current one)."""
        dt = None if dtype is None else to_dtype(dtype)

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dt or t.dtype)

        return replace(
            self,
            W_enc=move(self.W_enc),
            b_enc=move(self.b_enc),
            W_dec=move(self.W_dec),
            b_dec=move(self.b_dec),
            threshold=None if self.threshold is None else move(self.threshold),
            meta=dict(self.meta),
        )

    def validate_for(self, adapter: ModelAdapter) -> None:
        """Raise SaelineageError when this SAE cannot read `adapter` at its hook."""
        if not 0 <= self.hook.layer < adapter.n_layers:
            raise SaelineageError(
                f"SAE hook {self.hook_name} is on layer {self.hook.layer}, beyond the model's depth "
                f"({adapter.n_layers} blocks, 0..{adapter.n_layers - 1}).",
                "use SAEs trained on this model, or drop that layer with --layers.",
            )
        width = adapter.width(self.hook)
        if self.d_in != width:
            raise SaelineageError(
                f"SAE for hook {self.hook_name} expects d_in={self.d_in}, but model "
                f"'{adapter.name or type(adapter.model).__name__}' is {width} wide there.",
                "use SAEs trained on this model (or pass the model the SAEs were trained on).",
            )

    # -- encoding ------------------------------------------------------------------------------
    def _normalize_in(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """Apply sae_lens's run-time input normalisation; returns the state decode needs to undo it."""
        if self.normalize_activations == "constant_norm_rescale":
            coeff = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, (coeff,)
        if self.normalize_activations == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            return x / (std + _LN_EPS), (mu, std)
        return x, None

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations [N, d_sae] exactly as sae_lens computes them (incl. TopK decoder-norm rescale)."""
        sae_in = x.to(device=self.device, dtype=self.dtype)
        sae_in, _ = self._normalize_in(sae_in)
        if self.apply_b_dec_to_input:
            sae_in = sae_in - self.b_dec
        pre = (sae_in @ self.W_enc).add_(self.b_enc)  # in place: same values as `+`, one [N, d_sae] buffer
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            pre.mul_(self.W_dec.norm(dim=-1))
        return pre

    @torch.no_grad()
    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Reference encode, equal to sae_lens's `encode`: x [..., d_in] -> codes [..., d_sae]."""
        pre = self._pre(x)
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            assert self.threshold is not None  # __post_init__ requires it for jumprelu
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        assert self.k is not None  # __post_init__ requires it for topk
        vals, idx = torch.topk(pre, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    @torch.no_grad()
    def encode_sparse(self, x: torch.Tensor, chunk_rows: int | None = None) -> LayerCodes:
        """Fast encode: x [N, d_in] (or [..., d_in], flattened) -> CSR codes with one row per token.

        Same nonzeros and values as `encode_dense` on the same rows; entries of a row sorted by
        feature id; values float32. Rows are processed in chunks of at most `chunk_rows` (default:
        ~256 MB of pre-activations) to bound memory; when N exceeds one chunk, values may differ from
        a single dense matmul in the last bit (BLAS blocking), never in which latents fire except at exact ties.
        """
        x = x.reshape(-1, x.shape[-1])
        if x.shape[-1] != self.d_in:
            raise SaelineageError(
                f"input width {x.shape[-1]} does not match SAE d_in={self.d_in} ({self.hook_name}).",
                "encode residuals of the model this SAE was trained on.",
            )
        n = x.shape[0]
        # Equal-sized chunks: BLAS picks kernels by row count, and a tiny remainder chunk would round
        # differently (last-bit) from the same rows in a big block. One chunk = same numbers as encode_dense.
        step = chunk_rows or max(1, _CHUNK_ELEMENTS // max(1, self.d_sae))
        n_chunks = max(1, -(-n // step))
        step = max(1, -(-n // n_chunks))
        counts, indices, values = [], [], []
        for r0 in range(0, n, step):
            c, i, v = self._extract(self._pre(x[r0 : r0 + step]))
            counts.append(c)
            indices.append(i)
            values.append(v)
        indptr = np.zeros(n + 1, dtype=np.int64)
        if n:
            np.cumsum(_cat(counts, np.int64), out=indptr[1:])
        return LayerCodes(indptr, _cat(indices, np.int32), _cat(values, np.float32))

    def _extract(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nonzero codes of a pre-activation block: (counts per row, feature ids, values), on CPU."""
        if self.architecture == "topk":
            assert self.k is not None  # __post_init__ requires it for topk
            vals, idx = torch.topk(pre, k=self.k, dim=-1, sorted=False)
            idx, order = torch.sort(idx, dim=-1)  # feature-id order within each row
            vals = torch.gather(vals, -1, order)
            keep = vals > 0  # sae_lens applies ReLU after the top-k: non-positive winners are zeros
            return keep.sum(-1).cpu(), idx[keep].cpu(), vals[keep].float().cpu()
        # relu(pre) is nonzero exactly where pre > 0, with value pre itself; jumprelu also needs
        # pre > threshold, i.e. pre > max(threshold, 0) in a single comparison.
        bound: torch.Tensor | int = 0
        if self.architecture == "jumprelu":
            assert self.threshold is not None  # __post_init__ requires it for jumprelu
            bound = self.threshold.clamp_min(0)
        rc = (pre > bound).nonzero()  # [nnz, 2] in row-major order: feature ids ascend within a row
        rows, cols = rc[:, 0], rc[:, 1]
        counts = torch.bincount(rows, minlength=pre.shape[0])
        return counts.cpu(), cols.cpu(), pre[rows, cols].float().cpu()

    # -- decoding ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, codes: torch.Tensor | LayerCodes, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction [N, d_in] from codes [N, d_sae] (dense tensor or LayerCodes), as sae_lens decodes.

        For run-time normalised SAEs (constant_norm_rescale, layer_norm) pass the original
        input `x` [N, d_in]: the reconstruction is mapped back to its scale.
        """
        if isinstance(codes, LayerCodes):
            codes = codes_to_dense(codes, self.d_sae)
        acts = codes.to(device=self.device, dtype=self.dtype)
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            acts = acts * (1 / self.W_dec.norm(dim=-1))
        out = acts @ self.W_dec + self.b_dec
        if self.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            if x is None:
                raise ValueError(f"decode of a '{self.normalize_activations}' SAE needs the original input x")
            _, state = self._normalize_in(x.to(device=self.device, dtype=self.dtype))
            assert state is not None  # both normalisations return their state
            if self.normalize_activations == "constant_norm_rescale":
                out = out / state[0]
            else:
                out = out * state[1] + state[0]
        return out

    def write_directions(self, features: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
        """Residual-space directions [F, d_in] such that latent f with code a writes a·dir_f (·write_scale).

        Equals W_dec[f], divided by ||W_dec[f]|| for TopK SAEs with rescale_acts_by_decoder_norm."""
        idx = torch.as_tensor(np.asarray(features, dtype=np.int64), device=self.W_dec.device)
        d = self.W_dec[idx]
        if self.architecture == "topk" and getattr(self, "rescale_acts_by_decoder_norm", False):
            d = d / d.norm(dim=-1, keepdim=True)
        return d

    def write_scale(self, s: torch.Tensor) -> torch.Tensor | None:
        """Per-token factor [...] that `decode` applies to writes of a run-time normalised SAE, else None.

        s: SAE input [..., d_in]. layer_norm: the input's std; constant_norm_rescale: 1 / coeff
        (the inverse of `_normalize_in`'s scaling)."""
        if self.normalize_activations == "layer_norm":
            return (s - s.mean(dim=-1, keepdim=True)).std(dim=-1)
        if self.normalize_activations == "constant_norm_rescale":
            return s.norm(dim=-1) / (self.d_in**0.5)
        return None

    def __repr__(self) -> str:
        extra = f", k={self.k}" if self.k is not None else ""
        return (
            f"SAE({self.architecture}{extra}, hook={self.hook_name}, d_in={self.d_in}, d_sae={self.d_sae}, "
            f"dtype={self.dtype_name}, source={self.meta.get('path') or self.meta.get('release')})"
        )


def sae_hook(name: str, where: Any = "?") -> HookPoint:
    """The residual-stream hook point an SAE reads: TransformerLens names, our short names, sparsify
    hookpoints ('layers.3' = output of block 3; 'embed_tokens' = input of block 0)."""
    s = str(name)
    if s.rsplit(".", 1)[-1] in _EMBED_HOOKS:
        return HookPoint(0, "resid_pre")  # the embedding output is the residual stream entering block 0
    try:
        return parse_hook(s, default_kind="resid_pre")
    except SaelineageError as exc:
        raise SaelineageError(
            f"SAE {where}: hook '{name}' is not a hook point saelineage can read.",
            "use SAEs on a block's residual stream, attention or MLP output (blocks.L.hook_resid_pre / "
            "hook_resid_post / hook_attn_out / attn.hook_z / hook_mlp_out), MLP input for transcoders, "
            "or sparsify 'layers.L'.",
        ) from exc


def _cat(parts: list[torch.Tensor], dtype: type) -> np.ndarray:
    """Concatenate CPU tensors into one numpy array of `dtype`."""
    if not parts:
        return np.zeros(0, dtype=dtype)
    return torch.cat(parts).numpy().astype(dtype, copy=False)


def codes_to_dense(codes: LayerCodes, d_sae: int) -> torch.Tensor:
    """LayerCodes (T rows) -> float32 dense tensor [T, d_sae]."""
    t = len(codes.indptr) - 1
    rows = np.repeat(np.arange(t), np.diff(codes.indptr))
    out = torch.zeros(t, d_sae, dtype=torch.float32)
    out[torch.from_numpy(rows), torch.from_numpy(codes.indices.astype(np.int64))] = torch.from_numpy(
        np.asarray(codes.values, dtype=np.float32)
    )
    return out


def weights_sha256_of_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over named tensors (for SAEs that have no single weights file, e.g. hub releases)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{dtype_name(t.dtype)}:{list(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


__all__ = [
    "SAE",
    "ARCHITECTURES",
    "NORMALIZATIONS",
    "codes_to_dense",
    "to_dtype",
    "dtype_name",
    "sae_hook",
    "weights_sha256_of_tensors",
]
