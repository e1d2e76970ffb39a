"""Learner throughput: updates/s and frames/s for the paper's Atari configuration.

impala_resnet torso on [4, 84, 84] uint8 frames, B=32 unrolls of T=50 steps, frame skip 4, the
paper's core sizes; one row per core. Each timed update includes moving the CPU batch to the
device (pinned, non_blocking on CUDA), as in training. Prints a markdown table.

    python bench/learner.py                                   # paper settings (meant for a GPU)
    python bench/learner.py --batch-size 4 --unroll-length 10 --updates 3   # a short CPU run
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config  # noqa: E402
from learner import Learner, random_batch  # noqa: E402


def bench(core, args):
    cfg = load_config(None, [f"model.core={core}", f"learner.batch_size={args.batch_size}",
                             f"learner.unroll_length={args.unroll_length}", f"learner.device={args.device}",
                             f"learner.bf16={args.bf16}"])
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    learner = Learner(cfg, space, args.num_actions, frames_per_step=args.frame_skip)
    B, T = args.batch_size, args.unroll_length
    batch = random_batch(space.shape, torch.uint8, args.num_actions, T, B, learner.agent.initial_state(B, "cpu"))
    for _ in range(args.warmup):
        learner.step(batch)
    times = []
    for _ in range(args.updates):
        start = time.perf_counter()
        learner.step(batch)  # returns floats: the device is synchronised when it returns
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    params = sum(p.numel() for p in learner.agent.parameters())
    return dict(core=core, device=str(learner.device), params=params, ms=1e3 * seconds,
                updates=1 / seconds, frames=T * B * args.frame_skip / seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores", nargs="+", default=["lstm", "rdn"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--unroll-length", type=int, default=50)
    p.add_argument("--updates", type=int, default=20, help="timed updates (the median is reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--frame-skip", type=int, default=4)
    p.add_argument("--num-actions", type=int, default=6)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    args = p.parse_args()
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"# learner: impala_resnet [4, 84, 84] uint8, B={args.batch_size}, T={args.unroll_length}, "
          f"frame skip {args.frame_skip}, {'bf16' if args.bf16 else 'fp32'}, torch {torch.__version__}, {dev}")
    print("| core | device | params | ms/update | updates/s | frames/s |")
    print("|---|---|---:|---:|---:|---:|")
    for core in args.cores:
        r = bench(core, args)
        print(f"| {r['core']} | {r['device']} | {r['params']:,} | {r['ms']:.1f} | {r['updates']:.2f} | "
              f"{r['frames']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
