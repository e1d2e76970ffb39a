"""A learning ablation: rows of config changes, each trained with `launch.py compare` on the same
game, cores and seeds, then one table of final scores.

    python bench/ablation.py bench/ablation_breakout.yaml                  # run what is missing, print
    python bench/ablation.py bench/ablation_breakout.yaml --rows today adam --cores lstm --seeds 1
    python bench/ablation.py bench/ablation_breakout.yaml --report          # only the table

The spec is YAML: `config` (a preset), `env`, `total_frames`, `seeds` (runs use seeds 0..N-1),
`cores`, and `rows`, a list of {name, set: [section.key=value, ...]} applied on top of the preset;
an optional `base` list of values goes between the preset and every row (it pins a recipe, so the
rows mean the same after the preset changes).
Each row is an ordinary comparison directory, OUTDIR/<row>/<env>/<core>/seed<k> (resumable: a
second call finishes what is missing; `tensorboard --logdir OUTDIR` overlays every run).

The score is a run's final return: the mean raw score of its last 100 whole games when it reached
`total_frames` (the learning-rate schedule spans the same budget). Beside it the table gives
frames/s (wall clock, whole run) and three health readings from TensorBoard averaged over the last
fifth of the run: the policy's entropy per step, the fraction of updates whose gradient norm was
clipped, and the fraction of dead units in the layer after the torso (`model/dead_units/fc`).
"""
import argparse
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import report  # noqa: E402
from runtime.driver import env_dirname  # noqa: E402

HEALTH = {"entropy": "loss/entropy", "clip": "learner/clip_fraction", "dead fc": "model/dead_units/fc"}


def load_spec(path):
    spec = yaml.safe_load(Path(path).read_text())
    missing = [k for k in ("config", "env", "total_frames", "seeds", "cores", "rows") if k not in spec]
    if missing:
        raise SystemExit(f"{path}: the spec lacks {', '.join(missing)}")
    names = [row["name"] for row in spec["rows"]]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: row names must be unique, got {names}")
    bad = [n for n in names if not n or "/" in n or n.startswith(".")]
    if bad:
        raise SystemExit(f"{path}: row names name directories: no '/', no leading '.', got {bad}")
    return spec


def row_dir(outdir, name):
    return Path(outdir) / name


def train_row(spec, row, cores, seeds, outdir, address=None):
    argv = [sys.executable, str(ROOT / "launch.py"), "compare", "--config", spec["config"],
            "--envs", spec["env"], "--cores", *cores, "--seeds", str(seeds),
            "--total-frames", str(int(float(spec["total_frames"]))), "--outdir", str(row_dir(outdir, row["name"])),
            "--eval-episodes", "0", "--no-progress"]
    for item in [*(spec.get("base") or []), *(row.get("set") or [])]:
        argv += ["--set", item]
    if address:
        argv += ["--address", address]
    print(f"ablation: row {row['name']}: {' '.join(argv[2:])}", flush=True)
    return subprocess.call(argv, cwd=ROOT)


def _health(run_dir, cfg):
    """Mean of each HEALTH tag over the last fifth of the run (entropy per step: the summed entropy
    loss divided by its weight and by T x B when the loss is summed)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags, out = acc.Tags()["scalars"], {}
    lc = cfg["learner"]
    for name, tag in HEALTH.items():
        if tag not in tags:
            out[name] = None
            continue
        events = acc.Scalars(tag)
        last = max(e.step for e in events)
        values = [e.value for e in events if e.step >= 0.8 * last]
        value = float(np.mean(values))
        if name == "entropy":  # loss/entropy = cost x sum (or mean) of sum_a pi log pi
            steps = 1 if lc["loss_reduction"] == "mean" else lc["batch_size"] * lc["unroll_length"]
            value = -value / (lc["entropy_cost"] * steps) if lc["entropy_cost"] else None
        out[name] = value
    return out


def table(spec, outdir, cores, seeds):
    base = f" with base {', '.join(spec['base'])}" if spec.get("base") else ""
    lines = [f"{spec['env']}, preset {spec['config']}{base}, {float(spec['total_frames']):.3g} frames, "
             f"score = mean of the last 100 games (per seed, then mean)", "",
             "| row | core | score | per seed | frames/s | entropy | clip | dead fc | changes |",
             "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for row in spec["rows"]:
        for core in cores:
            scores, fps, health = [], [], []
            for seed in range(seeds):
                d = row_dir(outdir, row["name"]) / env_dirname(spec["env"]) / core / f"seed{seed}"
                if not (d / "checkpoint.pt").is_file():
                    scores.append(None)
                    continue
                r = report.read_run(d, d.parents[2])
                scores.append(r["final_return"] if r["complete"] else None)
                fps.append(r["frames_per_s"])
                health.append(_health(d, yaml.safe_load((d / "config.yaml").read_text())))
            done = [s for s in scores if s is not None]
            score = f"{np.mean(done):.2f}" if done else "-"
            per_seed = " / ".join("-" if s is None else f"{s:.1f}" for s in scores)
            mean = lambda key: np.mean([h[key] for h in health if h.get(key) is not None] or [math.nan])  # noqa: E731
            fps_text = f"{np.mean([f for f in fps if f]):,.0f}" if any(fps) else "-"
            lines.append(f"| {row['name']} | {core} | {score} | {per_seed} | {fps_text} | "
                         f"{mean('entropy'):.2f} | {mean('clip'):.2f} | {mean('dead fc'):.2f} | "
                         f"{', '.join(row.get('set') or []) or '(preset)'} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="YAML spec (see above)")
    p.add_argument("--rows", nargs="+", help="only these rows (default: all)")
    p.add_argument("--cores", nargs="+", help="only these cores (default: the spec's)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the spec's)")
    p.add_argument("--outdir", default="runs/ablation", help="where the rows go (default runs/ablation)")
    p.add_argument("--address", help="Ray cluster to train on")
    p.add_argument("--report", action="store_true", help="only print the table of what is on disk")
    args = p.parse_args(argv)
    spec = load_spec(args.spec)
    outdir = Path(args.outdir) / Path(args.spec).stem
    cores, seeds = args.cores or spec["cores"], args.seeds or spec["seeds"]
    rows = [r for r in spec["rows"] if not args.rows or r["name"] in args.rows]
    unknown = set(args.rows or []) - {r["name"] for r in spec["rows"]}
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; the spec has {[r['name'] for r in spec['rows']]}")
    if not args.report:
        for row in rows:
            rc = train_row(spec, row, cores, seeds, outdir, args.address)
            if rc != 0:
                print(f"ablation: row {row['name']} stopped (exit {rc}); the same command goes on", flush=True)
                return rc
    print(table({**spec, "rows": rows}, outdir, cores, seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
