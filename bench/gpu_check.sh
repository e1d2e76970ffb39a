#!/usr/bin/env bash
# The GPU check: one call on a lent GPU machine runs every GPU measurement and correctness check of the
# project, each step timed and guarded so that one failure does not lose the rest, and writes its
# tables to $OUT. `--dry-run` runs the same steps on a CPU machine, tiny, so the suite proves the script
# (tests/test_gpu_check.py) before a device appears.
#
#   python3 bench/gpu_wheels.py          # here, where pip reaches the registry: .whl/ (~47 MiB, git-ignored)
#   device run: command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 540  # under 8 minutes
#   bash bench/gpu_check.sh --dry-run    # on a CPU machine: $OUT, or a temporary folder it prints
#
# The GPU machine (device tool): Python 3.12, torch 2.11 + CUDA 13, Triton 3.6, 16 cores, no network;
# what it lacks comes as wheels in .whl/, installed with pip --no-index into a folder put on PYTHONPATH.
#
# Steps, in order (GPU run / --dry-run):
#   1 environment  nvidia-smi, torch / CUDA / Triton versions, SM count; installs .whl/ and shows what
#                  imports / no nvidia-smi; packs the wheels for this Python with bench/gpu_wheels.py
#                  (same set, same slimming), installs them into a temporary target, shows what imports
#                  (the slimmed ray has no Tune); the later steps run on that target, as on the GPU
#   2 kernel tests tests/test_kernels.py on CUDA: every op's forward and backward against the float64
#                  reference, float32 and bf16 inputs, resets, initial states, truncation off and on,
#                  at the RL shape, B=256 T=80 H=8 D=64, and D in {16, 32, 48, 64}; a table of the
#                  errors / the GPU-size test at stand-in sizes under TRITON_INTERPRET=1
#   3 kernels      bench/kernels.py float32 and bfloat16: every rule ours vs reference vs fla's
#                  fused_recurrent_delta_rule vs cuDNN's LSTM, forward+backward and the T=1 acting
#                  step; rdn core vs LSTM core; the launch-knob sweep / --smoke (interpreter)
#   4 learner      bench/learner.py --pipeline, paper's agent (impala_resnet + rdn and + lstm, B=32,
#                  T=50), fp32 and bf16 / on the CPU, B=2 T=4, a few updates
#   5 train        `launch.py train --config atari_throughput` on Pong, learner on the GPU, then with
#                  run.inference=central on the same GPU; frames/s, updates/s, policy lag, nvidia-smi's
#                  utilisation / a few seconds each (to the first reports) with 1 actor of 4 envs
#
# What only the GPU run reaches (the CPU cannot), and the step that covers it:
#   compiled Triton kernels (the CPU runs them under TRITON_INTERPRET=1) ........ steps 2 and 3
#   pinned host buffers and the side copy stream of the learner's data path
#     (runtime/service.py's loader, runtime/batcher.py, learner/batch.py) ....... step 4 (--pipeline), step 5
#   Learner.prepare on that stream (stacks, observation statistics, normalisation one batch
#     ahead of the update, then record_stream of the prepared tensors) ............ step 4 (--pipeline), step 5
#   bf16 autocast in the learner (learner.bf16; the CPU runs float32) ........... step 4 (bf16 rows)
#   bf16 autocast of cuDNN's LSTM and the cores (skipped by the CPU's oneDNN) .... step 3 (bfloat16 table)
#   the learner on a GPU under Ray (num_gpus, CUDA_VISIBLE_DEVICES) .............. steps 4 and 5
#   the inference server on a GPU, sharing it with the learner
#     (run.inference=central, run.inference_gpus=0.5) ............................ step 5 (central)
#   fla's compiled kernels, cuDNN, nvidia-smi's samples ........................... steps 3, 5
#
# Files in $OUT (7; the device tool returns at most 8): summary.md (the steps' status and seconds, then
# every table of every step), env.md, kernel_tests.md, kernels.md, learner.md, train.md (each step's
# standard output, then the last 400 lines of its standard error in a ``` block) and gpu_util.csv
# (nvidia-smi's samples during step 5; a header alone without one).
# Exit status: the number of steps that did not end ok (0: all ran and passed).
set -uo pipefail

usage="usage: bash bench/gpu_check.sh [--dry-run] [--help]"
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg'; $usage" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || { echo "gpu_check.sh: no $PY on PATH (set PYTHON=...)" >&2; exit 2; }
OUT=${OUT:-}
if [[ -z "$OUT" ]]; then
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_out.XXXXXX")
fi
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create \$OUT=$OUT" >&2; exit 2; }
TMPD=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
export RAY_TMPDIR="$TMPD/ray"      # this run's Ray sessions, told apart from any other Ray on the machine
mkdir -p "$RAY_TMPDIR"
# The whole run's time: under 8 minutes on the GPU (the device's one-call budget leaves a second call).
BUDGET=${GPU_CHECK_BUDGET:-$(( DRY ? 840 : 465 ))}
START=$(date +%s)
DEADLINE=$(( START + BUDGET ))
SITE="$TMPD/site"                  # where the wheels are installed (pip --target), first on PYTHONPATH
if (( DRY )); then
  PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  WHEELS=${GPU_CHECK_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/rfwp-rl/wheels-cp${PYVER/./}}
else
  WHEELS="$ROOT/.whl"
  PYVER=-
fi
export ROOT PY OUT TMPD DRY SITE WHEELS DEADLINE PYVER PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
STEPS="$TMPD/steps.tsv"
: > "$STEPS"
for f in summary.md env.md kernel_tests.md kernels.md learner.md train.md; do : > "$OUT/$f"; done
echo "run,timestamp,utilization_gpu_pct,memory_used_mib" > "$OUT/gpu_util.csv"

# ---------------------------------------------------------------------------------------------- steps
step_env() {
  local fail=0
  if command -v nvidia-smi >/dev/null; then
    echo '```'
    nvidia-smi
    echo '```'
  else
    echo "- nvidia-smi: not on this machine$( ((DRY)) && echo ' (dry run)')"
  fi
  "$PY" - <<'PY' || fail=1
import os, platform, sys
import torch, triton
rows = [("python", sys.version.split()[0]), ("torch", torch.__version__), ("triton", triton.__version__),
        ("CUDA (torch)", torch.version.cuda or "-"), ("cuDNN", str(torch.backends.cudnn.version() or "-")),
        ("CPU cores", str(os.cpu_count())), ("machine", platform.machine())]
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    rows += [("GPU", p.name), ("SMs", str(p.multi_processor_count)), ("capability", f"{p.major}.{p.minor}"),
             ("GPU memory", f"{p.total_memory / 2**30:.1f} GiB"), ("GPUs", str(torch.cuda.device_count()))]
else:
    rows += [("GPU", "none (CUDA not available)")]
print("\n| fact | value |\n|---|---|")
for k, v in rows:
    print(f"| {k} | {v} |")
PY
  echo
  if (( DRY )); then
    echo "## the wheels for this machine's Python (bench/gpu_wheels.py --python $PYVER), cache $WHEELS"
    "$PY" bench/gpu_wheels.py --python "$PYVER" --out "$WHEELS" || fail=1
  fi
  echo
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    local t0=$SECONDS
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
      --target "$SITE" "$WHEELS"/*.whl > "$TMPD/pip.log" 2>&1
    local prc=$?
    grep -v "Running pip as the 'root' user" "$TMPD/pip.log"
    if (( prc == 0 )); then
      echo "- installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE in $(( SECONDS - t0 )) s"
    else
      echo "- pip install of $WHEELS/*.whl into $SITE failed (exit $prc)"; fail=1
    fi
  else
    echo "- no wheels in $WHEELS: run \`python3 bench/gpu_wheels.py\` where pip reaches the registry, and carry .whl"
    fail=1
  fi
  echo
  echo "## what imports (PYTHONPATH=$SITE:<repo>)"
  echo
  PYTHONPATH="$SITE:$ROOT" "$PY" bench/gpu_wheels.py --imports || fail=1
  return $fail
}

step_kernel_tests() {
  local errs="$TMPD/kernel_errors.tsv" rc
  : > "$errs"
  local sel=()
  if (( DRY )); then
    # The interpreter: the GPU-size test at its stand-in sizes (the suite runs the rest of the file).
    sel=(-k "gpu_check and rl")
  else
    sel=(--deselect tests/test_kernels.py::test_kernels_compile_for_an_h100)   # it compiles for real here
    if "$PY" -c "import xdist" 2>/dev/null; then sel+=(-n 8); fi              # Triton compiles in parallel
  fi
  # Its own limit inside the step's, so that the table of what ran is printed even when pytest is cut.
  FWP_GPU_CHECK=1 FWP_GPU_CHECK_ERRORS="$errs" timeout -k 5 $(( STEP_LIMIT - 15 )) \
    "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rfE tests/test_kernels.py "${sel[@]}" 2>&1
  rc=$?
  (( rc == 124 || rc == 137 )) && echo "- pytest stopped at its limit of $(( STEP_LIMIT - 15 )) s"
  echo
  "$PY" - "$errs" <<'PY'
import sys
rows = sorted(line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip())
print("## errors against the float64 reference (norm-relative; worst output and worst gradient)\n")
print("| op | size | T x B x H x D | inputs | truncation | output error | gradient error | tolerance | finite | device |")
print("|---|---|---|---|---|---:|---:|---:|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print(f"\n- {len(rows)} GPU-size cases recorded")
PY
  return $rc
}

step_kernels() {
  local args=(--dtype float32 bfloat16 --sweep --sweep-seconds 40)
  (( DRY )) && args+=(--smoke)
  "$PY" bench/kernels.py "${args[@]}"
}

step_learner() {
  local args
  if (( DRY )); then
    args=(--device cpu --cores rdn --precision fp32 bf16 --pipeline --batch-size 2 --unroll-length 4 --updates 1
          --warmup 1 --producers 1 --envs 2 --seconds 2 --warmup-s 1)
  else
    args=(--cores rdn lstm --precision fp32 bf16 --pipeline --updates 10 --warmup 3 --producers 4 --envs 8
          --seconds 6 --warmup-s 2)
  fi
  "$PY" bench/learner.py "${args[@]}"
}

step_train() {
  local common actor central
  if (( DRY )); then
    common="--envs-per-actor 4 --set learner.batch_size=4 --set learner.unroll_length=10 --set run.log_interval_s=2"
    actor=4; central=3      # the dry run proves the path (a first report from each run), no rate
  else
    # 16 cores: 14 actors + the learner; central: 13 + the learner + the server, which shares the GPU.
    # The time left, less about 40 s per run to start (Ray, 14 actors, the first report) and to stop,
    # split 3:2; each run's row is printed when it ends, so a run cut by the deadline keeps the first.
    common="--set run.log_interval_s=10"
    local left=$(( DEADLINE - $(date +%s) - 2 * 40 - 10 ))
    actor=$(( left * 3 / 5 < 75 ? left * 3 / 5 : 75 )); central=$(( left * 2 / 5 < 45 ? left * 2 / 5 : 45 ))
    (( actor < 20 )) && actor=20; (( central < 15 )) && central=15
  fi
  local actors=$(( DRY ? 1 : 14 ))
  "$PY" bench/throughput.py --parts launch --preset atari_throughput --startup-s "$(( DRY ? 150 : 90 ))" \
    --stop-s 40 --gpu-log "$OUT/gpu_util.csv" \
    --launch "actor:$actor:$common --num-actors $actors" \
    --launch "central:$central:$common --num-actors $(( DRY ? 1 : 13 )) --set run.inference=central$( ((DRY)) || echo ' --set run.inference_gpus=0.5')"
}
export -f step_env step_kernel_tests step_kernels step_learner step_train

# ------------------------------------------------------------------------------------------ machinery
ours_ray() {   # processes of this run's Ray sessions still alive: killed by id
  local pids
  pids=$(pgrep -f "$RAY_TMPDIR" 2>/dev/null | grep -vx "$$" || true)
  if [[ -n "$pids" ]]; then
    echo "- left over from this run's Ray, killed: $(echo $pids | wc -w) processes" >> "$OUT/$1"
    kill $pids 2>/dev/null; sleep 2; kill -9 $pids 2>/dev/null
  fi
  return 0
}

summary() {
  "$PY" - "$STEPS" "$OUT" "$DRY" "$(( $(date +%s) - START ))" "$BUDGET" <<'PY'
import sys, time
from pathlib import Path
steps, out, dry, elapsed, budget = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]
rows = [line.rstrip("\n").split("\t") for line in open(steps) if line.strip()]
lines = [f"# GPU check{' (dry run on the CPU)' if dry else ''}, {time.strftime('%Y-%m-%d %H:%M')}, "
         f"{elapsed} s of {budget}", "",
         "| step | what | status | seconds | limit (s) | file |", "|---|---|---|---:|---:|---|"]
lines += ["| " + " | ".join(r) + " |" for r in rows]
for num, name, status, secs, limit, fname in rows:
    lines += ["", f"## {num}. {name} ({fname}: {status})", ""]
    fence = False
    for line in (out / fname).read_text(errors="replace").splitlines():
        if line.startswith("```"):          # nvidia-smi's own box drawing: kept in the step's file only
            fence = not fence
            continue
        keep = None
        if fence:
            pass
        elif line.startswith(("|", "- ")):
            keep = line
        elif line.startswith("#"):          # the steps' headings, one level under this file's
            keep = "##" + line
        elif line.startswith(("FAILED ", "ERROR ")) or ((" passed" in line or " failed" in line) and " in " in line):
            keep = f"- pytest: {line.strip('= ')}"
        table = keep is not None and keep.startswith("|")
        if lines[-1].startswith("|") and not table:
            lines.append("")                # a table ends at the first line that is not a row
        if keep is not None:
            if (table or keep.startswith("#")) and lines[-1] and not lines[-1].startswith("|"):
                lines.append("")
            lines.append(keep)
            if keep.startswith("#"):
                lines.append("")
(out / "summary.md").write_text("\n".join(lines) + "\n")
PY
}

run_step() {   # run_step NUM NAME FILE CAP RESERVE FUNCTION: at most CAP s, leaving RESERVE s for the rest
  local num=$1 name=$2 file=$3 cap=$4 reserve=$5 fn=$6
  local left=$(( DEADLINE - $(date +%s) - reserve ))
  local limit=$(( cap < left ? cap : left )) status rc t0
  if (( limit < 10 )); then
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$num" "$name" "skipped: no time left" 0 "$limit" "$file" >> "$STEPS"
    echo "- skipped: $limit s left in the budget" >> "$OUT/$file"
    summary; return
  fi
  echo "[gpu_check] step $num ($name): at most $limit s -> $OUT/$file"
  t0=$(date +%s)
  export STEP_LIMIT=$limit
  # stdout (the tables) into the step's file as it comes; stderr (warnings, Ray's logs) after it, fenced
  timeout -k 20 "$limit" bash -c "$fn" >> "$OUT/$file" 2> "$TMPD/stderr"
  rc=$?
  if [[ -s "$TMPD/stderr" ]]; then
    { echo; echo "stderr (last 400 lines):"; echo '```text'; tail -n 400 "$TMPD/stderr"; echo '```'; } >> "$OUT/$file"
  fi
  ours_ray "$file"
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT at $limit s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$num" "$name" "$status" "$(( $(date +%s) - t0 ))" "$limit" "$file" >> "$STEPS"
  echo "[gpu_check] step $num ($name): $status in $(( $(date +%s) - t0 )) s"
  summary
}

trap 'ours_ray summary.md; rm -rf "$TMPD"' EXIT
echo "[gpu_check] $( ((DRY)) && echo 'dry run, ' )budget $BUDGET s, tables -> $OUT"
# Caps: what each step needs on an H100 with room to spare; the reserve keeps time for the later steps.
# The dry run's are loose: a 2-core machine shared with other jobs can take minutes to start Ray.
if (( DRY )); then
  run_step 1 environment env.md 240 300 step_env
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  run_step 2 "kernel tests" kernel_tests.md 200 300 step_kernel_tests
  run_step 3 kernels kernels.md 200 250 step_kernels
  run_step 4 learner learner.md 200 200 step_learner
  run_step 5 train train.md 400 0 step_train
else
  run_step 1 environment env.md 60 360 step_env
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  run_step 2 "kernel tests" kernel_tests.md 110 250 step_kernel_tests
  run_step 3 kernels kernels.md 110 180 step_kernels
  run_step 4 learner learner.md 100 120 step_learner
  run_step 5 train train.md 240 0 step_train
fi
failed=$(awk -F'\t' '$3 != "ok"' "$STEPS" | wc -l)
echo "[gpu_check] done in $(( $(date +%s) - START )) s: $(( 5 - failed )) of 5 steps ok; tables in $OUT (summary.md)"
exit "$failed"
