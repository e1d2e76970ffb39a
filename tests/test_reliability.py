"""Runs survive what ordinary days bring: the learner's actor dying mid-run, a resume that raises
the budget, rows a crash left in episodes.csv, evaluation seeds of consecutive runs."""
import csv

import pytest
import ray

from configs import load_config
from experiments.evaluate import EVAL_SEED_STRIDE, eval_seed
from learner import checkpoint
from runtime import cluster
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


@pytest.fixture(scope="module")
def ray_session():
    cluster.start_ray(load_config("cartpole", ["run.num_actors=3"]))
    yield
    ray.shutdown()


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
