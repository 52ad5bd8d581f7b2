#!/usr/bin/env bash
# Figures from one GPU in one prepared run (< 8 minutes on an H100/H200); --dry-run checks it on a CPU.
#
#   bash tools/gpu_check.sh [--dry-run] [--only env,sudoku,maze,eval]
#
# Writes to ${OUT:-/tmp/gpu_check} (flat, at most 7 files): gpu_check.log, one <section>.json per section and
# gpu_check.json merging them. Each section runs in its own process under its own timeout, so one failure
# keeps the others; rerun a failed one alone with --only NAME (the merge keeps the other sections' files).
# Wheels the GPU image lacks (../shared/wheels/gpu-py312, copied into .whl/) are installed into .site/ first.
set -u
cd "$(dirname "$0")/.."

DRY_RUN=""
ONLY="env,sudoku,maze,eval"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN="--dry-run" ;;
    --only) shift; ONLY="${1:-}" ;;
    --only=*) ONLY="${1#--only=}" ;;
    *) echo "gpu_check.sh: unknown argument '$1'; use [--dry-run] [--only env,sudoku,maze,eval]" >&2; exit 2 ;;
  esac
  shift
done
for name in ${ONLY//,/ }; do
  case "$name" in
    env|sudoku|maze|eval) ;;
    *) echo "gpu_check.sh: unknown section '$name' in --only; choose from env,sudoku,maze,eval" >&2; exit 2 ;;
  esac
done

OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .whl/*.whl \
    || { echo "gpu_check.sh: installing .whl/*.whl failed" | tee -a "$LOG"; exit 1; }
  export PYTHONPATH="$PWD/.site:$PWD"
else
  echo "gpu_check.sh: no .whl/ wheels; using the installed packages" | tee -a "$LOG"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# Seconds each section may take (GPU); the dry run's tiny shapes need far less but compile on a busy CPU.
declare -A LIMIT=([env]=40 [sudoku]=250 [maze]=120 [eval]=60)  # 7.8 min at most
STATUS=0
for name in env sudoku maze eval; do
  case ",$ONLY," in *",$name,"*) ;; *) continue ;; esac
  limit="${LIMIT[$name]}"
  [ -n "$DRY_RUN" ] && limit=400
  echo "=== section $name (timeout ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" python3 -m tools.gpu_check --section "$name" --out "$OUT" --budget "$limit" \
    $DRY_RUN 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "=== section $name FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ': timed out')); rerun: bash tools/gpu_check.sh ${DRY_RUN} --only $name" | tee -a "$LOG"
    STATUS=1
  fi
done
python3 -m tools.gpu_check --merge --out "$OUT" 2>&1 | tee -a "$LOG"
echo "=== gpu_check done $(date -u +%H:%M:%S), status $STATUS; figures in $OUT/gpu_check.json" | tee -a "$LOG"
exit $STATUS
