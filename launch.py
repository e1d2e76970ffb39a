"""The command line: parse, resolve the config, call. The work lives in runtime/ (training:
runtime.driver.Training), experiments/ (eval, compare, report, tune) and bench/ (benchmarks).

    python launch.py train --config configs/atari_cpu.yaml
    python launch.py train --env popgym-RepeatPreviousEasy-v0 --core rdn --total-frames 2e6
    python launch.py train --logdir runs/pong-rdn --resume          # continue where it stopped
    python launch.py train --address auto ...                      # on a running Ray cluster
    python launch.py config --show atari_cpu                        # every key: value, default, meaning
    python launch.py eval --checkpoint runs/pong-rdn --episodes 10 [--greedy] [--video]
    python launch.py compare --config popgym_repeat_previous --envs popgym-RepeatPreviousEasy-v0 \
        --cores lstm rdn --seeds 3 --outdir runs/cmp                # then runs/cmp/summary.md
    python launch.py compare --summarize runs/cmp                   # rebuild table and plots
    python launch.py tune --config popgym_repeat_first --env popgym-RepeatFirstEasy-v0 \
        --core lstm --core rdn --samples 8 --budget 6e5 --outdir runs/tune   # Ray Tune (ASHA) per core
    python launch.py compare --tuned runs/tune --seeds 3 --outdir runs/cmp_tuned
    python launch.py bench throughput --parts actor train            # tables of bench/RESULTS.md

Bad input (unknown env id, core, config key, a value of the wrong type, a log directory that
holds another run) stops here, before Ray starts, with a message naming the valid choices.
"""
import argparse
import sys
from pathlib import Path

from configs.errors import Error

ROOT = Path(__file__).resolve().parent


class UsageError(Error):
    """Bad command-line input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors (a missing value, a flag of the wrong type) as the project's own:
    one line, exit status 2, no usage block (--help shows it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _count(text):
    """An integer count that also reads 1e6 or 2_000_000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer() or value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(value)


# train's flags and the config key each sets (a flag and --set may not both set one key).
TRAIN_FLAGS = {"--env": "env.id", "--core": "model.core", "--total-frames": "run.total_frames",
               "--num-actors": "run.num_actors", "--envs-per-actor": "env.num_envs", "--seed": "run.seed",
               "--logdir": "run.logdir"}


def resolve_train_config(args):
    """The resolved Config for `train` from the preset (or the run's own config.yaml with
    --resume), the flags and --set, all checked (configs/) before anything heavy starts."""
    from configs import load_config, parse_override
    from runtime.driver import RunDir, default_logdir

    overrides = [parse_override(item) for item in args.set or []]
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if key in dict(overrides):
            raise UsageError(f"{flag} and --set {key}=... both set {key}; give one of them")
        overrides.append((key, value))
    if args.resume:
        if not args.logdir:
            raise UsageError("--resume needs --logdir: the run directory to continue")
        if args.config:
            raise UsageError("--resume continues with the run's own config.yaml; drop --config "
                             "(use --set or the flags to change values such as --total-frames)")
        run_dir = RunDir(args.logdir)
        run_dir.check_resumable()
        cfg = load_config(run_dir.config, overrides)
    else:
        cfg = load_config(args.config, overrides)
        cfg.run.logdir = cfg.run.logdir or default_logdir(cfg)
        RunDir(cfg.run.logdir).check_new()
    return cfg


def cmd_train(args):
    from runtime.driver import Training
    cfg = resolve_train_config(args)
    print(f"run directory: {cfg.run.logdir}   (tensorboard --logdir {cfg.run.logdir})", flush=True)
    summary = Training(cfg, resume=args.resume, address=args.address).run(progress=not args.no_progress)
    ret = summary["final_return"]
    print(f"{'stopped' if summary['stopped_by'] else 'finished'} at {summary['frames']:,} frames; "
          f"mean return of the last {summary['episodes']} episodes: "
          f"{'n/a' if ret is None else f'{ret:.2f}'}; checkpoint: {cfg.run.logdir}/checkpoint.pt")
    return 0


def cmd_config(args):
    from configs import describe, load_config
    print(describe(load_config(args.show, args.set or [])))
    return 0


def cmd_eval(args):
    from experiments.evaluate import EVAL_SEED, evaluate
    paper = args.protocol == "paper"
    episodes = args.episodes if args.episodes is not None else (30 if paper else 10)
    if episodes < 1 or args.repeats < 1:
        raise UsageError(f"--episodes and --repeats must be at least 1, got {episodes} and {args.repeats}")
    try:
        result = evaluate(args.checkpoint, episodes, greedy=args.greedy, video=args.video,
                          seed=EVAL_SEED if args.seed is None else args.seed, protocol=args.protocol,
                          repeats=args.repeats)
    except ValueError as e:   # --video on vector observations, or with the paper's protocol
        raise UsageError(str(e)) from None
    what = (f"{result['repeats']} runs of {result['episodes']} lives (the paper's protocol, greedy): "
            f"mean of the runs {result['mean']:.3f}  std {result['std']:.3f}" if paper else
            f"{result['episodes']} episodes{' (greedy)' if args.greedy else ''}: mean {result['mean']:.3f}  "
            f"std {result['std']:.3f}")
    print(f"{result['env']} ({result['core']}, {result['frames']:,} frames), {what}  "
          f"min {result['min']:.3f}  max {result['max']:.3f}")
    written = [str(Path(result["checkpoint"]).parent / "eval.json")] + \
        ([result["video"]] if "video" in result else [])
    print("written: " + ", ".join(written))
    return 0


def cmd_tune(args):
    from experiments import tune
    if not args.core:
        raise UsageError("tune needs at least one --core")
    tune.tune_cores(args.config, args.env, args.core, args.samples, args.budget, args.outdir,
                    space_path=args.space, overrides=args.set or [], scheduler=args.scheduler,
                    address=args.address, seed=args.search_seed)
    print(f"written: {Path(args.outdir) / 'trials.md'}, " + ", ".join(
        str(p) for p in sorted(Path(args.outdir).glob("*/best.yaml"))))
    return 0


def cmd_compare(args):
    from configs import check_config
    from experiments import compare, report
    if args.tuned:
        from configs import load_config
        from experiments import tune
        if args.config or args.summarize:
            raise UsageError("--tuned takes each core's config from DIR/<core>/best.yaml; drop --config/--summarize")
        args.config = {core: str(path) for core, path in tune.tuned_configs(args.tuned).items()}
        args.cores = args.cores or list(args.config)
        unknown = [c for c in args.cores if c not in args.config]
        if unknown:
            raise UsageError(f"{args.tuned} has no best.yaml for {', '.join(unknown)}; it has {', '.join(args.config)}")
        args.envs = args.envs or sorted({load_config(args.config[c]).env.id for c in args.cores})
        used = tune.trial_seeds(args.tuned) & set(range(args.seeds))
        if used:
            raise UsageError(f"seeds {sorted(used)} trained trials of the search in {args.tuned}; "
                             "a tuned comparison needs seeds the search never saw")
        if args.outdir:      # the summary lists each core's tuned values
            import yaml

            from configs.files import atomic_write
            Path(args.outdir).mkdir(parents=True, exist_ok=True)
            atomic_write(Path(args.outdir) / "tuned.yaml", yaml.safe_dump(
                {"search": str(Path(args.tuned).resolve()), "keys": tune.tuned_keys(args.tuned)}))
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
            check_config(run.cfg)
        actions = compare.run_grid(runs, address=args.address, parallel=args.parallel,
                                   eval_episodes=args.eval_episodes, eval_greedy=args.eval_greedy,
                                   progress=not args.no_progress, eval_protocol=args.eval_protocol)
        if "interrupted" in actions.values():
            return 130
        outdir = Path(args.outdir)
    written = report.write_outputs(outdir)
    print("written: " + ", ".join(str(p) for p in written))
    return 0


BENCHMARKS = ("kernels", "learner", "throughput", "ablation")


def cmd_bench(args):
    """bench/<name>.py with the remaining arguments (the scripts print tables; see bench/RESULTS.md)."""
    import runpy
    sys.argv = [f"bench/{args.name}.py", *args.args]
    runpy.run_path(str(ROOT / "bench" / f"{args.name}.py"), run_name="__main__")
    return 0


def build_parser():
    from experiments import PROTOCOLS
    from experiments.tune import SCHEDULERS
    from fwp_core import CORES
    parser = _Parser(prog="launch.py", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an agent (IMPALA + V-trace) with Ray actors")
    t.add_argument("--config", help="YAML preset (e.g. configs/atari_cpu.yaml, or just atari_cpu.yaml)")
    t.add_argument("--env", help="env id: ALE/<Game>-v5, popgym-<Task>-v0, CartPole-v1, ...")
    t.add_argument("--core", help=", ".join(CORES))
    t.add_argument("--total-frames", type=_count, help="environment frames to train for (e.g. 2e6)")
    t.add_argument("--num-actors", type=_count)
    t.add_argument("--envs-per-actor", type=_count)
    t.add_argument("--seed", type=_count)
    t.add_argument("--logdir", help="run directory (default runs/<env>-<core>-<date-time>)")
    t.add_argument("--address", help="join a running Ray cluster (e.g. auto); default: start Ray here")
    t.add_argument("--resume", action="store_true", help="continue the run in --logdir from its checkpoint")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config value, e.g. --set learner.lr=3e-4 (repeatable); "
                        "`launch.py config --show PRESET` lists every key with its meaning")
    t.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="play N whole episodes with a checkpoint; mean/std/min/max -> eval.json")
    e.add_argument("--checkpoint", required=True, help="a run directory or its checkpoint.pt")
    e.add_argument("--episodes", type=_count,
                   help="whole games to play (default 10); with --protocol paper lives per run (default 30)")
    e.add_argument("--protocol", choices=PROTOCOLS, default="games",
                   help="games: whole games (all lives), sampled actions unless --greedy (default); paper: "
                        "the paper's test, greedy, one life per episode, --repeats runs of --episodes")
    e.add_argument("--repeats", type=_count, default=5, help="--protocol paper: runs (default 5)")
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
    c.add_argument("--eval-protocol", choices=PROTOCOLS, default="games",
                   help="as eval --protocol (paper: --eval-episodes lives in each of 5 runs, greedy)")
    c.add_argument("--address", help="Ray cluster to run on (default: start Ray here)")
    c.add_argument("--parallel", type=_count, default=1,
                   help="runs side by side on the --address cluster (default 1: one after the other)")
    c.add_argument("--summarize", metavar="DIR", help="only rebuild the outputs from the runs in DIR")
    c.add_argument("--tuned", metavar="DIR", help="each core starts from DIR/<core>/best.yaml of `launch.py tune` "
                                                  "(default --cores: those tuned, --envs: the tuned env)")
    c.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    c.set_defaults(func=cmd_compare)

    u = sub.add_parser("tune", help="search each core's hyperparameters with Ray Tune (ASHA); "
                                    "DIR/<core>/best.yaml, DIR/trials.md; re-run to resume")
    u.add_argument("--config", help="YAML preset the trials start from")
    u.add_argument("--env", required=True, help="env id (as for train --env)")
    u.add_argument("--core", action="append", metavar="NAME", help="a core to tune (repeatable)")
    u.add_argument("--samples", type=_count, default=8, help="trials per core (default 8)")
    u.add_argument("--budget", type=_count, required=True, help="frames per trial (e.g. 6e5)")
    u.add_argument("--space", metavar="YAML", help="search space (default: lr, the optimiser's eps and the "
                                                   "entropy cost, log-uniform); see experiments/tune.py")
    u.add_argument("--scheduler", choices=SCHEDULERS, default="asha",
                   help="asha: stop the worse half at 1/4, 1/2 of the budget (default); fifo: run all to the end; "
                        "pbt: population-based training, the worst quarter continues from the best every 1/4")
    u.add_argument("--search-seed", type=_count, default=0, help="seed of the drawn values (default 0)")
    u.add_argument("--outdir", required=True, help="directory of the search: DIR/<core>/trials/<trial>")
    u.add_argument("--set", action="append", metavar="KEY=VALUE", help="config value for every trial (repeatable)")
    u.add_argument("--address", help="Ray cluster to run on (default: start Ray here)")
    u.set_defaults(func=cmd_tune)

    g = sub.add_parser("config", help="list every config key: its value in a preset, its default, its meaning")
    g.add_argument("--show", metavar="PRESET", help="a preset of configs/ (by name or path); default: the defaults")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value (repeatable)")
    g.set_defaults(func=cmd_config)

    b = sub.add_parser("bench", help="run a benchmark of bench/ (kernels, learner, throughput, ablation); "
                                     "arguments after the name go to it")
    b.add_argument("name", choices=BENCHMARKS)
    b.add_argument("args", nargs=argparse.REMAINDER, help="e.g. --help, or --parts actor train")
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Error as e:   # the project's errors speak to the user: one line, exit status 2
        print(f"launch.py {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
