"""Throughput on the machine it runs on; prints a markdown table per part.

    python bench/throughput.py                      # all parts, a few seconds per row
    python bench/throughput.py --seconds 2 --repeats 5 --num-envs 64

Part 1, the env ceiling: random actions through the same vectorised env an actor uses
(actors.envs.make_env), on the same cores. "sync" steps all envs at once (env_batches=1); "2 groups"
keeps two half-batches in flight with send/recv (env_batches=2), as an actor acting on one half while
the other steps would. The "raw AtariVectorEnv" row is ale-py's own batch mode (batch_size =
num_envs/2, whichever envs finish first), which make_env does not use, for comparison.

Part 2, actors with inference: a RolloutWorker (the code inside each Ray actor: envs plus a CPU
copy of the agent acting on every step; "bf16 torso" rows with run.actor_bf16; with `--inference
central` or `both`, "central" rows: the worker only steps its envs and an InferenceServer actor on
the same machine acts, with its mean batch and time per batch) producing rollouts,
next to the env ceiling of the same env layout on the same cores. Part 3, end to end:
runtime.driver.Training on a preset for a fixed time, the learner's frames/s once warm (Ray,
actors, object store, learner updates all included).

    python bench/throughput.py --parts actor train
    python bench/throughput.py --parts train --set env.id=ALE/Pong-v5   # the preset on another game

bench/peers/sample_factory.sh runs the last one beside Sample Factory.

Part 4, launch (not in the default parts): `launch.py train` itself, as a user runs it, for a fixed
time after its first progress line, then Ctrl-C; frames/s, updates/s and policy lag from the run's
TensorBoard events, GPU utilisation and memory from nvidia-smi (bench/gpu_check.sh's step 5):

    python bench/throughput.py --parts launch --preset atari_throughput \
        --launch 'actor:100:--num-actors 14' --launch 'central:60:--num-actors 13 --set run.inference=central'
"""
import argparse
import os
import re
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
    env = make_env(EnvConfig(id=env_id, num_envs=num_envs, env_batches=env_batches, num_threads=num_threads), seed=0)
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


def actor_case(torso, core, num_envs, env_batches, threads, bf16=False, unroll=20):
    """Agent steps/s of a RolloutWorker on Pong: rollouts of `unroll` steps, inference included."""
    from actors.rollout import RolloutWorker
    from configs import load_config
    cfg = load_config(overrides=["env.id=ALE/Pong-v5", f"env.num_envs={num_envs}", f"env.env_batches={env_batches}",
                                 f"env.num_threads={threads}", f"model.torso={torso}", f"model.core={core}",
                                 f"learner.unroll_length={unroll}", f"run.actor_bf16={bf16}"])
    worker = RolloutWorker(cfg, seed=0, num_cpus=threads)

    def loop_once():
        worker.rollout()
        return unroll * num_envs
    what = (f"actor {torso}+{core}" + ("" if env_batches == 1 else f", {env_batches} groups")
            + (", bf16 torso" if bf16 else ""))
    return Case({"what": what, "env": "ALE/Pong-v5", "envs": num_envs, "threads": threads},
                loop_once, 4, worker.close)


def central_case(torso, core, num_envs, env_batches, threads, unroll=20, timeout_ms=2.0):
    """Agent steps/s of a RolloutWorker whose policy runs in a central InferenceServer (a Ray
    actor on the same machine, torch on one thread, batches waiting up to `timeout_ms` for more
    requests), and the server's batch statistics."""
    import ray

    from actors.inference import InferenceServer
    from actors.rollout import RolloutWorker
    from configs import load_config
    cfg = load_config(overrides=["env.id=ALE/Pong-v5", f"env.num_envs={num_envs}", f"env.env_batches={env_batches}",
                                 f"env.num_threads={threads}", f"model.torso={torso}", f"model.core={core}",
                                 f"learner.unroll_length={unroll}", "run.inference=central",
                                 f"run.inference_timeout_ms={timeout_ms}"])
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    probe = RolloutWorker(cfg, seed=0, num_cpus=threads)
    space, actions = probe.env.observation_space, probe.env.num_actions
    probe.close()
    # num_cpus=0: all servers of the interleaved rows exist at once; only the timed one is busy.
    server = ray.remote(InferenceServer).options(num_cpus=0, max_concurrency=env_batches + 4).remote(
        cfg, space, actions)
    worker = RolloutWorker(cfg, seed=0, num_cpus=threads, inference=server)

    def loop_once():
        worker.rollout()
        return unroll * num_envs

    def close():
        stats = ray.get(server.stats.remote())
        central_stats[what] = stats
        worker.close()
        ray.kill(server)
    what = (f"central {torso}+{core}" + ("" if env_batches == 1 else f", {env_batches} groups")
            + f", wait {timeout_ms:g} ms")
    return Case({"what": what, "env": "ALE/Pong-v5", "envs": num_envs, "threads": threads}, loop_once, 4, close)


central_stats = {}


def actor_part(args):
    threads, n = args.threads, args.num_envs[0]
    cases = [env_ceiling("ALE/Pong-v5", n, 1, threads), env_ceiling("ALE/Pong-v5", n, 2, threads)]
    for torso in ("nature", "impala_resnet"):
        for core in ("lstm", "rdn"):
            if args.inference in ("actor", "both"):
                for batches, bf16 in ((1, False), (2, False), (2, True)):
                    cases.append(actor_case(torso, core, n, batches, threads, bf16))
            if args.inference in ("central", "both"):
                for timeout_ms in args.inference_timeout_ms:
                    cases.append(central_case(torso, core, n, 2, threads, timeout_ms=timeout_ms))
    rows = measure(cases, args.seconds * 2, args.repeats)
    ceiling = max(r["steps/s"] for r in rows[:2])
    for r in rows:
        r["of ceiling"] = f"{r['steps/s'] / ceiling:.0%}"
        stats = central_stats.get(r["what"])
        if central_stats:           # the server's columns, blank on the rows without one
            r["batch (envs)"] = f"{stats['mean_batch']:.1f}" if stats else ""
            r["ms per batch"] = f"{1e3 * stats['seconds_per_batch']:.2f}" if stats else ""
    print_table(f"Actors with inference (one RolloutWorker, torch 1 thread, {threads} ALE threads, "
                f"{os.cpu_count()} cores) against the env ceiling; best of {args.repeats} windows", rows)


def train_part(args):
    """runtime.driver.Training on a preset for --train-seconds; frames/s of the reports after the
    first third. With --vs (repeatable: one variant each), each core also trains with the preset
    plus those values, one run after the other, so the rows of a core see the same load and their
    ratios hold."""
    import tempfile

    from configs import load_config
    from runtime.driver import Training
    variants = [[]] + (args.vs or [])
    rows = []
    for core in ("lstm", "rdn"):
        for extra in variants:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = load_config(args.preset, [*args.overrides, *extra, f"model.core={core}", "run.total_frames=1000000000",
                                                "run.log_interval_s=5", f"run.logdir={tmp}/run"])
                rates, lags, start = [], [], time.monotonic()

                def on_report(report, service):
                    if time.monotonic() - start > args.train_seconds / 3:
                        rates.append(report["stats"]["perf/env_frames_per_s"])
                        lags.append(report["stats"].get("learner/policy_lag", float("nan")))
                    return time.monotonic() - start > args.train_seconds
                Training(cfg).run(progress=False, on_report=on_report)
            rows.append({"what": f"train {args.preset}" + "".join(f" {kv}" for kv in args.overrides) + (f" --vs {' '.join(extra)}" if extra else ""), "env": cfg.env.id,
                         "core": core, "actors x envs": f"{cfg.run.num_actors} x {cfg.env.num_envs}",
                         "frames/s": float(np.median(rates)) if rates else float("nan"),
                         "policy lag": f"{np.median(lags):.2f}" if lags else "-"})
        if args.vs:      # each variant against the preset, the same core
            preset = rows[-len(variants)]
            for row in rows[-len(variants):]:
                row["this / preset"] = f"{row['frames/s'] / preset['frames/s']:.2f}"
    print_table(f"End to end ({os.cpu_count()} cores): median of the learner's frames/s and "
                f"policy-lag reports after warm-up, {args.train_seconds:g} s per run", rows)


class GpuSampler:
    """nvidia-smi's utilisation and memory every 500 ms while a run trains, each sample tagged with the
    run's name; `rows` holds (run, timestamp, utilization %, memory MiB). No nvidia-smi: no rows."""

    QUERY = ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             "-lms", "500"]

    def __init__(self):
        import shutil
        import threading
        self.available = shutil.which("nvidia-smi") is not None
        self.rows, self.tag, self.proc = [], None, None
        if self.available:
            import subprocess
            self.proc = subprocess.Popen(self.QUERY, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            if self.tag and len(parts) >= 3:
                try:
                    self.rows.append((self.tag, parts[0], float(parts[1]), float(parts[2])))
                except ValueError:      # "[N/A]" and the like
                    pass

    def apps(self):
        """The processes on the GPU now, as 'name (MiB)'."""
        if not self.available:
            return "-"
        import subprocess
        done = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True)
        apps = [line.split(",") for line in done.stdout.splitlines() if line.strip()]
        return "; ".join(f"{a[1].strip().rsplit('/', 1)[-1]} ({a[2].strip()} MiB)" for a in apps if len(a) >= 3) or "none"

    def close(self, path):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if path:
            with open(path, "w") as f:
                f.write("run,timestamp,utilization_gpu_pct,memory_used_mib\n")
                f.writelines(f"{r},{t},{u:g},{m:g}\n" for r, t, u, m in self.rows)


def launch_run(name, seconds, extra, args, sampler):
    """`launch.py train --config <preset> --no-progress <extra>` in a fresh run directory: stopped with
    SIGINT (Ctrl-C: it saves a checkpoint and shuts Ray down) `seconds` after its first progress line
    (or --startup-s after its start if none came); its row from the run's TensorBoard events."""
    import shlex
    import signal
    import subprocess
    import tempfile
    import threading

    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp = tempfile.mkdtemp(prefix=f"launch_{name}_")
    logdir = os.path.join(tmp, "run")
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "launch.py"), "train", "--config", args.preset,
           "--no-progress", "--logdir", logdir, *shlex.split(extra)]
    print(f"[{name}] $ {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    first = {}

    def read():
        for line in proc.stdout:
            print(f"[{name}] {line}", end="", file=sys.stderr, flush=True)   # its log; the table on stdout
            if line.startswith("frames ") and "t" not in first:
                first["t"] = time.monotonic()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    apps, stop_at = "-", None
    while proc.poll() is None:
        now = time.monotonic()
        if "t" in first:
            stop_at = first["t"] + seconds
            sampler.tag = name
            if apps == "-" and now >= first["t"] + seconds / 2:
                apps = sampler.apps()
        if (stop_at and now >= stop_at) or (not stop_at and now - start >= args.startup_s):
            break
        time.sleep(0.2)
    trained = time.monotonic() - first["t"] if "t" in first else 0.0
    sampler.tag = None
    stopped = proc.poll() is None
    if stopped:
        proc.send_signal(signal.SIGINT)          # the driver's Ctrl-C: checkpoint, close the actors, Ray down
        try:
            proc.wait(timeout=args.stop_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group: launch.py and what it started
            proc.wait()
    reader.join(timeout=5)
    row = {"run": name, "startup s": f"{first['t'] - start:.0f}" if "t" in first else "no report",
           "trained s": f"{trained:.0f}", "exit": f"rc {proc.returncode}" + (" after SIGINT" if stopped else "")}
    try:
        acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        fps = [e.value for e in acc.Scalars("perf/env_frames_per_s")] if "perf/env_frames_per_s" in tags else []
        lag = [e.value for e in acc.Scalars("learner/policy_lag")] if "learner/policy_lag" in tags else []
        frames = max((e.step for e in acc.Scalars("perf/env_frames_per_s")), default=0) if fps else 0
        cfg = yaml.safe_load(open(os.path.join(logdir, "config.yaml")))
        per_update = cfg["learner"]["batch_size"] * cfg["learner"]["unroll_length"] * cfg["env"]["frame_skip"]
        warm = fps[1:] or fps                    # the first report holds the warm-up
        rate = float(np.median(warm)) if warm else float("nan")
        with open(os.path.join(logdir, "episodes.csv")) as f:
            episodes = max(0, sum(1 for _ in f) - 1)
        row.update({"reports": len(fps), "frames": f"{frames:,}", "frames/s": rate, "updates/s": f"{rate / per_update:.2f}",
                    "policy lag": f"{np.median(lag):.1f}" if lag else "-", "episodes": episodes})
    except Exception as e:  # noqa: BLE001  a run that wrote nothing: the row says why
        row.update({"reports": 0, "frames": "0", "frames/s": float("nan"), "updates/s": "-", "policy lag": "-",
                    "episodes": f"none read ({type(e).__name__})"})
    samples = [r for r in sampler.rows if r[0] == name]
    row["GPU util % mean / max"] = (f"{np.mean([r[2] for r in samples]):.0f} / {max(r[2] for r in samples):.0f}"
                                    if samples else "no nvidia-smi" if not sampler.available else "no samples")
    row["GPU MiB max"] = f"{max(r[3] for r in samples):,.0f}" if samples else "-"
    row["GPU processes"] = apps.replace("|", "/")
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return row


def launch_part(args):
    """End to end as a user runs it: `launch.py train` per --launch NAME:SECONDS:ARGS, one after the
    other, with nvidia-smi sampled while each trains (--gpu-log: the samples as CSV)."""
    sampler = GpuSampler()
    cols = ["run", "startup s", "trained s", "exit", "reports", "frames", "frames/s", "updates/s", "policy lag",
            "episodes", "GPU util % mean / max", "GPU MiB max", "GPU processes"]
    print(f"\nlaunch.py train --config {args.preset}, {os.cpu_count()} cores: frames/s = median of the progress "
          "reports after the first; updates/s = frames/s / (B x T x frame skip)\n")
    print("| " + " | ".join(cols) + " |\n|---|" + "---:|" * (len(cols) - 1), flush=True)
    try:
        for spec in args.launch:       # a row as each run ends: a run cut by a time limit keeps the others
            name, seconds, extra = spec.split(":", 2)
            row = launch_run(name, float(seconds), extra, args, sampler)
            if row["reports"] == 0 and not row["exit"].endswith("after SIGINT"):   # it died before training:
                first = row["exit"]                                              # Ray's start, say; once more
                row = launch_run(name, float(seconds), extra, args, sampler)
                row["exit"] += f" (2nd try; the 1st: {first}, no report)"
            cells = [f"{row[c]:,.0f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
            print("| " + " | ".join(cells) + " |", flush=True)
    finally:
        sampler.close(args.gpu_log)
    print()
    for spec in args.launch:
        print(f"- {spec.split(':', 2)[0]}: {spec.split(':', 2)[2] or '(preset as is)'}")


PARTS = {"env": env_part, "actor": actor_part, "train": train_part, "launch": launch_part}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["env", "actor", "train"], choices=list(PARTS))
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per row (best and median shown)")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="ALE threads (default: the CPUs this process may use)")
    parser.add_argument("--preset", default="atari_cpu", help="config preset of the train part")
    parser.add_argument("--inference", default="actor", choices=("actor", "central", "both"),
                        help="actor part: the actor rows, the central-inference rows, or both")
    parser.add_argument("--inference-timeout-ms", type=float, nargs="+", default=[2.0],
                        help="central rows: one per run.inference_timeout_ms value (a batch's wait for more requests)")
    parser.add_argument("--train-seconds", type=float, default=60.0, help="seconds per train run")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="train part: values applied to every row, the preset's included "
                        "(e.g. env.id=ALE/Pong-v5 beside a peer measured on Pong)")
    parser.add_argument("--vs", nargs="+", action="append", metavar="KEY=VALUE",
                        help="train part: also run each core with the preset plus these values, side by side "
                        "(repeatable: one variant per --vs)")
    parser.add_argument("--launch", action="append", metavar="NAME:SECONDS:ARGS",
                        help="launch part: a `launch.py train --config <preset>` run, stopped SECONDS after its first "
                        "progress line, with the launch.py arguments ARGS (repeatable; e.g. "
                        "'central:60:--num-actors 13 --set run.inference=central')")
    parser.add_argument("--startup-s", type=float, default=180.0,
                        help="launch part: stop a run that printed no progress line within this many seconds")
    parser.add_argument("--stop-s", type=float, default=60.0,
                        help="launch part: seconds a run may take to stop after SIGINT before it is killed")
    parser.add_argument("--gpu-log", default="", help="launch part: write nvidia-smi's samples to this CSV file")
    args = parser.parse_args()
    if "launch" in args.parts:
        if not args.launch:
            parser.error("--parts launch needs at least one --launch NAME:SECONDS:ARGS")
        for spec in args.launch:
            fields = spec.split(":", 2)
            if len(fields) != 3 or not fields[0] or not re.fullmatch(r"\d+(\.\d+)?", fields[1]):
                parser.error(f"--launch takes NAME:SECONDS:ARGS (e.g. 'actor:90:--num-actors 4'), got {spec!r}")
    for part in args.parts:
        PARTS[part](args)


if __name__ == "__main__":
    main()
