"""Throughput on the machine it runs on; prints a markdown table per part.

    python bench/throughput.py                      # all parts, a few seconds per row
    python bench/throughput.py --seconds 2 --repeats 5 --num-envs 64

Part 1, the env ceiling: random actions through the same vectorised env an actor uses
(actors.envs.make_env), on the same cores. "sync" steps all envs at once (env_batches=1); "2 groups"
keeps two half-batches in flight with send/recv (env_batches=2), as an actor acting on one half while
the other steps would. The "raw AtariVectorEnv" row is ale-py's own batch mode (batch_size =
num_envs/2, whichever envs finish first), which make_env does not use, for comparison.
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere in the repo

from actors.envs import make_env  # noqa: E402
from configs import EnvConfig  # noqa: E402


@dataclass
class Case:
    """One thing to time: `loop_once()` does some agent steps and returns how many."""
    row: dict              # the table columns that describe it
    loop_once: Callable[[], int]
    frames_per_step: int
    close: Callable[[], None]


def measure(cases, seconds, repeats, warmup=0.5):
    """Time every case in `repeats` rounds of one `seconds` window each, the cases interleaved so that
    load from other processes hits them alike. A row reports the best window (the least disturbed)
    and the median."""
    for case in cases:
        start = time.perf_counter()
        while time.perf_counter() - start < warmup:
            case.loop_once()
    rates = [[] for _ in cases]
    for _ in range(repeats):
        for case, case_rates in zip(cases, rates):
            steps, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                steps += case.loop_once()
            case_rates.append(steps / elapsed)
    rows = []
    for case, case_rates in zip(cases, rates):
        best = max(case_rates)
        rows.append({**case.row, "steps/s": best, "frames/s": best * case.frames_per_step,
                     "median steps/s": float(np.median(case_rates))})
        case.close()
    return rows


def env_ceiling(env_id, num_envs, env_batches, num_threads):
    """Random actions through make_env(env_id): env_batches=1 uses step(), more keeps all groups in
    flight with send/recv."""
    env = make_env(EnvConfig(id=env_id, env_batches=env_batches, num_threads=num_threads), num_envs, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    if env_batches == 1:
        def loop_once():
            env.step(rng.integers(0, env.num_actions, num_envs))
            return num_envs
    else:
        for ids in env.groups:
            env.send(rng.integers(0, env.num_actions, len(ids)), ids)

        def loop_once():
            ids = env.recv()[0]
            env.send(rng.integers(0, env.num_actions, len(ids)), ids)
            return len(ids)
    what = "sync" if env_batches == 1 else f"{env_batches} groups in flight"
    threads = num_threads if env_id.startswith("ALE/") else "-"
    return Case({"what": what, "env": env_id, "envs": num_envs, "threads": threads},
                loop_once, env.frames_per_step, env.close)


def raw_ale_batches(game, env_id, num_envs, num_threads):
    """ale-py's own AtariVectorEnv batch mode, batch_size = num_envs/2 (whichever envs finish first)."""
    from ale_py.vector_env import AtariVectorEnv
    batch = num_envs // 2
    env = AtariVectorEnv(game, num_envs, batch_size=batch, num_threads=num_threads, autoreset_mode="SameStep",
                         reward_clipping=False, life_loss_info=True)
    env.reset(seed=0)
    n_actions = env.single_action_space.n
    rng = np.random.default_rng(0)

    def loop_once():
        env.send(rng.integers(0, n_actions, batch))
        env.recv()
        return batch
    return Case({"what": f"raw AtariVectorEnv, batches of {batch}", "env": env_id, "envs": num_envs,
                 "threads": num_threads}, loop_once, 4, env.close)


def print_table(title, rows):
    cols = list(rows[0])
    print(f"\n{title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" if c in ("what", "env") else "---:" for c in cols) + "|")
    for row in rows:
        cells = [f"{v:,.0f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


def env_part(args):
    threads = args.threads
    cases = []
    for n in args.num_envs:
        cases.append(env_ceiling("ALE/Pong-v5", n, 1, threads))
        cases.append(env_ceiling("ALE/Pong-v5", n, 2, threads))
        cases.append(raw_ale_batches("pong", "ALE/Pong-v5", n, threads))
    for env_id in ("CartPole-v1", "popgym-RepeatPreviousEasy-v0"):
        cases.append(env_ceiling(env_id, args.num_envs[0], 1, threads))
    rows = measure(cases, args.seconds, args.repeats)
    print_table(f"Env ceiling: random actions, {threads} ALE threads, {os.cpu_count()} cores; best of "
                f"{args.repeats} interleaved {args.seconds:g}-s windows", rows)


PARTS = {"env": env_part}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per row (best and median shown)")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="ALE threads (default: the CPUs this process may use)")
    args = parser.parse_args()
    for part in args.parts:
        PARTS[part](args)


if __name__ == "__main__":
    main()
