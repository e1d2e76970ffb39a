"""Failure drills, each bounded in time: a worker node lost mid-run on a local multi-node cluster,
and a driver killed outright (kill -9) then resumed."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from configs import load_config
from learner import checkpoint
from runtime.driver import Training

ROOT = Path(__file__).resolve().parents[1]


def _frames_in_csv(path):
    with open(path) as f:
        return [int(row["frames"]) for row in csv.DictReader(f)]


def test_a_worker_node_lost_mid_run(tmp_path):
    """Three nodes: the learner's, and two holding the rollout actors (SPREAD). One of the two is
    removed mid-run: its actors' rollouts are lost and the actors come back on the other node; if
    the learner was there, the driver restarts it from the checkpoint. The run reaches its budget."""
    if ray.is_initialized():      # the tests' shared session (conftest.py): this drill needs its own cluster
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address)
        cfg = load_config("cartpole", ["run.num_actors=2", "run.total_frames=30000", "run.checkpoint_interval_s=2",
                                       "run.log_interval_s=1", f"run.logdir={tmp_path}"])
        removed = []

        def lose_a_node(report, service):
            if not removed and report["frames"] > 6000 and (tmp_path / "checkpoint.pt").is_file():
                removed.append(report["frames"])
                cluster.remove_node(nodes[0])
            return False

        summary = Training(cfg, address=cluster.address).run(progress=False, on_report=lose_a_node)
        assert removed and summary["frames"] >= 30000
        frames = _frames_in_csv(tmp_path / "episodes.csv")
        assert frames == sorted(frames)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_driver_killed_outright_resumes_with_at_most_one_interval_lost(tmp_path):
    logdir = tmp_path / "run"
    argv = [sys.executable, "-m", "launch", "train", "--config", "cartpole", "--logdir", str(logdir),
            "--total-frames", "10000000", "--no-progress", "--set", "run.log_interval_s=1",
            "--set", "run.checkpoint_interval_s=2"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:     # until two checkpoints have been written
            if (logdir / "checkpoint.pt").is_file() and \
                    checkpoint.read(logdir / "checkpoint.pt")["counters"]["frames"] > 8000:
                break
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)     # the driver and the Ray it started, mid-write if so
        proc.wait(timeout=30)
    at_kill = checkpoint.read(logdir / "checkpoint.pt")["counters"]["frames"]
    assert at_kill > 8000
    ok = subprocess.run([sys.executable, "-m", "launch", "train", "--logdir", str(logdir), "--resume",
                         "--total-frames", str(at_kill + 6000), "--no-progress"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    payload = checkpoint.read(logdir / "checkpoint.pt")
    assert payload["counters"]["frames"] >= at_kill + 6000
    frames = _frames_in_csv(logdir / "episodes.csv")
    assert frames == sorted(frames) and frames[-1] > at_kill
    assert load_config(logdir / "config.yaml").run.total_frames == at_kill + 6000
