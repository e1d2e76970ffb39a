#!/usr/bin/env bash
# Commit the small files of every finished run of the study (config.yaml, episodes.csv, result.json,
# eval.json; never checkpoints or events) and the rebuilt summaries, so a next session on a fresh
# machine starts from them (`compare` counts a run with a complete result.json as done).
set -euo pipefail
cd "$(dirname "$0")/../.."
study=bench/atari_study
paths=()
for dir in "$study"/*/; do
  compgen -G "$dir*/*/seed*/config.yaml" >/dev/null || continue
  python3 launch.py compare --summarize "$dir" >/dev/null
  for f in "$dir"results.csv "$dir"summary.md "$dir"*.png; do [[ -e $f ]] && paths+=("$f"); done
  for result in "$dir"*/*/seed*/result.json; do
    [[ -e $result ]] || continue
    run=$(dirname "$result")
    for f in config.yaml episodes.csv result.json eval.json; do [[ -e $run/$f ]] && paths+=("$run/$f"); done
  done
done
git add -f -- "${paths[@]}"   # -f: the named small files, even where a local exclude hides runs in progress
new=$(git diff --cached --name-only -- "${paths[@]}" | { grep '/result.json$' || true; } | sed "s#^$study/##; s#/result.json##" | tr '\n' ' ')
if git diff --cached --quiet -- "${paths[@]}"; then echo "nothing new"; exit 0; fi
git commit -q -m "atari_study: finished runs ${new:-(summaries rebuilt)}" -- "${paths[@]}"
git log --oneline -1
