"""Why AND recall and `new` precision fall under noise: the figures and numbers of docs/noise_models.md.

    python benchmarks/study_noise_models.py [--seeds 0 1 2] [--out docs/figures] [--json data.json]

Works on the planted codes alone (saelineage.testing.noisy_lineage, every noise model of
saelineage.testing.noise_models), without the stats and analyze stages, so that each effect is
measured where it arises:

- AND gates: the 2×2×2 counts of every planted gate, the scores P(j | a∧b) and P(a∧b | j) with
  their Clopper–Pearson lower bounds (the evidence test needs both ≥ min_prob = 0.6), against the
  closed forms below;
- lifecycle: every live feature's best predecessor by Pearson over all pairs (dense, as the
  benchmark's truth), noise-free and noisy, and whether that best partner is still the same feature.

Closed forms, for AND parents a, b drawn independently and a child j = a∧b, when noise removes
a share ρ_x of feature x's activations and adds spurious ones amounting to a share σ_x of its
count on random tokens (swap: ρ = σ = r; density: ρ = r, σ_x = r·p_x/p̄; flips ≈ swap):

    P(j | a∧b) ≈ (1 − ρ_j)·k / (k + σ_a + σ_b),   P(a∧b | j) ≈ (1 − ρ_j)·k / (1 − ρ_j + σ_j),   k = (1 − ρ_a)(1 − ρ_b)

(a spurious activation of a lands on b with probability p_b, and n_ab = T·p_a·p_b: the dilution
σ_a·n_a·p_b = σ_a·n_ab does not depend on the densities for swap noise). Noise on three
features compounds. Under correlated noise the three are corrupted on the same tokens, and
P(j | a∧b) ≈ 1 − r. For the lifecycle, Pearson of sparse features is ≈ n_co / √(n_x n_y), so
independent noise attenuates every true correlation to ≈ (1 − r)²·ρ (swap), correlated noise to
≈ (1 − r)·ρ: a carried feature whose noise-free best match lies in [τ, τ / (1 − r)²) becomes new.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from saelineage.lineage.evidence import beta_bounds
from saelineage.testing.noise_models import NOISE_MODELS
from saelineage.testing.noisy_lineage import noisy_codes

LEVELS = (0.02, 0.05, 0.075, 0.1, 0.15)
MIN_PROB = 0.6
TAU = 0.5


def dense(codes: dict, counted: np.ndarray) -> list[np.ndarray]:
    """Codes per layer as dense float64 [T_counted, d]."""
    return [codes[l].toarray()[counted].astype(np.float64) for l in sorted(codes)]


def best_pred(x: list[np.ndarray]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Best predecessor Pearson and its index per feature of layers 1.. ({layer: [d]} each)."""
    best, arg = {}, {}
    for l in range(len(x) - 1):
        a, b = x[l], x[l + 1]
        sa, sb = a.std(0), b.std(0)
        za = (a - a.mean(0)) / np.where(sa > 0, sa, np.nan)
        zb = (b - b.mean(0)) / np.where(sb > 0, sb, np.nan)
        r = np.nan_to_num(za.T @ zb / len(a), nan=-1.0)
        best[l + 1], arg[l + 1] = r.max(0), r.argmax(0)
    return best, arg


def predicted_and(model: str, r: float, p: dict[str, float], p_mean: float) -> tuple[float, float]:
    """Closed-form (P(j | a∧b), P(a∧b | j)) for one gate (module doc); p: densities of a, b, j."""
    if model == "correlated":
        return 1 - r + r * p["j"], 1 - r + r * p["a"] * p["b"]
    rho = {x: r for x in "abj"}
    sigma = {x: r * p[x] / p_mean for x in "abj"} if model == "density" else {x: r * (1 - p[x]) for x in "abj"}
    if model == "swap":
        sigma = {x: r for x in "abj"}
    k = (1 - rho["a"]) * (1 - rho["b"])
    return (1 - rho["j"]) * k / (k + sigma["a"] + sigma["b"]), (1 - rho["j"]) * k / (1 - rho["j"] + sigma["j"])


def study(seeds: list[int]) -> dict:
    """Per (model, level, seed): every planted AND gate's counts, scores, bounds and closed forms, and
    every live feature's noise-free and noisy best predecessor."""
    out: dict = {"and": [], "lifecycle": []}
    for seed in seeds:
        codes0, tokens, truth = noisy_codes(seed=seed)
        counted = tokens != 0
        x0 = dense(codes0, counted)
        dens = [(v > 0).mean(0) for v in x0]
        p_mean = [float(d[d > 0].mean()) for d in dens]
        best0, arg0 = best_pred(x0)
        kids = {(m, c) for (_, _, m, cs) in truth.splits for c in cs}
        for model in NOISE_MODELS:
            for r in LEVELS:
                codes, _, _ = noisy_codes(seed=seed, noise=model, level=r)
                x = dense(codes, counted)
                on = [v > 0 for v in x]
                for kind, m, j, l, a, b in sorted(truth.gates):
                    if kind != "and":
                        continue
                    cj, ca, cb = on[m][:, j], on[l][:, a], on[l][:, b]
                    n_j, n_ab, t = int(cj.sum()), int((ca & cb).sum()), int((ca & cb & cj).sum())
                    fwd_lo = float(beta_bounds(np.array([t]), np.array([n_ab]))[0][0])
                    bwd_lo = float(beta_bounds(np.array([t]), np.array([n_j]))[0][0])
                    pf, pb = predicted_and(model, r, {"a": dens[l][a], "b": dens[l][b], "j": dens[m][j]}, p_mean[l])
                    out["and"].append({
                        "model": model, "level": r, "seed": seed, "gate": [m, j, l, a, b], "n_ab0": int(
                            ((x0[l][:, a] > 0) & (x0[l][:, b] > 0)).sum()), "n_j": n_j, "n_ab": n_ab, "support": t,
                        "forward": t / n_ab, "backward": t / n_j, "forward_lo": fwd_lo, "backward_lo": bwd_lo,
                        "predicted_forward": pf, "predicted_backward": pb,
                        "parents_density_over_mean": (dens[l][a] + dens[l][b]) / p_mean[l],
                    })  # fmt: skip
                best, arg = best_pred(x)
                for m in best:
                    for f in np.nonzero(dens[m] > 0)[0]:
                        out["lifecycle"].append({
                            "model": model, "level": r, "seed": seed, "layer": m, "feature": int(f),
                            "split_child": (m, int(f)) in kids, "clean": float(best0[m][f]), "noisy": float(best[m][f]),
                            "same_partner": bool(arg0[m][f] == arg[m][f]),
                        })  # fmt: skip
    return out


def summary(data: dict) -> list[str]:
    """Text lines: per model and level, AND gates passing both bounds, the closed forms' error, and
    lifecycle crossings of τ (carried → new, new → carried) with their partners."""
    lines = ["model       level  AND pass  fwd meas / pred  bwd meas / pred  carried→new  new→carried  "
             "same partner (crossed)  max noisy best of truly new"]  # fmt: skip
    for model in NOISE_MODELS:
        for r in LEVELS:
            g = [x for x in data["and"] if x["model"] == model and x["level"] == r]
            lc = [x for x in data["lifecycle"] if x["model"] == model and x["level"] == r]
            passed = np.mean([x["forward_lo"] >= MIN_PROB and x["backward_lo"] >= MIN_PROB for x in g])
            down = [x for x in lc if x["clean"] >= TAU > x["noisy"]]
            up = [x for x in lc if x["noisy"] >= TAU > x["clean"]]
            new_best = max(x["noisy"] for x in lc if x["clean"] < TAU)
            same = np.mean([x["same_partner"] for x in down + up]) if down + up else float("nan")
            lines.append(
                f"{model:<11} {r:>5.3f}  {passed:>8.2f}  "
                f"{np.mean([x['forward'] for x in g]):.2f} / {np.mean([x['predicted_forward'] for x in g]):.2f}      "
                f"{np.mean([x['backward'] for x in g]):.2f} / {np.mean([x['predicted_backward'] for x in g]):.2f}      "
                f"{len(down):>5} ({sum(x['split_child'] for x in down)} split)  {len(up):>5}  "
                f"{same:>10.2f}              {new_best:.2f}"
            )
    return lines


def figures(data: dict, out: Path) -> None:
    """noise_and_scores.png, noise_and_support.png and noise_pearson.png under `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"flips": "tab:blue", "swap": "tab:orange", "density": "tab:red", "correlated": "tab:green"}
    # 1. AND: forward score's lower bound per gate against the level, closed form, bar
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key in zip(axes, ("forward", "backward")):
        for i, model in enumerate(NOISE_MODELS):
            g = [x for x in data["and"] if x["model"] == model]
            lv = np.array([x["level"] for x in g]) + (i - 1.5) * 0.003
            ax.scatter(lv, [x[f"{key}_lo"] for x in g], s=6, alpha=0.35, color=colors[model])
            levels = sorted({x["level"] for x in g})
            pred = [np.mean([x[f"predicted_{key}"] for x in g if x["level"] == r]) for r in levels]
            meas = [np.mean([x[key] for x in g if x["level"] == r]) for r in levels]
            ax.plot(levels, pred, "--", color=colors[model], lw=1)
            ax.plot(levels, meas, "-", color=colors[model], lw=1.5, label=model)
        ax.axhline(MIN_PROB, color="k", lw=1)
        ax.text(0.021, MIN_PROB + 0.01, "min_prob (lower bounds must reach it)", fontsize=8)
        ax.set_xlabel("noise level r")
        ax.set_title("P(j | a∧b)" if key == "forward" else "P(a∧b | j)")
    axes[0].set_ylabel("score: mean (line), closed form (dashed),\nlower bound per gate (dots)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Planted AND gates under noise (seeds × 12 gates per model and level)")
    fig.tight_layout()
    fig.savefig(out / "noise_and_scores.png", dpi=110)
    plt.close(fig)

    # 2. the support a gate needs: lower bound of the closed-form score against the support
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    support = np.arange(5, 801)
    for label, score, style in (
        ("swap / flips r = 5%", predicted_and("swap", 0.05, {"a": 0.05, "b": 0.05, "j": 0.0025}, 0.04)[0], "-"),
        ("swap / flips r = 10%", predicted_and("swap", 0.10, {"a": 0.05, "b": 0.05, "j": 0.0025}, 0.04)[0], "-"),
        ("density r = 5%, (p_a + p_b) / p̄ = 4", 0.95 * 0.9025 / (0.9025 + 0.05 * 4), ":"),
        ("density r = 10%, (p_a + p_b) / p̄ = 4", 0.9 * 0.81 / (0.81 + 0.1 * 4), ":"),
        ("correlated r = 10%", 0.9, "--"),
    ):
        lo = beta_bounds(np.rint(score * support).astype(np.int64), support)[0]
        ax.plot(support, lo, style, label=f"{label}: score {score:.2f}")
    ax.axhline(MIN_PROB, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("tokens of the condition a∧b (n_ab)")
    ax.set_ylabel("Clopper–Pearson lower bound of P(j | a∧b)")
    ax.set_title("Support an AND gate needs to pass min_prob = 0.6")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "noise_and_support.png", dpi=110)
    plt.close(fig)

    # 3. lifecycle: noise-free vs noisy best predecessor at r = 10%
    fig, axes = plt.subplots(1, len(NOISE_MODELS), figsize=(14, 3.8), sharex=True, sharey=True)
    for ax, model in zip(axes, NOISE_MODELS):
        lc = [x for x in data["lifecycle"] if x["model"] == model and x["level"] == 0.1]
        for kid, color, label in ((False, "tab:gray", "other live features"), (True, "tab:purple", "split children")):
            s = [x for x in lc if x["split_child"] == kid]
            ax.scatter([x["clean"] for x in s], [x["noisy"] for x in s], s=5, alpha=0.5, color=color, label=label)
        grid = np.linspace(0, 1, 11)
        att = 0.9 if model == "correlated" else 0.81
        ax.plot(grid, att * grid, "--", color="k", lw=1, label=f"{att:g}·ρ")
        ax.axhline(TAU, color="tab:red", lw=0.8)
        ax.axvline(TAU, color="tab:red", lw=0.8)
        ax.axvspan(TAU, TAU / att, color="tab:red", alpha=0.08)
        ax.set_title(f"{model}, r = 10%")
        ax.set_xlabel("best predecessor, noise-free")
    axes[0].set_ylabel("best predecessor, noisy")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Pearson of each live feature's best predecessor (over all pairs); τ = 0.5 in red")
    fig.tight_layout()
    fig.savefig(out / "noise_pearson.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("docs/figures"))
    ap.add_argument("--json", type=Path, help="also write the per-gate and per-feature data here")
    args = ap.parse_args()
    data = study(args.seeds)
    print("\n".join(summary(data)))
    args.out.mkdir(parents=True, exist_ok=True)
    figures(data, args.out)
    if args.json:
        args.json.write_text(json.dumps(data))


if __name__ == "__main__":
    main()
