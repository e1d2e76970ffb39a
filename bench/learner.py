"""Learner throughput: updates/s and frames/s for the paper's Atari configuration.

impala_resnet torso on [4, 84, 84] uint8 frames, B=32 unrolls of T=50 steps, frame skip 4, the
paper's core sizes; one row per core. Each timed update is a batch as the actors ship it (compact
frames) through `Learner.prepare` (moving it to the device, pinned and non_blocking on CUDA;
rebuilding the stacks; observation statistics and normalisation: the service's loader thread)
and `Learner.step` on the prepared batch (the update thread), timed apart: their sum is ms/update.
Prints a markdown table.

    python bench/learner.py                                   # paper settings (meant for a GPU)
    python bench/learner.py --batch-size 4 --unroll-length 10 --updates 3   # a short CPU run
    python bench/learner.py --preset atari_cpu --threads 1   # a preset's learner (its torso, B, T, recipe)
    python bench/learner.py --pipeline [--torso nature]      # + the full data path
    python bench/learner.py --precision fp32 bf16 --pipeline  # both precisions (bf16: CUDA autocast)

--pipeline adds, per core, the real LearnerService (loader and publisher threads, object store,
weights holder) fed by Ray actors that return prebuilt Atari rollouts (compact frames, as the
rollout workers ship them) as fast as asked, no envs: updates/s of (a) compute only (the rows
above) and (b) the full data path, their ratio, the bytes of one rollout in the object store
(and of the same rollout with whole frame stacks), and the policy lag the service reports.
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

from configs import ConfigError, load_config  # noqa: E402
from learner import Learner  # noqa: E402
from learner.batch import from_rollout  # noqa: E402
from runtime.malloc import keep_freed_memory  # noqa: E402


def compact_rollout(T, N, A, core_state, seed=0):
    """A rollout as RolloutWorker returns it for Atari (numpy, compact frames: see learner/batch.py),
    random frames and a game start in ~1% of the rows."""
    g = np.random.default_rng(seed)
    return {"frames": g.integers(0, 256, (T + 1, N, 84, 84), dtype=np.uint8),
            "stack0": g.integers(0, 256, (N, 4, 84, 84), dtype=np.uint8),
            "stack_reset": g.random((T + 1, N)) < 0.01, "reward": g.normal(size=(T + 1, N)).astype(np.float32),
            "first": g.random((T + 1, N)) < 0.01, "action": g.integers(0, A, (T + 1, N)),
            "last_action": g.integers(0, A, (T + 1, N)), "forced": np.zeros((T + 1, N), bool),
            "logits": g.normal(size=(T + 1, N, A)).astype(np.float32), "core_state": core_state}


def bench(core, args, bf16=False):
    cfg = _cfg(core, args, bf16=bf16)
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    learner = Learner(cfg, space, args.num_actions, frames_per_step=args.frame_skip)
    B, T = cfg.learner.batch_size, cfg.learner.unroll_length
    batch = from_rollout(compact_rollout(T, B, args.num_actions, learner.agent.initial_state(B)))
    sync = torch.cuda.synchronize if learner.device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        learner.step(learner.prepare(batch))
    prepare, update = [], []
    for _ in range(args.updates):
        start = time.perf_counter()
        prepared = learner.prepare(batch)
        sync()
        middle = time.perf_counter()
        learner.step(prepared)   # returns floats: the device is synchronised when it returns
        prepare.append(middle - start)
        update.append(time.perf_counter() - middle)
    seconds = float(np.median(np.add(prepare, update)))
    params = sum(p.numel() for p in learner.agent.parameters())
    return dict(core=core, device=str(learner.device), params=params, ms=1e3 * seconds,
                prepare_ms=1e3 * float(np.median(prepare)), update_ms=1e3 * float(np.median(update)),
                updates=1 / seconds, frames=T * B * args.frame_skip / seconds,
                precision="bf16 autocast" if learner.bf16 else ("fp32 (bf16 is CUDA only)" if bf16 else "fp32"))


class Producer:
    """A rollout actor without envs: RolloutWorker's interface, returning one prebuilt rollout of
    `env.num_envs` sequences (compact Atari frames) per call, tagged with the newest weights'
    version it fetched from the holder, as a real worker does."""

    def __init__(self, cfg, worker_index=0, seed=0, num_cpus=1, weights_holder=None):
        from actors import resolve_actor
        T, N, A = cfg.learner.unroll_length, cfg.env.num_envs, 6
        self.holder, self.version = resolve_actor(weights_holder), -1   # the service passes its name
        core_state = Learner(cfg, gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), A, 4).agent.initial_state(N)
        self.rollout_ = compact_rollout(T, N, A, core_state, seed)

    def info(self):
        return dict(observation_space=gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), num_actions=6,
                    frames_per_step=4, num_envs=self.rollout_["first"].shape[1])

    def rollout(self):
        import ray
        latest = ray.get(self.holder.latest.remote(self.version))
        if latest is not None:
            self.version = latest[0]
        return {**self.rollout_, "version": self.version, "episodes": []}


def pipeline_cfg(core, args, bf16=False):
    return _cfg(core, args, [f"run.num_actors={args.producers}", f"env.num_envs={args.envs}",
                             "run.actor_cpus=0.01"], bf16=bf16)


def pipeline(core, args, compute_updates_per_s, bf16=False):
    """The full data path: the real service fed by Producers; returns its row. Starts Ray unless it
    is up (main starts it once for all rows)."""
    import ray

    from runtime import cluster
    from runtime.service import LearnerService
    cfg = pipeline_cfg(core, args, bf16)
    started = cluster.start_ray(cfg)
    try:
        # The driver's resources: with num_gpus 0 Ray would hide the GPU from the service (an empty
        # CUDA_VISIBLE_DEVICES) and its learner would run on the CPU.
        resources = cluster.learner_resources(cfg)
        service = ray.remote(LearnerService).options(**resources).remote(cfg, worker_cls=Producer)
        ray.get(service.run.remote(args.warmup_s))
        report = ray.get(service.run.remote(args.seconds))
        ray.get(service.close.remote())
        ray.kill(service)        # its CPU back for the next row's service
        sample = Producer(cfg, 0, 0, 1, None).rollout_
    finally:
        if started:
            ray.shutdown()
    stats = report["stats"]
    updates = stats["perf/env_frames_per_s"] / (cfg.learner.batch_size * cfg.learner.unroll_length * args.frame_skip)
    sent = sum(v.nbytes for k, v in sample.items() if isinstance(v, np.ndarray))
    whole = sent - sample["frames"].nbytes - sample["stack0"].nbytes - sample["stack_reset"].nbytes + \
        sample["frames"].nbytes * 4 // 1
    return dict(core=core, updates=updates, ratio=updates / compute_updates_per_s, sent=sent, whole=whole,
                gpus=resources["num_gpus"],
                lag=stats.get("learner/policy_lag", float("nan")), wait=stats.get("learner/wait_fraction", 0.0))


def _cfg(core, args, more=(), bf16=False):
    """The learner's config: --preset's (default: the library defaults, the paper's agent) with the
    core, device and precision of the row and whichever of --torso/--batch-size/--unroll-length
    were given (without a preset: impala_resnet, B=32, T=50)."""
    given = [f"model.torso={args.torso}"] if args.torso else []
    given += [f"learner.batch_size={args.batch_size}"] if args.batch_size else []
    given += [f"learner.unroll_length={args.unroll_length}"] if args.unroll_length else []
    return load_config(args.preset, [f"model.core={core}", *given, f"learner.device={args.device}",
                                     f"learner.bf16={bf16}", *more])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores", nargs="+", default=["lstm", "rdn"])
    p.add_argument("--preset", default=None, help="a config preset (configs/*.yaml) whose learner to time; "
                   "default: the paper's agent")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's, or 32")
    p.add_argument("--unroll-length", type=int, default=None, help="default: the preset's, or 50")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--updates", type=int, default=20, help="timed updates (the median is reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc thresholds as they are (the service raises them: runtime/malloc.py)")
    p.add_argument("--frame-skip", type=int, default=4)
    p.add_argument("--num-actions", type=int, default=6)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                   help="one set of rows each: fp32, or bf16 autocast (CUDA only: on a CPU the row says it ran fp32)")
    p.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    p.add_argument("--torso", default=None, choices=["impala_resnet", "nature"],
                   help="default: the preset's, or impala_resnet")
    p.add_argument("--pipeline", action="store_true", help="also time the full data path (see above)")
    p.add_argument("--producers", type=int, default=4, help="--pipeline: rollout producers")
    p.add_argument("--envs", type=int, default=8, help="--pipeline: sequences per produced rollout")
    p.add_argument("--seconds", type=float, default=30.0, help="--pipeline: timed seconds")
    p.add_argument("--warmup-s", type=float, default=10.0, help="--pipeline: untimed seconds first")
    args = p.parse_args()
    if args.bf16:
        args.precision = ["bf16"]
    if args.preset is None:
        args.torso, args.batch_size = args.torso or "impala_resnet", args.batch_size or 32
        args.unroll_length = args.unroll_length or 50
    sizes = [x for x in (args.batch_size, args.unroll_length) if x is not None]
    if min(sizes + [args.updates, args.producers, args.envs]) < 1 or args.warmup < 0 or args.threads < 0:
        p.error("--batch-size, --unroll-length, --updates, --producers and --envs must be >= 1, "
                "--warmup and --threads >= 0")
    try:
        shown = _cfg(args.cores[0], args)
    except ConfigError as e:
        p.error(str(e))
    if not args.default_malloc:
        keep_freed_memory()    # as the learner service does (runtime/malloc.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pipeline:   # the service's actor (1 CPU) runs torch on one thread: compare like with like
        torch.set_num_threads(1)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lc = shown.learner
    print(f"# learner{f' of preset {args.preset}' if args.preset else ''}: {shown.model.torso} [4, 84, 84] uint8, "
          f"B={lc.batch_size}, T={lc.unroll_length}, obs_norm {shown.model.obs_norm}, {lc.optimizer}, "
          f"frame skip {args.frame_skip}, torch {torch.__version__}, {dev}\n")
    print("| core | precision | device | params | prepare ms (loader thread) | update ms (update thread) | "
          "ms/update | updates/s | frames/s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    compute = {}
    for precision in args.precision:
        for core in args.cores:
            r = bench(core, args, bf16=precision == "bf16")
            compute[precision, core] = r
            print(f"| {r['core']} | {r['precision']} | {r['device']} | {r['params']:,} | {r['prepare_ms']:.1f} | "
                  f"{r['update_ms']:.1f} | {r['ms']:.1f} | {r['updates']:.2f} | {r['frames']:,.0f} |", flush=True)
    if args.pipeline:
        import ray

        from runtime import cluster
        print(f"\n# full data path: LearnerService fed by {args.producers} producers of {args.envs}-sequence rollouts, "
              f"{args.seconds:g} s after {args.warmup_s:g} s of warm-up\n")
        print("| core | precision | learner's GPUs (Ray) | compute only (updates/s) | full path (updates/s) | "
              "full / compute | bytes per rollout (compact) | with whole stacks | learner waited | policy lag |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
        started = cluster.start_ray(pipeline_cfg(args.cores[0], args))   # one Ray session for every row
        try:
            for precision in args.precision:
                for core in args.cores:
                    c = compute[precision, core]
                    if precision == "bf16" and c["precision"] != "bf16 autocast":    # the fp32 row again
                        print(f"| {core} | {c['precision']}: not run, the same as fp32 here | - | - | - | - | - | - "
                              "| - | - |", flush=True)
                        continue
                    r = pipeline(core, args, c["updates"], bf16=precision == "bf16")
                    print(f"| {core} | {c['precision']} | {r['gpus']:g} | {c['updates']:.2f} | {r['updates']:.2f} | "
                          f"{r['ratio']:.0%} | {r['sent']:,} | {r['whole']:,} | {r['wait']:.0%} | {r['lag']:.1f} |",
                          flush=True)
        finally:
            if started:
                ray.shutdown()


if __name__ == "__main__":
    main()
