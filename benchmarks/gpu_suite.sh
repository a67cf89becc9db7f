#!/usr/bin/env bash
# The GPU measurements in one run, each step under its own time limit, results as JSON/text in $OUT.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_suite.sh             # on a CUDA machine (total budget: SUITE_BUDGET_S)
#   OUT=/tmp/gpu bash benchmarks/gpu_suite.sh --rehearse  # on a CPU: the same steps at smoke sizes
#   SUITE_ONLY=bench_grpo_step,pytest_gpu_grpo ...          # only these steps
#
# Steps, most valuable first (a step that would not fit the remaining budget is skipped and says so):
#   1. environment: versions, the GPU, an import check of every module the steps use
#   2. pytest -m gpu, FDLinear tests (7B-shaped vision tower, exact at init)
#   3. FDLinear vs nn.Linear fwd+bwd in bf16 at the 7B vision shapes, 1/4/16 images x 1,024 tokens
#   4. one GRPO step on a Qwen2.5-VL-7B-shaped model (random weights, bf16): DVE off/on x LoRA/full FT
#   5. pytest -m gpu, the 7B-shaped GRPO step test
# A machine without internet gets the project's pinned pure-Python stack from wheels in .whl/ (made with
# `pip download --python-version 3.12 ...`, see benchmarks/README.md); its own CUDA torch is used as is.
# A workspace with the tiny captioned SkinSynth data in .gpu/ws (made on a CPU machine) spares the GPU machine
# the validation stack for step 4.
set -uo pipefail
cd "$(dirname "$0")/.."
REHEARSE=0; [ "${1:-}" = "--rehearse" ] && REHEARSE=1
OUT=${OUT:-/tmp/gpu_suite}; mkdir -p "$OUT"
BUDGET=${SUITE_BUDGET_S:-585}
START=$(date +%s)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1
export GX_ANALYTICS_ENABLED=false TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
LOG="$OUT/suite.log"
STATUS="$OUT/status.tsv"
: >"$LOG"; printf 'step\trc\tseconds\n' >"$STATUS"

say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# step NAME LIMIT_S MIN_S CMD...: run CMD under min(LIMIT_S, budget left - 5), or skip when under MIN_S is left
step() {
  local name=$1 limit=$2 min=$3; shift 3
  case ",${SUITE_ONLY:-$name}," in *",$name,"*) ;; *) say "SKIP $name: not in SUITE_ONLY"; return;; esac
  local l; l=$(( $(left) - 5 )); [ "$l" -lt "$limit" ] && limit=$l
  if [ "$limit" -lt "$min" ]; then say "SKIP $name: ${l}s left, needs ${min}s"; printf '%s\tskipped\t0\n' "$name" >>"$STATUS"; return; fi
  say "START $name (limit ${limit}s)"
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  say "END $name rc=$rc"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >>"$STATUS"
}

if [ "$REHEARSE" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  say "installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 \
    || say "wheel install failed (see above)"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

step environment 60 5 $PY - <<'EOF'
import importlib, json, os, platform, subprocess
info = {"python": platform.python_version(), "platform": platform.platform()}
for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pydantic", "pandas", "pyarrow",
             "numpy", "great_expectations", "safetensors", "tokenizers", "huggingface_hub"):
    try:
        info[name] = importlib.import_module(name).__version__
    except Exception as exc:  # recorded, not fatal: later steps say what they could not do
        info[name] = f"IMPORT FAILED: {type(exc).__name__}: {exc}"
import torch
info["cuda"] = torch.cuda.is_available()
if info["cuda"]:
    p = torch.cuda.get_device_properties(0)
    info |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1), "sm_count": p.multi_processor_count,
             "torch_cuda": torch.version.cuda}
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ a
    end.record(); torch.cuda.synchronize()
    info["bf16_matmul_tflops_measured"] = round(10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12, 1)
for mod in ("skinflow.model.fdlinear", "skinflow.model.base", "skinflow.rl.grpo", "skinflow.rl.rewards", "trl",
            "skinflow.data.corpus", "skinflow.data.validation"):
    try:
        importlib.import_module(mod)
        info[f"import {mod}"] = "ok"
    except Exception as exc:
        info[f"import {mod}"] = f"FAILED: {type(exc).__name__}: {exc}"
print(json.dumps(info, indent=2))
open(os.path.join(os.environ["OUT"], "environment.json"), "w").write(json.dumps(info, indent=2))
EOF

PYTEST="$PY -m pytest -p no:cacheprovider -q -rA"
step pytest_gpu_fdlinear 90 20 $PYTEST -m gpu tests/model/test_fdlinear.py --junitxml="$OUT/pytest_gpu_fdlinear.xml"

if [ "$REHEARSE" = 1 ]; then
  step bench_fdlinear 300 20 $PY benchmarks/bench_fdlinear.py --smoke --iters 2 --out "$OUT"
else
  step bench_fdlinear 150 40 $PY benchmarks/bench_fdlinear.py --iters 10 --out "$OUT"
fi

WS=${GPU_WS:-.gpu/ws}
if [ "$REHEARSE" = 1 ]; then
  step bench_grpo_step 600 30 $PY benchmarks/bench_grpo_step.py --smoke --steps 2 --keep "$WS" \
    --variants dve-off_lora,dve-on_lora,dve-off_full,dve-on_full --timeout 240
else
  # LoRA first (the cheaper and the one a single 80 GB card can run), then full FT; 3 steps, the first a warm-up
  step bench_grpo_step 330 90 $PY benchmarks/bench_grpo_step.py --steps 3 --keep "$WS" \
    --variants dve-off_lora,dve-on_lora,dve-off_full,dve-on_full --timeout 100
fi
cp benchmarks/results/grpo_step_*.json "$OUT"/ 2>/dev/null

step pytest_gpu_grpo 200 60 $PYTEST -m gpu tests/rl/test_grpo.py --junitxml="$OUT/pytest_gpu_grpo.xml"
say "done; budget left $(left)s"
cat "$STATUS" | tee -a "$LOG"
