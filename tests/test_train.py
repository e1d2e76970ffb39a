"""End to end through Ray: launch.py train on Atari and CartPole, resume, a killed actor, a stop
signal, learning. The bad inputs that must stop before Ray starts: tests/test_config.py."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import launch
from configs import load_config
from learner import Learner, checkpoint
from runtime.driver import Training

ROOT = Path(launch.__file__).resolve().parent
DESIGN_TAGS = {"episode/return", "episode/length", "perf/env_frames_per_s", "loss/total", "loss/pg",
               "loss/baseline", "loss/entropy", "learner/grad_norm", "learner/lr", "learner/policy_lag"}
TINY_CORE = ["core.num_layers=1", "core.d_model=32", "core.num_heads=2", "core.head_dim=8",
             "core.ff_dim=32", "core.hidden_size=32", "model.hidden_size=32"]


@pytest.fixture(scope="module", autouse=True)
def ray_session(ray_session):
    """Every test here runs in the shared session (tests/conftest.py)."""
    yield


def _scalars(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_atari_run_logs_every_tag_checkpoints_and_resumes(tmp_path):
    logdir = tmp_path / "pong"
    cfg = load_config(overrides=[
        "env.id=ALE/Pong-v5", "env.num_envs=4", "env.env_batches=2", "env.max_episode_frames=600",
        "model.torso=nature", "model.core=rdn", *TINY_CORE, "learner.batch_size=4",
        "learner.unroll_length=10", "run.num_actors=2", "run.total_frames=8000",
        "run.log_interval_s=2", "run.checkpoint_interval_s=5", f"run.logdir={logdir}"])
    summary = Training(cfg).run(progress=False)
    assert summary["frames"] >= 8000 and summary["episodes"] > 0
    tags = _scalars(logdir)
    assert DESIGN_TAGS <= set(tags), f"missing: {DESIGN_TAGS - set(tags)}"
    assert all(step <= summary["frames"] for step, _ in tags["loss/total"])
    # Pong's raw score: points lost count -1 each; a capped 150-step game against the CPU is < 0.
    assert all(-21 <= v <= 21 for _, v in tags["episode/return"])

    payload = checkpoint.read(logdir / "checkpoint.pt")
    assert payload["counters"]["frames"] == summary["frames"]
    restored = Learner(cfg, _obs_space(cfg), 6, 4)
    restored.load(logdir / "checkpoint.pt")
    assert restored.frames == summary["frames"]

    # --resume continues from the checkpoint's frame count, in the same run directory.
    args = launch.build_parser().parse_args(
        ["train", "--logdir", str(logdir), "--resume", "--total-frames", "12000", "--no-progress"])
    cfg2 = launch.resolve_train_config(args)
    assert cfg2.model.core == "rdn" and cfg2.run.total_frames == 12000
    summary2 = Training(cfg2, resume=True).run(progress=False)
    assert summary2["start_frames"] == summary["frames"]
    assert summary2["frames"] >= 12000
    steps = [s for s, _ in _scalars(logdir)["loss/total"]]
    assert max(steps) >= 12000 and len([s for s in steps if s > summary["frames"]]) > 0
    # The run directory says what was in force: the new budget in config.yaml.
    assert load_config(logdir / "config.yaml").run.total_frames == 12000


def _obs_space(cfg):
    from actors.envs import make_env
    env = make_env(cfg.env, 0)
    space = env.observation_space
    env.close()
    return space


def test_a_killed_actor_is_restarted_and_the_run_finishes(tmp_path, restart_args_errors):
    logdir = tmp_path / "kill"
    cfg = load_config("cartpole", ["run.total_frames=30000", "run.log_interval_s=1",
                                   f"run.logdir={logdir}"])
    killed = []

    def kill_once(report, service):
        if not killed:
            ray.get(service.kill_worker.remote(0))
            killed.append(report["frames"])
    summary = Training(cfg).run(progress=False, on_report=kill_once)
    assert killed and summary["frames"] >= 30000
    restarts = _scalars(logdir)["actors/restarts"]
    assert max(v for _, v in restarts) >= 1
    # Frames kept coming after the kill.
    assert max(s for s, _ in restarts) > killed[0]
    # The restarted actor found the weights holder by name; Ray had nothing to warn about.
    assert not restart_args_errors()


@pytest.mark.parametrize("core, frames", [("lstm", 200_000), ("rdn", 120_000)])
def test_cartpole_is_learned(tmp_path, core, frames):
    """Random play scores ~22. Measured with this preset, seed 1: lstm 198 at 200k frames, rdn 500
    at 200k, 493 at 120k and 143 at 60k (at 400k: 500 and 500, seeds 1-2; without PopArt lstm 51 at
    400k); a broken V-trace, loss, PopArt or core stays far below 100. rdn's budget is the smaller
    because its steps cost more on the CPU and it needs fewer of them."""
    cfg = load_config("cartpole", [f"model.core={core}", f"run.total_frames={frames}",
                                   f"run.logdir={tmp_path / core}", "run.seed=1", "run.save_at_frames=[60000]"])
    summary = Training(cfg).run(progress=False)
    assert summary["final_return"] is not None and summary["final_return"] > 100, summary
    # The copy kept at 60k frames: the first update at or past them (a batch is 16 x 20 frames).
    kept = checkpoint.read(tmp_path / core / "checkpoint_60000.pt")["counters"]["frames"]
    assert 60000 <= kept < 60000 + 320


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    logdir = tmp_path / "term"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "train", "--config", "cartpole", "--logdir", str(logdir),
         "--total-frames", "10000000", "--no-progress", "--set", "run.log_interval_s=1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = []
    for line in proc.stdout:                       # wait until it is training
        lines.append(line)
        if line.startswith("frames "):
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + out
    assert "SIGTERM: saving a checkpoint" in out and "stopped at" in out
    payload = checkpoint.read(logdir / "checkpoint.pt")
    assert 0 < payload["counters"]["frames"] < 10_000_000


def test_resuming_with_another_core_is_refused(tmp_path):
    """The checkpoint of an rdn run does not load into an lstm learner (a clear CheckpointError)."""
    cfg = load_config("cartpole", ["model.core=rdn"])
    learner = Learner(cfg, _obs_space(cfg), 2)
    learner.save(tmp_path / "checkpoint.pt")
    other = Learner(load_config("cartpole", ["model.core=lstm"]), _obs_space(cfg), 2)
    with pytest.raises(checkpoint.CheckpointError, match="core is 'rdn' in the checkpoint, 'lstm' here"):
        other.load(tmp_path / "checkpoint.pt")
    assert torch.is_tensor(next(other.agent.parameters()))
