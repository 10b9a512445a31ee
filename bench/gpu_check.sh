#!/usr/bin/env bash
# The GPU path in one call: learner unit tests on the device, the learner benchmark in every compile mode and
# precision, a sustained learner loop, and (when MuJoCo is importable) EGL rendering inside a process that sees
# no GPU in CUDA_VISIBLE_DEVICES, as a Ray actor does. Everything lands as JSON (and logs) in one folder.
#
#   bench/gpu_check.sh                      # on the GPU machine: --device cuda, the paper preset, ~8 minutes
#   bench/gpu_check.sh --device cpu         # tiny sizes on a CPU, about a minute (tests/test_gpu_check.py)
#   bench/gpu_check.sh --out DIR            # default: $OUT when set (the device tool), else bench/results/gpu-check-<date>
#
# On a bare, offline GPU machine run bench/gpu_wheels.sh here first: it downloads the few wheels the
# tests import (tyro and its needs, redis, lz4, and mujoco with PyOpenGL for the render step) into .whl/, which
# this script installs with pip --target when it finds them. Each step has its own time limit, so one that hangs
# or compiles for too long is recorded as timed out (rc 124) and the rest still run; the script's exit code is
# the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
OUT_DIR="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --device cuda|cpu, --out DIR)" >&2; exit 2 ;;
  esac
done
OUT_DIR="${OUT_DIR:-bench/results/gpu-check-$(date +%Y-%m-%d)}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONUNBUFFERED=1

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import tyro" 2>/dev/null; then  # a bare machine
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "$DEVICE" = cuda ]; then
  PRESET=paper; UPDATES=20; SUSTAIN_S=60; QUICK=""
  MODES="reduce-overhead default max"; PRECISIONS=fp32,bf16
  LIMIT_UNIT=150; LIMIT_BENCH=150; LIMIT_MAX=170; LIMIT_SUSTAIN=120
else
  PRESET=debug; UPDATES=2; SUSTAIN_S=3; QUICK="q_values or falls_back or guarded or settings or polyak"
  MODES="default"; PRECISIONS=fp32
  LIMIT_UNIT=300; LIMIT_BENCH=300; LIMIT_MAX=300; LIMIT_SUSTAIN=120
fi

STEPS_FILE="$OUT_DIR/steps.tsv"
: > "$STEPS_FILE"
step() {  # step <name> <seconds limit> <command...>: run it, log its output, record rc and wall clock
  local name="$1" limit="$2"; shift 2
  local start; start=$(date +%s.%N)
  echo "== $name (limit ${limit}s): $*" >&2
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  local wall; wall=$(awk "BEGIN {print $(date +%s.%N) - $start}")
  printf '%s\t%s\t%s\n' "$name" "$rc" "$wall" >> "$STEPS_FILE"
  echo "   rc=$rc in ${wall}s; log $OUT_DIR/$name.log" >&2
  tail -n 3 "$OUT_DIR/$name.log" >&2
}

step hardware 60 "$PY" -c "
import json, os, platform, subprocess, torch
smi = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True) if os.path.exists('/dev/nvidia0') else None
print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available(),
  'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
  'nvidia_smi': smi.stdout.strip() if smi else None, 'cpus': os.cpu_count(), 'python': platform.python_version()}))"

# The learner's unit tests with the learner on the device. Tests that render (dm_control) are left out where
# MuJoCo is not installed; the list is in the log.
RENDER_TESTS="reconstruction_error or known_reward or round_trip_resumes"
if "$PY" -c "import dm_control" 2>/dev/null; then SELECT="${QUICK}"; else
  SELECT="${QUICK:+($QUICK) and }not ($RENDER_TESTS)"; fi
step unit_tests "$LIMIT_UNIT" env SLAC_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_learner.py tests/test_execution.py tests/test_losses.py ${SELECT:+-k "$SELECT"} \
  --junitxml="$OUT_DIR/unit_tests.xml"

for mode in $MODES; do
  limit=$LIMIT_BENCH; [ "$mode" = max ] && limit=$LIMIT_MAX
  step "learner_$mode" "$limit" "$PY" bench/learner.py --device "$DEVICE" --preset "$PRESET" --compile "$mode" \
    --updates "$UPDATES" --precisions "$PRECISIONS" --profile --out "$OUT_DIR/learner-$mode.json"
  [ "$mode" = reduce-overhead ] && step sustained "$LIMIT_SUSTAIN" "$PY" bench/sustained.py --device "$DEVICE" \
    --preset "$PRESET" --seconds "$SUSTAIN_S" $( [ "$DEVICE" = cpu ] && echo "--compile none" ) \
    --out "$OUT_DIR/sustained.json"
done
if [ "$DEVICE" = cpu ]; then  # the CPU run has no reduce-overhead pass above: the sustained loop still runs
  step sustained "$LIMIT_SUSTAIN" "$PY" bench/sustained.py --device cpu --preset "$PRESET" --seconds "$SUSTAIN_S" \
    --compile none --out "$OUT_DIR/sustained.json"
fi

if "$PY" -c "import mujoco, OpenGL" 2>/dev/null; then
  # 37 s at niceness 19 beside one training on the 2-core VM (2026-12-07); 120 s ran out beside two and a test suite.
  step render 240 "$PY" bench/render_probe.py --out "$OUT_DIR/render.json"
else
  printf 'render\tskipped\t0\n' >> "$STEPS_FILE"
  echo "== render skipped: mujoco or PyOpenGL is not importable (bench/gpu_wheels.sh carries them)" >&2
fi

"$PY" - "$OUT_DIR" "$DEVICE" <<'EOF'
import json, sys
from pathlib import Path
out, device = Path(sys.argv[1]), sys.argv[2]
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, wall = line.split("\t")
    steps.append({"step": name, "rc": None if rc == "skipped" else int(rc), "skipped": rc == "skipped",
                  "wall_s": round(float(wall), 1)})
hardware = {}
try:
    hardware = json.loads((out / "hardware.log").read_text().strip().splitlines()[-1])
except (OSError, ValueError, IndexError):
    pass
reports = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "gpu_check.json"}
summary = {"device": device, "hardware": hardware, "steps": steps,
           "failed": [s["step"] for s in steps if s["rc"] not in (0, None)], "reports": sorted(reports)}
for name, report in reports.items():
    if name.startswith("learner-"):
        summary[name] = {"speedup_vs_eager": report.get("speedup_vs_eager"),
                         "updates_per_s": {k: v["updates_per_s"] for k, v in report["variants"].items()},
                         "compile_s": {k: v["compile_s"] for k, v in report["variants"].items()}}
    elif name == "sustained":
        summary[name] = {k: report.get(k) for k in ("updates_per_s", "publish_ms_mean", "execution")}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
sys.exit(len(summary["failed"]))
EOF
