"""The whole learning path on an env whose answer is known: rollout worker -> batch -> V-trace
learner, in one process (runtime/serial.py's loop). If actions, observations, rewards or episode ends were misaligned
anywhere on the way, the optimal policy could not be learned and the values would be wrong.

CueMatch: each observation shows a cue c in {0, 1} (one-hot, drawn afresh every step); the action
that matches the cue of the observation it was taken at earns reward R[c] (R = 0.5, 1), the other
0; then the episode ends with probability P[c] (P = 0.1, 0.3). The optimal policy is a = c whatever
the history; its value is V*(c) = R[c] + γ (1 − P[c]) V̄, with V̄ the mean of V*(0) and V*(1):
V̄ = mean(R) / (1 − γ (1 − mean(P))) = 2.68, and V*(1) − V*(0) = 0.02. A learner that paired action t
with the cue of observation t+1 would see rewards independent of its actions and stay at chance;
one that paired the reward of step t with step t+1, or cut the return one step early or late,
would still learn the policy (its own reward is in the return) but get that difference wrong
(about −0.48 or 0.5).
"""
import gymnasium as gym
import numpy as np
import pytest
import torch

from actors.rollout import RolloutWorker
from configs import load_config
from learner.batch import from_rollout
from runtime.serial import SerialTrainer

ENV_ID = "tests/CueMatch-v0"
GAMMA, R, P = 0.9, (0.5, 1.0), (0.1, 0.3)
V_MEAN = np.mean(R) / (1.0 - GAMMA * (1.0 - np.mean(P)))
V_STAR = [r + GAMMA * (1.0 - p) * V_MEAN for r, p in zip(R, P)]


class CueMatch(gym.Env):
    observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def _obs(self):
        self.cue = int(self.np_random.integers(2))
        return np.eye(2, dtype=np.float32)[self.cue]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        reward = R[self.cue] if int(action) == self.cue else 0.0
        terminated = bool(self.np_random.random() < P[self.cue])
        return self._obs(), reward, terminated, False, {}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=CueMatch)


@pytest.mark.parametrize("core", ["lstm", "rdn"])
def test_v_trace_learns_the_optimal_policy_and_value(core):
    cfg = load_config(overrides=[
        f"env.id={ENV_ID}", "env.num_envs=16", "env.env_batches=1", f"model.core={core}",
        "model.hidden_size=16", "core.d_model=16", "core.num_layers=1", "core.num_heads=2",
        "core.head_dim=8", "core.ff_dim=32", "core.hidden_size=16", "learner.unroll_length=10",
        "learner.batch_size=16",
        f"learner.discount={GAMMA}", "learner.optimizer=adam", "learner.lr=3e-3",
        "run.total_frames=48000", "learner.loss_reduction=mean", "learner.entropy_cost=0.001",
        "model.init=orthogonal", "learner.device=cpu"])
    worker = RolloutWorker(cfg, seed=3)
    trainer = SerialTrainer(cfg, worker)   # one rollout of 16 envs = one batch
    trainer.run()                          # 300 x 16 envs x 10 steps: the lr decays to 0 over them
    learner = trainer.learner
    assert learner.version == 300

    # Fresh rollouts with the final weights (their behaviour logits are the learned policy); chance
    # is 0.5, and a random policy's values are half the optimal ones.
    p_match, value = [], {0: [], 1: []}
    for _ in range(3):
        rollout = worker.rollout(learner.weights())
        cue = rollout["obs"][:-1].argmax(-1)
        probs = torch.softmax(torch.from_numpy(rollout["logits"][:-1]), -1).numpy()
        p_match.append(np.take_along_axis(probs, cue[..., None], -1).mean())
        with torch.no_grad():
            b = from_rollout(rollout)
            values = learner.agent.unroll(b["obs"], b["reward"], b["first"], b["core_state"])[1].numpy()
        for c in (0, 1):
            value[c].extend(values[:-1][cue == c])
    assert np.mean(p_match) > 0.9, f"the policy picks the cued action with probability {np.mean(p_match):.3f}"
    v0, v1 = np.mean(value[0]), np.mean(value[1])
    assert (v0 + v1) / 2 == pytest.approx(V_MEAN, rel=0.12), ((v0, v1), V_STAR)
    assert v1 - v0 == pytest.approx(V_STAR[1] - V_STAR[0], abs=0.1), ((v0, v1), V_STAR)
    worker.close()
