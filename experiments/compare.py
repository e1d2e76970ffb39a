"""Compare cores per game: train every (env, core, seed), evaluate each run, then tabulate and plot
(experiments/report.py).

    python launch.py compare --config popgym_repeat_previous --envs popgym-RepeatPreviousEasy-v0 \
        --cores lstm rdn --seeds 3 --total-frames 1e6 --outdir runs/cmp
    python launch.py compare --summarize runs/cmp          # rebuild the table and plots only

Each run is an ordinary run directory, DIR/<env id, '/' -> '_'>/<core>/seed<k> (`train --resume`
works on it), so `tensorboard --logdir DIR` overlays them all.

Re-running the same command finishes what is missing, run by run, from what is on disk:
  done     its checkpoint (or, with the checkpoint gone, its result.json) reached the total frames
                                                      -> skipped (evaluated if eval.json is missing
                                                         and the checkpoint is there)
  partial  a checkpoint short of the total            -> resumed (train --resume semantics)
  stale    config.yaml but no checkpoint (killed before its first save, or only its small files
           kept, short of the budget)                 -> started afresh
  new      nothing there                              -> trained
A run whose config.yaml differs from what the command asks for (other than the frame budget) is
refused: the comparison would silently mix settings.

Where the runs go: by default one after the other in this process, under one Ray session (started
here, or joined with --address). With `parallel` K > 1 and the --address of a Ray cluster, K
training drivers run side by side on that cluster, each a child process (`python -m launch
train`) writing its run directory and its log (train.log there); evaluation then happens here,
one run after the other.
Ctrl-C stops the runs in flight after they save a checkpoint; the same command then goes on.
"""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from configs import config_to_dict, config_yaml, load_config
from configs.errors import Error
from configs.files import atomic_write
from learner import checkpoint
from runtime import cluster
from runtime.driver import RunDir, Training, env_dirname

from . import report
from .evaluate import eval_seed, evaluate
# Keys that may differ between a run on disk and the command that continues it (the learner's
# threads change its speed, not what it computes).
FREE_KEYS = {"run.total_frames", "run.logdir", "run.log_interval_s", "run.checkpoint_interval_s",
             "run.learner_threads"}


class CompareError(Error):
    """A comparison that cannot go on as asked; the message says why and what to do."""


@dataclasses.dataclass
class Run:
    env: str
    core: str
    seed: int
    dir: Path
    cfg: object    # configs.Config, resolved for this run


def plan(outdir, envs, cores, seeds, total_frames, config=None, overrides=()):
    """The runs of the grid, each with its resolved Config (preset, then --set, then the grid's own
    env, core, seed, frame budget and directory). `config` is one preset, or {core: preset} (a
    tuned comparison: each core its own)."""
    runs = []
    for env in envs:
        for core in cores:
            for seed in range(seeds):
                d = Path(outdir) / env_dirname(env) / core / f"seed{seed}"
                grid = [("env.id", env), ("model.core", core), ("run.seed", seed), ("run.logdir", str(d))]
                if total_frames is not None:
                    grid.append(("run.total_frames", total_frames))
                preset = config[core] if isinstance(config, dict) else config
                runs.append(Run(env, core, seed, d, load_config(preset, [*overrides, *grid])))
    return runs


def status(run):
    """'done', 'partial', 'stale' or 'new' (see the module docstring), after checking that a run on
    disk was made with the config asked for."""
    ckpt, saved = run.dir / "checkpoint.pt", run.dir / "config.yaml"
    if not saved.is_file():
        return "new"
    _check_same_config(run, load_config(saved))
    result = report.run_result(run.dir)   # the checkpoint's counters, else the kept result.json's
    if result is None or (not ckpt.is_file() and result["frames"] < run.cfg.run.total_frames):
        return "stale"
    return "done" if result["frames"] >= run.cfg.run.total_frames else "partial"


def _check_same_config(run, saved):
    want, have = config_to_dict(run.cfg), config_to_dict(saved)
    diffs = [f"{s}.{k}: {have[s][k]!r} on disk, {v!r} asked for" for s, fields in want.items()
             for k, v in fields.items() if f"{s}.{k}" not in FREE_KEYS and have[s][k] != v]
    if diffs:
        raise CompareError(f"{run.dir} was trained with another config ({'; '.join(diffs[:4])}); "
                           "re-run with the settings it was made with, or choose another --outdir")


def _needs_eval(run, episodes, greedy, seed, protocol="games"):
    """Whether run's eval.json is missing or was made for other frames, episodes, greedy, seed or
    protocol."""
    path = run.dir / "eval.json"
    if episodes <= 0:
        return False
    if not path.is_file():
        return True
    try:
        old = json.loads(path.read_text())
        frames = checkpoint.read(run.dir / "checkpoint.pt")["counters"]["frames"]
        asked = (frames, episodes, greedy or protocol == "paper", seed, protocol)
        return (old["frames"], old["episodes"], old["greedy"], old["seed"], old.get("protocol", "games")) != asked
    except (ValueError, KeyError, TypeError):
        return True


def run_grid(runs, address=None, parallel=1, eval_episodes=10, eval_greedy=False, progress=True, log=print,
             eval_protocol="games"):
    """Train what is missing, then evaluate what has no evaluation of its final checkpoint.
    Returns {run dir: action}, action one of trained, resumed, skipped, interrupted; on Ctrl-C it
    stops (runs not reached are absent) and evaluates nothing."""
    if parallel > 1 and not address:
        raise CompareError("--parallel > 1 runs several drivers on one Ray cluster: start one "
                           "(`ray start --head`) and pass --address auto, or leave --parallel at 1")
    states = {run.dir: status(run) for run in runs}   # every run checked before anything trains
    todo = [run for run in runs if states[run.dir] != "done"]
    actions = {run.dir: "skipped" for run in runs if states[run.dir] == "done"}
    log(f"compare: {len(runs)} runs: {len(runs) - len(todo)} done, "
        f"{sum(states[r.dir] == 'partial' for r in todo)} to resume, "
        f"{sum(states[r.dir] != 'partial' for r in todo)} to start")
    if parallel > 1:
        _check_room(todo, address, parallel)
    for run in todo:
        if states[run.dir] == "stale":
            log(f"compare: {run.dir} has no checkpoint (stopped before its first save): starting it afresh")
            shutil.rmtree(run.dir)
        elif states[run.dir] == "partial":
            RunDir(run.dir).write_config(run.cfg)   # its new frame budget
    if parallel > 1:
        _train_side_by_side(todo, states, address, parallel, actions, log)
    else:
        _train_in_turn(todo, states, address, progress, actions, log)
    if "interrupted" in actions.values():
        return actions
    for run in runs:
        seed = eval_seed(run.seed)
        if not (run.dir / "checkpoint.pt").is_file():   # only its small files were kept
            if eval_episodes > 0 and not (run.dir / "eval.json").is_file():
                log(f"compare: {run.dir} is done but its checkpoint is gone: not evaluated")
            continue
        if _needs_eval(run, eval_episodes, eval_greedy, seed, eval_protocol):
            result = evaluate(run.dir, eval_episodes, greedy=eval_greedy, seed=seed, protocol=eval_protocol)
            log(f"compare: {run.dir}: evaluation over {result['episodes']} episodes: "
                f"{result['mean']:.3f} ± {result['std']:.3f}")
    return actions


def _train_in_turn(todo, states, address, progress, actions, log):
    import ray
    if not todo:
        return
    started = cluster.start_ray(max((r.cfg for r in todo), key=cluster.cpus_needed), address)
    try:
        for i, run in enumerate(todo, 1):
            resume = states[run.dir] == "partial"
            log(f"compare: [{i}/{len(todo)}] {'resuming' if resume else 'training'} {run.dir}")
            summary = Training(run.cfg, resume=resume, address=address).run(progress=progress)
            if summary["stopped_by"]:
                actions[run.dir] = "interrupted"
                log(f"compare: stopped by {summary['stopped_by']} at {summary['frames']:,} frames "
                    "(checkpoint saved); run the same command again to finish")
                return
            actions[run.dir] = "resumed" if resume else "trained"
            report.record(run.dir)
    finally:
        if started:
            ray.shutdown()


def _check_room(todo, address, parallel):
    """Refuse `parallel` drivers the cluster cannot hold at once: each takes its learner's CPU and
    then its actors' one by one, so two drivers short of CPUs would each wait for ever on the other."""
    import ray
    joined = not ray.is_initialized()
    if joined:
        ray.init(address=address, log_to_driver=False)
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
    finally:
        if joined:
            ray.shutdown()
    needs = sorted((cluster.cpus_needed(r.cfg) for r in todo), reverse=True)
    if todo and sum(needs[:parallel]) > cpus:
        fits = max(1, int(cpus // needs[0]))
        raise CompareError(f"the Ray cluster at {address} has {cpus:g} CPUs; "
                           f"{min(parallel, len(todo))} runs side by side need {sum(needs[:parallel]):g} (each run.num_actors x "
                           f"run.actor_cpus + 1 for its learner), and drivers short of CPUs would wait "
                           f"on each other for ever: use --parallel {fits} or add nodes")


def _train_side_by_side(todo, states, address, parallel, actions, log):
    """Up to `parallel` child `launch.py train` drivers at once on the cluster at `address`."""
    queue, procs = list(todo), {}

    def start(run):
        run.dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "launch", "train", "--logdir", str(run.dir), "--address", address,
                "--no-progress"]
        if states[run.dir] == "partial":
            argv += ["--resume", "--total-frames", str(run.cfg.run.total_frames)]
        else:
            spec = run.dir.parent / f".{run.dir.name}.requested.yaml"
            atomic_write(spec, config_yaml(run.cfg))
            argv += ["--config", str(spec)]
        logf = open(run.dir / "train.log", "a")
        # Own session: a terminal's Ctrl-C reaches only this process, which forwards exactly one
        # SIGINT (a second one would make a child quit without saving).
        # The project's entry point, importable from its root whether or not it is installed.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(cluster.ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        logf.close()
        procs[proc] = run
        log(f"compare: started {run.dir} (pid {proc.pid}, log {run.dir / 'train.log'})")

    failed = []
    try:
        while queue or procs:
            while queue and len(procs) < parallel:
                start(queue.pop(0))
            time.sleep(1.0)
            for proc in [p for p in procs if p.poll() is not None]:
                run = procs.pop(proc)
                (run.dir.parent / f".{run.dir.name}.requested.yaml").unlink(missing_ok=True)
                if proc.returncode != 0:
                    failed.append(run)
                    log(f"compare: {run.dir} failed (exit {proc.returncode}); see {run.dir / 'train.log'}")
                elif status(run) != "done":     # a child stopped by a signal exits 0 after saving
                    actions[run.dir] = "interrupted"
                    log(f"compare: {run.dir} stopped short of its frame budget; see {run.dir / 'train.log'}")
                else:
                    actions[run.dir] = "resumed" if states[run.dir] == "partial" else "trained"
                    report.record(run.dir)
    except KeyboardInterrupt:
        log(f"compare: interrupted; asking {len(procs)} runs to save a checkpoint and stop")
        for proc, run in procs.items():
            proc.send_signal(signal.SIGINT)
            actions[run.dir] = "interrupted"
        for proc in procs:
            proc.wait()
        return
    if failed:
        raise CompareError(f"{len(failed)} runs failed: {', '.join(str(r.dir) for r in failed)}; their "
                           "train.log says why; the same command retries them")
