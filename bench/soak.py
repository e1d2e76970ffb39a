"""A soak run: train for a long time and watch that nothing grows.

    python bench/soak.py                                     # 60 minutes of atari_cpu on Breakout
    python bench/soak.py --minutes 60 --config atari_cpu --env ALE/Pong-v5 --set model.core=lstm
    python bench/soak.py --minutes 80 --env ALE/Pong-v5 --set run.total_frames=5e6   # ends at 5M frames

Every minute it samples the resident memory (RSS) of the driver and of every Ray process on this
machine (the learner, the actors, raylet, GCS, workers), the object store's use (Ray's memory
summary) and the learner's frames/s, prints one table row, and at the end says whether each stayed
flat: the mean of the last third of the samples within 10% (RSS) or 50 MiB (object store) of the
mean of the first third after warm-up, and frames/s not falling by more than 10%.
"""
import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config  # noqa: E402
from runtime.driver import Training  # noqa: E402

MIB = 2 ** 20


def ray_processes():
    """{name: rss bytes} of the driver and its Ray session's processes (same name: summed). The Ray
    that this driver started (GCS, raylet, dashboard) is its child and forks every worker, so the
    driver's descendants are the session, and other Ray sessions on the machine stay out."""
    out = {}
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            info = p.as_dict(["name", "cmdline", "memory_info"])
            cmd = " ".join(info["cmdline"] or [])
            if p.pid == me.pid:
                name = "driver"
            elif "ray::" in cmd or "ray::" in (info["name"] or ""):
                name = (info["name"] or cmd).split()[0].replace("ray::", "").split(".")[0]   # the class
            elif any(k in cmd for k in ("raylet", "gcs_server", "default_worker.py", "dashboard")):
                name = next(k for k in ("raylet", "gcs_server", "default_worker.py", "dashboard") if k in cmd)
            else:
                name = info["name"] or "other"
            out[name] = out.get(name, 0) + info["memory_info"].rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def object_store_bytes():
    import ray
    from ray._private.internal_api import memory_summary
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    m = re.search(r"Plasma memory usage (\d+) MiB", text)
    return int(m.group(1)) * MIB if m else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--config", default="atari_cpu")
    p.add_argument("--env")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--interval-s", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--logdir", help="run directory (default: a temporary one)")
    p.add_argument("--resume", action="store_true", help="continue the run in --logdir from its checkpoint")
    args = p.parse_args()
    tmp = None if args.logdir else tempfile.TemporaryDirectory()
    # No budget of its own unless one is set: then it stops at whichever of the two comes first, and
    # the lr schedule is the preset's over that budget (a soak that is also a learning run).
    budget = [] if any(s.startswith("run.total_frames=") for s in args.set) else ["run.total_frames=100000000000"]
    overrides = [*args.set, *budget, f"run.logdir={args.logdir or tmp.name + '/run'}"]
    if args.env:
        overrides.append(f"env.id={args.env}")
    cfg = load_config(args.config, overrides)
    samples, fps, start = [], [], time.monotonic()
    done = threading.Event()

    def sample_loop():
        import ray
        while not ray.is_initialized():
            time.sleep(0.1)
        while not done.wait(args.interval_s):
            row = {"minute": (time.monotonic() - start) / 60, "rss": ray_processes(), "store": object_store_bytes(),
                   "fps": fps[-1] if fps else float("nan")}
            samples.append(row)
            total = sum(row["rss"].values())
            print(f"| {row['minute']:.0f} | {total / MIB:,.0f} | {row['store'] / MIB:,.0f} | {row['fps']:,.0f} | "
                  + ", ".join(f"{k} {v / MIB:,.0f}" for k, v in sorted(row["rss"].items())) + " |", flush=True)

    def on_report(report, service):
        fps.append(report["stats"]["perf/env_frames_per_s"])
        return time.monotonic() - start > args.minutes * 60

    print(f"# soak: {args.config} {cfg.env.id} {cfg.model.core}, {args.minutes:g} minutes, a sample every "
          f"{args.interval_s:g} s\n\n| minute | RSS total (MiB) | object store (MiB) | frames/s | RSS by process (MiB) |\n"
          "|---:|---:|---:|---:|---|", flush=True)
    sampler = threading.Thread(target=sample_loop, daemon=True)
    sampler.start()
    try:
        Training(cfg, resume=args.resume).run(progress=False, on_report=on_report)
    finally:
        done.set()
    n = len(samples)
    if n < 4:
        print("\ntoo few samples to judge (run longer)")
        return 0
    first, last = samples[1:1 + n // 3], samples[n - n // 3:]      # sample 0: warm-up
    mean = lambda rows, f: sum(f(r) for r in rows) / len(rows)     # noqa: E731
    rss0, rss1 = mean(first, lambda r: sum(r["rss"].values())), mean(last, lambda r: sum(r["rss"].values()))
    st0, st1 = mean(first, lambda r: r["store"]), mean(last, lambda r: r["store"])
    f0, f1 = mean(first, lambda r: r["fps"]), mean(last, lambda r: r["fps"])
    print(f"\n- RSS: {rss0 / MIB:,.0f} -> {rss1 / MIB:,.0f} MiB: {'flat' if rss1 <= 1.1 * rss0 else 'GROWS'}")
    print(f"- object store: {st0 / MIB:,.0f} -> {st1 / MIB:,.0f} MiB: "
          f"{'flat' if st1 <= st0 + 50 * MIB else 'GROWS'}")
    print(f"- frames/s: {f0:,.0f} -> {f1:,.0f}: {'flat' if f1 >= 0.9 * f0 else 'FALLS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
