"""Train per-layer TopK SAEs on an HF model, save them as SAELens folders, evaluate on held-out text.

Pipeline (`train_saes`):
1. the corpus is cut into windows; the FIRST windows are training text, the LAST ones held out
   (the same end of the corpus that `collect` reads);
2. one forward pass per batch captures every hook's residual stream (stopping after the deepest),
   cached once in RAM as bfloat16 (BOS positions dropped);
3. eai-sparsify `SparseCoder`s (TopK, AuxK, unit-norm decoder; see `topk_train`) are trained on
   the cache for a few epochs, all hooks in the same loop, each on its input divided by one scalar
   (so one learning rate fits every layer; the scale is folded back into the saved weights);
4. each SAE is written as a SAELens folder `<out>/<hook name>/`, then evaluated on the held-out
   windows (`metrics.json`); `training.json` holds the configuration, its hash and timings.

Why not sparsify's `Trainer`: it re-runs the whole model on every batch (no early stop after the
deepest hook, one pass over the data) and reports only to wandb. On this 2-core CPU the SAE step,
not the model, is the cost, so we cache activations once and loop over them ourselves.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import zlib
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelineage.errors import SaelineageError
from saelineage.models.hooks import HookPoint, parse_hook
from saelineage.run import config_hash, write_json
from saelineage.saes.outdir import METRICS_JSON, TRAINING_JSON, is_complete, prepare_out, publish

TRAINER_VERSION = 1
LR_AT_4608 = 3e-3  # Adam lr for 4,608 latents on unit-variance inputs; scaled by sqrt(4608 / latents)


@dataclass
class TrainConfig:
    """What to train. The training settings enter the configuration hash; the evaluation sizes
    (`heldout_tokens`, `ce_tokens`), `device` and `threads` do not."""

    model: str = "smollm2"
    hooks: list[str] = field(default_factory=lambda: [f"blocks.{l}.hook_resid_pre" for l in range(12)])
    corpus: str = "default"
    text_column: str = "text"
    window: int = 128
    expansion_factor: int = 8
    num_latents: int | None = None
    """latents per SAE; overrides expansion_factor"""
    k: int = 32
    tokens: int = 100_000
    """distinct training tokens (BOS positions excluded), from the start of the corpus"""
    epochs: float = 2.0
    batch_size: int = 1024
    """tokens per optimizer step (per hook)"""
    lr: float | None = None
    auxk_alpha: float = 1 / 32
    dead_tokens: int = 25_000
    """a latent that has not fired for this many training tokens is dead (AuxK revives it)"""
    seed: int = 0
    heldout_tokens: int = 16_384
    """held-out tokens for FVU / L0 / dead, from the end of the corpus"""
    ce_tokens: int = 2_048
    """held-out tokens for the cross-entropy increase (a full forward per hook)"""
    center_residual: bool | None = None
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None

    def parsed_hooks(self) -> list[HookPoint]:
        hooks = sorted({parse_hook(h) for h in self.hooks}, key=lambda h: (h.order, h.kind))
        if not hooks:
            raise SaelineageError(
                "no hook points to train on.", "pass --hooks, e.g. '0-11' or 'blocks.3.hook_resid_pre'."
            )
        return hooks

    def d_sae(self, d_model: int) -> int:
        return int(self.num_latents) if self.num_latents else int(self.expansion_factor * d_model)

    def learning_rate(self, d_sae: int) -> float:
        return float(self.lr) if self.lr else LR_AT_4608 * math.sqrt(4608 / d_sae)

    def validate(self) -> None:
        checks = [
            (self.k >= 1, f"k={self.k} must be at least 1.", "use -k 32 (the default)."),
            (
                self.num_latents is None or self.num_latents >= 1,
                f"--latents {self.num_latents} must be positive.",
                "use --latents 4608 or --expansion-factor 8.",
            ),
            (
                self.num_latents is not None or self.expansion_factor >= 1,
                f"--expansion-factor {self.expansion_factor} must be at least 1.",
                "use --expansion-factor 8.",
            ),
            (
                self.num_latents is None or self.k <= self.num_latents,
                f"k={self.k} exceeds the number of latents ({self.num_latents}).",
                "lower -k or raise --latents.",
            ),
            (
                self.tokens >= 1 and self.heldout_tokens >= 1,
                "--tokens and --heldout-tokens must be positive.",
                "use e.g. --tokens 100000 --heldout-tokens 16384.",
            ),
            (self.epochs > 0, f"--epochs {self.epochs} must be positive.", "use e.g. --epochs 2."),
            (self.batch_size >= 1, f"--batch-size {self.batch_size} must be positive.", "use --batch-size 1024."),
            (self.lr is None or self.lr > 0, f"--lr {self.lr} must be positive.", "leave --lr out for the default."),
            (self.ce_tokens >= 0, "--ce-tokens must be 0 or more.", "use --ce-tokens 2048 (0 skips the CE metric)."),
        ]
        for ok, problem, fix in checks:
            if not ok:
                raise SaelineageError(problem, fix)

    def identity(self, model_key: str | None = None) -> dict[str, Any]:
        d = asdict(self)
        for name in ("device", "threads", "heldout_tokens", "ce_tokens"):
            d.pop(name)
        d["hooks"] = [h.name for h in self.parsed_hooks()]
        d["model"] = model_key or self.model
        d["trainer_version"] = TRAINER_VERSION
        return d


def model_key(spec: str) -> str:
    """The model part of the configuration hash: preset name, hub id, or a local folder's weights sha256."""
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        from saelineage.models.loading import weights_sha256

        return f"sha256:{weights_sha256(path)}"
    return spec


# ---- activations --------------------------------------------------------------------------------
@torch.no_grad()
def cache_activations(
    adapter, hooks: list[HookPoint], windows: np.ndarray, bos: bool, batch_windows: int = 32, on_batch=None
) -> dict[HookPoint, torch.Tensor]:
    """Residuals of every hook for all tokens of `windows` (int64 [n, S]), one forward per batch.

    Returns {hook: bfloat16 [n · (S − bos), d_model]} (position 0 dropped when windows start with BOS).
    """
    skip = 1 if bos else 0
    n, s = windows.shape
    per = s - skip
    acts = {h: torch.empty(n * per, adapter.d_model, dtype=torch.bfloat16) for h in hooks}
    for start in range(0, n, batch_windows):
        ids = torch.from_numpy(windows[start : start + batch_windows])
        res = adapter.residuals(ids, hooks)
        rows = slice(start * per, (start + ids.shape[0]) * per)
        for h in hooks:
            acts[h][rows] = res[h][:, skip:].reshape(-1, adapter.d_model).to("cpu", torch.bfloat16)
        if on_batch:
            on_batch(ids.shape[0])
    return acts


def _mean_scale(x: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, float]:
    """Mean [d] and scale s with E‖x − mean‖² = d · s² (float64 accumulation over chunks of x [N, d])."""
    s1 = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = 0.0
    for i in range(0, len(x), chunk):
        c = x[i : i + chunk].double()
        s1 += c.sum(0)
        s2 += float(c.pow(2).sum())
    mean = s1 / len(x)
    var = s2 / len(x) - float(mean.pow(2).sum())
    return mean.float(), math.sqrt(max(var, 1e-12) / x.shape[1])


def _hook_seed(seed: int, hook: HookPoint) -> int:
    """A distinct init seed per hook: identical inits would make latent i of adjacent layers start on
    the same direction, a spurious cross-layer link for decoder-cosine measures."""
    return (seed * 1_000_003 + zlib.crc32(hook.name.encode())) % (2**31)


# ---- training -----------------------------------------------------------------------------------
def fit_saes(
    acts: dict[HookPoint, torch.Tensor], cfg: TrainConfig, d_sae: int, device: str = "cpu", on_step=None
) -> tuple[dict, dict[HookPoint, float], dict[HookPoint, float]]:
    """Train one TopK SparseCoder per hook on cached activations acts[hook]: [N, d].

    All hooks see the same shuffled batches (one permutation per epoch, from `cfg.seed`).
    Returns (coders, scales, train_fvu) keyed by hook; coders map x / scale.
    `on_step(step, steps, fvu_by_hook)` reports progress.
    """
    from saelineage.saes.topk_train import FastSparseCoder, SparseCoderConfig

    hooks = list(acts)
    n_tok, d = next(iter(acts.values())).shape
    bs = min(cfg.batch_size, n_tok)
    steps = max(1, math.ceil(cfg.epochs * n_tok / bs))
    coders, scales = {}, {}
    for h in hooks:
        mean, scale = _mean_scale(acts[h])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_hook_seed(cfg.seed, h))
            coder = FastSparseCoder(
                d, SparseCoderConfig(num_latents=d_sae, k=cfg.k), device=device, dtype=torch.float32
            )
        coder.b_dec.data = (mean / scale).to(device)
        coders[h], scales[h] = coder, scale
    lr = cfg.learning_rate(d_sae)
    params = [p for c in coders.values() for p in c.parameters()]
    opt = torch.optim.Adam(params, lr=lr, fused=True) if device == "cpu" else torch.optim.Adam(params, lr=lr)
    warmup = max(1, min(100, steps // 20))
    decay = max(1, steps // 5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * min(1.0, (steps - i) / decay))
    since = {h: torch.zeros(d_sae, dtype=torch.long, device=device) for h in hooks}
    fvu_ema = {h: math.nan for h in hooks}
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(n_tok, generator=gen)
    pos = 0
    for step in range(steps):
        if pos + bs > n_tok:  # next epoch: a fresh permutation
            order, pos = torch.randperm(n_tok, generator=gen), 0
        idx = order[pos : pos + bs]
        pos += bs
        for h in hooks:
            coder = coders[h]
            coder.set_decoder_norm_to_unit_norm()
            x = acts[h][idx].to(device=device, dtype=torch.float32).div_(scales[h])
            dead = since[h] > cfg.dead_tokens if cfg.auxk_alpha > 0 else None
            out = coder(x, dead_mask=dead)
            (out.fvu + cfg.auxk_alpha * out.auxk_loss).backward()
            coder.remove_gradient_parallel_to_decoder_directions()
            fired = torch.zeros(d_sae, dtype=torch.bool, device=device)
            fired[out.latent_indices[out.latent_acts > 0]] = True
            since[h] += len(idx)
            since[h][fired] = 0
            f = float(out.fvu.detach())
            fvu_ema[h] = f if math.isnan(fvu_ema[h]) else 0.9 * fvu_ema[h] + 0.1 * f
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if on_step:
            on_step(step + 1, steps, fvu_ema)
    for c in coders.values():
        c.set_decoder_norm_to_unit_norm()
    return coders, scales, fvu_ema


# ---- several sets from one activation cache ------------------------------------------------------
def cache_folder(cfg: TrainConfig) -> Path:
    """Where the cached set of `cfg` lives, `cache_dir()/saes/<config hash>/` (trained or not)."""
    from saelineage.models.presets import cache_dir

    return cache_dir() / "saes" / config_hash(cfg.identity(model_key(cfg.model)))


def source_key(cfg: TrainConfig) -> tuple:
    """What two trainings must share to read the same activation cache: model, dtype, device,
    centring, corpus and windows (hooks, seeds, widths and token counts may differ)."""
    return (model_key(cfg.model), cfg.dtype, cfg.device, cfg.center_residual, cfg.corpus, cfg.text_column, cfg.window)


@dataclass
class SharedSource:
    """A loaded model, the corpus windows and the cached training activations that several
    trainings share (the demo's main set and its seed-ceiling set): each reads the first windows of
    one cache instead of loading the model and running it again."""

    key: tuple
    adapter: Any
    corpus: Any
    wins: Any
    acts: dict[HookPoint, torch.Tensor]
    """bfloat16 [n_windows · (window − bos), d_model] per hook"""
    n_windows: int

    def covers(self, hooks: list[HookPoint], n_windows: int) -> bool:
        return n_windows <= self.n_windows and all(h in self.acts for h in hooks)

    def take(self, hooks: list[HookPoint], n_windows: int) -> dict[HookPoint, torch.Tensor]:
        """The activations of the first n_windows windows of each hook (views, no copy)."""
        per = len(next(iter(self.acts.values()))) // max(self.n_windows, 1)
        return {h: self.acts[h][: n_windows * per] for h in hooks}


def train_sets(cfgs: list[TrainConfig], progress: bool = True) -> list[Path]:
    """Train the cached sets of `cfgs` (each as `train_saes(cfg)`), running the model once for all
    of them when two or more still need training and share a `source_key`. Returns their folders."""
    todo = [c for c in cfgs if not is_complete(cache_folder(c), cache_folder(c).name)]
    if len(todo) < 2 or len({source_key(c) for c in todo}) > 1:
        return [train_saes(c, progress=progress) for c in cfgs]
    from saelineage.data.corpus import load_corpus
    from saelineage.data.windowing import make_windows
    from saelineage.models.loading import load_model
    from saelineage.progress import progress as make_progress

    for c in todo:
        c.validate()
    first = todo[0]
    adapter = load_model(first.model, dtype=first.dtype, device=first.device, center_residual=first.center_residual)
    hooks = sorted({h for c in todo for h in c.parsed_hooks()}, key=lambda h: (h.order, h.kind))
    adapter.check_hooks(hooks)
    corpus = load_corpus(first.corpus, text_column=first.text_column)
    wins = make_windows(adapter.tokenizer, corpus.docs, window=first.window)
    per = first.window - (1 if wins.bos else 0)
    n = min(len(wins.ids), max(math.ceil(c.tokens / per) for c in todo))
    bar = make_progress() if progress else None
    with bar or nullcontext():
        task = bar.add_task(f"activations ({len(todo)} SAE sets)", total=n, rate="") if bar else None
        acts = cache_activations(
            adapter,
            hooks,
            wins.ids[:n],
            wins.bos,
            on_batch=(lambda k: bar.advance(task, k)) if bar and task is not None else None,
        )
    source = SharedSource(source_key(first), adapter, corpus, wins, acts, n)
    return [train_saes(c, progress=progress, source=source if c in todo else None) for c in cfgs]


# ---- the whole run ------------------------------------------------------------------------------
def train_saes(
    cfg: TrainConfig,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    source: SharedSource | None = None,
) -> Path:
    """Train, save and evaluate SAEs for `cfg`; returns the output folder.

    source: the model, windows and activations of a `train_sets` call (None: loaded and computed here).
    out=None: the cache folder `cache_dir()/saes/<config hash>/` (built in a temporary sibling and
    renamed when complete, so concurrent callers never see half a set). A folder that already holds
    this configuration's finished run is returned as is unless `force`.
    """
    from saelineage.progress import console

    cfg.validate()
    hooks = cfg.parsed_hooks()
    digest = config_hash(cfg.identity(model_key(cfg.model)))
    cached = out is None
    final = Path(out).expanduser() if out is not None else cache_folder(cfg)
    if is_complete(final, digest) and not force:
        if progress:
            console.print(f"SAEs for this configuration are already trained: [bold]{final}[/]")
        return final

    from saelineage.data.corpus import load_corpus
    from saelineage.data.windowing import make_windows
    from saelineage.models.loading import load_model
    from saelineage.progress import progress as make_progress
    from saelineage.saes.evaluate import evaluate_saes, metrics_table
    from saelineage.saes.loading import save_saelens
    from saelineage.saes.topk_train import coder_to_sae, set_threads

    if cached:
        work = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
    else:
        prepare_out(final, digest, force)
        work = final
    if cfg.threads:
        set_threads(cfg.threads)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    if source is not None and source.key != source_key(cfg):
        raise ValueError("a shared source serves only trainings of its own model, corpus and windows")
    adapter = (
        source.adapter
        if source
        else load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, center_residual=cfg.center_residual)
    )
    adapter.check_hooks(hooks)
    d_sae = cfg.d_sae(adapter.d_model)
    if cfg.k > d_sae:
        raise SaelineageError(
            f"k={cfg.k} exceeds the number of latents ({d_sae} = {cfg.expansion_factor} × d_model {adapter.d_model})."
            if not cfg.num_latents
            else f"k={cfg.k} exceeds the number of latents ({d_sae}).",
            "lower -k, or raise --expansion-factor / --latents.",
        )
    corpus = source.corpus if source else load_corpus(cfg.corpus, text_column=cfg.text_column)
    wins = source.wins if source else make_windows(adapter.tokenizer, corpus.docs, window=cfg.window)
    per = cfg.window - (1 if wins.bos else 0)
    n_train = math.ceil(cfg.tokens / per)
    n_held = math.ceil(cfg.heldout_tokens / per)
    n_ce = min(n_held, math.ceil(cfg.ce_tokens / per)) if cfg.ce_tokens else 0
    if n_train + n_held > len(wins.ids):
        raise SaelineageError(
            f"the corpus has {len(wins.ids) * per:,} tokens ({len(wins.ids)} windows of {cfg.window}), fewer than "
            f"the {n_train * per:,} training + {n_held * per:,} held-out tokens requested.",
            "lower --tokens / --heldout-tokens, or use a larger --corpus.",
        )
    timings["load"] = time.perf_counter() - t_start
    try:
        work.mkdir(parents=True, exist_ok=True)
        info: dict[str, Any] = {
            "config_hash": digest,
            "status": "running",
            "config": cfg.identity(model_key(cfg.model)),
            "model_identity": adapter.identity,
            "corpus_identity": corpus.identity,
            "d_model": adapter.d_model,
            "d_sae": d_sae,
            "bos": wins.bos,
            "train_windows": [0, n_train],
            "heldout_windows": [len(wins.ids) - n_held, len(wins.ids)],
            "n_train_tokens": n_train * per,
            "lr": cfg.learning_rate(d_sae),
            "evaluation": {"heldout_tokens": cfg.heldout_tokens, "ce_tokens": cfg.ce_tokens},
        }
        write_json(work / TRAINING_JSON, info)

        bar = make_progress() if progress else None
        with bar or nullcontext():
            t0 = time.perf_counter()
            if source is not None and source.covers(hooks, n_train):
                acts = source.take(hooks, n_train)
            else:
                act_task = bar.add_task("activations", total=n_train, rate="") if bar else None
                acts = cache_activations(
                    adapter,
                    hooks,
                    wins.ids[:n_train],
                    wins.bos,
                    on_batch=(lambda n: bar.advance(act_task, n)) if bar and act_task is not None else None,
                )
            timings["activations"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            steps = max(1, math.ceil(cfg.epochs * n_train * per / min(cfg.batch_size, n_train * per)))
            fit_task = bar.add_task(f"training {len(hooks)} SAEs", total=steps, rate="") if bar else None

            def on_step(step, total, fvu):
                if bar:
                    vals = [v for v in fvu.values() if not math.isnan(v)]
                    bar.update(fit_task, completed=step, rate=f"FVU mean {np.mean(vals):.3f} max {max(vals):.3f}")

            coders, scales, train_fvu = fit_saes(acts, cfg, d_sae, device=cfg.device, on_step=on_step)
            del acts
            timings["training"] = time.perf_counter() - t0

            meta = {
                "model_name": cfg.model,
                "context_size": cfg.window,
                "prepend_bos": bool(wins.bos),
                "dataset_path": cfg.corpus,
                "saelineage_config_hash": digest,
            }
            saes = {}
            for h in hooks:
                saes[h] = coder_to_sae(coders[h], h, scales[h])
                save_saelens(saes[h], work / h.name, metadata=meta)

            t0 = time.perf_counter()
            held = wins.ids[len(wins.ids) - n_held :]
            eval_task = bar.add_task("evaluating", total=n_held + n_ce, rate="") if bar else None
            on_device = {h: s.to(cfg.device) for h, s in saes.items()}
            metrics = evaluate_saes(
                adapter,
                on_device,
                held,
                wins.bos,
                ce_windows=n_ce,
                on_batch=(lambda phase, n: bar.advance(eval_task, n)) if bar and eval_task is not None else None,
            )
            timings["evaluation"] = time.perf_counter() - t0
        for h in hooks:
            metrics[h].train_fvu = train_fvu[h]
        timings["total"] = time.perf_counter() - t_start
        rows = [metrics[h].as_dict() for h in hooks]
        write_json(
            work / METRICS_JSON,
            {
                "config_hash": digest,
                "model": cfg.model,
                "layers": rows,
                "evaluation": info["evaluation"],
                "timings_s": {k: round(v, 2) for k, v in timings.items()},
            },
        )
        info.update(
            status="complete",
            scales={h.name: scales[h] for h in hooks},
            timings_s={k: round(v, 2) for k, v in timings.items()},
        )
        write_json(work / TRAINING_JSON, info)
        if cached:
            publish(work, final, digest)
    except BaseException:
        if cached:  # never leave half a set in the cache
            shutil.rmtree(work, ignore_errors=True)
        raise
    if progress:
        from rich.console import Console

        table = metrics_table(rows, title=f"SAEs in {final} (held-out evaluation)")
        wide = console if console.is_terminal else Console(file=console.file, width=120)  # logs: no squeezing
        wide.print(table)
        console.print(
            f"trained in {timings['total']:.0f} s "
            f"(activations {timings['activations']:.0f} s, training {timings['training']:.0f} s, "
            f"evaluation {timings['evaluation']:.0f} s)"
        )
    return final
