"""Runs survive what ordinary days bring: the learner's actor dying mid-run, a resume that raises
the budget, rows a crash left in episodes.csv, evaluation seeds of consecutive runs."""
import csv
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import ray

try:                      # where `ray start` records the head's address (its module moved in Ray 2.4x)
    from ray._common.utils import get_ray_address_file
except ImportError:
    from ray._private.utils import get_ray_address_file

from configs import load_config
from experiments.evaluate import EVAL_SEED_STRIDE, eval_seed
from learner import checkpoint
from runtime.driver import RunDir, Training


def test_episodes_csv_keeps_only_the_rows_at_or_before_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    run.episodes.write_text("frames,return,length\n100,1.0,10\n200,2.0,20\n300,3.0,30\n40")  # a torn last line
    run.truncate_episodes(200)
    assert run.episodes.read_text() == "frames,return,length\n100,1.0,10\n200,2.0,20\n"
    run.truncate_episodes(500)                  # nothing beyond: the file is left as it is
    assert run.episodes.read_text().count("\n") == 3


def test_evaluation_seeds_of_a_comparison_never_overlap():
    envs = [set(range(eval_seed(s), eval_seed(s) + 64)) for s in range(5)]   # 64 envs per evaluation
    assert all(not (a & b) for i, a in enumerate(envs) for b in envs[i + 1:])
    assert eval_seed(1) - eval_seed(0) == EVAL_SEED_STRIDE >= 1000


def test_the_run_survives_its_learner_dying(tmp_path, ray_session):
    """The learner's actor is killed (as an OOM or a lost node would) after a checkpoint: the driver
    starts a new one from that checkpoint and the run reaches its budget; the curves and
    episodes.csv continue from the checkpoint, without rows from the lost stretch."""
    cfg = load_config("cartpole", ["run.total_frames=24000", "run.checkpoint_interval_s=2", "run.log_interval_s=1",
                                   "run.max_learner_restarts=1", f"run.logdir={tmp_path}"])
    killed = []

    def kill_after_a_checkpoint(report, service):
        if not killed and (tmp_path / "checkpoint.pt").is_file() and report["frames"] > 8000:
            killed.append(checkpoint.read(tmp_path / "checkpoint.pt")["counters"]["frames"])
            ray.kill(service, no_restart=True)
        return False

    summary = Training(cfg).run(progress=False, on_report=kill_after_a_checkpoint)
    assert killed and summary["learner_restarts"] == 1
    assert summary["frames"] >= 24000 and summary["start_frames"] == 0
    with open(tmp_path / "episodes.csv") as f:
        frames = [int(row["frames"]) for row in csv.DictReader(f)]
    assert frames == sorted(frames) and frames[-1] > killed[0]
    assert checkpoint.read(tmp_path / "checkpoint.pt")["counters"]["frames"] == summary["frames"]


def test_a_learner_that_keeps_dying_ends_the_run_with_a_clear_error(tmp_path, ray_session):
    cfg = load_config("cartpole", ["run.total_frames=100000", "run.log_interval_s=1", "run.max_learner_restarts=0",
                                   f"run.logdir={tmp_path}"])
    with pytest.raises(RuntimeError, match=r"the learner died 1 times \(run.max_learner_restarts=0\)"):
        Training(cfg).run(progress=False, on_report=lambda report, service: ray.kill(service, no_restart=True))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_token_authenticated_cluster_trains_with_the_token_and_refuses_a_wrong_one(tmp_path):
    """A local head started with token authentication, as the README's cluster section: a driver
    with the token trains, also submitted as a Ray job with --working-dir; a driver with a wrong
    token is refused with a message that names token authentication, before training. The driver
    and the job run side by side (the head has CPUs for both); the wrong token is tried once the
    driver with the right one has joined, so the head is known to be listening."""
    from concurrent.futures import ThreadPoolExecutor
    port, dashboard, agent = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=4", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
                             "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = Path(__file__).resolve().parents[1]
    train = ["-m", "launch", "train", "--config", "cartpole", "--total-frames", "3200", "--no-progress",
             "--set", "run.log_interval_s=1", "--set", "run.num_actors=1"]      # 2 CPUs each
    try:
        def until_up(argv, *busy):
            deadline = time.monotonic() + 120
            while True:         # the head (and its dashboard and job agent) take a few seconds to listen
                done = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, timeout=240)
                if done.returncode == 0 or not any(b in done.stdout + done.stderr for b in busy) \
                        or time.monotonic() > deadline:
                    return done
                time.sleep(2)

        with ThreadPoolExecutor(2) as pool:
            job_run = pool.submit(until_up, [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address",
                                             f"http://127.0.0.1:{dashboard}", "--working-dir", ".", "--", "python",
                                             *train, "--address", "auto", "--logdir", str(tmp_path / "job")],
                                  "Failed to connect to Ray at address", "No available agent")
            ok = until_up([sys.executable, *train, "--address", f"127.0.0.1:{port}", "--logdir", str(tmp_path / "with")],
                          "could not join")
            assert ok.returncode == 0 and "finished at" in ok.stdout, ok.stdout[-2000:] + ok.stderr[-2000:]
            wrong = subprocess.run([sys.executable, *train, "--address", f"127.0.0.1:{port}", "--logdir",
                                    str(tmp_path / "without")], cwd=root, capture_output=True, text=True, timeout=180,
                                   env={**env, "RAY_AUTH_TOKEN": "not-the-token"})
            job = job_run.result()
        assert wrong.returncode == 2, wrong.stderr[-2000:]
        assert "could not join the Ray cluster" in wrong.stderr and "token authentication" in wrong.stderr
        assert not (tmp_path / "without" / "checkpoint.pt").exists()
        assert job.returncode == 0 and "finished at" in job.stdout, job.stdout[-2000:] + job.stderr[-2000:]
        assert checkpoint.read(tmp_path / "job" / "checkpoint.pt")["counters"]["frames"] >= 3200
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        current = Path(get_ray_address_file(None))   # `ray start` named our head there: not any more
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
