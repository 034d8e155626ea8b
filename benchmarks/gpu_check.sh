#!/usr/bin/env bash
# The GPU checks of issue #16 in one run (under 10 minutes on one H100; nothing is downloaded):
#   1. what the engines see (torch / paddle GPU counts, onnxruntime providers, nvidia-smi)
#   2. the parity suite with both backends on cuda (parity.device=cuda, the CPU tolerances)
#   3. the cnn recipe on both backends, fp32 and AMP (bf16), trainer.device=cuda
#   4. 2-GPU data parallel (nccl) on both backends, only when two GPUs are visible
#   5. dualml estimate on cuda: the framework's device peak next to the formula
#   6. the GPU tests (tests/test_devices.py: cuda vs cpu curves, resume on cpu, fp16 autocast, parity)
# Writes OUT/gpu_check.json (one record per step: command, exit code, seconds, key figures, log tail).
# Usage: bash benchmarks/gpu_check.sh [OUT]   (PYTHON=... picks the interpreter; default: python)
set -u
OUT=${1:-reports/gpu_check}
PY=${PYTHON:-python}
mkdir -p "$OUT"
STEPS="$OUT/steps.jsonl"
: > "$STEPS"
export TQDM_DISABLE=1

step() {  # step NAME TIMEOUT_S CMD... : run, time, record
  local name=$1 limit=$2; shift 2
  local log="$OUT/$name.log" t0 rc
  t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$log" 2>&1
  rc=$?
  "$PY" - "$STEPS" "$name" "$rc" "$t0" "$log" "$*" <<'PYEOF'
import json, sys, time
steps, name, rc, t0, log, cmd = sys.argv[1:]
tail = open(log, errors="replace").read().splitlines()[-12:]
with open(steps, "a") as f:
    f.write(json.dumps({"step": name, "rc": int(rc), "seconds": round(time.time() - float(t0), 1),
                        "timed_out": int(rc) == 124, "command": cmd, "log_tail": tail}) + "\n")
PYEOF
  echo "[$name] rc=$rc"
}

step env 120 "$PY" - <<'PYEOF'
import json, subprocess
import dualml  # noqa: F401  (zlib before paddle)
from dualml.backend import get_backend
from dualml.onnx.ort import resolve_providers
import onnxruntime
info = {b: {"version": get_backend(b).version, "gpus": get_backend(b).device_count()} for b in ("torch", "paddle")}
info["onnxruntime"] = {"version": onnxruntime.__version__, "available": onnxruntime.get_available_providers(),
                       "serve_auto": resolve_providers("auto")}
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError as exc:
    info["nvidia_smi"] = str(exc)
print(json.dumps(info))
PYEOF
GPUS=$("$PY" -c "import dualml; from dualml.backend import get_backend; print(get_backend('torch').device_count())" 2>/dev/null || echo 0)

step parity_cuda 240 "$PY" -m dualml parity parity.device=cuda parity.onnx=false "out_dir=$OUT/parity"
for b in torch paddle; do
  step "cnn_${b}_fp32" 120 "$PY" -m dualml train "backend=$b" model=cnn trainer.device=cuda "trainer.run_dir=$OUT/runs/cnn-$b-fp32"
  step "cnn_${b}_bf16" 120 "$PY" -m dualml train "backend=$b" model=cnn trainer.device=cuda trainer.amp=bf16 "trainer.run_dir=$OUT/runs/cnn-$b-bf16"
done
if [ "${GPUS:-0}" -ge 2 ]; then
  for b in torch paddle; do
    step "dp2_${b}" 180 "$PY" -m dualml train "backend=$b" model=cnn trainer.device=cuda trainer.devices=2 trainer.max_steps=50 "trainer.run_dir=$OUT/runs/dp2-$b"
  done
else
  echo "{\"step\": \"dp2\", \"skipped\": \"$GPUS GPU(s) visible: 2-GPU data parallel needs two\"}" >> "$STEPS"
fi
step estimate_cuda 180 "$PY" -m dualml estimate model=cnn trainer.device=cuda "out_dir=$OUT/estimate"
step gpu_tests 240 "$PY" -m pytest -q -rs tests/test_devices.py

"$PY" - "$OUT" <<'PYEOF'
import glob, json, os, sys
out = sys.argv[1]
steps = [json.loads(l) for l in open(os.path.join(out, "steps.jsonl"))]
runs = {}
for m in glob.glob(os.path.join(out, "runs", "*", "metrics.json")):
    d = json.load(open(m))
    runs[os.path.basename(os.path.dirname(m))] = {k: d.get(k) for k in ("backend", "device", "test_acc", "test_loss",
                                                                       "steps", "seconds", "world_size",
                                                                       "rank_weight_diff_mean")}
est = {}
for r in glob.glob(os.path.join(out, "estimate", "estimate", "*", "report.json")):
    d = json.load(open(r))
    est = {b: {k: c.get(k) for k in ("device", "estimate", "device_peak", "device_ratio", "device_peak_note")}
           for b, c in d.get("comparison", {}).items()}
par = {}
for r in glob.glob(os.path.join(out, "parity", "parity", "report.json")):
    d = json.load(open(r))
    par = {"device": d.get("device"), "summary": d.get("summary")}
report = {"steps": steps, "runs": runs, "estimate": est, "parity": par,
          "passed": all(s.get("rc", 0) == 0 for s in steps)}
json.dump(report, open(os.path.join(out, "gpu_check.json"), "w"), indent=2)
print(f"gpu_check: {'all steps passed' if report['passed'] else 'FAILED steps: ' + ', '.join(s['step'] for s in steps if s.get('rc', 0))}")
print(f"report: {os.path.join(out, 'gpu_check.json')}")
PYEOF
