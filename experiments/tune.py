"""Tune each core's hyperparameters with Ray Tune, so that a comparison sets every core at its own
best settings, found the same way with the same budget.

    python launch.py tune --config popgym_repeat_first --env popgym-RepeatFirstEasy-v0 \
        --core lstm --core rdn --samples 8 --budget 6e5 --outdir runs/tune_rf
    python launch.py compare --tuned runs/tune_rf --seeds 3 --outdir runs/cmp_rf

Per core, `--samples` trials draw values from the search space (YAML, below; default: the lr, the
optimiser's epsilon and the entropy cost, each log-uniform) and train `--budget` frames each; ASHA
(asynchronous successive halving) stops the worse half of the trials at each rung (a quarter, half
of the budget, ...), `--scheduler fifo` runs every trial to the end, and `--scheduler pbt` runs
population-based training: every quarter of the budget each trial saves a checkpoint, and a trial
in the worst quarter of the population continues from a best-quarter trial's checkpoint with that
trial's values perturbed (x0.8 or x1.2) or, one time in four, drawn afresh (its run directory's
lineage.csv says from which trial and at which frame count; best.yaml then holds the best trial's
values at the end, the last point of the schedule PBT found; a local Ray gets logical CPUs for the
whole population, which must run side by side). The metric is a trial's mean
return of its last games (runtime.driver.RETURN_WINDOW), the number `train` and `compare` report.

Each trial is an ordinary run directory, DIR/<core>/trials/<trial id> (`tensorboard --logdir DIR`
overlays them); trials train on seeds SEARCH_SEED + k, which `compare --tuned` never uses. Written:
DIR/<core>/best.yaml (the best trial's whole config: a preset `train --config` and `compare --config`
accept), DIR/<core>/trials.csv and DIR/trials.md (every trial: its values, frames, score, status).
A trial that fails is reported in the table, not fatal. Re-running the same command resumes an
unfinished search (Ray Tune's restore; a trial's run directory resumes from its checkpoint).

The search space maps config keys to one distribution each:

    learner.lr: {loguniform: [1.0e-4, 3.0e-3]}
    learner.entropy_cost: {loguniform: [1.0e-4, 3.0e-2]}
    learner.vtrace_lambda: {uniform: [0.9, 1.0]}
    learner.loss: {choice: [impala, appo]}
    learner.unroll_length: {randint: [10, 50]}       # integers, both ends included
    learner.batch_size: {grid: [16, 32]}             # every value, --samples times each

Every key, type and bound is checked against the config before Ray starts.
"""
import csv
import math
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from configs import ConfigError, check_config, config_to_dict, config_yaml, load_config
from configs.errors import Error
from configs.files import atomic_write

from .values import dotted, format_value

SEARCH_SEED = 10_000          # trial k trains on seed SEARCH_SEED + k; compare uses 0..N-1
KINDS = ("loguniform", "uniform", "randint", "choice", "grid")
METRIC = "score"              # a run's mean return of its last runtime.driver.RETURN_WINDOW games
TRIAL_CPUS = 1                # a trial's own process (its driver loop), beside its actors and learner


class TuneError(Error):
    """A search that cannot run as asked; the message names the key or value at fault."""


def default_space(cfg):
    eps = "learner.adam_eps" if cfg.learner.optimizer == "adam" else "learner.rmsprop_eps"
    return {"learner.lr": {"loguniform": [1e-4, 3e-3]}, eps: {"loguniform": [1e-6, 1e-2]},
            "learner.entropy_cost": {"loguniform": [1e-4, 3e-2]}}


def load_space(path, cfg):
    """The search space at `path` (None: default_space), each entry checked against `cfg`:
    {key: (kind, values)}."""
    if path is None:
        raw, where = default_space(cfg), "the default search space"
    else:
        try:
            raw, where = yaml.safe_load(Path(path).read_text()), str(path)
        except FileNotFoundError:
            raise TuneError(f"search space {path} not found") from None
        except yaml.YAMLError as e:
            raise TuneError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise TuneError(f"{where}: expected a mapping of config keys to distributions, e.g. "
                        "learner.lr: {loguniform: [1e-4, 3e-3]}")
    space = {}
    for key, dist in raw.items():
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in KINDS:
            raise TuneError(f"{where}: {key} needs exactly one of {', '.join(KINDS)} (e.g. "
                            f"{{loguniform: [1e-4, 3e-3]}}), got {dist!r}")
        kind, values = next(iter(dist.items()))
        if kind in ("choice", "grid"):
            if not isinstance(values, list) or not values:
                raise TuneError(f"{where}: {key}: {kind} needs a non-empty list of values, got {values!r}")
        else:
            if (not isinstance(values, list) or len(values) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                raise TuneError(f"{where}: {key}: {kind} needs [low, high] numbers, got {values!r}")
            low, high = values
            if low > high or (low == high and kind != "randint"):
                raise TuneError(f"{where}: {key}: {kind} needs low < high, got [{low}, {high}]")
            if kind == "loguniform" and low <= 0:
                raise TuneError(f"{where}: {key}: loguniform bounds must be positive, got [{low}, {high}]")
            if kind == "randint" and not all(float(v).is_integer() for v in values):
                raise TuneError(f"{where}: {key}: randint bounds must be integers, got [{low}, {high}]")
            values = [int(v) for v in values] if kind == "randint" else [float(v) for v in values]
        # Every value the search can draw must be one the config takes (its key, type and checks).
        for value in values:
            try:
                trial = load_config(None, [(k, v) for k, v in config_items(cfg)] + [(key, value)])
                check_config(trial)
            except ConfigError as e:
                raise TuneError(f"{where}: {key}: the value {value!r} is refused: {e}") from None
        space[key] = (kind, values)
    return space


def config_items(cfg):
    """(section.key, value) of every field of cfg (to rebuild it through load_config)."""
    return list(dotted(config_to_dict(cfg)).items())


def to_tune(space):
    from ray import tune
    make = {"loguniform": lambda v: tune.loguniform(*v), "uniform": lambda v: tune.uniform(*v),
            "randint": lambda v: tune.randint(v[0], v[1] + 1), "choice": tune.choice, "grid": tune.grid_search}
    return {key: make[kind](values) for key, (kind, values) in space.items()}


SCHEDULERS = ("asha", "fifo", "pbt")
PBT_SEGMENTS = 4             # PBT: a checkpoint (and a chance to exploit) every quarter of the budget


def pbt_interval(budget):
    return max(1, int(budget) // PBT_SEGMENTS)


def make_scheduler(name, budget, space=None):
    """ASHA over frames (rungs at budget/4, budget/2, budget; the better half goes on), FIFO, or
    population-based training (exploit and explore every budget/4 frames, over `space`)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    if name == "fifo":
        return FIFOScheduler()
    if name == "pbt":
        return PopulationBasedTraining(time_attr="frames", perturbation_interval=pbt_interval(budget),
                                       hyperparam_mutations=to_tune(space), quantile_fraction=0.25,
                                       resample_probability=0.25)
    return ASHAScheduler(time_attr="frames", max_t=int(budget), grace_period=max(1, int(budget) // 4),
                         reduction_factor=2)


def trial_index(trial_id):
    return int(trial_id.rsplit("_", 1)[-1])


def run_trial(params, base, core_dir, budget, log_interval_s, pbt=False):
    """One trial (inside Ray Tune): an ordinary Training run in core_dir/trials/<trial id>,
    reporting its score and frames at every log interval (with `pbt`: at the end of each segment,
    with its checkpoint, see run_pbt_trial)."""
    from ray import tune

    from runtime.driver import Training
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(core_dir) / "trials" / trial_id
    cfg = load_config(None, [*base, *params.items(), ("run.seed", SEARCH_SEED + trial_index(trial_id)),
                             ("run.logdir", str(run_dir)), ("run.total_frames", int(budget)),
                             ("run.log_interval_s", log_interval_s)])
    if pbt:
        return run_pbt_trial(cfg, trial_id, run_dir, budget)

    def on_report(report, service):
        # The last interval's score is reported after the run has saved its checkpoint (below).
        if report["mean_return"] is not None and report["frames"] < budget:
            tune.report({METRIC: report["mean_return"], "frames": report["frames"]})
        return False

    summary = Training(cfg, resume=(run_dir / "checkpoint.pt").is_file()).run(progress=False, on_report=on_report)
    if summary["final_return"] is not None:
        tune.report({METRIC: summary["final_return"], "frames": summary["frames"]})


def run_pbt_trial(cfg, trial_id, run_dir, budget):
    """A PBT trial: Training in segments of budget/4 frames, each ending in a checkpoint that is
    reported to Tune with the score. When PBT has this trial exploit a better one, Tune restarts it
    with new values and the other's checkpoint, which this run directory adopts and continues
    (the run's config.yaml then holds the new values, lineage.csv the donor)."""
    from ray import tune

    from learner import checkpoint
    from runtime.driver import Training
    given = tune.get_checkpoint()
    if given is not None:
        with given.as_directory() as d:
            donor = (Path(d) / "trial.txt").read_text().strip()
            if donor != trial_id or not (run_dir / "checkpoint.pt").is_file():
                adopt_checkpoint(Path(d) / "checkpoint.pt", run_dir, donor)
    interval = pbt_interval(budget)
    path = run_dir / "checkpoint.pt"
    # The checkpoint is read once, for where a (restarted or adopting) trial starts; each segment
    # then ends where its summary says.
    start = checkpoint.read(path)["counters"]["frames"] if path.is_file() else 0
    while start < budget:
        stop_at = min(budget, (start // interval + 1) * interval)
        summary = Training(cfg, resume=path.is_file()).run(
            progress=False, on_report=lambda report, service: report["frames"] >= stop_at)
        with tempfile.TemporaryDirectory() as d:
            shutil.copyfile(path, Path(d) / "checkpoint.pt")
            (Path(d) / "trial.txt").write_text(trial_id)
            score = summary["final_return"]
            tune.report({METRIC: float("nan") if score is None else score, "frames": summary["frames"]},
                        checkpoint=tune.Checkpoint.from_directory(d))
        start = summary["frames"]


def adopt_checkpoint(source, run_dir, donor):
    """Make `source` (another trial's checkpoint.pt) the checkpoint run_dir resumes from, and note
    it in run_dir/lineage.csv (frames, donor trial)."""
    from learner import checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "checkpoint.pt.adopting"
    shutil.copyfile(source, tmp)
    os.replace(tmp, run_dir / "checkpoint.pt")
    frames = checkpoint.read(run_dir / "checkpoint.pt")["counters"]["frames"]
    lineage = run_dir / "lineage.csv"
    new = not lineage.is_file()
    with open(lineage, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["frames", "from_trial"])
        w.writerow([frames, donor])
        f.flush()


def search(core, base, space, outdir, samples, budget, scheduler="asha", seed=0, trainable=None,
           log_interval_s=None, trial_cpus=TRIAL_CPUS, max_concurrent=None):
    """Run (or resume) the search of one core; returns its trials as dicts (see write_trials).
    `trainable` replaces run_trial (tests); `base` are (key, value) pairs of the trial config."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import BasicVariantGenerator

    # Tune's own loggers stay off (each trial's run directory holds its curves, and TensorBoard copies
    # in Tune's folders would double them), all but its result.json: Tune reads it back for the
    # results, and without it warns "Failed to fetch metrics" for every trial of a good search.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    core_dir = Path(outdir).resolve() / core
    if trainable is None:
        base_cfg = load_config(None, base)
        trainable = tune.with_parameters(run_trial, base=base, core_dir=str(core_dir), budget=budget,
                                         log_interval_s=log_interval_s or base_cfg.run.log_interval_s,
                                         pbt=scheduler == "pbt")
    trainable = tune.with_resources(trainable, {"cpu": trial_cpus})
    storage, name = str(core_dir), "tune"
    if tune.Tuner.can_restore(str(core_dir / name)):
        tuner = tune.Tuner.restore(str(core_dir / name), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=to_tune(space),
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=samples,
                                        scheduler=make_scheduler(scheduler, budget, space),
                                        search_alg=BasicVariantGenerator(
                                            random_state=seed,
                                            max_concurrent=max_concurrent or concurrency(load_config(None, base)))),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0, callbacks=[JsonLoggerCallback()]))
    results = tuner.fit()
    trials = []
    for result in results:
        metrics = result.metrics or {}
        trials.append({"core": core, "trial": metrics.get("trial_id") or Path(result.path).name,
                       "params": {k: result.config[k] for k in space if k in result.config},
                       "frames": metrics.get("frames"), "score": metrics.get(METRIC),
                       "status": trial_status(metrics.get("frames"), result.error, budget, bool(metrics.get("done"))),
                       "error": None if result.error is None else str(result.error).strip().splitlines()[-1]})
    return trials


def trial_status(frames, error, budget, ended):
    """done (the whole budget), stopped (ended short of it: by ASHA, at a rung), error, or
    interrupted (short of the budget and not ended: the search was cut off, e.g. by Ctrl-C, and
    running the same command again continues it). `ended` is Tune's `done` flag of the trial's
    last result: set when the trial ended by itself or by the scheduler's stop, not when the whole
    search was cut off (a trial cut off past a rung then reads interrupted, not stopped)."""
    if error:
        return "error"
    frames = frames or 0
    if frames >= budget:
        return "done"
    return "stopped" if ended else "interrupted"


def expected_trials(space, samples):
    """Trials a search runs: --samples for every combination of its grid values."""
    return samples * math.prod(len(values) for kind, values in space.values() if kind == "grid")


def concurrency(cfg):
    """Trials side by side: as many as the cluster's CPUs hold with each trial's actors and learner
    (Ray would otherwise start trials whose actors then wait for CPUs)."""
    import ray

    from runtime.cluster import cpus_needed
    return max(1, int(ray.cluster_resources().get("CPU", 1) // (cpus_needed(cfg) + TRIAL_CPUS)))


def best_trial(trials):
    """The highest score among the trials that ran the whole budget (else among all that scored)."""
    scored = [t for t in trials if t["score"] is not None and t["status"] != "error"]
    if not scored:
        return None
    full = [t for t in scored if t["status"] == "done"]
    return max(full or scored, key=lambda t: t["score"])


def write_best(core_dir, trial, base, budget):
    """best.yaml: the whole config of the best trial (seed 0 and the default logdir: a preset)."""
    cfg = load_config(None, [*base, *trial["params"].items(), ("run.total_frames", int(budget))])
    cfg.run.seed, cfg.run.logdir = 0, load_config().run.logdir
    values = ", ".join(f"{k}={format_value(v)}" for k, v in trial["params"].items())
    header = (f"# Tuned by launch.py tune: trial {trial['trial']} scored {trial['score']:.4g} at "
              f"{trial['frames']:,} frames ({values}).\n# A preset: launch.py train --config this file; "
              "launch.py compare --tuned the search directory.\n")
    path = Path(core_dir) / "best.yaml"
    atomic_write(path, header + config_yaml(cfg))
    return path


def write_trials(outdir, trials_by_core):
    """DIR/<core>/trials.csv per core and DIR/trials.md with every trial, best first per core."""
    lines = ["| core | trial | values | frames | score | status |", "|---|---|---|---:|---:|---|"]
    for core, trials in trials_by_core.items():
        keys = sorted({k for t in trials for k in t["params"]})
        rows = sorted(trials, key=lambda t: -math.inf if t["score"] is None else -t["score"])
        path = Path(outdir) / core / "trials.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["trial", *keys, "frames", "score", "status", "error"])
            for t in rows:
                w.writerow([t["trial"], *(t["params"].get(k) for k in keys), t["frames"], t["score"],
                            t["status"], t["error"] or ""])
        for t in rows:
            values = ", ".join(f"{k}={format_value(v)}" for k, v in t["params"].items())
            score = "-" if t["score"] is None else f"{t['score']:.4g}"
            frames = "-" if t["frames"] is None else f"{t['frames']:,}"
            status = t["status"] + (f" ({t['error']})" if t["error"] else "")
            lines.append(f"| {core} | {t['trial']} | {values} | {frames} | {score} | {status} |")
    atomic_write(Path(outdir) / "trials.md", "\n".join(lines) + "\n")


def write_search(outdir, env, spaces, trials_by_core, incomplete=()):
    """DIR/search.yaml: the env, and per core its space, its best trial's values and score (none for
    the `incomplete` cores, whose search was interrupted)."""
    summary = {"env": env, "cores": {}}
    for core, trials in trials_by_core.items():
        best = None if core in incomplete else best_trial(trials)
        summary["cores"][core] = {
            "space": {k: {kind: list(values)} for k, (kind, values) in spaces[core].items()},
            "best": None if best is None else {"trial": best["trial"], "score": float(best["score"]),
                                               "frames": int(best["frames"]), "values": dict(best["params"])}}
    atomic_write(Path(outdir) / "search.yaml", yaml.safe_dump(summary, sort_keys=False))


def tuned_keys(tuned_dir):
    """The keys a search tuned (its spaces' union), from DIR/search.yaml."""
    path = Path(tuned_dir) / "search.yaml"
    if not path.is_file():
        return []
    cores = (yaml.safe_load(path.read_text()) or {}).get("cores", {})
    return sorted({k for c in cores.values() for k in c.get("space", {})})


def tune_cores(config, env, cores, samples, budget, outdir, space_path=None, overrides=(), scheduler="asha",
               address=None, seed=0, log=print):
    """The whole command: check everything, start (or join) Ray, search each core, write the outputs."""
    import ray

    from runtime import cluster
    if samples < 1 or budget < 1:
        raise TuneError("--samples and --budget must be at least 1")
    if scheduler not in SCHEDULERS:
        raise TuneError(f"--scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    bases, spaces = {}, {}
    for core in cores:
        cfg = load_config(config, [*overrides, ("env.id", env), ("model.core", core)])
        check_config(cfg)
        bases[core] = config_items(cfg)
        spaces[core] = load_space(space_path, cfg)
        grids = [k for k, (kind, _) in spaces[core].items() if kind == "grid"]
        if scheduler == "pbt" and grids:
            raise TuneError(f"--scheduler pbt mutates values as it goes, so it takes no grid: {', '.join(grids)} "
                            "(use choice for a list of values)")
        if scheduler == "pbt" and samples < 2:
            raise TuneError("--scheduler pbt needs a population: --samples 2 or more (4 or more to be useful)")
    first = load_config(None, bases[cores[0]])
    # PBT needs its population alive at once (trials exploit only trials still running): a local
    # Ray gets logical CPUs for every trial, sharing the cores; ASHA and FIFO run what fits.
    per_trial = cluster.cpus_needed(first) + TRIAL_CPUS
    extra = TRIAL_CPUS + (samples - 1) * per_trial if scheduler == "pbt" else TRIAL_CPUS
    started = cluster.start_ray(first, address, extra_cpus=extra)
    try:
        need, have = cluster.cpus_needed(first) + TRIAL_CPUS, ray.cluster_resources().get("CPU", 0)
        if have < need:
            raise TuneError(f"the Ray cluster has {have:g} CPUs; one trial needs {need:g} (its actors, "
                            "learner and driver): lower --num-actors / run.num_actors, or add nodes")
        if scheduler == "pbt" and concurrency(first) < samples:
            log(f"tune: pbt: only {concurrency(first)} of the {samples} trials fit side by side on this "
                "cluster; a trial exploits only those running with it (add nodes or lower --samples)")
        trials_by_core, incomplete = {}, []
        for core in cores:
            log(f"tune: {core}: {samples} trials x {int(budget):,} frames on {env} ({scheduler})")
            trials_by_core[core] = trials = search(core, bases[core], spaces[core], outdir, samples, budget,
                                                   scheduler, seed)
            finished = sum(t["status"] != "interrupted" for t in trials)
            if finished < expected_trials(spaces[core], samples):
                log(f"tune: {core}: the search was interrupted ({finished} of {expected_trials(spaces[core], samples)} "
                    "trials finished), so no best.yaml yet: run the same command again to continue it")
                incomplete.append(core)
                continue
            best = best_trial(trials)
            if best is None:
                log(f"tune: {core}: no trial scored (see {Path(outdir) / 'trials.md'})")
                continue
            path = write_best(Path(outdir) / core, best, bases[core], budget)
            log(f"tune: {core}: best {best['score']:.4g} ({best['trial']}) -> {path}")
        write_trials(outdir, trials_by_core)
        write_search(outdir, env, spaces, trials_by_core, incomplete)
    finally:
        if started:
            ray.shutdown()
    return trials_by_core


def tuned_configs(tuned_dir):
    """{core: DIR/<core>/best.yaml} of a search directory."""
    found = {p.parent.name: p for p in sorted(Path(tuned_dir).glob("*/best.yaml"))}
    if not found:
        raise TuneError(f"{tuned_dir} holds no <core>/best.yaml; run launch.py tune --outdir {tuned_dir} first")
    return found


def trial_seeds(tuned_dir):
    """The seeds the search trained on (from its run directories' config.yaml)."""
    seeds = set()
    for saved in Path(tuned_dir).glob("*/trials/*/config.yaml"):
        seeds.add(int((yaml.safe_load(saved.read_text()) or {}).get("run", {}).get("seed", -1)))
    return seeds
