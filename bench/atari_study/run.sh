#!/usr/bin/env bash
# The per-game RFWP vs LSTM study (issue 32), as the commands that make it. Re-run to go on:
# `launch.py compare` skips finished runs, resumes cut ones from their checkpoint and starts the rest.
# Seeds go in rounds (seed 0 of every game, then seed 1, then 2), so a study cut short stays balanced.
# Score: the mean of the last 100 whole training games at the budget (as `train` reports it), the
# same for both cores; --eval-episodes 0 spends the compute on runs instead of a post-hoc eval.
# The training code is frozen for the whole study: run it from a worktree of the study's commit, so
# that work on main cannot reach the runs, writing into main's bench/atari_study:
#   git worktree add ../rfwp-study <commit>
#   rm -r ../rfwp-study/bench/atari_study && ln -s $PWD/bench/atari_study ../rfwp-study/bench/atari_study
#   ../rfwp-study/bench/atari_study/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
STUDY=bench/atari_study
GAMES="ALE/Pong-v5 ALE/Breakout-v5 ALE/Boxing-v5 ALE/SpaceInvaders-v5 ALE/Seaquest-v5 ALE/Qbert-v5"
for seeds in 1 2 3; do
  python3 launch.py compare --config atari_cpu --envs $GAMES --cores lstm rdn --seeds $seeds \
    --eval-episodes 0 --no-progress --outdir $STUDY/games
done
# Frame stacking off: the core alone carries motion (2 seeds).
python3 launch.py compare --config atari_cpu --set env.frame_stack=1 --envs ALE/Pong-v5 ALE/Breakout-v5 \
  --cores lstm rdn --seeds 2 --eval-episodes 0 --no-progress --outdir $STUDY/frame_stack_1
# The memory suite: the POPGym presets not yet recorded, their own budgets.
python3 launch.py compare --config popgym_count_recall --envs popgym-CountRecallEasy-v0 --cores lstm rdn \
  --seeds 3 --eval-episodes 0 --no-progress --outdir $STUDY/popgym
python3 launch.py compare --config popgym_autoencode --envs popgym-AutoencodeEasy-v0 --cores lstm rdn \
  --seeds 3 --eval-episodes 0 --no-progress --outdir $STUDY/popgym
