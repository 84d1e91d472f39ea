"""Seed ceiling study: how reproducible are our SAEs, and what makes them more so?

For SmolLM2-135M, layer 5 (and layer 6 for the cross-layer numbers), trains SAEs under
variations of the training settings and measures on held-out tokens (the last windows of the
bundled corpus, the end that `collect` reads):

  * ceiling      share of live layer-5 seed-0 features with a layer-5 seed-1 partner ≥ τ
                 (Pearson, Jaccard and the other data measures of `saelineage.ceiling.match`);
  * pass         share of live layer-5 features with a layer-6 partner at Pearson ≥ 0.5 (seed 0);
  * new          share of live layer-6 features without a layer-5 partner at Pearson ≥ 0.5;
  * pass / ceiling, the ceiling-normalised pass-through;
  * the same at Pearson ≥ 0.5 on the first 12.5k / 25k held-out tokens (does the ceiling converge?);
  * held-out FVU, L0, dead share, and the training seconds per SAE on this machine.

Variants: training tokens (distinct tokens from the start of the corpus; `epochs` passes over
them), expansion factor, k, TopK (the project's trainer, `fit_saes`) versus a ReLU SAE with an L1
penalty (plain torch below). Residuals of layers 5 and 6 are cached once (float32 → bfloat16, as
`train_saes` does) under --cache and sliced for smaller budgets. Results are merged into --out
after every variant, so an interrupted study keeps what it finished; a variant already there is
skipped unless --redo.

    python benchmarks/study_seed_ceiling.py --quick                    # smoke run, a few minutes
    python benchmarks/study_seed_ceiling.py --out study/results.json --budget-min 70
    python benchmarks/study_seed_ceiling.py --only e4_t200k,relu       # some variants
    python benchmarks/study_seed_ceiling.py --plot study/results.json --figures docs/figures
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

MEASURES = ("pearson", "jaccard", "act_cosine")  # mutual_info / sufficiency: ~2× the matching time, left out
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
SUBSETS = (12_500, 25_000)  # held-out prefixes (tokens) at which the Pearson ≥ 0.5 numbers are repeated
LAYER_A, LAYER_B = 5, 6
UNIT_PASSES = 1_000_000  # cost unit: 1M token passes of one 4,608-latent TopK SAE


@dataclass
class Variant:
    name: str
    group: str
    tokens: int = 100_000
    epochs: float = 2.0
    expansion: int = 8
    k: int = 32
    arch: str = "topk"  # or "relu" (L1 penalty, λ steered to a mean L0 of k)
    next_layer: bool = True  # also train layer 6 (seed 0) for pass-through / new

    def passes(self) -> float:
        return self.tokens * self.epochs

    def cost_units(self) -> float:
        """Rough cost in UNIT_PASSES: token passes × SAEs × width factor (ReLU: dense decoder, ~3×)."""
        n = 3 if self.next_layer else 2
        f = (self.expansion / 8) * (3.0 if self.arch == "relu" else (0.85 + 0.15 * self.k / 32))
        return self.passes() / UNIT_PASSES * n * f


def full_plan() -> list[Variant]:
    """In priority order: training tokens, then width / k, ReLU, then the extra token points."""
    return [
        Variant("t100k", "tokens", tokens=100_000),
        Variant("t400k", "tokens", tokens=400_000),
        Variant("t200k", "tokens", tokens=200_000, next_layer=False),
        Variant("e4", "width", expansion=4),
        Variant("k16", "k", k=16),
        Variant("k64", "k", k=64),
        Variant("relu", "arch", arch="relu"),
        Variant("e4_t200k", "width", expansion=4, tokens=200_000, next_layer=False),
        Variant("t100k_ep4", "passes", tokens=100_000, epochs=4.0, next_layer=False),
        Variant("e16", "width", expansion=16),
        # candidates at the default's cost (expansion 4 costs half as much per token pass)
        Variant("e4k16_t200k", "candidate", expansion=4, k=16, tokens=200_000),
        Variant("e4k16_t100k_ep4", "candidate", expansion=4, k=16, tokens=100_000, epochs=4.0, next_layer=False),
        # the corpus's distinct tokens before the held-out end
        Variant("t650k", "tokens", tokens=650_000),
        Variant("e4k16_t650k", "candidate", expansion=4, k=16, tokens=650_000),
        Variant("t650k_ep2.5", "passes", tokens=650_000, epochs=2.5, next_layer=False),
        Variant("e4k16_t100k_ep2", "candidate", expansion=4, k=16, tokens=100_000, epochs=2.0, next_layer=False),
        Variant("e4k16_t100k_ep3", "candidate", expansion=4, k=16, tokens=100_000, epochs=3.0, next_layer=False),
        Variant("k16_t650k", "candidate", k=16, tokens=650_000, next_layer=False),
    ]


def quick_plan() -> list[Variant]:
    return [
        Variant("q_t6k", "tokens", tokens=6_000),
        Variant("q_t12k", "tokens", tokens=12_000),
        Variant("q_e4", "width", tokens=12_000, expansion=4),
        Variant("q_relu", "arch", tokens=12_000, arch="relu"),
    ]


# ---- data ---------------------------------------------------------------------------------------
class Data:
    """Model, windows, hooks; training residuals (bf16, cached on disk) and held-out residuals (f32)."""

    def __init__(self, cache: Path, heldout_tokens: int, max_train_tokens: int):
        from saelineage.data.corpus import load_corpus
        from saelineage.data.windowing import make_windows
        from saelineage.models.hooks import parse_hook
        from saelineage.models.loading import load_model

        self.adapter = load_model("smollm2")
        self.hooks = [parse_hook(f"blocks.{l}.hook_resid_pre") for l in (LAYER_A, LAYER_B)]
        wins = make_windows(self.adapter.tokenizer, load_corpus("default").docs, window=128)
        self.ids, self.bos = wins.ids, wins.bos
        self.per = 128 - (1 if wins.bos else 0)
        self.n_held = math.ceil(heldout_tokens / self.per)
        self.n_train_max = math.ceil(max_train_tokens / self.per)
        if self.n_train_max + self.n_held > len(self.ids):
            raise SystemExit(f"corpus too small: {len(self.ids)} windows of {self.per} tokens")
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        self.train = self._cached("train", self.ids[: self.n_train_max], torch.bfloat16)
        self.held = self._cached("heldout", self.ids[len(self.ids) - self.n_held :], torch.float32)

    def _cached(self, kind: str, windows: np.ndarray, dtype: torch.dtype) -> dict[int, torch.Tensor]:
        """{layer: [n · per, d]}: from a cache file holding at least these windows, else computed."""
        n, start = len(windows), 0
        out = {h.layer: torch.empty(n * self.per, self.adapter.d_model, dtype=dtype) for h in self.hooks}
        for f in sorted(self.cache.glob(f"{kind}_*.pt"), key=lambda f: int(f.stem.split("_")[1])):
            have = int(f.stem.split("_")[1])
            if (kind == "train" and have >= n) or (kind == "heldout" and have == n):
                t = torch.load(f)
                return {l: t[l][: n * self.per] for l in t}
            if kind == "train" and have > start:  # the first `have` windows are already computed
                t = torch.load(f)
                for l in out:
                    out[l][: have * self.per] = t[l]
                start = have
                del t
        t0 = time.perf_counter()
        skip = 1 if self.bos else 0
        with torch.no_grad():
            for s in range(start, n, 32):
                ids = torch.from_numpy(windows[s : s + 32])
                res = self.adapter.residuals(ids, self.hooks)
                rows = slice(s * self.per, (s + ids.shape[0]) * self.per)
                for h in self.hooks:
                    out[h.layer][rows] = res[h][:, skip:].reshape(-1, self.adapter.d_model).to(dtype)
        torch.save(out, self.cache / f"{kind}_{n}.pt")
        log(f"cached {kind} residuals of layers {list(out)}: windows {start}-{n} in {time.perf_counter() - t0:.0f} s")
        return out


# ---- training -----------------------------------------------------------------------------------
def train_topk(acts: dict[int, torch.Tensor], v: Variant, seed: int, d_model: int):
    """fit_saes on {layer: residuals}; returns ({layer: SAE}, seconds)."""
    from saelineage.saes.topk_train import coder_to_sae
    from saelineage.saes.train import TrainConfig, fit_saes

    hooks = {h: acts[h.layer] for h in DATA.hooks if h.layer in acts}
    cfg = TrainConfig(hooks=[h.name for h in hooks], expansion_factor=v.expansion, k=v.k, tokens=v.tokens,
                      epochs=v.epochs, seed=seed)  # fmt: skip
    t0 = time.perf_counter()
    coders, scales, _ = fit_saes(hooks, cfg, cfg.d_sae(d_model))
    sec = time.perf_counter() - t0
    return {h.layer: coder_to_sae(coders[h], h, scales[h]) for h in hooks}, sec


class ReluSAE(torch.nn.Module):
    """ReLU SAE with unit-norm decoder rows: f = relu(W_enc (x − b_dec) + b_enc), x̂ = f W_dec + b_dec."""

    def __init__(self, d: int, n: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n, d, generator=g)
        w /= w.norm(dim=1, keepdim=True)
        self.W_enc = torch.nn.Parameter(w.clone())
        self.W_dec = torch.nn.Parameter(w.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(n))
        self.b_dec = torch.nn.Parameter(torch.zeros(d))

    def forward(self, x):
        f = torch.relu(torch.nn.functional.linear(x - self.b_dec, self.W_enc, self.b_enc))
        return f, f @ self.W_dec + self.b_dec


def train_relu(acts: dict[int, torch.Tensor], v: Variant, seed: int, d_model: int):
    """ReLU + L1 SAEs, one per layer, same batches and schedule as fit_saes, a third of its lr.

    Loss = FVU + λ · mean_b Σ_i f_i (decoder rows kept at unit norm, gradient parallel to them
    removed). λ starts at 2e-3 and is steered multiplicatively towards a mean L0 of v.k during the
    first 80% of steps, then frozen (so seeds and architectures are compared at the same L0)."""
    from saelineage.saes.sae import SAE
    from saelineage.saes.train import LR_AT_4608, _mean_scale

    n_lat = v.expansion * d_model
    layers = list(acts)
    n_tok = len(acts[layers[0]])
    bs = 1024
    steps = max(1, math.ceil(v.epochs * n_tok / bs))
    lr = LR_AT_4608 / 3 * math.sqrt(4608 / n_lat)  # at the TopK lr, L1 kills half the latents early
    t0 = time.perf_counter()
    saes, scales, lam = {}, {}, {}
    for l in layers:
        mean, scale = _mean_scale(acts[l])
        m = ReluSAE(d_model, n_lat, seed * 1_000_003 + l)
        m.b_dec.data = mean / scale
        saes[l], scales[l], lam[l] = m, scale, 2e-3
    params = [p for m in saes.values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    warmup, decay = max(1, min(100, steps // 20)), max(1, steps // 5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * min(1.0, (steps - i) / decay))
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(n_tok, generator=gen), 0
    l0_ema = dict.fromkeys(layers, float("nan"))
    for step in range(steps):
        if pos + bs > n_tok:
            order, pos = torch.randperm(n_tok, generator=gen), 0
        idx = order[pos : pos + bs]
        pos += bs
        for l in layers:
            m = saes[l]
            x = acts[l][idx].float().div_(scales[l])
            f, xh = m(x)
            fvu = (x - xh).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
            (fvu + lam[l] * f.sum(1).mean()).backward()
            with torch.no_grad():
                g, w = m.W_dec.grad, m.W_dec
                g -= (g * w).sum(1, keepdim=True) * w
                l0 = float((f > 0).float().sum(1).mean())
            l0_ema[l] = l0 if math.isnan(l0_ema[l]) else 0.9 * l0_ema[l] + 0.1 * l0
            if step < 0.8 * steps:
                lam[l] *= math.exp(0.03 * max(-1.0, min(1.0, math.log(max(l0, 1e-3) / v.k))))
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        with torch.no_grad():
            for m in saes.values():
                m.W_dec /= m.W_dec.norm(dim=1, keepdim=True)
    sec = time.perf_counter() - t0
    out = {}
    for l in layers:
        m, s = saes[l], scales[l]
        with torch.no_grad():
            out[l] = SAE(
                W_enc=m.W_enc.detach().T.contiguous(),
                b_enc=m.b_enc.detach() * s,
                W_dec=m.W_dec.detach().contiguous(),
                b_dec=m.b_dec.detach() * s,
                architecture="standard",
                hook_name=f"blocks.{l}.hook_resid_pre",
                meta={"lambda": lam[l], "train_l0": l0_ema[l]},
            )
    return out, sec


# ---- measurement --------------------------------------------------------------------------------
def encode(sae, x: torch.Tensor) -> tuple[sp.csr_matrix, dict]:
    """Held-out codes (csr [T, d_sae]) and FVU / L0 / dead share."""
    codes = sae.encode_sparse(x)
    m = codes.csr(sae.d_sae)
    fvu = 0.0
    tot = float((x - x.mean(0)).pow(2).sum())
    for r0 in range(0, x.shape[0], 8192):
        part = m[r0 : r0 + 8192]
        xh = torch.from_numpy(part.toarray()).float() @ sae.W_dec + sae.b_dec
        fvu += float((x[r0 : r0 + 8192] - xh).pow(2).sum())
    fired = np.asarray((m > 0).sum(0)).ravel()
    return m, {"fvu": fvu / tot, "l0": m.nnz / m.shape[0], "dead": float((fired == 0).mean()), "d_sae": sae.d_sae}


def rates(a: sp.csr_matrix, b: sp.csr_matrix, measures=MEASURES) -> dict:
    """{measure: {τ: share of A's live features with a B partner ≥ τ}} and the live count."""
    from saelineage.ceiling.match import best_matches, match_rate

    best = best_matches(a, b, measures=measures)
    live = np.asarray((a > 0).sum(0)).ravel() > 0
    out = {m: {str(t): match_rate(best[m][0], live, t) for t in THRESHOLDS} for m in measures}
    out["live"] = int(live.sum())
    return out


def measure(codes: dict[str, sp.csr_matrix], per: int) -> dict:
    """codes: {'a0': layer 5 seed 0, 'a1': layer 5 seed 1, 'b0': layer 6 seed 0 (optional)}."""
    res = {"ceiling": rates(codes["a0"], codes["a1"]), "subsets": {}}
    if "b0" in codes:
        res["pass"] = rates(codes["a0"], codes["b0"])
        res["next_matched"] = rates(codes["b0"], codes["a0"])  # new share = 1 − this
    t_all = codes["a0"].shape[0]
    res["subsets"][str(t_all)] = {k: res[k] for k in ("ceiling", "pass", "next_matched") if k in res}
    for t in SUBSETS:
        rows = math.ceil(t / per) * per
        if rows >= t_all:
            continue
        sub = {k: c[:rows] for k, c in codes.items()}
        r = {"ceiling": rates(sub["a0"], sub["a1"], ("pearson",))}
        if "b0" in sub:
            r["pass"] = rates(sub["a0"], sub["b0"], ("pearson",))
            r["next_matched"] = rates(sub["b0"], sub["a0"], ("pearson",))
        res["subsets"][str(rows)] = r
    p = res["ceiling"]["pearson"]["0.5"]
    if "pass" in res:
        res["summary"] = {
            "ceiling": p,
            "ceiling_jaccard": res["ceiling"]["jaccard"]["0.5"],
            "pass": res["pass"]["pearson"]["0.5"],
            "new": 1 - res["next_matched"]["pearson"]["0.5"],
            "pass_over_ceiling": res["pass"]["pearson"]["0.5"] / p if p else float("nan"),
        }
    else:
        res["summary"] = {"ceiling": p, "ceiling_jaccard": res["ceiling"]["jaccard"]["0.5"]}
    return res


def run_variant(v: Variant) -> dict:
    n = min(len(DATA.train[LAYER_A]), math.ceil(v.tokens / DATA.per) * DATA.per)
    acts = {l: DATA.train[l][:n] for l in ((LAYER_A, LAYER_B) if v.next_layer else (LAYER_A,))}
    trainer = train_relu if v.arch == "relu" else train_topk
    d = DATA.adapter.d_model
    saes0, sec0 = trainer(acts, v, 0, d)
    log(f"  {v.name}: seed 0 ({len(acts)} SAEs) trained in {sec0:.0f} s")
    saes1, sec1 = trainer({LAYER_A: acts[LAYER_A]}, v, 1, d)
    log(f"  {v.name}: seed 1 (1 SAE) trained in {sec1:.0f} s")
    codes, quality = {}, {}
    for key, sae, layer in (("a0", saes0[LAYER_A], LAYER_A), ("a1", saes1[LAYER_A], LAYER_A),
                            ("b0", saes0.get(LAYER_B), LAYER_B)):  # fmt: skip
        if sae is not None:
            codes[key], quality[key] = encode(sae, DATA.held[layer])
            quality[key].update({k: v_ for k, v_ in sae.meta.items() if k in ("lambda", "train_l0")})
    res = measure(codes, DATA.per)
    res.update(
        variant=asdict(v),
        train_tokens=n,
        token_passes=int(n * v.epochs),
        heldout_tokens=codes["a0"].shape[0],
        quality=quality,
        seconds={
            "seed0": sec0,
            "seed1": sec1,
            "per_sae": (sec0 + sec1) / (len(acts) + 1),
            "per_sae_per_m_passes": (sec0 + sec1) / (len(acts) + 1) / (n * v.epochs / 1e6),
        },  # fmt: skip
        load_avg=os.getloadavg()[0],
    )
    return res


# ---- plots --------------------------------------------------------------------------------------
def is_base(r: dict, **over) -> bool:
    """TopK, expansion 8, k 32, 2 epochs, unless overridden."""
    want = {"arch": "topk", "expansion": 8, "k": 32, "epochs": 2.0, **over}
    return all(r["variant"][k] == v for k, v in want.items())


def token_fit(res: dict) -> tuple[float, float] | None:
    """Least-squares ceiling = a + b · log10(token passes) over the 2-epoch TopK e8 k32 points."""
    pts = [(math.log10(r["token_passes"]), r["summary"]["ceiling"]) for r in res.values() if is_base(r)]
    if len(pts) < 2:
        return None
    b, a = np.polyfit([p for p, _ in pts], [c for _, c in pts], 1)
    return float(a), float(b)


DEFAULT_S_PER_M = 226.0
"""Seconds per 1M token passes of one 4,608-latent SAE in the default set's 12-layer run
(training.json of the embedded default: 542 s for 12 SAEs × 200,152 passes)."""


def rel_cost(res: dict, expansion: int) -> float:
    """Cost per token pass of an SAE of this expansion relative to expansion 8 (median of the study's
    measured seconds per 1M passes, variants at load < 2.1)."""

    def med(e):
        xs = [r["seconds"]["per_sae_per_m_passes"] for r in res.values()
              if r["variant"]["expansion"] == e and r["variant"]["arch"] == "topk" and r["load_avg"] < 2.1]  # fmt: skip
        return float(np.median(xs)) if xs else float(e / 8)

    return med(expansion) / med(8)


def plot(results_path: Path, figures: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(results_path.read_text())["variants"]
    figures.mkdir(parents=True, exist_ok=True)
    s = {k: r["summary"] for k, r in res.items()}

    # 1. vs training token passes (TopK e8 k32; 2 epochs over the distinct tokens, other epochs marked)
    fig, ax = plt.subplots(figsize=(6.6, 4.3))
    two = sorted((r["token_passes"], k) for k, r in res.items() if is_base(r))
    xs = [p / 1e3 for p, _ in two]
    ax.plot(xs, [s[k]["ceiling"] for _, k in two], "o-", label="seed ceiling (Pearson ≥ 0.5)")
    ax.plot(xs, [s[k]["ceiling_jaccard"] for _, k in two], "s--", label="seed ceiling (Jaccard ≥ 0.5)")
    wp = [(p, k) for p, k in two if "pass" in s[k]]
    ax.plot([p / 1e3 for p, _ in wp], [s[k]["pass"] for _, k in wp], "^-", label="pass-through 5→6 (Pearson ≥ 0.5)")
    ax.plot([p / 1e3 for p, _ in wp], [s[k]["pass_over_ceiling"] for _, k in wp], "v:", label="pass / ceiling")
    for p, k in two:
        ax.annotate(f"{res[k]['train_tokens'] // 1000}k × 2", (p / 1e3, s[k]["ceiling"]), textcoords="offset points",
                    xytext=(4, 5), fontsize=8)  # fmt: skip
    other = [
        (r["token_passes"], k) for k, r in res.items() if is_base(r, epochs=r["variant"]["epochs"]) and not is_base(r)
    ]
    for p, k in other:
        ax.plot([p / 1e3], [s[k]["ceiling"]], "D", color="k")
        ax.annotate(f"{res[k]['train_tokens'] // 1000}k × {res[k]['variant']['epochs']:g}", (p / 1e3, s[k]["ceiling"]),
                    textcoords="offset points", xytext=(5, -12), fontsize=8)  # fmt: skip
    fit = token_fit(res)
    if fit:
        a, b = fit
        grid = np.logspace(np.log10(min(xs) * 1e3), np.log10(3e6), 50)
        ax.plot(grid / 1e3, a + b * np.log10(grid), color="gray", lw=0.8, ls="--",
                label=f"fit: {a:.2f} + {b:.3f}·log10(passes)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training token passes per SAE (thousands)")
    ax.set_ylabel("share of live layer-5 features")
    ax.set_ylim(0, 1.05)
    ax.set_title("SmolLM2-135M layer 5, TopK 4,608 latents, k = 32")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(figures / "seed_ceiling_tokens.png", dpi=120)
    plt.close(fig)

    # 2. width and k (100k tokens × 2 epochs)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, key in ((axes[0], "expansion"), (axes[1], "k")):
        fixed = {"tokens": 100_000, "k": 32} if key == "expansion" else {"tokens": 100_000, "expansion": 8}
        rows = sorted(
            (r["variant"][key], k)
            for k, r in res.items()
            if is_base(r, **{key: r["variant"][key]}) and all(r["variant"][f] == v for f, v in fixed.items())
        )
        xs = [x for x, _ in rows]
        ax.plot(xs, [s[k]["ceiling"] for _, k in rows], "o-", label="ceiling (Pearson ≥ 0.5)")
        ax.plot(xs, [s[k].get("pass", np.nan) for _, k in rows], "^-", label="pass-through 5→6")
        ax.plot(xs, [s[k].get("new", np.nan) for _, k in rows], "x--", label="new share, layer 6")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("expansion factor (k = 32)" if key == "expansion" else "k (expansion 8)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of live features")
    axes[0].legend(fontsize=8)
    fig.suptitle("TopK, 100k training tokens × 2 epochs")
    fig.tight_layout()
    fig.savefig(figures / "seed_ceiling_width_k.png", dpi=120)
    plt.close(fig)

    # 3. TopK vs ReLU (and the largest TopK run): match rate vs Pearson threshold
    if "relu" in res:
        fig, ax = plt.subplots(figsize=(6.2, 3.9))
        big = max((r["token_passes"], k) for k, r in res.items() if is_base(r) and "pass" in r)[1]
        for k, lab in (("t100k", "TopK, 100k×2"), ("relu", "ReLU+L1, 100k×2"), (big, f"TopK, {big[1:]}×2")):
            ts = [float(t) for t in res[k]["ceiling"]["pearson"]]
            (line,) = ax.plot(ts, list(res[k]["ceiling"]["pearson"].values()), "o-", label=f"{lab}: ceiling")
            if "pass" in res[k]:
                ax.plot(ts, list(res[k]["pass"]["pearson"].values()), "^--", color=line.get_color(),
                        label=f"{lab}: pass 5→6")  # fmt: skip
        ax.set_xlabel("Pearson threshold τ")
        ax.set_ylabel("share of live layer-5 features")
        ax.set_title("TopK vs ReLU + L1 (4,608 latents, mean L0 ≈ 32)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figures / "seed_ceiling_relu.png", dpi=120)
        plt.close(fig)

    # 4. matching tokens
    fig, ax = plt.subplots(figsize=(6.2, 3.9))
    for r in sorted(res.values(), key=lambda r: (r["variant"]["arch"], r["token_passes"])):
        if not (is_base(r) or r["variant"]["arch"] == "relu") or "pass" not in r:
            continue
        sub = sorted((int(t), x) for t, x in r["subsets"].items())
        lab = f"{r['variant']['arch']} {r['train_tokens'] // 1000}k×2"
        (line,) = ax.plot([t / 1e3 for t, _ in sub], [x["ceiling"]["pearson"]["0.5"] for _, x in sub], "o-",
                          label=f"ceiling, {lab}")  # fmt: skip
        ax.plot([t / 1e3 for t, _ in sub], [x["pass"]["pearson"]["0.5"] for _, x in sub], "^:",
                color=line.get_color(), label=f"pass 5→6, {lab}")  # fmt: skip
    ax.set_xlabel("held-out tokens used for matching (thousands)")
    ax.set_ylabel("share at Pearson ≥ 0.5")
    ax.set_title("Convergence in the matching tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figures / "seed_ceiling_matching_tokens.png", dpi=120)
    plt.close(fig)
    # 5. ceiling vs training cost per layer, all TopK variants
    fig, ax = plt.subplots(figsize=(6.6, 4.3))
    topk = {k: r for k, r in res.items() if r["variant"]["arch"] == "topk"}
    for k, r in topk.items():
        sec = r["token_passes"] / 1e6 * rel_cost(res, r["variant"]["expansion"]) * DEFAULT_S_PER_M
        mark = {4: "o", 8: "s", 16: "^"}[r["variant"]["expansion"]]
        color = {16: "tab:green", 32: "tab:blue", 64: "tab:red"}[r["variant"]["k"]]
        ax.plot([sec], [s[k]["ceiling"]], mark, color=color)
        ax.annotate(k, (sec, s[k]["ceiling"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.axvline(0.2 * DEFAULT_S_PER_M, color="gray", lw=0.8, ls=":")
    ax.axhline(0.55, color="gray", lw=0.8, ls="--")
    ax.axhline(0.7, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("estimated training seconds per layer (default set's rate; dotted: today's default)")
    ax.set_ylabel("seed ceiling, Pearson ≥ 0.5")
    title = (
        "Ceiling per unit of compute (marker: ○ 2,304 □ 4,608 △ 9,216 latents;\ncolour: k 16 green, 32 blue, 64 red)"
    )
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figures / "seed_ceiling_cost.png", dpi=120)
    plt.close(fig)
    if fit:
        a, b = fit
        print(f"fit ceiling = {a:.3f} + {b:.4f}·log10(passes); 0.55 at {10 ** ((0.55 - a) / b):,.0f}, "
              f"0.7 at {10 ** ((0.7 - a) / b):,.0f} token passes")  # fmt: skip
    print(f"figures in {figures}")


# ---- main ---------------------------------------------------------------------------------------
DATA: Data


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    global DATA
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny token budgets, a few minutes")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (merged after every variant)")
    ap.add_argument("--cache", type=Path, default=Path("study/cache"), help="cached residuals")
    ap.add_argument("--heldout-tokens", type=int, default=None, help="matching tokens (default 50,000; quick 6,000)")
    ap.add_argument("--max-train-tokens", type=int, default=None, help="residuals cached for training (650,000)")
    ap.add_argument("--only", default=None, help="comma-separated variant names of the plan")
    ap.add_argument("--budget-min", type=float, default=70.0, help="skip variants whose estimated cost overruns")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--redo", action="store_true", help="re-run variants already in --out")
    ap.add_argument("--plot", type=Path, default=None, help="only draw the figures of this results JSON")
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.figures)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from saelineage.saes.topk_train import set_threads

    set_threads(args.threads)
    plan = quick_plan() if args.quick else full_plan()
    if args.only:
        names = args.only.split(",")
        plan = [v for v in plan if v.name in names]
    out = args.out or Path("study/results_quick.json" if args.quick else "study/results.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {"variants": {}}
    held = args.heldout_tokens or (6_000 if args.quick else 50_000)
    max_train = args.max_train_tokens or max(v.tokens for v in plan)
    t_start = time.perf_counter()
    DATA = Data(args.cache, held, max_train)
    results["setup"] = {
        "heldout_windows": [len(DATA.ids) - DATA.n_held, len(DATA.ids)],
        "corpus_windows": len(DATA.ids),
        "tokens_per_window": DATA.per,
        "layers": [LAYER_A, LAYER_B],
        "threads": args.threads,
    }
    rate = 300.0  # seconds per cost unit until measured
    for v in plan:
        if math.ceil(v.tokens / DATA.per) > DATA.n_train_max:
            log(f"{v.name}: skipped ({v.tokens:,} training tokens exceed the {DATA.n_train_max * DATA.per:,} cached)")
            continue
        if v.name in results["variants"] and not args.redo:
            log(f"{v.name}: already measured, skipped")
            continue
        left = args.budget_min * 60 - (time.perf_counter() - t_start)
        est = v.cost_units() * rate
        if est > left:
            log(f"{v.name}: skipped (estimated {est:.0f} s, {left:.0f} s of budget left)")
            continue
        log(f"{v.name}: {asdict(v)} (estimated {est:.0f} s)")
        t0 = time.perf_counter()
        r = run_variant(v)
        r["seconds"]["total"] = time.perf_counter() - t0
        if v.arch == "topk":
            rate = r["seconds"]["per_sae_per_m_passes"] / ((0.85 + 0.15 * v.k / 32) * v.expansion / 8) * 1.1
        results["variants"][v.name] = r
        out.write_text(json.dumps(results, indent=1))
        log(f"{v.name}: {json.dumps({k: round(x, 3) for k, x in r['summary'].items()})} "
            f"({r['seconds']['total']:.0f} s; load {r['load_avg']:.1f})")  # fmt: skip
    log(f"done in {time.perf_counter() - t_start:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
