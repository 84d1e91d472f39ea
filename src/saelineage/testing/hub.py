"""A Hugging Face hub cache on disk with tiny fakes of published SAELens releases and their models.

`build_hub_cache(root)` writes, under `root` used as HF_HUB_CACHE, exactly what huggingface_hub
reads offline: `models--{org}--{name}/refs/main` holding a commit hash, and
`snapshots/<commit>/<path>` as relative symlinks into `blobs/`. Each release gets random-weight
SAEs under its REAL SAE ids and folders (sae_lens's `pretrained_saes.yaml`), in the file layout
and format that release's sae_lens loader reads; each model gets a tiny random-weight model of
its architecture (config.json, model.safetensors, tokenizer files) under its hub id. So
`sae_lens.SAE.from_pretrained(release, sae_id)` and `AutoModelForCausalLM.from_pretrained(id)`
run their real code paths, offline, within `use_hub_cache(root)`.

Weights are random but calibrated: each SAE's encoder thresholds (or biases) are set on real
residuals of its tiny model at its hook, so that about the release's expected L0 latents fire
per token. Everything derives from `seed` (no global RNG state is touched).

`build_full_size_cache(root, setup)` writes the same formats at the published sizes instead
(FULL_SIZE_SETUPS: GPT-2 small + gpt2-small-res-jb, Gemma 3 270M + Gemma Scope 2 at 16k or
262k latents), for benchmarks of the real shapes (benchmarks/bench_real_shapes.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelineage.models.adapter import ModelAdapter
from saelineage.models.hooks import parse_hook

# Part of every commit hash: bump it when what is written changes, so old caches are not reused.
FORMAT = "saelineage-tiny-hub-v1"

RELEASES: dict[str, str] = {
    "gpt2-small-res-jb": "SAELens legacy cfg.json + sae_weights.safetensors + sparsity.safetensors for "
    "blocks.{l}.hook_resid_pre, ReLU SAEs of width 32 x d_model, on a tiny GPT2LMHeadModel `gpt2` (real GPT-2 BPE)",
    "gemma-scope-2b-pt-res-canonical": "Gemma Scope params.npz (w_enc, w_dec, b_enc, b_dec, threshold) at full "
    "size 2304 x 16384 (sae_lens hard-codes both) under layer_{l}/width_16k/average_l0_*, JumpReLU, on a tiny "
    "Gemma2ForCausalLM `google/gemma-2-2b` of hidden size 2304 and a 262-token byte-level vocabulary",
    "gemma-scope-2-270m-pt-res-all": "Gemma Scope 2 config.json + params.safetensors under "
    "resid_post_all/layer_{l}_width_{16k,262k}_l0_{small,big} (tiny widths 256 / 1024), JumpReLU, on a tiny "
    "Gemma3ForCausalLM `google/gemma-3-270m` (gemma3_text, byte-level vocabulary)",
    "gemma-scope-2-270m-pt-res": "Gemma Scope 2 seed twins at layer 5: resid_post/layer_5_width_262k_l0_medium and "
    "..._seed_1 (half of the seed-1 latents are perturbed, permuted copies of the seed-0 ones)",
    "llama_scope_lxr_8x": "Llama Scope hyperparams.json + checkpoints/final.safetensors under "
    "Llama3_1-8B-Base-L{l}R-8x (8x width, scalar JumpReLU threshold, dataset_average_activation_norm consistent "
    "with the directory's norm_scaling_factor), on a tiny LlamaForCausalLM `meta-llama/Llama-3.1-8B`",
    "sae_bench_pythia70m_sweep_topk_ctx128_0730": "dictionary_learning config.json + ae.pt (AutoEncoderTopK) for "
    "trainers 0 (4k: 8x) and 2 (16k: 32x) at layers 3 and 4, on a tiny GPTNeoXForCausalLM "
    "`EleutherAI/pythia-70m-deduped` (parallel residual, GPT-2 BPE)",
    "pythia-70m-deduped-res-sm": "SAELens cfg.json + sae_weights.safetensors (no sparsity file) for "
    "blocks.0.hook_resid_pre and blocks.{l}.hook_resid_post, ReLU SAEs of width 64 x d_model, on the same tiny Pythia",
}

# Calibration batch: [_CAL_BATCH, _CAL_LEN] random token ids; position 0 (BOS) is left out of the statistics.
_CAL_BATCH, _CAL_LEN = 4, 128
# Latents per token when the directory gives no expected L0; and the most, as a share of the width.
_DEFAULT_L0, _MAX_DENSITY = 32, 1 / 8
_LFS_SUFFIXES = (".safetensors", ".npz", ".pt", ".bin", ".npy")


@dataclass(frozen=True)
class CachedModel:
    """A tiny model written under its hub id."""

    model_id: str
    architecture: str
    n_layers: int
    d_model: int
    vocab_size: int


@dataclass(frozen=True)
class CachedRelease:
    """SAEs of one release written to the cache."""

    release: str
    repo_id: str
    model_id: str
    sae_ids: tuple[str, ...]
    layers: tuple[int, ...]
    """Layers of the tiny model that `sae_ids` read (sorted, distinct)."""


@dataclass(frozen=True)
class HubCache:
    """What `build_hub_cache` wrote: `path` is the HF_HUB_CACHE folder (holding models--*)."""

    path: Path
    releases: dict[str, CachedRelease]
    models: dict[str, CachedModel]


# ---------------------------------------------------------------- cache layout


def _seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one named item, independent of every other item's."""
    text = "|".join(map(str, (seed, *parts)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _generator(seed: int, *parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, *parts))


def _file_hash(path: Path) -> str:
    """The blob name huggingface_hub gives a file: sha256 for LFS files, the git blob sha1 otherwise."""
    if path.name.endswith(_LFS_SUFFIXES):
        h = hashlib.sha256()
    else:
        h = hashlib.sha1()
        h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class _Repo:
    """One model repo of the cache at one commit: files go to blobs/, linked from snapshots/<commit>/."""

    def __init__(self, root: Path, repo_id: str, commit: str) -> None:
        self.folder = root / f"models--{repo_id.replace('/', '--')}"
        self.snapshot = self.folder / "snapshots" / commit
        (self.folder / "blobs").mkdir(parents=True, exist_ok=True)
        self.snapshot.mkdir(parents=True, exist_ok=True)
        ref = self.folder / "refs" / "main"
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != commit:
            ref.write_text(commit)  # no newline: huggingface_hub reads the file whole

    def has(self, filenames: Iterable[str]) -> bool:
        return all((self.snapshot / f).exists() for f in filenames)

    def put(self, filename: str, src: Path) -> None:
        """Move the finished file `src` into blobs/ and link `filename` to it (a file already linked is kept)."""
        link = self.snapshot / filename
        if link.exists():
            src.unlink()
            return
        blob = self.folder / "blobs" / _file_hash(src)
        if blob.exists():
            src.unlink()
        else:
            os.replace(src, blob)  # same file system: the blob appears whole or not at all
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def _commit(repo_id: str, n_layers: int, seed: int) -> str:
    """Commit hash of a repo's snapshot: a new one for every build setting, so settings never mix."""
    return hashlib.sha1(f"{FORMAT}|{repo_id}|n_layers={n_layers}|seed={seed}".encode()).hexdigest()


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A scratch folder on the cache's file system (so blobs are moved, not copied), removed on exit."""
    path = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- tokenizers and models


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table, which the tokenizers ByteLevel pre-tokenizer uses."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_tokenizer(before: list[str], after: list[str], bos: str, eos: str, pad: str | None, unk: str | None):
    """A byte-level tokenizer: special tokens `before` (ids 0..), the 256 bytes, then specials `after`.

    No merges, so it needs no training and is the same everywhere; it prepends `bos` like the
    Gemma and Llama 3 tokenizers do. Returns a transformers fast tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    b2u = _bytes_to_unicode()
    vocab = {s: i for i, s in enumerate(before)}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    for s in after:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    tok.add_special_tokens(before + after)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk)


def _gemma_tokenizer():
    return byte_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>"], ["<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<pad>", "<unk>"
    )


def _gpt2_tokenizer():
    from saelineage.testing.tokenizers import gpt2_tokenizer

    return gpt2_tokenizer()


def _tiny_gpt2(n_layers: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _gpt2_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=64, n_layer=n_layers, n_head=4)
    return GPT2LMHeadModel(cfg), tok


def _tiny_pythia(n_layers: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = _gpt2_tokenizer()  # Pythia's own BPE is GPT-2-like; its vocabulary is padded to 50304 as here
    cfg = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return GPTNeoXForCausalLM(cfg), tok


def _tiny_llama31(n_layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer(
        [], ["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>", "<|end_of_text|>", None, None
    )
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=224,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg), tok


def _tiny_gemma2(n_layers: int):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = _gemma_tokenizer()
    # hidden_size must be the real 2304: sae_lens's Gemma Scope loader hard-codes d_in for "2b"
    cfg = Gemma2Config(
        vocab_size=len(tok),
        hidden_size=2304,
        intermediate_size=256,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=8192,
        sliding_window=4096,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return Gemma2ForCausalLM(cfg), tok


def _tiny_gemma3(n_layers: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = _gemma_tokenizer()
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=32768,
        sliding_window=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return Gemma3ForCausalLM(cfg), tok


@dataclass(frozen=True)
class _ModelSpec:
    architecture: str
    build: Callable[[int], tuple[Any, Any]]
    min_layers: int = 1
    """Depth the releases on this model need (their SAEs only exist for some layers)."""


_MODELS: dict[str, _ModelSpec] = {
    "gpt2": _ModelSpec("GPT2LMHeadModel", _tiny_gpt2),
    "google/gemma-2-2b": _ModelSpec("Gemma2ForCausalLM", _tiny_gemma2),
    "google/gemma-3-270m": _ModelSpec("Gemma3ForCausalLM", _tiny_gemma3, min_layers=6),  # the seed twins: layer 5
    "meta-llama/Llama-3.1-8B": _ModelSpec("LlamaForCausalLM", _tiny_llama31),
    "EleutherAI/pythia-70m-deduped": _ModelSpec("GPTNeoXForCausalLM", _tiny_pythia, min_layers=5),  # sae_bench: 3, 4
}


def _depth(model_id: str, n_layers: int) -> int:
    return max(n_layers, _MODELS[model_id].min_layers)


def _write_model(
    repo: _Repo,
    root: Path,
    model_id: str,
    n_layers: int,
    seed: int,
    build: Callable[[int], tuple[Any, Any]] | None = None,
):
    """Build the model (seeded; `build`, default the tiny one of `model_id`), save it and its tokenizer
    into `repo`; returns (model, tokenizer)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(seed, "model", model_id))
        model, tok = (build or _MODELS[model_id].build)(n_layers)
    model.eval()
    with _staging(root) as stage:
        model.save_pretrained(stage)
        tok.save_pretrained(stage)
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        # config.json last: with it the model is complete (_MODEL_FILES), should a build be cut short
        for name in sorted(files, key=lambda f: f == "config.json"):
            repo.put(name, stage / name)
    return model, tok


_MODEL_FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json")


# ---------------------------------------------------------------- SAE weights


@dataclass(frozen=True)
class _Plan:
    """One SAE to fabricate: its real id and folder, the hook sae_lens derives, and its encoder."""

    sae_id: str
    folder: str
    layer: int
    hook: str
    d_sae: int
    encoder: str
    """'relu' (b_enc calibrated), 'jumprelu' (per-latent threshold), 'jumprelu_scalar', 'topk'."""
    apply_b_dec: bool
    l0: float
    twin_of: str | None = None
    """For a `_seed_1` SAE: the seed-0 id it shares half its latents with."""
    extra: dict = field(default_factory=dict)


@dataclass
class _Weights:
    """Fabricated SAE in SAELens orientation."""

    W_enc: torch.Tensor  # [d_in, d_sae]
    W_dec: torch.Tensor  # [d_sae, d_in], unit rows
    b_enc: torch.Tensor  # [d_sae]
    b_dec: torch.Tensor  # [d_in]
    threshold: torch.Tensor | None  # [d_sae], or [] for a scalar threshold; None for ReLU / TopK
    log_sparsity: torch.Tensor  # [d_sae]: log10 firing rate on the calibration residuals


def _encoder(d_in: int, d_sae: int, gen: torch.Generator) -> torch.Tensor:
    """Random encoder [d_in, d_sae] with N(0, 1/d_in) entries (pre-activations of the input's scale)."""
    return torch.randn(d_in, d_sae, generator=gen) / d_in**0.5


def _twin(base: torch.Tensor, gen: torch.Generator, shared: float = 0.5, noise: float = 0.2) -> torch.Tensor:
    """A second-seed encoder: a share `shared` of `base`'s latents, perturbed, the rest new; permuted."""
    d_in, d_sae = base.shape
    fresh = _encoder(d_in, d_sae, gen)
    n = int(d_sae * shared)
    kept = base[:, :n] + noise * _encoder(d_in, n, gen)
    kept = kept * (base[:, :n].norm(dim=0) / kept.norm(dim=0))
    mixed = torch.cat([kept, fresh[:, n:]], dim=1)
    return mixed[:, torch.randperm(d_sae, generator=gen)].contiguous()


def _fabricate(plan: _Plan, X: torch.Tensor, W_enc: torch.Tensor) -> _Weights:
    """Biases / thresholds of encoder `W_enc` set on residuals X [N, d_in] so ~plan.l0 latents fire per token.

    Each latent's pre-activation over X is taken as normal; its cut is mean + z * std with z the
    normal quantile of 1 - l0 / d_sae (full-size builds, `plan.extra['match_l0']`: z found by
    bisection on held-out windows of X instead). The decoder is the encoder's directions at unit
    norm, and b_dec the residuals' mean (what trained SAEs come close to).
    """
    X = X.float()
    d_sae = W_enc.shape[1]
    b_dec = X.mean(0)
    pre = (X - b_dec if plan.apply_b_dec else X) @ W_enc  # [N, d_sae]
    z = torch.special.ndtri(torch.tensor(1.0 - min(plan.l0 / d_sae, _MAX_DENSITY), dtype=torch.float64)).float()
    if plan.extra.get("match_l0") and plan.encoder in ("relu", "jumprelu"):
        # cross-fitted: cuts from the even windows' rows, z matched on the odd ones' (X holds whole windows of
        # _CAL_LEN - 1 rows): matched on the rows they were fitted on, the cuts let ~1.2x the L0 fire elsewhere
        by_window = pre.view(-1, _CAL_LEN - 1, d_sae)
        fit = by_window[0::2]
        mean, std = fit.mean((0, 1)), fit.std((0, 1))
        z = _match_z(by_window[1::2], mean, std, plan.l0, z)
    else:
        mean, std = pre.mean(0), pre.std(0)
    b_enc = torch.zeros(d_sae)
    threshold = None
    if plan.encoder == "relu":
        b_enc = -(mean + z * std)
        acts = pre + b_enc > 0
    elif plan.encoder == "jumprelu":
        threshold = (mean + z * std).clamp_min(1e-3)  # JumpReLU thresholds are positive
        acts = pre > threshold
    elif plan.encoder == "jumprelu_scalar":
        threshold = (pre.mean() + z * pre.std()).clamp_min(1e-3)
        acts = pre > threshold
    elif plan.encoder == "topk":
        k = int(plan.extra["k"])
        acts = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.topk(k, dim=1).indices, True)
    else:
        raise ValueError(f"unknown encoder {plan.encoder!r}")
    W_dec = (W_enc / W_enc.norm(dim=0, keepdim=True)).T.contiguous()
    log_sparsity = acts.float().mean(0).clamp_min(1e-10).log10()
    return _Weights(W_enc.contiguous(), W_dec, b_enc, b_dec, threshold, log_sparsity)


def _match_z(pre: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, l0: float, z: torch.Tensor) -> torch.Tensor:
    """The z at which latents cut at mean + z * std fire l0 times per row of `pre` [..., d_sae] on average
    (bisection). Full-size builds use it (`extra['match_l0']`) instead of the normal quantile, which
    assumes normal pre-activations and exact means and deviations."""
    rows = pre.numel() // pre.shape[-1]

    def l0_at(zz: float) -> float:
        return float((pre > mean + zz * std).sum()) / rows

    lo, hi = float(z) - 4.0, float(z) + 4.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if l0_at(mid) > l0 else (lo, mid)
    return torch.tensor(hi, dtype=torch.float32)


# ---------------------------------------------------------------- release file formats


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def _save_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's format (stored zip of .npy members) with fixed timestamps, so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def _files_res_jb(plan: _Plan) -> list[str]:
    return [f"{plan.folder}/cfg.json", f"{plan.folder}/sparsity.safetensors", f"{plan.folder}/sae_weights.safetensors"]


def _write_res_jb(plan: _Plan, w: _Weights, out: Path) -> None:
    """jbloom/GPT2-Small-SAEs-Reformatted: a pre-SAELens-1.0 cfg.json (hook_point, torch dtype string)."""
    d_in, d_sae = w.W_enc.shape
    cfg = {
        "model_name": "gpt2-small",
        "hook_point": plan.hook,
        "hook_point_layer": plan.layer,
        "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "context_size": 128,
        "use_cached_activations": False,
        "d_in": d_in,
        "n_batches_in_buffer": 128,
        "total_training_tokens": 300000000,
        "store_batch_size": 32,
        "device": "mps",
        "seed": 42,
        "dtype": "torch.float32",
        "b_dec_init_method": "geometric_median",
        "expansion_factor": d_sae // d_in,
        "from_pretrained_path": None,
        "l1_coefficient": 8e-05,
        "lr": 0.0004,
        "lr_scheduler_name": None,
        "lr_warm_up_steps": 5000,
        "train_batch_size": 4096,
        "use_ghost_grads": False,
        "feature_sampling_window": 1000,
        "dead_feature_window": 5000,
        "dead_feature_threshold": 1e-08,
        "log_to_wandb": True,
        "wandb_project": "mats_sae_training_gpt2_small_resid_pre_5",
        "n_checkpoints": 10,
        "d_sae": d_sae,
        "tokens_per_buffer": 67108864,
        "run_name": f"{d_sae}-L1-8e-05-LR-0.0004-Tokens-3.000e+08",
    }
    _save_json(out / "cfg.json", cfg)
    _save_safetensors(out / "sparsity.safetensors", {"sparsity": w.log_sparsity})
    _save_safetensors(
        out / "sae_weights.safetensors", {"W_enc": w.W_enc, "b_enc": w.b_enc, "W_dec": w.W_dec, "b_dec": w.b_dec}
    )


def _files_res_sm(plan: _Plan) -> list[str]:
    return [f"{plan.folder}/cfg.json", f"{plan.folder}/sae_weights.safetensors"]


def _write_res_sm(plan: _Plan, w: _Weights, out: Path) -> None:
    """ctigges/pythia-70m-deduped__res-sm_processed: a SAELens 3-5 cfg.json, no sparsity file."""
    d_in, d_sae = w.W_enc.shape
    cfg = {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "pythia-70m-deduped",
        "hook_name": plan.hook,
        "hook_layer": plan.layer,
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "activation_fn_kwargs": {},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": None,
        "prepend_bos": True,
        "dataset_path": "EleutherAI/the_pile_deduplicated",
        "dataset_trust_remote_code": True,
        "context_size": 128,
        "normalize_activations": "none",
        "neuronpedia_id": None,
    }
    _save_json(out / "cfg.json", cfg)
    _save_safetensors(
        out / "sae_weights.safetensors", {"W_enc": w.W_enc, "b_enc": w.b_enc, "W_dec": w.W_dec, "b_dec": w.b_dec}
    )


def _files_gemma_scope(plan: _Plan) -> list[str]:
    return [f"{plan.folder}/params.npz"]


def _write_gemma_scope(plan: _Plan, w: _Weights, out: Path) -> None:
    """google/gemma-scope-*: params.npz only (sae_lens derives the whole config from repo and folder names)."""
    assert w.threshold is not None
    arrays = {"w_enc": w.W_enc, "w_dec": w.W_dec, "b_enc": w.b_enc, "b_dec": w.b_dec, "threshold": w.threshold}
    _save_npz(out / "params.npz", {k: _np(v) for k, v in arrays.items()})


def _files_gemma_scope_2(plan: _Plan) -> list[str]:
    return [f"{plan.folder}/config.json", f"{plan.folder}/params.safetensors"]


def _write_gemma_scope_2(plan: _Plan, w: _Weights, out: Path) -> None:
    """google/gemma-scope-2-*: config.json (hook as a HF module path) + params.safetensors."""
    assert w.threshold is not None
    cfg = {
        "width": int(w.W_enc.shape[1]),
        "model_name": "google/gemma-3-270m-pt",
        "architecture": "jump_relu",
        "l0": int(plan.l0),
        "affine_connection": False,
        "hf_hook_point_in": f"model.layers.{plan.layer}.output",
        "hf_hook_point_out": f"model.layers.{plan.layer}.output",
        "type": "sae",
    }
    _save_json(out / "config.json", cfg)
    tensors = {"w_enc": w.W_enc, "w_dec": w.W_dec, "b_enc": w.b_enc, "b_dec": w.b_dec, "threshold": w.threshold}
    _save_safetensors(out / "params.safetensors", tensors)


def _files_llama_scope(plan: _Plan) -> list[str]:
    return [f"{plan.folder}/hyperparams.json", f"{plan.folder}/checkpoints/final.safetensors"]


def _write_llama_scope(plan: _Plan, w: _Weights, out: Path) -> None:
    """fnlp/Llama3_1-8B-Base-LX*: hyperparams.json + checkpoints/final.safetensors (nn.Linear orientation).

    sae_lens multiplies W_enc by the directory's norm_scaling_factor s and the threshold by
    sqrt(d_model) / dataset_average_activation_norm; the published norms make both factors equal,
    and so do ours (norm = sqrt(d_model) / s). A latent then fires where x @ W_enc > threshold.
    """
    assert w.threshold is not None
    d_in, d_sae = w.W_enc.shape
    norm = d_in**0.5 / float(plan.extra["norm_scaling_factor"])
    hp = {
        "d_model": d_in,
        "d_sae": d_sae,
        "expansion_factor": d_sae // d_in,
        "hook_point_in": plan.hook,
        "hook_point_out": plan.hook,
        "act_fn": "jumprelu",
        "jump_relu_threshold": float(w.threshold),
        "top_k": int(plan.l0),
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": norm, "out": norm},
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "sparsity_include_decoder_norm": True,
    }
    _save_json(out / "hyperparams.json", hp)
    (out / "checkpoints").mkdir()
    tensors = {
        "encoder.weight": w.W_enc.T,
        "encoder.bias": w.b_enc,
        "decoder.weight": w.W_dec.T,
        "decoder.bias": w.b_dec,
    }
    _save_safetensors(out / "checkpoints" / "final.safetensors", tensors)


def _files_dictionary_learning(plan: _Plan) -> list[str]:
    return [f"{plan.folder}/config.json", f"{plan.folder}/ae.pt"]


def _write_dictionary_learning(plan: _Plan, w: _Weights, out: Path) -> None:
    """canrager/lm_sae (dictionary_learning): config.json {trainer, buffer} + ae.pt, an AutoEncoderTopK state dict."""
    d_in, d_sae = w.W_enc.shape
    k = int(plan.extra["k"])
    lm = "EleutherAI/pythia-70m-deduped"
    cfg = {
        "trainer": {
            "trainer_class": "TopKTrainer",
            "dict_class": "AutoEncoderTopK",
            "lr": 0.0002,
            "steps": 48828,
            "seed": 0,
            "activation_dim": d_in,
            "dict_size": d_sae,
            "k": k,
            "device": "cuda:0",
            "layer": plan.layer,
            "lm_name": lm,
            "wandb_name": f"TopKTrainer-{lm}-resid_post_layer_{plan.layer}",
            "submodule_name": f"resid_post_layer_{plan.layer}",
        },
        "buffer": {
            "d_submodule": d_in,
            "io": "out",
            "n_ctxs": 2000,
            "ctx_len": 128,
            "refresh_batch_size": 24,
            "out_batch_size": 4096,
            "device": "cuda:0",
        },
    }
    _save_json(out / "config.json", cfg)
    state = {
        "b_dec": w.b_dec.clone(),
        "encoder.weight": w.W_enc.T.contiguous(),
        "encoder.bias": w.b_enc.clone(),
        "decoder.weight": w.W_dec.T.contiguous(),
        "k": torch.tensor(k),
        "threshold": torch.tensor(-1.0),
    }
    torch.save(state, out / "ae.pt")


@dataclass(frozen=True)
class _ReleaseSpec:
    model_id: str
    plan: Callable[[Any, int], list[_Plan]]
    """(directory entry, tiny model depth) → the SAEs to write."""
    files: Callable[[_Plan], list[str]]
    """Repo paths of one SAE's files (an SAE with all of them in the snapshot is not written again)."""
    write: Callable[[_Plan, _Weights, Path], None]
    """Write one SAE's files into a folder standing for plan.folder."""
    center: bool = False
    """Calibrate on mean-centred residuals (the release's TransformerLens model centres writing weights)."""


def _expected_l0(entry: Any, sae_id: str, folder: str) -> float:
    l0 = float(entry.expected_l0.get(sae_id) or 0)
    if l0 <= 0:
        m = re.search(r"average_l0_(\d+)", folder)
        l0 = float(m.group(1)) if m else _DEFAULT_L0
    return l0


def _plans(
    entry: Any, ids: Iterable[tuple[str, int, str]], d_sae: Callable[[str], int], encoder: str, apply_b_dec: bool
) -> list[_Plan]:
    """Plans for (sae id, layer, hook) triples; ids must be the release's own."""
    out = []
    for sae_id, layer, hook in ids:
        if sae_id not in entry.saes_map:
            raise KeyError(f"{sae_id!r} is not an SAE of release {entry.release!r}")
        folder = entry.saes_map[sae_id]
        out.append(
            _Plan(sae_id, folder, layer, hook, d_sae(sae_id), encoder, apply_b_dec, _expected_l0(entry, sae_id, folder))
        )
    return out


def _plan_res_jb(entry: Any, depth: int) -> list[_Plan]:
    ids = [(f"blocks.{l}.hook_resid_pre", l, f"blocks.{l}.hook_resid_pre") for l in range(depth)]
    return _plans(entry, ids, lambda _: 32 * 64, "relu", True)


def _plan_res_sm(entry: Any, depth: int) -> list[_Plan]:
    ids = [("blocks.0.hook_resid_pre", 0, "blocks.0.hook_resid_pre")]
    ids += [(f"blocks.{l}.hook_resid_post", l, f"blocks.{l}.hook_resid_post") for l in range(depth)]
    return _plans(entry, ids, lambda _: 64 * 64, "relu", True)


def _plan_gemma_scope(entry: Any, depth: int) -> list[_Plan]:
    ids = [(f"layer_{l}/width_16k/canonical", l, f"blocks.{l}.hook_resid_post") for l in range(depth)]
    return _plans(entry, ids, lambda _: 16384, "jumprelu", False)


def _gemma_scope_2_width(sae_id: str) -> int:
    return 1024 if "width_262k" in sae_id else 256


def _plan_gemma_scope_2_all(entry: Any, depth: int) -> list[_Plan]:
    ids = [
        (f"layer_{l}_width_{w}_l0_{s}", l, f"blocks.{l}.hook_resid_post")
        for l in range(depth)
        for w in ("16k", "262k")
        for s in ("small", "big")
    ]
    return _plans(entry, ids, _gemma_scope_2_width, "jumprelu", False)


def _plan_gemma_scope_2_seeds(entry: Any, depth: int) -> list[_Plan]:
    l = 5
    base = f"layer_{l}_width_262k_l0_medium"
    plans = _plans(entry, [(base, l, f"blocks.{l}.hook_resid_post")], _gemma_scope_2_width, "jumprelu", False)
    twin = _plans(
        entry, [(f"{base}_seed_1", l, f"blocks.{l}.hook_resid_post")], _gemma_scope_2_width, "jumprelu", False
    )
    return plans + [replace(twin[0], twin_of=base)]


def _plan_llama_scope(entry: Any, depth: int) -> list[_Plan]:
    ids = [(f"l{l}r_8x", l, f"blocks.{l}.hook_resid_post") for l in range(depth)]
    plans = _plans(entry, ids, lambda _: 8 * 64, "jumprelu_scalar", False)
    return [replace(p, extra={"norm_scaling_factor": entry.norm_scaling_factor[p.sae_id]}) for p in plans]


def _plan_sae_bench(entry: Any, depth: int) -> list[_Plan]:
    widths = {0: 8 * 64, 2: 32 * 64}  # trainer 0 is a 4k (8x) SAE, trainer 2 a 16k (32x) one
    ids = [
        (f"blocks.{l}.hook_resid_post__trainer_{t}", l, f"blocks.{l}.hook_resid_post") for l in (3, 4) for t in widths
    ]
    plans = _plans(entry, ids, lambda sid: widths[int(sid.rsplit("_", 1)[1])], "topk", True)
    return [replace(p, l0=20.0, extra={"k": 20}) for p in plans if p.layer < depth]


_SPECS: dict[str, _ReleaseSpec] = {
    "gpt2-small-res-jb": _ReleaseSpec("gpt2", _plan_res_jb, _files_res_jb, _write_res_jb, center=True),
    "gemma-scope-2b-pt-res-canonical": _ReleaseSpec(
        "google/gemma-2-2b", _plan_gemma_scope, _files_gemma_scope, _write_gemma_scope
    ),
    "gemma-scope-2-270m-pt-res-all": _ReleaseSpec(
        "google/gemma-3-270m", _plan_gemma_scope_2_all, _files_gemma_scope_2, _write_gemma_scope_2
    ),
    "gemma-scope-2-270m-pt-res": _ReleaseSpec(
        "google/gemma-3-270m", _plan_gemma_scope_2_seeds, _files_gemma_scope_2, _write_gemma_scope_2
    ),
    "llama_scope_lxr_8x": _ReleaseSpec(
        "meta-llama/Llama-3.1-8B", _plan_llama_scope, _files_llama_scope, _write_llama_scope
    ),
    "sae_bench_pythia70m_sweep_topk_ctx128_0730": _ReleaseSpec(
        "EleutherAI/pythia-70m-deduped", _plan_sae_bench, _files_dictionary_learning, _write_dictionary_learning
    ),
    "pythia-70m-deduped-res-sm": _ReleaseSpec(
        "EleutherAI/pythia-70m-deduped", _plan_res_sm, _files_res_sm, _write_res_sm
    ),
}


# ---------------------------------------------------------------- building


def _calibration_ids(tok: Any, vocab_size: int, seed: int, model_id: str) -> torch.Tensor:
    """Random non-special token ids [_CAL_BATCH, _CAL_LEN], each row starting with BOS."""
    special = set(tok.all_special_ids)
    allowed = torch.tensor([i for i in range(min(len(tok), vocab_size)) if i not in special])
    gen = _generator(seed, "calibration", model_id)
    ids = allowed[torch.randint(len(allowed), (_CAL_BATCH, _CAL_LEN), generator=gen)]
    if tok.bos_token_id is not None:
        ids[:, 0] = tok.bos_token_id
    return ids


def _residuals(model: Any, ids: torch.Tensor, hooks: list[str], center: bool) -> dict[str, torch.Tensor]:
    """{hook: residuals [N, d_model]} of the tiny model at each TransformerLens hook name (BOS left out)."""
    points = {h: parse_hook(h) for h in hooks}
    got = ModelAdapter(model, center_residual=center).residuals(ids, list(set(points.values())))
    return {h: got[p][:, 1:].reshape(-1, got[p].shape[-1]).float() for h, p in points.items()}


def _write_release(
    repo: _Repo, root: Path, spec: _ReleaseSpec, plans: list[_Plan], model: Any, ids: torch.Tensor, seed: int
) -> None:
    """Fabricate, calibrate and write the SAEs of `plans` not yet in `repo`."""
    todo = [p for p in plans if not repo.has(spec.files(p))]
    if not todo:
        return
    X = _residuals(model, ids, sorted({p.hook for p in todo}), spec.center)
    by_id = {p.sae_id: p for p in plans}
    for plan in todo:
        d_in = X[plan.hook].shape[1]
        if plan.twin_of is not None:
            base = by_id[plan.twin_of]
            W_base = _encoder(d_in, base.d_sae, _generator(seed, "sae", repo.folder.name, base.sae_id))
            W_enc = _twin(W_base, _generator(seed, "sae", repo.folder.name, plan.sae_id))
        else:
            W_enc = _encoder(d_in, plan.d_sae, _generator(seed, "sae", repo.folder.name, plan.sae_id))
        weights = _fabricate(plan, X[plan.hook], W_enc)
        del W_enc
        with _staging(root) as stage:
            spec.write(plan, weights, stage)
            for name in spec.files(plan):
                repo.put(name, stage / name[len(plan.folder) + 1 :])
        del weights


def _load_cached_model(repo: _Repo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(repo.snapshot, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(repo.snapshot)


def build_hub_cache(root: Path, releases: Iterable[str] | None = None, n_layers: int = 2, seed: int = 0) -> HubCache:
    """Write tiny fakes of `releases` (default: all of RELEASES) and their models into the hub cache `root`.

    root: the HF_HUB_CACHE folder (it will hold models--*). n_layers: depth of the tiny models
    (deeper where a release only has SAEs at later layers: Pythia 5, Gemma 3 6). The same
    arguments give the same files; what exists is skipped, so a second call costs little.
    """
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    names = list(RELEASES) if releases is None else list(dict.fromkeys(releases))
    unknown = [r for r in names if r not in _SPECS]
    if unknown:
        raise ValueError(f"no tiny fake of {unknown}; known releases: {sorted(RELEASES)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    directory = get_pretrained_saes_directory()
    out: dict[str, CachedRelease] = {}
    models: dict[str, CachedModel] = {}
    for model_id in dict.fromkeys(_SPECS[r].model_id for r in names):
        depth = _depth(model_id, n_layers)
        repo = _Repo(root, model_id, _commit(model_id, n_layers, seed))
        model = tok = None
        if not repo.has(_MODEL_FILES):
            model, tok = _write_model(repo, root, model_id, depth, seed)
        ids = None
        for release in (r for r in names if _SPECS[r].model_id == model_id):
            spec, entry = _SPECS[release], directory[release]
            plans = spec.plan(entry, depth)
            sae_repo = _Repo(root, entry.repo_id, _commit(entry.repo_id, n_layers, seed))
            if not all(sae_repo.has(spec.files(p)) for p in plans):
                if model is None:
                    model, tok = _load_cached_model(repo)
                if ids is None:
                    ids = _calibration_ids(tok, model.config.vocab_size, seed, model_id)
                _write_release(sae_repo, root, spec, plans, model, ids, seed)
            out[release] = CachedRelease(
                release,
                entry.repo_id,
                model_id,
                tuple(p.sae_id for p in plans),
                tuple(sorted({p.layer for p in plans})),
            )
        cfg = json.loads((repo.snapshot / "config.json").read_text())
        models[model_id] = CachedModel(
            model_id,
            _MODELS[model_id].architecture,
            depth,
            int(cfg.get("hidden_size") or cfg["n_embd"]),
            int(cfg["vocab_size"]),
        )
        del model
    return HubCache(root, out, models)


# ---------------------------------------------------------------- full-size set-ups

# Part of every commit hash of a full-size cache (a cache folder may hold tiny and full-size repos apart).
FULL_FORMAT = "saelineage-full-size-hub-v1"
# Calibration of a full-size build: 12 windows (~1,500 residuals), spread evenly over the first _FULL_CAL_SPAN
# tokens of the bundled English text, so the thresholds of 262k-wide SAEs are estimated from ~1,500
# tokens while the [tokens, d_sae] pre-activations stay near 1.5 GB.
_FULL_CAL_BATCH, _FULL_CAL_SPAN = 12, 100_000


def _text_calibration_ids(tok: Any, batch: int = _FULL_CAL_BATCH, span: int = _FULL_CAL_SPAN) -> torch.Tensor:
    """[batch, _CAL_LEN] windows (BOS first, as collect cuts them) spread evenly over the first `span`
    tokens of the bundled English text (`--corpus default`).

    Text, and this text: on a random-weight model a latent's mean pre-activation follows the token
    frequencies of the text it reads, so thresholds set on uniformly drawn ids let 1.3x (GPT-2) to
    2x (Gemma 3) the intended L0 fire on text, and thresholds set on the corpus's later (Wikipedia)
    half let 1.3x fire on its first (news) half. Calibrated here, L0 is right where benchmarks
    measure it: the windows `collect --corpus default --max-tokens N` reads, N up to `span`.
    """
    from saelineage.data.corpus import bundled_docs
    from saelineage.data.windowing import make_windows

    ids = make_windows(tok, bundled_docs(), _CAL_LEN, span).ids
    pick = np.linspace(0, len(ids) - 1, min(batch, len(ids))).round().astype(np.int64)
    return torch.from_numpy(ids[pick]).long()


def _full_gpt2(n_layers: int):
    """GPT-2 small at its published size: 768 wide, 12 heads, 1,024 positions, the 50,257-token BPE."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _gpt2_tokenizer()
    cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=n_layers, n_head=12)
    return GPT2LMHeadModel(cfg), tok


def _full_gemma3(n_layers: int):
    """Gemma 3 270M at its published size (google/gemma-3-270m's config.json): 640 wide, MLP 2,048,
    4 query heads and 1 key/value head of 256, a 262,144-token vocabulary (tied embeddings), sliding
    window 512 with every 6th layer global (RoPE bases 10,000 local, 1,000,000 global).

    The tokenizer is the byte-level one of the tiny builds: the real 262k SentencePiece vocabulary
    cannot be made offline, so text costs ~4x the tokens it would, and only ids < 262 occur; the
    model's embedding and shapes are full size all the same."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = _gemma_tokenizer()
    cfg = Gemma3TextConfig(
        vocab_size=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=32768,
        sliding_window=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return Gemma3ForCausalLM(cfg), tok


_FULL_MODELS: dict[str, _ModelSpec] = {
    "gpt2": _ModelSpec("GPT2LMHeadModel", _full_gpt2),
    "google/gemma-3-270m": _ModelSpec("Gemma3ForCausalLM", _full_gemma3),
}


@dataclass(frozen=True)
class FullSizeSetup:
    """A published model and SAE release at their real sizes (random weights)."""

    release: str
    model_id: str
    n_layers: int
    """Depth of the model (all of it is written, whatever layers get SAEs)."""
    sae_ids: dict[int, str]
    """SAE width → the release's SAE id, a template with {layer}."""
    hook: str
    """Hook the SAEs read (template with {layer}), as sae_lens derives it from the release."""
    width: int
    """Default width."""
    layers: tuple[int, ...]
    """Default layers."""
    encoder: str
    apply_b_dec: bool


FULL_SIZE_SETUPS: dict[str, FullSizeSetup] = {
    # res-jb: ReLU SAEs of 32 x 768 on resid_pre of blocks 0-11 (the paper's system), L0 10-70 as published
    "gpt2": FullSizeSetup(
        "gpt2-small-res-jb",
        "gpt2",
        12,
        {24576: "blocks.{layer}.hook_resid_pre"},
        "blocks.{layer}.hook_resid_pre",
        24576,
        tuple(range(12)),
        "relu",
        True,
    ),
    # Gemma Scope 2, every layer's resid_post: JumpReLU, the big-L0 variant (published L0 60-120 per token)
    "gemma3": FullSizeSetup(
        "gemma-scope-2-270m-pt-res-all",
        "google/gemma-3-270m",
        18,
        {16384: "layer_{layer}_width_16k_l0_big", 262144: "layer_{layer}_width_262k_l0_big"},
        "blocks.{layer}.hook_resid_post",
        16384,
        tuple(range(18)),
        "jumprelu",
        False,
    ),
}
# 262k latents on 4 layers: 5, 9, 12 and 15, the layers Gemma Scope 2 publishes its every width at
# (release gemma-scope-2-270m-pt-res: 16k to 1m); the `-all` release has them all at 262k.
FULL_SIZE_SETUPS["gemma3-262k"] = replace(FULL_SIZE_SETUPS["gemma3"], width=262144, layers=(5, 9, 12, 15))


@dataclass(frozen=True)
class FullSizeCache:
    """What `build_full_size_cache` wrote: `path` is the HF_HUB_CACHE folder (holding models--*)."""

    path: Path
    setup: str
    release: str
    model_id: str
    sae_ids: tuple[str, ...]
    layers: tuple[int, ...]
    hooks: tuple[str, ...]
    d_model: int
    d_sae: int
    n_layers: int
    vocab_size: int
    expected_l0: tuple[float, ...]
    """Per SAE: the L0 its encoder was calibrated to (the release's published expected L0)."""

    def collect_args(self) -> list[str]:
        """Arguments of `saelineage collect RUN …` that select exactly these SAEs from the release."""
        template = FULL_SIZE_SETUPS[self.setup].sae_ids[self.d_sae]
        layers = ",".join(map(str, self.layers))
        return ["--saes", self.release, "--sae-id", template, "--layers", layers]


def _full_commit(repo_id: str, seed: int) -> str:
    """One commit per repo and seed: every full-size set-up of a model (and widths, layers) shares it."""
    return hashlib.sha1(f"{FULL_FORMAT}|{repo_id}|seed={seed}".encode()).hexdigest()


def build_full_size_cache(
    root: Path, setup: str, layers: Iterable[int] | None = None, width: int | None = None, seed: int = 0
) -> FullSizeCache:
    """Write a published model and SAEs at their full sizes, random weights, into the hub cache `root`.

    setup: a key of FULL_SIZE_SETUPS: 'gpt2' (GPT-2 small + gpt2-small-res-jb, 12 x 24,576),
    'gemma3' (Gemma 3 270M + gemma-scope-2-270m-pt-res-all, 18 x 16,384 JumpReLU) or
    'gemma3-262k' (the same at 262,144 latents on layers 5, 9, 12, 15). layers / width: other
    layers, or another of the release's widths (gemma3: 16384 or 262144). Files are in the
    release's own on-hub format, as `build_hub_cache` writes them, so sae_lens, transformers and
    `saelineage collect --saes RELEASE` read them offline within `use_hub_cache(root)` (or a child
    process with `hub_env(root)`). Each SAE's thresholds (or biases) are set on the model's own
    residuals of English text (the bundled corpus, `--corpus default`) so that about the release's
    published L0 latents fire per token of such text.

    The same arguments give the same files; what exists is kept, so a second call (or another
    set-up of the same model, or more layers) writes only what is missing. Sizes: GPT-2 0.5 GB +
    151 MB per SAE; Gemma 3 270M 1.1 GB + 84 MB per 16k SAE, 1.34 GB per 262k SAE.
    """
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    if setup not in FULL_SIZE_SETUPS:
        raise ValueError(f"unknown full-size set-up {setup!r}; known: {sorted(FULL_SIZE_SETUPS)}")
    s = FULL_SIZE_SETUPS[setup]
    d_sae = s.width if width is None else int(width)
    if d_sae not in s.sae_ids:
        raise ValueError(f"{s.release} has no width {d_sae} here; widths: {sorted(s.sae_ids)}")
    chosen = tuple(sorted(set(s.layers if layers is None else layers)))
    if not chosen or not all(0 <= l < s.n_layers for l in chosen):
        raise ValueError(f"layers {chosen} are not within 0..{s.n_layers - 1} of {s.model_id}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entry = get_pretrained_saes_directory()[s.release]
    spec = _SPECS[s.release]
    template = s.sae_ids[d_sae]
    triples = [(template.format(layer=l), l, s.hook.format(layer=l)) for l in chosen]
    plans = [
        replace(p, extra={"match_l0": True}) for p in _plans(entry, triples, lambda _: d_sae, s.encoder, s.apply_b_dec)
    ]

    repo = _Repo(root, s.model_id, _full_commit(s.model_id, seed))
    model = tok = None
    if not repo.has(_MODEL_FILES):
        model, tok = _write_model(repo, root, s.model_id, s.n_layers, seed, build=_FULL_MODELS[s.model_id].build)
    sae_repo = _Repo(root, entry.repo_id, _full_commit(entry.repo_id, seed))
    if not all(sae_repo.has(spec.files(p)) for p in plans):
        if model is None:
            model, tok = _load_cached_model(repo)
        ids = _text_calibration_ids(tok)
        with torch.no_grad():
            _write_release(sae_repo, root, spec, plans, model, ids, seed)
    del model
    cfg = json.loads((repo.snapshot / "config.json").read_text())
    return FullSizeCache(
        root,
        setup,
        s.release,
        s.model_id,
        tuple(p.sae_id for p in plans),
        chosen,
        tuple(p.hook for p in plans),
        int(cfg.get("hidden_size") or cfg["n_embd"]),
        d_sae,
        s.n_layers,
        int(cfg["vocab_size"]),
        tuple(p.l0 for p in plans),
    )


# ---------------------------------------------------------------- using the cache


def hub_env(root: Path) -> dict[str, str]:
    """Environment variables that make huggingface_hub, transformers and sae_lens read `root` offline.

    For a new process (subprocess env=). huggingface_hub reads them once, at import; inside a
    running process use `use_hub_cache`. HF_HOME is left alone: HF_HUB_CACHE takes precedence
    for the hub cache, and offline nothing else under HF_HOME (token, xet cache) is used.
    """
    path = str(Path(root).resolve())
    return {
        "HF_HUB_CACHE": path,
        "HUGGINGFACE_HUB_CACHE": path,  # the legacy name, read when HF_HUB_CACHE is unset by older versions
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


# Module-level copies of the hub cache path made at import time: (module, attribute).
_CACHE_COPIES = (
    ("huggingface_hub.constants", "HF_HUB_CACHE"),
    ("huggingface_hub.constants", "HUGGINGFACE_HUB_CACHE"),
    ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE"),
    ("transformer_lens.utilities.hf_utils", "CACHE_DIR"),
)


@contextlib.contextmanager
def use_hub_cache(root: Path | HubCache) -> Iterator[Path]:
    """While open, this process reads the hub cache `root`, offline; everything is restored on exit.

    huggingface_hub copies HF_HUB_CACHE / HF_HUB_OFFLINE from the environment into
    `huggingface_hub.constants` at import, and hf_hub_download, try_to_load_from_cache and
    transformers' offline checks read those attributes at call time; a few modules keep their own
    copy of the cache path (_CACHE_COPIES), patched too when loaded. The environment is set as
    well, for modules first imported while the context is open and for child processes.
    """
    import huggingface_hub.constants as constants

    path = Path(root.path if isinstance(root, HubCache) else root).resolve()
    env = hub_env(path)
    saved_env = {k: os.environ.get(k) for k in env}
    saved_offline = constants.HF_HUB_OFFLINE
    originals = {(m, a): getattr(sys.modules[m], a) for m, a in _CACHE_COPIES if m in sys.modules}
    default = originals[("huggingface_hub.constants", "HF_HUB_CACHE")]
    os.environ.update(env)
    constants.HF_HUB_OFFLINE = True
    for module, attr in _CACHE_COPIES:
        if module in sys.modules:
            setattr(sys.modules[module], attr, str(path))
    try:
        yield path
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        constants.HF_HUB_OFFLINE = saved_offline
        # modules imported inside the context copied our path: give them the original one
        for module, attr in _CACHE_COPIES:
            if module in sys.modules:
                setattr(sys.modules[module], attr, originals.get((module, attr), default))
