"""The rollout worker against independent references: the env replayed by hand with the recorded
actions, and the agent's own unroll over each rollout from the state that travelled with it."""
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from actors.rollout import RolloutWorker
from agents import Agent
from configs import load_config
from learner.batch import from_rollout, to_device


def _cfg(env_batches, core="rdn", use_last_action=True):
    return load_config(overrides=[
        "env.id=CartPole-v1", "env.num_envs=4", f"env.env_batches={env_batches}",
        f"model.core={core}", f"model.use_last_action={use_last_action}", "model.hidden_size=16",
        "core.d_model=16", "core.num_heads=2", "core.head_dim=4", "core.ff_dim=16", "core.hidden_size=16",
        "learner.unroll_length=7"])


@pytest.mark.parametrize("env_batches", [1, 2])
def test_rollouts_replay_in_a_hand_stepped_env(env_batches):
    cfg = _cfg(env_batches)
    seed = 11
    worker = RolloutWorker(cfg, seed=seed)
    rollouts = [worker.rollout() for _ in range(6)]
    T = cfg.learner.unroll_length
    for a, b in zip(rollouts, rollouts[1:]):       # consecutive rollouts overlap by one observation
        for key in ("obs", "reward", "first", "last_action"):
            np.testing.assert_array_equal(a[key][T], b[key][0])
    episodes_seen = [e for r in rollouts for e in r["episodes"]]
    # Env j was seeded seed + j; replay its recorded actions in a plain gymnasium env.
    games = []
    for j in range(4):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed + j)
        ret, length, first, reward, last = 0.0, 0, True, 0.0, 0
        for r in rollouts:
            for t in range(T + (r is rollouts[-1])):
                np.testing.assert_allclose(r["obs"][t, j], obs, rtol=1e-6)
                assert r["first"][t, j] == first and r["reward"][t, j] == reward
                assert r["last_action"][t, j] == (0 if first else last)
                if t == T:
                    break
                last = int(r["action"][t, j])
                obs, reward, term, trunc, _ = env.step(last)
                ret, length = ret + reward, length + 1
                first = term or trunc
                if first:
                    games.append((ret, length))
                    ret, length = 0.0, 0
                    obs, _ = env.reset()
    assert sorted(games) == sorted(episodes_seen) and games


@pytest.mark.parametrize("core", ["lstm", "rdn", "delta_lstm"])
@pytest.mark.parametrize("env_batches", [1, 2])
def test_unroll_from_the_travelling_state_reproduces_the_behaviour_logits(core, env_batches):
    cfg = _cfg(env_batches, core)
    worker = RolloutWorker(cfg, seed=3)
    agent = worker.agent
    for _ in range(5):
        b = from_rollout(worker.rollout())          # the learner's batch of this rollout
        logits, _ = agent.unroll(b["obs"], b["reward"], b["first"], b["core_state"], b["last_action"])
        # Row T is acted on in the next rollout: only rows 0..T-1 carry behaviour logits.
        torch.testing.assert_close(logits[:-1], b["logits"][:-1], rtol=1e-5, atol=1e-5)


def test_new_weights_are_used_from_the_next_rollout():
    """Weights handed to rollout k act from its row 1 on: row 0 (the boundary step, played at the
    end of the previous call) acted with the old weights, and the state it left carries on. Both
    checked against agents of their own built here, holding the old and the new weights."""
    cfg = _cfg(1, "lstm")
    worker = RolloutWorker(cfg, seed=0)
    worker.rollout()
    old = {k: v.clone() for k, v in worker.agent.state_dict().items()}
    new = {k: v + 0.05 * torch.randn_like(v) for k, v in old.items()}
    b = from_rollout(worker.rollout((7, new)))
    assert worker.version == 7
    agents = {}
    for name, weights in (("old", old), ("new", new)):
        agents[name] = Agent(worker.env.observation_space, worker.env.num_actions, cfg.model, cfg.core,
                             cfg.learner.reward_clip)
        agents[name].load_state_dict(weights)
    with torch.no_grad():
        _, logits0, state = agents["old"].act(b["obs"][0], b["reward"][0], b["first"][0], b["core_state"],
                                              b["last_action"][0], greedy=True)
        logits, _ = agents["new"].unroll(b["obs"][1:], b["reward"][1:], b["first"][1:], state, b["last_action"][1:])
        stale, _ = agents["old"].unroll(b["obs"][1:], b["reward"][1:], b["first"][1:], state, b["last_action"][1:])
    torch.testing.assert_close(logits0, b["logits"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[:-1], b["logits"][1:-1], rtol=1e-5, atol=1e-5)
    assert (stale[:-1] - b["logits"][1:-1]).abs().max() > 1e-3     # the old weights would not give them


def test_threads_follow_the_actor_cpus(monkeypatch):
    seen = {}
    import actors.rollout as rollout

    real = rollout.make_env

    def spy(env_cfg, seed):
        seen["threads"] = env_cfg.num_threads
        return real(env_cfg, seed)
    monkeypatch.setattr(rollout, "make_env", spy)
    cfg = _cfg(1)
    RolloutWorker(cfg, num_cpus=3)
    assert seen["threads"] == 3
    RolloutWorker(dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, num_threads=2)), num_cpus=3)
    assert seen["threads"] == 2


def test_actor_bf16_on_atari_ships_float32_and_the_learner_unroll_stays_close():
    cfg = load_config(overrides=[
        "env.id=ALE/Pong-v5", "env.num_envs=4", "env.env_batches=2", "env.num_threads=1", "model.torso=nature",
        "model.core=rdn", "model.hidden_size=32", "core.d_model=16", "core.num_heads=2", "core.head_dim=8",
        "core.ff_dim=16", "learner.unroll_length=5", "run.actor_bf16=true"])
    worker = RolloutWorker(cfg, seed=1)
    assert worker.agent.bf16_torso_on_cpu
    for _ in range(3):
        r = worker.rollout()
        assert r["logits"].dtype == np.float32 and all(s.dtype == torch.float32 for s in r["core_state"])
        worker.agent.bf16_torso_on_cpu = False     # the learner's float32 unroll of the same data
        b = to_device(from_rollout(r), "cpu")      # the stacks rebuilt from the compact frames
        logits, _ = worker.agent.unroll(b["obs"], b["reward"], b["first"], b["core_state"])
        worker.agent.bf16_torso_on_cpu = True
        torch.testing.assert_close(logits[:-1], b["logits"][:-1], rtol=0, atol=3e-2)
    worker.close()


def test_atari_frames_ship_once_and_rebuild_bit_for_bit():
    """Stacked frames travel as each row's newest frame, row 0's stack and the game starts; the
    rebuilt [T+1, N, 4, 84, 84] equals the stacks of a raw AtariVectorEnv stepped by hand with the
    recorded actions, bit for bit, across life losses, game overs (SameStep autoreset: the new
    game's stack is three zero frames and its first) and rollout boundaries."""
    from ale_py.vector_env import AtariVectorEnv
    n, seed, T = 3, 5, 20
    cfg = load_config(overrides=[
        "env.id=ALE/Breakout-v5", f"env.num_envs={n}", "env.env_batches=1", "env.num_threads=1",
        "env.max_episode_frames=1200", "model.torso=nature", "model.core=lstm", "model.hidden_size=16",
        "core.hidden_size=16", f"learner.unroll_length={T}"])
    worker = RolloutWorker(cfg, seed=seed)
    rollouts = [worker.rollout() for _ in range(25)]       # 500 steps: several game overs at the cap
    worker.close()
    assert "obs" not in rollouts[0]
    ref = AtariVectorEnv("breakout", n, num_threads=1, autoreset_mode="SameStep", reward_clipping=False,
                         episodic_life=False, max_num_frames_per_episode=1200)
    obs, _ = ref.reset(seed=seed)
    starts = 0
    for r in rollouts:
        rebuilt = to_device(from_rollout(r), "cpu")["obs"].numpy()      # learner.batch.rebuild_obs
        np.testing.assert_array_equal(rebuilt[0], obs)
        for t in range(T):
            obs, *_ = ref.step(r["action"][t])
            np.testing.assert_array_equal(rebuilt[t + 1], obs, err_msg=f"row {t + 1}")
        starts += r["stack_reset"][1:].sum()
        sent = sum(r[k].nbytes for k in ("frames", "stack0", "stack_reset"))
        assert sent < 0.3 * rebuilt.nbytes
    ref.close()
    assert starts >= n                                      # the check did cross game starts
