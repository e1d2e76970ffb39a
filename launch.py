"""The command line: train, eval, compare and bench (the work of eval and compare lives in
learner/evaluate.py, learner/compare.py and learner/report.py; bench runs the scripts of bench/).

    python launch.py train --config configs/atari_cpu.yaml
    python launch.py train --env popgym-RepeatPreviousEasy-v0 --core rdn --total-frames 2e6
    python launch.py train --logdir runs/pong-rdn --resume          # continue where it stopped
    python launch.py train --address auto ...                      # on a running Ray cluster
    python launch.py eval --checkpoint runs/pong-rdn --episodes 10 [--greedy] [--video]
    python launch.py compare --config popgym_repeat_previous --envs popgym-RepeatPreviousEasy-v0 \
        --cores lstm rdn --seeds 3 --outdir runs/cmp                # then runs/cmp/summary.md
    python launch.py compare --summarize runs/cmp                   # rebuild table and plots
    python launch.py bench throughput --parts actor train            # tables of bench/RESULTS.md

Bad input (unknown env id, core, config key, a value of the wrong type, a log directory that
holds another run) stops here, before Ray starts, with a message naming the valid choices.
"""
import argparse
import csv
import os
import signal
import sys
import time
from collections import deque
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _count(text):
    """An integer count that also reads 1e6 or 2_000_000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer() or value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(value)


# -- configuration ------------------------------------------------------------------------------

def resolve_train_config(args):
    """The resolved Config for `train` from the preset, the flags and --set, all checked; raises
    UsageError (or ConfigError) before anything heavy starts."""
    from configs import load_config

    overrides = list(args.set or [])
    flags = {"env.id": args.env, "model.core": args.core, "run.total_frames": args.total_frames,
             "run.num_actors": args.num_actors, "env.num_envs": args.envs_per_actor,
             "run.seed": args.seed, "run.logdir": args.logdir}
    overrides += [(key, value) for key, value in flags.items() if value is not None]
    if args.resume:
        if not args.logdir:
            raise UsageError("--resume needs --logdir: the run directory to continue")
        run_config = Path(args.logdir) / "config.yaml"
        if not run_config.is_file():
            raise UsageError(f"--resume: {args.logdir} holds no run (no config.yaml); "
                             "start it without --resume first")
        if not (Path(args.logdir) / "checkpoint.pt").is_file():
            raise UsageError(f"--resume: {args.logdir} holds no checkpoint.pt to continue from")
        if args.config:
            raise UsageError("--resume continues with the run's own config.yaml; drop --config "
                             "(use --set or the flags to change values such as --total-frames)")
        cfg = load_config(run_config, overrides)
    else:
        cfg = load_config(args.config, overrides)
        if not cfg.run.logdir:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            cfg.run.logdir = str(Path("runs") / f"{cfg.env.id.replace('/', '_')}-{cfg.model.core}-{stamp}")
        if (Path(cfg.run.logdir) / "config.yaml").exists():
            raise UsageError(f"--logdir {cfg.run.logdir} already holds a run (config.yaml); pass --resume to "
                             "continue it, or choose another --logdir")
    check_train_config(cfg)
    return cfg


def check_train_config(cfg):
    """UsageError or ConfigError unless `cfg` can be trained (known env id, env layout and
    settings in range, positive sizes)."""
    from actors.envs import check_env_config, check_env_id
    from configs import ConfigError
    try:
        check_env_id(cfg.env.id)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        check_env_config(cfg.env, cfg.env.num_envs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    checks = [("run.num_actors", cfg.run.num_actors >= 1),
              ("learner.batch_size", cfg.learner.batch_size >= 1),
              ("learner.unroll_length", cfg.learner.unroll_length >= 1),
              ("run.total_frames", cfg.run.total_frames >= 1),
              ("run.max_rollouts_in_flight", cfg.run.max_rollouts_in_flight >= 1),
              ("run.actor_cpus", cfg.run.actor_cpus > 0),
              ("learner.epochs", cfg.learner.epochs >= 1),
              ("learner.minibatches", cfg.learner.minibatches >= 1),
              ("learner.ppo_clip", cfg.learner.ppo_clip > 0)]
    for key, ok in checks:
        if not ok:
            raise ConfigError(f"{key} must be positive")
    if cfg.learner.batch_size % cfg.learner.minibatches:
        raise ConfigError(f"learner.batch_size ({cfg.learner.batch_size}) must be a multiple of "
                          f"learner.minibatches ({cfg.learner.minibatches}): a minibatch holds whole unrolls")
    if not 0 < cfg.learner.popart_beta <= 1:
        raise ConfigError(f"learner.popart_beta must lie in (0, 1], got {cfg.learner.popart_beta}")


# -- Ray ----------------------------------------------------------------------------------------

def start_ray(cfg, address=None):
    """Join the cluster at `address`, or start Ray here with room for every actor."""
    import ray
    if ray.is_initialized():
        return False
    # Workers import the project from this directory, installed or not.
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # Logical CPUs: at least one per actor plus the learner, even on a 2-core laptop
        # (the actors then share cores; the OS schedules them).
        need = int(cfg.run.num_actors * cfg.run.actor_cpus + 0.999) + 1
        ray.init(num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
                 runtime_env=runtime_env, log_to_driver=True)
    return True


def _learner_resources(cfg):
    import ray
    gpus = ray.cluster_resources().get("GPU", 0)
    want_gpu = cfg.learner.device == "cuda" or (cfg.learner.device == "auto" and gpus >= 1)
    if cfg.learner.device == "cuda" and gpus < 1:
        raise UsageError("learner.device=cuda but the Ray cluster has no GPU; use learner.device=auto or cpu")
    return {"num_gpus": 1 if want_gpu else 0, "num_cpus": 1}


def _check_cluster_fits(cfg):
    import ray
    cpus = ray.cluster_resources().get("CPU", 0)
    need = cfg.run.num_actors * cfg.run.actor_cpus + 1
    if need > cpus:
        raise UsageError(f"the Ray cluster has {cpus:g} CPUs but {cfg.run.num_actors} actors x "
                         f"{cfg.run.actor_cpus:g} CPUs + 1 for the learner need {need:g}; lower "
                         "--num-actors or run.actor_cpus, or add nodes")


# -- training -----------------------------------------------------------------------------------

def train(cfg, resume=False, address=None, progress=True, on_report=None):
    """Train until run.total_frames or a stop signal; returns a summary dict. `on_report(report,
    service)` is called after each interval (tests and benchmarks use it to watch or interfere with
    a live run); returning True stops the run as a signal would."""
    import ray
    from tqdm import tqdm

    from configs import config_to_dict, save_config
    from learner import TensorBoardLogger, checkpoint
    from learner.loop import LearnerService

    logdir = Path(cfg.run.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = logdir / "checkpoint.pt"
    payload = checkpoint.read(ckpt_path) if resume else None
    started_ray = start_ray(cfg, address)
    service = None
    stop = {"signal": None}
    previous = {}

    def on_signal(signum, frame):
        if stop["signal"] is not None:   # a second Ctrl-C: give up on the clean exit
            raise KeyboardInterrupt
        stop["signal"] = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint and stopping "
              "(press Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    try:
        if address:
            _check_cluster_fits(cfg)
        service = ray.remote(LearnerService).options(**_learner_resources(cfg)).remote(
            config_to_dict(cfg), payload, str(ckpt_path))
        state = ray.get(service.state.remote())
        if state["error"]:
            raise checkpoint.CheckpointError(state["error"])
        frames, extra = state["frames"], state["extra"]
        recent = deque(extra.get("recent_returns", []), maxlen=100)
        wall = extra.get("wall_time_s", 0.0)
        if not resume:
            save_config(cfg, logdir / "config.yaml")
        # purge_step drops events a crash left beyond the checkpoint, so the curves continue cleanly.
        logger = TensorBoardLogger(logdir, None if resume else cfg, purge_step=frames if resume else None)
        episodes_csv = open(logdir / "episodes.csv", "a", newline="")
        writer = csv.writer(episodes_csv)
        if episodes_csv.tell() == 0:
            writer.writerow(["frames", "return", "length"])
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)

        def save():
            extra = {"recent_returns": list(recent), "wall_time_s": wall + time.monotonic() - t0}
            checkpoint.save_atomic(ray.get(service.checkpoint_payload.remote(extra)), ckpt_path)

        bar = tqdm(total=cfg.run.total_frames, initial=frames, unit="frame", unit_scale=True,
                   dynamic_ncols=True, disable=not progress, desc=logdir.name)
        t0 = last_save = time.monotonic()
        while frames < cfg.run.total_frames and stop["signal"] is None:
            report = ray.get(service.run.remote(min(cfg.run.log_interval_s, 5.0) if progress
                                                else cfg.run.log_interval_s))
            bar.update(report["frames"] - frames)
            frames = report["frames"]
            stats = report["stats"]
            if report["episodes"]:
                returns = [r for r, _ in report["episodes"]]
                recent.extend(returns)
                stats["episode/return"] = float(sum(returns) / len(returns))
                stats["episode/length"] = float(sum(n for _, n in report["episodes"]) / len(returns))
                writer.writerows((frames, r, n) for r, n in report["episodes"])
            logger.scalars(stats, frames)
            mean_return = sum(recent) / len(recent) if recent else float("nan")
            # The learner's health at a glance: how often the gradient clip acts, the advantages' spread.
            health = (f"clip {stats['learner/clip_fraction']:.2f}, adv std {stats['learner/adv_std']:.3g}"
                      if "learner/clip_fraction" in stats else "")
            bar.set_postfix_str(f"{stats['perf/env_frames_per_s']:,.0f} frames/s, "
                                f"return {mean_return:.2f} (last {len(recent)}), {health}", refresh=False)
            if not progress:
                print(f"frames {frames:,}  {stats['perf/env_frames_per_s']:,.0f} frames/s  "
                      f"return {mean_return:.2f}  {health}", flush=True)
            if on_report is not None and on_report(report, service):
                stop["signal"] = "on_report"
            if time.monotonic() - last_save >= cfg.run.checkpoint_interval_s:
                save()
                last_save = time.monotonic()
        save()
        bar.close()
        logger.close()
        episodes_csv.close()
        stopped_by = stop["signal"] and (signal.Signals(stop["signal"]).name
                                         if isinstance(stop["signal"], int) else stop["signal"])
        return {"frames": frames, "start_frames": state["frames"], "stopped_by": stopped_by,
                "final_return": sum(recent) / len(recent) if recent else None,
                "episodes": len(recent), "logdir": str(logdir),
                "wall_time_s": wall + time.monotonic() - t0}
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if service is not None:
            try:
                ray.get(service.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001  shutting down: nothing left to save here
                pass
            ray.kill(service)
        if started_ray:
            ray.shutdown()


def cmd_train(args):
    cfg = resolve_train_config(args)
    print(f"run directory: {cfg.run.logdir}   (tensorboard --logdir {cfg.run.logdir})", flush=True)
    summary = train(cfg, resume=args.resume, address=args.address, progress=not args.no_progress)
    ret = summary["final_return"]
    print(f"{'stopped' if summary['stopped_by'] else 'finished'} at {summary['frames']:,} frames; "
          f"mean return of the last {summary['episodes']} episodes: "
          f"{'n/a' if ret is None else f'{ret:.2f}'}; checkpoint: {cfg.run.logdir}/checkpoint.pt")
    return 0


def cmd_eval(args):
    from learner.checkpoint import CheckpointError
    from learner.evaluate import EVAL_SEED, evaluate
    if args.episodes < 1:
        raise UsageError(f"--episodes must be at least 1, got {args.episodes}")
    try:
        result = evaluate(args.checkpoint, args.episodes, greedy=args.greedy, video=args.video,
                          seed=EVAL_SEED if args.seed is None else args.seed)
    except CheckpointError:
        raise
    except ValueError as e:   # --video on vector observations
        raise UsageError(str(e)) from None
    print(f"{result['env']} ({result['core']}, {result['frames']:,} frames), {result['episodes']} episodes"
          f"{' (greedy)' if args.greedy else ''}: mean {result['mean']:.3f}  std {result['std']:.3f}  "
          f"min {result['min']:.3f}  max {result['max']:.3f}")
    written = [str(Path(result["checkpoint"]).parent / "eval.json")] + \
        ([result["video"]] if "video" in result else [])
    print("written: " + ", ".join(written))
    return 0


def cmd_compare(args):
    from learner import compare, report
    if args.summarize:
        if args.envs or args.cores:
            raise UsageError("--summarize rebuilds the outputs from the runs already in DIR; "
                             "drop --envs/--cores")
        outdir = Path(args.summarize)
    else:
        missing = [flag for flag, value in (("--envs", args.envs), ("--cores", args.cores),
                                            ("--outdir", args.outdir)) if not value]
        if missing:
            raise UsageError(f"compare needs {', '.join(missing)} (or --summarize DIR)")
        if args.seeds < 1 or args.parallel < 1:
            raise UsageError("--seeds and --parallel must be at least 1")
        runs = compare.plan(args.outdir, args.envs, args.cores, args.seeds, args.total_frames,
                            args.config, args.set or [])
        for run in runs:
            check_train_config(run.cfg)
        try:
            actions = compare.run_grid(runs, train, start_ray, address=args.address, parallel=args.parallel,
                                       eval_episodes=args.eval_episodes, eval_greedy=args.eval_greedy,
                                       progress=not args.no_progress)
        except compare.CompareError as e:
            raise UsageError(str(e)) from None
        if "interrupted" in actions.values():
            return 130
        outdir = Path(args.outdir)
    try:
        written = report.write_outputs(outdir)
    except report.ReportError as e:
        raise UsageError(str(e)) from None
    print("written: " + ", ".join(str(p) for p in written))
    return 0


BENCHMARKS = ("kernels", "learner", "throughput")


def cmd_bench(args):
    """bench/<name>.py with the remaining arguments (the scripts print tables; see bench/RESULTS.md)."""
    import runpy
    sys.argv = [f"bench/{args.name}.py", *args.args]
    runpy.run_path(str(ROOT / "bench" / f"{args.name}.py"), run_name="__main__")
    return 0


# -- the parser ---------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an agent (IMPALA + V-trace) with Ray actors")
    t.add_argument("--config", help="YAML preset (e.g. configs/atari_cpu.yaml, or just atari_cpu.yaml)")
    t.add_argument("--env", help="env id: ALE/<Game>-v5, popgym-<Task>-v0, CartPole-v1, ...")
    t.add_argument("--core", help="lstm, linear_transformer, delta_net, delta_rnn, rdn, delta_lstm")
    t.add_argument("--total-frames", type=_count, help="environment frames to train for (e.g. 2e6)")
    t.add_argument("--num-actors", type=_count)
    t.add_argument("--envs-per-actor", type=_count)
    t.add_argument("--seed", type=_count)
    t.add_argument("--logdir", help="run directory (default runs/<env>-<core>-<date-time>)")
    t.add_argument("--address", help="join a running Ray cluster (e.g. auto); default: start Ray here")
    t.add_argument("--resume", action="store_true", help="continue the run in --logdir from its checkpoint")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config value, e.g. --set learner.lr=3e-4 (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="play N whole episodes with a checkpoint; mean/std/min/max -> eval.json")
    e.add_argument("--checkpoint", required=True, help="a run directory or its checkpoint.pt")
    e.add_argument("--episodes", type=_count, default=10, help="whole games to play (default 10)")
    e.add_argument("--greedy", action="store_true", help="take the most likely action instead of sampling")
    e.add_argument("--video", action="store_true",
                   help="also film one game (image observations) to eval.mp4, and to TensorBoard")
    e.add_argument("--seed", type=_count, help="seed of the env and of the sampled actions")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", help="train every (env, core, seed), then results.csv, summary.md, "
                                       "curves_<env>.png; re-run to finish what is missing")
    c.add_argument("--envs", nargs="+", metavar="ID", help="env ids (as for train --env)")
    c.add_argument("--cores", nargs="+", metavar="NAME", help="cores, e.g. lstm rdn delta_net")
    c.add_argument("--seeds", type=_count, default=3, help="seeds 0..N-1 per (env, core) (default 3)")
    c.add_argument("--total-frames", type=_count, help="frame budget of every run (default: the config's)")
    c.add_argument("--outdir", help="directory of the comparison: DIR/<env>/<core>/seed<k>")
    c.add_argument("--config", help="YAML preset every run starts from")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config value for every run (repeatable)")
    c.add_argument("--eval-episodes", type=_count, default=10,
                   help="episodes to evaluate each finished run on (default 10; 0: none)")
    c.add_argument("--eval-greedy", action="store_true", help="evaluate with greedy actions")
    c.add_argument("--address", help="Ray cluster to run on (default: start Ray here)")
    c.add_argument("--parallel", type=_count, default=1,
                   help="runs side by side on the --address cluster (default 1: one after the other)")
    c.add_argument("--summarize", metavar="DIR", help="only rebuild the outputs from the runs in DIR")
    c.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", help="run a benchmark of bench/ (kernels, learner, throughput); "
                                     "arguments after the name go to it")
    b.add_argument("name", choices=BENCHMARKS)
    b.add_argument("args", nargs=argparse.REMAINDER, help="e.g. --help, or --parts actor train")
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv=None):
    from configs import ConfigError
    from learner.checkpoint import CheckpointError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ConfigError, CheckpointError) as e:
        print(f"launch.py {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
