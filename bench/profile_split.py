"""Where a training run's time goes: py-spy samples of its actors' and its learner's processes,
bucketed by what each thread was doing (issue 35's profile split, before and after a change).

    python3 bench/profile_split.py --config atari_cpu --seconds 40            # a fresh run, then stopped
    python3 bench/profile_split.py --pid 1234 --pid 5678 --seconds 40         # processes already running

The first form starts `launch.py train` with the preset (and any --set), waits for its first progress
report and --warmup-s more, samples every RolloutWorker and the LearnerService of that run with
`py-spy record --idle` at --rate Hz for --seconds, stops the run with SIGINT and prints one table per
process: the share of its thread's samples in each bucket. The second samples given Ray actor
processes (a study's own run, say) without touching them.

py-spy attaches to a running process (root, or CAP_SYS_PTRACE); it is in the project's `bench` extra.
Sampling costs the sampled process a little (py-spy reads its memory from outside); compare splits
taken the same way.
"""
import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Which thread a sample belongs to: the first rule whose pattern is in the sample's stack (root first).
THREADS = [
    ("learner update", r"LearnerService\.run"),
    ("learner loader", r"LearnerService\._load"),
    ("learner publisher", r"LearnerService\._publish"),
    ("actor", r"RolloutWorker\.rollout"),
    ("actor", r"Worker\.main_loop \([^;]*$"),  # the main thread waiting for its next task: idle
]
# What the thread was doing: the first rule whose pattern is in the stack. The order matters: the
# core's own Linear layers are the core's, not the torso's; a health hook that the torso's forward
# calls is the hook's; a wait inside the update is a wait. (/weights.py: the name of flat_weights.py
# before issue 34, as a study's frozen commit still has it.)
LEAF_WAIT = r"(?:^|;)[\w.<>]*wait\w* \([^;]*$"      # the innermost frame is a wait (Condition.wait, ray.wait)
BUCKETS = {
    "actor": [
        ("idle between rollouts", r"Worker\.main_loop \([^;]*$"),
        ("env step (ALE, gymnasium)", r"vector_env\.py|_AtariGroup|envs\.py"),
        ("observation norm", r"obs_norm\.py"),
        ("core", r"fwp_core/|cores\.py"),
        ("torso", r"Conv2d|torsos?\.py"),
        ("newest weights (fetch, load)", r"_fetch_newest|load_state_dict|flat_weights\.py|/weights\.py"),
        ("serialise the rollout", r"serializ|Pickler|put_object"),
        ("agent, other (frames to float, fc, heads, sampling)", r"agent\.py"),
        ("rollout, other", r""),
    ],
    "learner update": [
        ("waiting for a batch", LEAF_WAIT),
        ("backward", r"run_backward|backward"),
        ("optimiser", r"torch/optim/|optim\.py"),
        ("observation statistics", r"ObservationNorm\.update"),
        ("observation norm", r"obs_norm\.py"),
        ("rebuild frame stacks", r"rebuild_obs"),
        ("health tags (forward hooks)", r"health\.py"),
        ("core", r"fwp_core/|cores\.py"),
        ("torso", r"Conv2d|torsos?\.py"),
        ("v-trace and losses", r"vtrace\.py|losses\.py"),
        ("flatten weights", r"flat_weights\.py|/weights\.py"),
        ("agent, other (frames to float, fc, heads)", r"agent\.py"),
        ("update, other", r""),
    ],
    "learner loader": [
        ("waiting for rollouts", LEAF_WAIT),
        ("prepare the next batch: observation statistics", r"Learner\.prepare.*(?:stack_moments|batch_moments|merged)"),
        ("prepare the next batch: stacks, floats, normalisation", r"Learner\.prepare"),
        ("fetch and stage", r""),
    ],
    "learner publisher": [
        ("waiting", LEAF_WAIT),
        ("flatten and put", r""),
    ],
}


def classify(stack):
    """(thread, bucket) of one collapsed py-spy stack ("frame;frame;..." root first), or None for a
    thread that is none of ours (Ray's and gRPC's own)."""
    for thread, pattern in THREADS:
        if re.search(pattern, stack):
            for bucket, rule in BUCKETS[thread]:
                if re.search(rule, stack):
                    return thread, bucket
    return None


def split(raw_lines):
    """{thread: Counter(bucket -> samples)} from py-spy's raw (collapsed) output: "stack count"."""
    out = collections.defaultdict(collections.Counter)
    for line in raw_lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        found = classify(stack)
        if found is not None:
            out[found[0]][found[1]] += int(count)
    return out


def table(name, threads):
    lines = [f"\n### {name}\n", "| thread | what | share | samples |", "|---|---|---:|---:|"]
    for thread in ("actor", "learner update", "learner loader", "learner publisher"):
        counts = threads.get(thread)
        if not counts:
            continue
        total = sum(counts.values())
        for bucket, n in counts.most_common():
            lines.append(f"| {thread} | {bucket} | {n / total:.1%} | {n:,} |")
    return "\n".join(lines)


def ray_actors(root_pid):
    """{pid: title} of the Ray actor processes (RolloutWorker, LearnerService) under root_pid."""
    children = collections.defaultdict(list)
    titles = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            titles[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        children[int(stat.rpartition(")")[2].split()[1])].append(int(proc.name))
    found, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if re.match(r"ray::(RolloutWorker|LearnerService)", titles.get(pid, "")):
            found[pid] = titles[pid]
    return found


def sample(pids, seconds, rate, workdir):
    """py-spy record on every pid at once; {pid: raw lines}."""
    procs = {pid: subprocess.Popen(["py-spy", "record", "--idle", "-r", str(rate), "-d", str(seconds), "-f", "raw",
                                    "-p", str(pid), "-o", str(workdir / f"{pid}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for pid in pids}
    out = {}
    for pid, proc in procs.items():
        _, err = proc.communicate(timeout=seconds + 60)
        path = workdir / f"{pid}.txt"
        if proc.returncode != 0 or not path.is_file():
            raise SystemExit(f"profile_split.py: py-spy could not sample pid {pid}: {err.strip()[-300:]}")
        out[pid] = path.read_text().splitlines()
    return out


def refuse(message):
    """A bad argument: one line on stderr, status 2, as launch.py refuses."""
    print(f"profile_split.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="atari_cpu", help="preset of the run to start (without --pid)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides of the run to start")
    p.add_argument("--pid", type=int, action="append", default=[], help="sample these running processes instead")
    p.add_argument("--seconds", type=int, default=40, help="sampled seconds")
    p.add_argument("--rate", type=int, default=50, help="samples per second")
    p.add_argument("--warmup-s", type=float, default=20.0, help="seconds after the run's first report before sampling")
    p.add_argument("--startup-s", type=float, default=180.0, help="at most this long for the run's first report")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0:
        refuse("--seconds and --rate must be positive")
    missing = sorted(pid for pid in args.pid if not Path(f"/proc/{pid}").is_dir())
    if missing:
        refuse(f"no process with pid {', '.join(map(str, missing))}")
    if shutil.which("py-spy") is None:
        refuse("py-spy is not on PATH: pip install -e '.[bench]' (or pip install py-spy)")
    workdir = Path(tempfile.mkdtemp(prefix="profile_"))
    run = None
    try:
        if args.pid:
            pids = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    for pid in args.pid}
        else:
            cmd = [sys.executable, str(ROOT / "launch.py"), "train", "--config", args.config, "--no-progress",
                   "--logdir", str(workdir / "run"), *[a for kv in args.set for a in ("--set", kv)]]
            run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
            deadline = time.monotonic() + args.startup_s
            for line in run.stdout:                    # until its first progress report
                if line.startswith("frames "):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"profile_split.py: no progress report within {args.startup_s:g} s")
            else:
                raise SystemExit(f"profile_split.py: the run ended before its first report (exit {run.wait()})")
            time.sleep(args.warmup_s)
            pids = ray_actors(run.pid)
            if not pids:
                raise SystemExit("profile_split.py: found no RolloutWorker or LearnerService process under the run")
        print(f"# py-spy, {args.seconds:g} s at {args.rate} Hz, {time.strftime('%Y-%m-%d %H:%M')}, "
              f"{os.cpu_count()} CPUs; {'given processes' if args.pid else f'launch.py train --config {args.config}'}"
              + "".join(f" --set {kv}" for kv in args.set))
        print("Shares of each thread's samples (with --idle: waiting counts); the actor's row set is its "
              "main thread, in a rollout or idle between them.")
        for pid, raw in sample(pids, args.seconds, args.rate, workdir).items():
            print(table(f"{pids[pid]} (pid {pid})", split(raw)))
    finally:
        if run is not None and run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)
            try:
                run.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
