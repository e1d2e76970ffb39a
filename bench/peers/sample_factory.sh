#!/usr/bin/env bash
# Sample Factory beside this framework, on this machine, one system at a time (issue 35's peer row):
#
#   bench/peers/sample_factory.sh [ROUNDS [SECONDS]]     # default 2 rounds of 180-s runs, ~9 minutes a round
#
# Run it on an idle box: anything beside it moves frames/s by more than the margins in question.
# Each round trains, for SECONDS each, Sample Factory 2.1.1 APPO and then this checkout's `atari_cpu`
# preset (lstm and rdn, `bench/throughput.py --parts train`), all on Pong, and prints frames/s as
# the median of each system's own reports after the first third of the run (Sample Factory's
# "Fps is (10 sec: ...)" lines, every 5 s; ours the learner's perf/env_frames_per_s, every 5 s).
#
# The same agent and batch on both sides: Nature CNN -> 256 -> LSTM 128, one layer; 16 envs stepped
# as 2 halves of 8 (SF: one rollout worker, worker_num_splits 2; ours: one actor, env_batches 2);
# batches of 16 x 20 steps, one pass each (SF: batch_size 320, rollout 20, recurrence 20, 1 epoch of
# 1 minibatch, async); frame skip 4, 4 frames stacked, 84 x 84 grey; observation normalisation on
# both; frames counted with the skip. What differs is each system's own way of running the env:
# SF wraps PongNoFrameskip-v4 in Python wrappers (gymnasium 0.29, ale-py 0.9, the last pair it
# supports); ours is ale-py's AtariVectorEnv (ALE/Pong-v5). SF runs without V-trace: 2.1.1's
# learner crashes in its summaries with it (`'AttrDict' object has no attribute 'advantages'`),
# and V-trace changes no step of its data path.
#
# SF lives in its own virtual environment (it pins gymnasium < 1.0), made on first use under
# SF_VENV (default: ~/.cache/rfwp-peers/sample-factory-2.1.1); its torch is the same 2.13 CPU build.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-2}
SECS=${2:-180}
SF_VENV=${SF_VENV:-$HOME/.cache/rfwp-peers/sample-factory-2.1.1}
if [ ! -x "$SF_VENV/bin/python" ]; then
  python3 -m venv "$SF_VENV"
  "$SF_VENV/bin/pip" install -q "torch==2.13.0" "sample-factory==2.1.1" "gymnasium==0.29.1" "ale-py==0.9.1" "numpy<2"
  # ale-py 0.9 registers its envs with gymnasium when imported; SF's worker processes never import
  # it, so a .pth line imports it at every interpreter start of this venv (and only of this venv).
  echo "import ale_py" > "$("$SF_VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/zz_ale_register.pth"
fi
SF_ARGS="--env=atari_pong --device=cpu --num_workers=1 --num_envs_per_worker=16 --worker_num_splits=2
  --batch_size=320 --rollout=20 --recurrence=20 --num_epochs=1 --num_batches_per_epoch=1 --async_rl=True
  --use_rnn=True --rnn_type=lstm --rnn_size=128 --rnn_num_layers=1 --encoder_conv_mlp_layers 256
  --with_vtrace=False --normalize_returns=False --learning_rate=0.001 --lr_schedule=constant --with_wandb=False"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Median of SF's 10-s Fps reports after the first third of the run, from its log.
sf_rate() {
  python3 - "$1" "$SECS" <<'PY'
import re, statistics, sys
from datetime import datetime
rows = [(datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f"), float(f)) for t, f in
        re.findall(r"\[(\d{4}-\d\d-\d\d [\d:,]+)\]\[\d+\] Fps is \(10 sec: ([\d.]+)", open(sys.argv[1]).read())]
if not rows:
    sys.exit("no Fps lines in " + sys.argv[1])
t0 = rows[0][0]
late = [f for t, f in rows if (t - t0).total_seconds() > float(sys.argv[2]) / 3]
print(f"{statistics.median(late):.0f} (median of {len(late)} reports)")
PY
}
for round in $(seq "$ROUNDS"); do
  echo "## round $round, $(date -u +%H:%M) UTC (load average $(cut -d' ' -f1 /proc/loadavg)): Sample Factory 2.1.1, Pong, $SECS s"
  # SF 2.1.1 does not stop at its train_for_seconds (a 180-s run was still training at 9 minutes):
  # SIGTERM, which its runner handles by stopping its workers, ends it SECS after its start.
  # shellcheck disable=SC2086  # SF_ARGS is a list of words
  timeout "$SECS" "$SF_VENV/bin/python" -m sf_examples.atari.train_atari $SF_ARGS --experiment="sf$round" \
      --train_dir="$tmp/sf" > "$tmp/sf$round.log" 2>&1 || true
  pkill -f "$SF_VENV/bin/python" || true   # none should be left; a stray worker would slow the next run
  echo "sample factory frames/s: $(sf_rate "$tmp/sf$round.log")"
  echo "## round $round, $(date -u +%H:%M) UTC: $(git rev-parse --short HEAD), atari_cpu on Pong, $SECS s"
  python3 bench/throughput.py --parts train --train-seconds "$SECS" --set env.id=ALE/Pong-v5 2>&1 \
      | grep -v "WARNING\|INFO\|^frames" || true
done
echo "## done $(date -u +%H:%M) UTC on $(nproc) cores: $(lscpu | sed -n 's/^Model name: *//p')"
