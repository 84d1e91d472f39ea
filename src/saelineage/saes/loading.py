"""Load SAEs from SAELens directories (current and legacy cfg) and EleutherAI sparsify folders;
write SAELens directories. (SAELens hub releases: `saelineage.saes.release`.)

The cfg interpretation follows sae_lens 6.x (`handle_pre_6_0_config` for configs written before
6.0) so an SAE encodes here exactly as `sae_lens.SAE.load_from_disk(...).encode` does, without
importing sae_lens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from saelineage.errors import SaelineageError
from saelineage.run import sha256_file
from saelineage.saes.sae import SAE, to_dtype

CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
# Written as metadata.sae_lens_version: sae_lens reads configs from >= 6.0 without legacy conversion.
SAELENS_FORMAT_VERSION = "6.0.0"

PathLike = str | os.PathLike


def is_sae_dir(path: PathLike) -> bool:
    """True when `path` holds one SAE (cfg.json + a SAELens or sparsify weights file)."""
    p = Path(path)
    return (p / CFG).is_file() and ((p / SAELENS_WEIGHTS).exists() or (p / SPARSIFY_WEIGHTS).exists())


def load_sae(path: PathLike, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = "float32") -> SAE:
    """Load one SAE folder (SAELens or sparsify layout, detected automatically).

    dtype: dtype of the loaded tensors (None keeps the cfg's / file's dtype).
    """
    folder = _sae_folder(path)
    cfg = _read_cfg(folder)
    if (folder / SAELENS_WEIGHTS).exists():
        return _from_saelens(folder, cfg, device, dtype)
    if (folder / SPARSIFY_WEIGHTS).exists():
        return _from_sparsify(folder, cfg, device, dtype)
    looks_sparsify = "expansion_factor" in cfg and "d_sae" not in cfg and "metadata" not in cfg
    missing = SPARSIFY_WEIGHTS if looks_sparsify else SAELENS_WEIGHTS
    raise SaelineageError(
        f"SAE folder {folder} has {CFG} but no weights file '{missing}'.",
        f"copy the SAE's complete folder ({CFG} + {missing}) there, or re-export the SAE.",
    )


def _sae_folder(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if p.is_file() and p.name in (CFG, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS):
        p = p.parent  # a file of the SAE was named: use its folder
    if not p.exists():
        raise SaelineageError(
            f"SAE folder {p} does not exist.",
            "pass the folder that holds the SAE's cfg.json and weights (check the path).",
        )
    if not p.is_dir():
        raise SaelineageError(
            f"{p} is a file, not an SAE folder.", f"pass the folder that holds the SAE's {CFG} and weights."
        )
    if not (p / CFG).is_file():
        subs = [d.name for d in sorted(p.iterdir()) if d.is_dir() and (d / CFG).is_file()]
        fix = (
            f"{p} holds one SAE per sub-folder ({', '.join(subs[:4])}, ...): load it with load_saes / --saes."
            if subs
            else f"pass a SAELens folder ({CFG} + {SAELENS_WEIGHTS}) or a sparsify folder ({CFG} + {SPARSIFY_WEIGHTS})."
        )
        raise SaelineageError(f"SAE folder {p} has no {CFG}.", fix)
    return p


def _read_cfg(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / CFG).read_text())
    except (OSError, ValueError) as exc:
        raise SaelineageError(
            f"{folder / CFG} is unreadable or not valid JSON ({exc}).", "restore the SAE's cfg.json from its source."
        ) from exc
    if not isinstance(cfg, dict):
        raise SaelineageError(f"{folder / CFG} is not a JSON object.", "restore the SAE's cfg.json from its source.")
    return cfg


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a truncated or foreign file raises SaelineageError."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SaelineageError(
            f"SAE weights file {path} is unreadable or truncated ({exc}).",
            "copy or download the SAE again (compare its size / sha256 with the source).",
        ) from exc


def _major(version: Any) -> int | None:
    m = re.match(r"\s*(\d+)", str(version)) if version else None
    return int(m.group(1)) if m else None


def _normalized_saelens_cfg(cfg: dict[str, Any], where: Path) -> tuple[dict[str, Any], str]:
    """(architecture, hook_name, k, apply_b_dec_to_input, normalize_activations, ...) as sae_lens 6 reads them."""
    md = cfg.get("metadata")
    if not isinstance(md, dict):
        md = {}
    version = cfg.get("sae_lens_version") or md.get("sae_lens_version")
    if (_major(version) or 0) >= 6:  # sae_lens: versions >= 6.0.0-rc.0 are read as written
        out = {
            "architecture": cfg.get("architecture"),
            "hook_name": md.get("hook_name"),
            "k": cfg.get("k", 100),  # TopKSAEConfig's default
            "apply_b_dec_to_input": cfg.get("apply_b_dec_to_input", True),
            "normalize_activations": cfg.get("normalize_activations", "none"),
            "reshape_activations": cfg.get("reshape_activations", "none"),
            "rescale_acts_by_decoder_norm": cfg.get("rescale_acts_by_decoder_norm", False),
        }
        return out, "saelens"
    # Legacy (< 6.0): mirror sae_lens's handle_pre_6_0_config.
    act = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu")) or "relu"
    kwargs = cfg.get("activation_fn_kwargs") or {}
    arch = cfg.get("architecture", "standard")
    k = cfg.get("k", 100)
    if act == "topk" and kwargs.get("k") is not None:
        arch, k = "topk", kwargs["k"]
    elif act != "relu" and arch != "topk":
        # sae_lens 6 silently replaces other activations by ReLU; we refuse instead of encoding wrongly.
        raise SaelineageError(
            f"SAE {where}: unsupported activation function '{act}' in {CFG}.",
            "saelineage encodes ReLU, JumpReLU and TopK SAEs.",
        )
    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool):
        norm = "expected_average_only_in" if norm else "none"
    hook_name = cfg.get("hook_name") or cfg.get("hook_point")
    out = {
        "architecture": arch,
        "hook_name": hook_name,
        "k": k,
        "apply_b_dec_to_input": cfg.get("apply_b_dec_to_input", True),
        "normalize_activations": norm or "none",
        "reshape_activations": cfg.get("reshape_activations", "hook_z" if "hook_z" in str(hook_name or "") else "none"),
        "rescale_acts_by_decoder_norm": cfg.get("rescale_acts_by_decoder_norm", False),
    }
    return out, "saelens-legacy"


def _from_saelens(folder: Path, cfg: dict[str, Any], device, dtype) -> SAE:
    norm, fmt = _normalized_saelens_cfg(cfg, folder)
    if not norm["architecture"]:
        raise SaelineageError(
            f"SAE {folder}: {CFG} names no 'architecture'.",
            'add "architecture": "standard" | "jumprelu" | "topk" to cfg.json.',
        )
    if norm["architecture"] not in ("standard", "jumprelu", "topk"):
        raise SaelineageError(
            f"SAE {folder}: unknown or unsupported architecture '{norm['architecture']}'.",
            "saelineage encodes standard (ReLU), jumprelu and topk SAEs; convert the SAE to one of these.",
        )
    if not norm["hook_name"]:
        raise SaelineageError(
            f"SAE {folder}: {CFG} names no hook point.",
            'add metadata.hook_name (e.g. "blocks.3.hook_resid_pre") to cfg.json.',
        )
    if norm["reshape_activations"] != "none":
        raise SaelineageError(
            f"SAE {folder}: reshape_activations='{norm['reshape_activations']}' (attention-head SAE).",
            "saelineage needs residual-stream SAEs.",
        )
    weights_path = folder / SAELENS_WEIGHTS
    w = _read_weights(weights_path)
    if "scaling_factor" in w:  # pre-6 fine-tuning scale: all ones means "unused" (as in sae_lens)
        if not torch.allclose(w["scaling_factor"].float(), torch.ones_like(w["scaling_factor"].float())):
            raise SaelineageError(
                f"SAE {folder}: a fine-tuning scaling_factor is stored in the weights.",
                "fold it into W_dec (multiply the rows) and drop it, then reload.",
            )
        del w["scaling_factor"]
    if norm["architecture"] == "jumprelu" and "threshold" not in w and "log_threshold" in w:
        w["threshold"] = w.pop("log_threshold").exp()  # training checkpoints store log(threshold)
    names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if norm["architecture"] == "jumprelu" else ())
    missing = [n for n in names if n not in w]
    if missing:
        raise SaelineageError(
            f"SAE {folder}: {SAELENS_WEIGHTS} lacks {missing} (it has {sorted(w)}).",
            "the weights do not match the architecture in cfg.json; re-export the SAE.",
        )
    _check_dims(folder, cfg.get("d_in"), cfg.get("d_sae"), w["W_enc"])
    target = to_dtype(dtype) if dtype is not None else to_dtype(cfg.get("dtype", "float32"))
    meta: dict[str, Any] = {"path": str(folder.resolve()), "format": fmt, "sha256": sha256_file(weights_path)}
    md = cfg.get("metadata")
    if not isinstance(md, dict):
        md = {}
    kwargs = md.get("model_from_pretrained_kwargs") or cfg.get("model_from_pretrained_kwargs")
    if kwargs:  # e.g. center_writing_weights: tells collect to mean-centre the residual stream
        meta["model_from_pretrained_kwargs"] = dict(kwargs)
    return sae_from_tensors(w, norm, meta, device, target)


def _check_dims(folder: Path, d_in: Any, d_sae: Any, W_enc: torch.Tensor) -> None:
    if W_enc.ndim != 2:
        raise SaelineageError(
            f"SAE {folder}: W_enc has {W_enc.ndim} dimensions, expected 2.",
            "re-export the SAE; its weights file is not an SAE.",
        )
    got = tuple(W_enc.shape)
    for name, want, have in (("d_in", d_in, got[0]), ("d_sae", d_sae, got[1])):
        if want is not None and int(want) != have:
            raise SaelineageError(
                f"SAE {folder}: {CFG} says {name}={want} but the weights have {name}={have} (W_enc {list(got)}).",
                "the weights file belongs to another SAE, or cfg.json was edited; restore the matching pair.",
            )


def sae_from_tensors(
    w: dict[str, torch.Tensor], norm: dict[str, Any], meta: dict[str, Any], device, dtype: torch.dtype
) -> SAE:
    """SAE from sae_lens-layout tensors `w` and settings `norm` (keys as `_normalized_saelens_cfg` returns)."""

    def t(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype).contiguous()

    arch = norm["architecture"]
    threshold = w.get("threshold") if arch == "jumprelu" else None
    return SAE(
        W_enc=t(w["W_enc"]),
        b_enc=t(w["b_enc"]),
        W_dec=t(w["W_dec"]),
        b_dec=t(w["b_dec"]),
        threshold=None if threshold is None else t(threshold),
        architecture=arch,
        hook_name=str(norm["hook_name"]),
        k=int(norm["k"]) if arch == "topk" else None,
        apply_b_dec_to_input=bool(norm["apply_b_dec_to_input"]),
        normalize_activations=str(norm["normalize_activations"]),
        rescale_acts_by_decoder_norm=bool(norm.get("rescale_acts_by_decoder_norm")) and arch == "topk",
        transcoder=bool(norm.get("transcoder")),
        meta=meta,
    )


def _from_sparsify(folder: Path, cfg: dict[str, Any], device, dtype) -> SAE:
    if cfg.get("activation", "topk") != "topk" or cfg.get("signed"):
        raise SaelineageError(
            f"SAE {folder}: unknown or unsupported sparsify activation "
            f"'{cfg.get('activation')}'{' (signed)' if cfg.get('signed') else ''}.",
            "saelineage encodes sparsify TopK SAEs (activation 'topk').",
        )
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise SaelineageError(
            f"SAE {folder}: sparsify transcoders / skip connections are not supported.",
            "use a plain sparsify SAE (transcode=false, skip_connection=false).",
        )
    if "d_in" not in cfg or "k" not in cfg:
        raise SaelineageError(f"SAE {folder}: sparsify {CFG} lacks 'd_in' or 'k'.", "restore cfg.json from its source.")
    weights_path = folder / SPARSIFY_WEIGHTS
    raw = _read_weights(weights_path)
    if "encoder.weight" not in raw or "W_dec" not in raw:
        raise SaelineageError(
            f"SAE {folder}: {SPARSIFY_WEIGHTS} lacks encoder.weight or W_dec (it has {sorted(raw)}).",
            "save the sparse coder with its decoder (SparseCoder.save_to_disk).",
        )
    enc = raw["encoder.weight"]  # [d_sae, d_in], used as x @ enc.T like nn.Linear
    d_sae = cfg.get("num_latents") or cfg["d_in"] * cfg.get("expansion_factor", 32)
    _check_dims(folder, cfg["d_in"], d_sae, enc.T)
    w = {
        "W_enc": enc.T,
        "b_enc": raw.get("encoder.bias", torch.zeros(enc.shape[0], dtype=enc.dtype)),
        "W_dec": raw["W_dec"],
        "b_dec": raw.get("b_dec", torch.zeros(enc.shape[1], dtype=enc.dtype)),
    }
    # sparsify's encode: relu(linear(x - b_dec)) then top-k; zeros among the winners are dropped here,
    # which is the same nonzero set as top-k of the raw pre-activations followed by ReLU.
    norm = {
        "architecture": "topk",
        "hook_name": folder.name,
        "k": cfg["k"],
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
    }
    meta = {
        "path": str(folder.resolve()),
        "format": "sparsify",
        "sha256": sha256_file(weights_path),
        "hookpoint": folder.name,
    }
    target = to_dtype(dtype) if dtype is not None else enc.dtype
    return sae_from_tensors(w, norm, meta, device, target)


def load_saes(
    paths_or_root: PathLike | Iterable[PathLike],
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = "float32",
) -> dict[int, SAE]:
    """SAEs keyed by layer, from a root with one SAE folder per layer (SAELens or sparsify), one SAE
    folder, or a list of SAE folders. All must sit on the same hook kind, one per layer."""
    if isinstance(paths_or_root, (str, os.PathLike)):
        root = Path(paths_or_root).expanduser()
        if not root.is_dir():
            problem = f"SAE folder {root} does not exist." if not root.exists() else f"{root} is not a folder."
            raise SaelineageError(problem, "pass a folder of per-layer SAE folders (SAELens or sparsify layout).")
        if (root / CFG).is_file():
            folders = [root]
        else:
            folders = sorted(
                (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / CFG).is_file()),
                key=_natural,
            )
            if not folders:
                seen = ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
                raise SaelineageError(
                    f"no SAE folders in {root} (it holds: {seen}).",
                    "pass a folder whose sub-folders each hold cfg.json + sae_weights.safetensors (SAELens) "
                    "or cfg.json + sae.safetensors (sparsify, named like 'layers.3').",
                )
    else:
        folders = [Path(p) for p in paths_or_root]
    saes: dict[int, SAE] = {}
    for folder in folders:
        sae = load_sae(folder, device=device, dtype=dtype)
        layer = sae.hook.layer
        if layer in saes:
            raise SaelineageError(
                f"two SAEs claim layer {layer}: {saes[layer].meta.get('path')} ({saes[layer].hook_name}) and "
                f"{sae.meta.get('path')} ({sae.hook_name}).",
                "keep one SAE per layer in the folder (move the other one out).",
            )
        saes[layer] = sae
    kinds = sorted({s.hook.kind for s in saes.values()})
    if len(kinds) > 1:
        by_kind = {kd: sorted(l for l, s in saes.items() if s.hook.kind == kd) for kd in kinds}
        raise SaelineageError(
            f"the SAEs mix hook kinds {by_kind}; layers would not line up.",
            "use SAEs that all read hook_resid_pre, or all hook_resid_post.",
        )
    return dict(sorted(saes.items()))


def _natural(p: Path) -> list:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)]


def save_saelens(sae: SAE, folder: PathLike, metadata: dict[str, Any] | None = None, overwrite: bool = True) -> Path:
    """Write `sae` as a current-format SAELens folder (cfg.json + sae_weights.safetensors) that
    `sae_lens.SAE.load_from_disk` and `load_sae` load unchanged. Atomic: written to a temporary
    sibling folder, then renamed. `metadata` adds cfg metadata (model_name, context_size, ...).
    An existing SAE folder (or empty folder) is replaced when `overwrite`; other folders never are."""
    folder = Path(folder).expanduser()
    if folder.exists() and not (overwrite and folder.is_dir() and (is_sae_dir(folder) or not any(folder.iterdir()))):
        raise SaelineageError(
            f"cannot write the SAE to {folder}: it exists"
            f"{'' if overwrite else ' (overwrite=False)'} and is not an SAE folder.",
            "choose a new folder, or remove the existing one.",
        )
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.architecture == "jumprelu":
        assert sae.threshold is not None  # SAE.__post_init__ requires it for jumprelu
        tensors["threshold"] = sae.threshold
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    cfg: dict[str, Any] = {
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": sae.dtype_name,
        "device": "cpu",  # sae_lens replaces this with the device asked for at load time
        "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input),
        "normalize_activations": sae.normalize_activations,
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": SAELENS_FORMAT_VERSION,
            **(metadata or {}),
            "hook_name": sae.hook_name,
        },
    }
    if sae.architecture == "topk":
        assert sae.k is not None  # SAE.__post_init__ requires it for topk
        cfg["k"] = int(sae.k)
        cfg["rescale_acts_by_decoder_norm"] = bool(sae.rescale_acts_by_decoder_norm)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        (tmp / CFG).write_text(json.dumps(cfg, indent=2))
        if folder.exists():  # swap: old folder aside, new in place, then drop the old one
            old = folder.parent / f".{folder.name}.tmp-old-{uuid.uuid4().hex[:8]}"
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
