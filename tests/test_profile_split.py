"""bench/profile_split.py's bucketing of py-spy's collapsed stacks, on stacks shaped as py-spy wrote
them for the study's actor and learner (frames root first, "function (path:line)"), with the shares
counted by hand."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
W = "<module> (ray/_private/workers/default_worker.py:323);Worker.main_loop (ray/_private/worker.py:1069)"
ROLL = W + ";RolloutWorker.rollout (actors/rollout.py:140)"
RUN = W + ";LearnerService.run (runtime/service.py:240);Learner.step (learner/learner.py:90)"
BG = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"


def _module():
    spec = importlib.util.spec_from_file_location("profile_split", ROOT / "bench/profile_split.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RAW = [
    # the actor's main thread: 10 samples idle, 30 in its rollout
    f"{W} 10",
    f"{ROLL};Agent._forward (agents/agent.py:120);Conv2d.forward (torch/nn/modules/conv.py:554);"
    f"Conv2d._conv_forward (torch/nn/modules/conv.py:560) 12",
    f"{ROLL};_AtariGroup.send (actors/envs.py:80);AtariVectorEnv.send (ale_py/vector_env.py:247) 9",
    # the core's own Linear is the core's, though Linear is also the torso's fc
    f"{ROLL};Agent._forward (agents/agent.py:125);RFWPCore.forward (fwp_core/cores.py:200);"
    f"Linear.forward (torch/nn/modules/linear.py:134) 6",
    f"{ROLL};Agent._forward (agents/agent.py:118);ObservationNorm.forward (agents/obs_norm.py:33) 3",
    # the learner's update thread
    f"{RUN};Learner._update (learner/learner.py:140);_engine_run_backward (torch/autograd/graph.py:979) 20",
    f"{RUN};Agent.update_obs_norm (agents/agent.py:77);ObservationNorm.update (agents/obs_norm.py:43) 4",
    # a health hook called from the torso's forward is the hook's
    f"{RUN};Agent._forward (agents/agent.py:120);Conv2d._call_impl (torch/nn/modules/module.py:1790);"
    f"DeadUnits._hook.<locals>.hook (learner/health.py:27) 1",
    f"{RUN};Learner._update (learner/learner.py:150);Adam.step (torch/optim/adam.py:200) 2",
    f"{RUN};Learner.step (learner/learner.py:95);Condition.wait (threading.py:331) 3",
    # the loader: waiting in ray.wait, or staging
    f"{BG};LearnerService._guard (runtime/service.py:150);LearnerService._load (runtime/service.py:208);"
    f"wait (ray/_private/worker.py:3237) 7",
    f"{BG};LearnerService._guard (runtime/service.py:150);LearnerService._load (runtime/service.py:208) 3",
    # the loader preparing the next batch: the statistics of compact Atari frames, of whole
    # observations, then the normalisation
    f"{BG};LearnerService._load (runtime/service.py:208);LearnerService._stage (runtime/service.py:260);"
    f"Learner.prepare (learner/learner.py:118);stack_moments (learner/batch.py:80) 3",
    f"{BG};LearnerService._load (runtime/service.py:208);LearnerService._stage (runtime/service.py:260);"
    f"Learner.prepare (learner/learner.py:117);batch_moments (agents/obs_norm.py:22) 2",
    f"{BG};LearnerService._load (runtime/service.py:208);LearnerService._stage (runtime/service.py:262);"
    f"Learner.prepare (learner/learner.py:118);"
    f"Agent.preprocess (agents/agent.py:100);ObservationNorm.forward (agents/obs_norm.py:70) 4",
    # threads that are Ray's own are left out
    f"{BG};Event.wait (threading.py:622);Condition.wait (threading.py:327) 50",
    "",
]


def test_stacks_fall_in_the_buckets_counted_by_hand():
    ps = _module()
    got = ps.split(RAW)
    assert dict(got["actor"]) == {"idle between rollouts": 10, "torso": 12, "env step (ALE, gymnasium)": 9, "core": 6,
                                  "observation norm": 3}
    assert dict(got["learner update"]) == {"backward": 20, "observation statistics": 4,
                                           "health tags (forward hooks)": 1, "optimiser": 2, "waiting for a batch": 3}
    assert dict(got["learner loader"]) == {"waiting for rollouts": 7, "fetch and stage": 3,
                                           "prepare the next batch: observation statistics": 5,
                                           "prepare the next batch: stacks, floats, normalisation": 4}
    assert set(got) == {"actor", "learner update", "learner loader"}


def test_the_table_gives_each_threads_shares():
    ps = _module()
    text = ps.table("run", ps.split(RAW))
    assert "| actor | torso | 30.0% | 12 |" in text                     # 12 of the actor's 40
    assert "| actor | idle between rollouts | 25.0% | 10 |" in text
    assert "| learner update | backward | 66.7% | 20 |" in text          # 20 of 30
    assert "| learner loader | waiting for rollouts | 36.8% | 7 |" in text   # 7 of 19


def test_a_missing_pid_or_a_bad_duration_is_a_one_line_error():
    done = subprocess.run([sys.executable, str(ROOT / "bench/profile_split.py"), "--pid", "999999999"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["profile_split.py: no process with pid 999999999"], done.stderr
    done = subprocess.run([sys.executable, str(ROOT / "bench/profile_split.py"), "--seconds", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["profile_split.py: --seconds and --rate must be positive"], done.stderr
