#!/usr/bin/env bash
# The GPU benchmark of issue 8, as one script for a lent GPU machine (H200, Python 3.12,
# CUDA torch, no network). Ends within $BUDGET_S seconds (default 470, under 8 minutes) even
# if a step hangs: every phase runs under `timeout`, sized from what is left.
#
#   1. installs the carried wheels (.whl/, from bench/fetch_gpu_wheels.sh) and the project,
#      both --no-deps, into /tmp/site;
#   2. builds the full-shape random checkpoint on the machine's disk (/tmp);
#   3. runs a 256-task one-narrator job, 100 tokens per task, with bench/bench_glmtts.py:
#      sequential (today's path), then batched at 1/32/128/256, LM in bf16, then in fp32
#      (flow fp32 both times). Sequential and batch 1 run on the first 16 tasks only
#      (at an estimated ~3 s a task, today's path would take over 12 minutes for 256); every
#      figure is per wall second;
#   4. writes bench/RESULTS-gpu.json (copied to $OUT, the folder the device tool returns,
#      with the log and the per-dtype JSONs) and prints a table.
#
# Here, before a session with a GPU:   bench/fetch_gpu_wheels.sh   (.whl/, ~11 MiB)
# On the GPU (device tool):            run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=540)
# Rehearsal on this CPU machine:       GPU_SH_REHEARSAL=1 bench/gpu.sh
#   (tiny preset, cpu, small counts, cp311 wheels from bench/out/whl-cp311, and a Python that
#   sees only the GPU image's packages plus the wheels: bench/mock_gpu_image.py)
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
REPO=$PWD
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-470}

if [[ "${GPU_SH_REHEARSAL:-0}" == 1 ]]; then
  WORK=${WORK:-/tmp/gpu-sh-rehearsal}
  OUT=${OUT:-$REPO/bench/out/gpu-sh-rehearsal}
  WHEELS=${WHEELS:-bench/out/whl-cp311}
  PRESET=tiny DEVICE=cpu
  TASKS=${TASKS:-12} SUBSET=${SUBSET:-3} TOKENS=${TOKENS:-10} BATCHES=${BATCHES:-1,4,12}
  WARMUP_BATCHED=${WARMUP_BATCHED:-4}
  RESULTS=$OUT/RESULTS-gpu.json  # a rehearsal never overwrites the real figures
  BASE_PY=${PYTHON:-/work/main/.venv/bin/python}
else
  WORK=${WORK:-/tmp/glmtts-gpu}
  OUT=${OUT:-$REPO/bench/out/gpu-sh}
  WHEELS=${WHEELS:-.whl}
  PRESET=full DEVICE=cuda
  TASKS=${TASKS:-256} SUBSET=${SUBSET:-16} TOKENS=${TOKENS:-100} BATCHES=${BATCHES:-1,32,128,256}
  WARMUP_BATCHED=${WARMUP_BATCHED:-32}
  RESULTS=$REPO/bench/RESULTS-gpu.json
  BASE_PY=${PYTHON:-python3}
fi
DTYPES=${DTYPES:-bf16 fp32}
SITE=$WORK/site
CKPT=$WORK/ckpt-$PRESET
export REPO OUT WHEELS PRESET DEVICE TASKS SUBSET TOKENS BATCHES RESULTS DTYPES SITE CKPT
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu-sh.log") 2>&1

log() { echo "[$(date -u +%H:%M:%S) +$(($(date +%s) - T0))s] $*"; }
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
# phase NAME CAP_S RESERVE_S CMD...: run CMD under a timeout of min(CAP, time left - RESERVE).
phase() {
  local name=$1 cap=$2 reserve=$3; shift 3
  local limit=$(($(left) - reserve)); ((limit > cap)) && limit=$cap
  if ((limit < 10)); then log "$name: SKIPPED, ${limit}s left for it"; return 124; fi
  log "$name: start (limit ${limit}s)"
  if declare -F "$1" >/dev/null; then  # a function of this script: timeout needs a process
    export -f "$1"
    timeout -k 10 "$limit" bash -c "$1"
  else
    timeout -k 10 "$limit" "$@"
  fi
  local rc=$?
  if ((rc == 124 || rc == 137)); then log "$name: TIMED OUT after ${limit}s"; else log "$name: done, rc=$rc"; fi
  return $rc
}

log "gpu.sh: preset=$PRESET device=$DEVICE tasks=$TASKS (sequential and B<$SUBSET: first $SUBSET) tokens=$TOKENS batches=$BATCHES dtypes=$DTYPES budget=${BUDGET_S}s"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true) 2>&1 | sed 's/^/  /'

# ---------------------------------------------------------------- 1. install
if [[ "${GPU_SH_REHEARSAL:-0}" == 1 ]]; then
  # The GPU image's packages only, then the wheels: an import that needs a package neither
  # carries fails here as it would there.
  "$BASE_PY" bench/mock_gpu_image.py "$WORK/image" | sed 's/^/  /'
  cat >"$WORK/python3" <<EOF
#!/bin/sh
PYTHONPATH="\${PYTHONPATH:+\$PYTHONPATH:}$WORK/image" exec "$BASE_PY" -S "\$@"
EOF
  chmod +x "$WORK/python3"
  PY=$WORK/python3
else
  PY=$BASE_PY
fi
export PY
do_install() {
  rm -rf "$SITE" && mkdir -p "$SITE" || return 1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || return 1
  # The project itself, --no-deps, built with the image's setuptools (no index to fetch one),
  # from a copy: a build in the tree would leave build/ and egg-info there.
  rm -rf "$WORK/src" && mkdir -p "$WORK/src" && cp -r pyproject.toml README.md glmtts_batch "$WORK/src/" || return 1
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WORK/src" ||
    echo "  project install failed: the benchmark imports the source tree instead (it puts the repo first on sys.path)"
  # From /tmp, so that the installed copy is the one imported; then the text path once
  # (wetext graphs via kaldifst, pypinyin, inflect, emoji), which imports lazily.
  (cd /tmp && PYTHONPATH=$SITE "$PY" -c "
import importlib.metadata, torch, glmtts_batch.glmtts.engine as e
from glmtts_batch.glmtts.text.normalize import TextNormalizer
print('  imports ok:', e.__file__, 'glmtts-batch', importlib.metadata.version('glmtts-batch'), 'torch', torch.__version__, 'cuda', torch.cuda.is_available())
n = TextNormalizer(); print('  normalised (' + n.grammars + '):', n.normalize('It costs 3.50 dollars on 12 May.'), n.normalize('今天是2024年5月12日'))")
}
export PYTHONPATH=$SITE
phase install 120 300 do_install || { log "install failed: nothing to measure"; exit 1; }

# ---------------------------------------------------------------- 2. checkpoint
do_checkpoint() {
  if [[ -f "$CKPT/RANDOM_WEIGHTS.json" ]]; then echo "  reusing $CKPT"; return 0; fi
  "$PY" -m glmtts_batch make-checkpoint "$CKPT" --preset "$PRESET"
}
phase checkpoint 180 200 do_checkpoint || { log "no checkpoint: nothing to measure"; exit 1; }
df -h /tmp | sed 's/^/  /'

# ---------------------------------------------------------------- 3. benchmarks
n_dtypes=$(wc -w <<<"$DTYPES")
i=0
for dtype in $DTYPES; do
  i=$((i + 1))
  # What is left, shared by the dtypes still to run, 15 s kept for the report.
  share=$((($(left) - 15) / (n_dtypes - i + 1)))
  phase "bench $dtype" "$share" 15 "$PY" bench/bench_glmtts.py --preset "$PRESET" --model-dir "$CKPT" \
    --device "$DEVICE" --dtype "$dtype" --flow-dtype fp32 --tasks "$TASKS" --subset-tasks "$SUBSET" \
    --tokens "$TOKENS" --batch-sizes "$BATCHES" --warmup 1 --warmup-batched "$WARMUP_BATCHED" \
    --json "$OUT/gpu_$dtype.json"
done

# ---------------------------------------------------------------- 4. report
do_report() {
  "$PY" bench/gpu_report.py --results "$RESULTS" --out "$OUT" --tasks "$TASKS" --subset "$SUBSET" \
    --tokens "$TOKENS" --dtypes "$DTYPES" || return 1
  [[ "$RESULTS" == "$OUT/RESULTS-gpu.json" ]] || cp "$RESULTS" "$OUT/RESULTS-gpu.json"
}
phase report 30 0 do_report
log "gpu.sh: finished; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
sleep 1  # let tee write the last lines of the log
