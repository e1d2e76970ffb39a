#!/usr/bin/env bash
# Issue 35's end-to-end measurement as one sitting, on an idle box (nothing else running: a study or a
# test suite beside it moves frames/s by more than the margins in question):
#
#   bench/speed_check/sitting.sh [ROUNDS [SECONDS]]   # default 2 rounds of 120-s runs, ~12 minutes a round
#
# Each round trains `atari_cpu` for SECONDS (120) per row with `bench/throughput.py --parts train`,
# lstm and rdn: this checkout's preset, then the code before issue 35's changes (commit a967a28, from a temporary git
# worktree) with its preset and with the previous recipe (the issue's reference row, "--vs" below).
# The rows alternate between the two codes round by round, so slow drifts of the box hit both alike;
# the issue's ratio is this checkout's preset over a967a28's previous-recipe row of the same round.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-2}
SECS=${2:-120}                 # per run; a short value only proves the script
BEFORE=a967a28
# The recipe atari_cpu replaced (issue 17): no observation norm, RMSprop, the summed IMPALA loss.
PREV="model.init=torch model.obs_norm=false learner.optimizer=rmsprop learner.lr=3e-4 learner.rmsprop_eps=1e-5
      learner.loss_reduction=sum learner.grad_clip=40 learner.advantage_norm=false learner.vtrace_lambda=1.0
      learner.loss=impala"
tmp=$(mktemp -d)
git worktree add --detach "$tmp/before" "$BEFORE" >/dev/null 2>&1
trap 'git worktree remove --force "$tmp/before"; rm -rf "$tmp"' EXIT
quiet() { grep -v "WARNING\|INFO\|^frames" || true; }
for round in $(seq "$ROUNDS"); do
  echo "## round $round, $(date -u +%H:%M) UTC: $(git rev-parse --short HEAD), the preset"
  python3 bench/throughput.py --parts train --train-seconds "$SECS" 2>&1 | quiet
  echo "## round $round, $(date -u +%H:%M) UTC: $BEFORE, the preset and the previous recipe"
  # shellcheck disable=SC2086  # PREV is a list of KEY=VALUE words
  (cd "$tmp/before" && python3 bench/throughput.py --parts train --train-seconds "$SECS" --vs $PREV 2>&1 | quiet)
done
echo "## done $(date -u +%H:%M) UTC on $(nproc) cores: $(lscpu | sed -n 's/^Model name: *//p')"
