"""actors/envs.py against independent references: single gymnasium envs stepped by hand, and ale-py's
raw AtariVectorEnv with no life-loss signal (its `terminated` is the true game over)."""
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from ale_py.vector_env import AtariVectorEnv

from actors.envs import make_env
from configs import EnvConfig


def cfg(env_id, **kw):
    return dataclasses.replace(EnvConfig(id=env_id, env_batches=1, num_threads=1), **kw)


def run(env, steps, action_fn):
    """Step `env` with actions[k] = action_fn(k, t); returns per-step lists of the outputs."""
    out = {"obs": [], "reward": [], "first": [], "episodes": []}
    for t in range(steps):
        obs, reward, first, episodes = env.step(np.array([action_fn(k, t) for k in range(env.num_envs)]))
        for key, value in zip(out, (obs, reward, first, episodes)):
            out[key].append(value)
    return out


# ---------------------------------------------------------------- spaces, shapes, dtypes

@pytest.mark.parametrize("env_id, num_actions, obs_shape, obs_dtype, frames", [
    ("ALE/Pong-v5", 6, (4, 84, 84), np.uint8, 4),           # Pong's minimal action set has 6 actions
    ("CartPole-v1", 2, (4,), np.float32, 1),
    ("popgym-RepeatPreviousEasy-v0", 4, (4,), np.float32, 1),  # Discrete(4) obs -> one-hot of 4
])
def test_spaces_shapes_dtypes(env_id, num_actions, obs_shape, obs_dtype, frames):
    """Shapes and dtypes of every output, and the finished games each step lists: exactly the envs
    whose `first` is set (these envs have no lives: an episode is a game), each with the sum of its
    rewards and its number of steps, as tallied here from the step outputs themselves."""
    env = make_env(cfg(env_id, env_batches=2, num_envs=4, max_episode_frames=400), seed=0)   # Pong: 100 steps
    rng = np.random.default_rng(0)
    try:
        assert env.num_envs == 4 and env.num_actions == num_actions and env.frames_per_step == frames
        assert env.observation_space.shape == obs_shape and env.observation_space.dtype == obs_dtype
        obs = env.reset()
        assert obs.shape == (4, *obs_shape) and obs.dtype == obs_dtype
        running, steps, games = np.zeros(4), np.zeros(4, np.int64), np.zeros(4, np.int64)
        for _ in range(150):
            obs, reward, first, episodes = env.step(rng.integers(0, num_actions, 4))
            assert obs.shape == (4, *obs_shape) and obs.dtype == obs_dtype
            assert reward.shape == (4,) and reward.dtype == np.float32
            assert first.shape == (4,) and first.dtype == np.bool_
            running, steps = running + reward, steps + 1
            ended = np.flatnonzero(first)
            assert [k for k, _, _ in episodes] == list(ended)
            assert [n for _, _, n in episodes] == list(steps[ended])
            assert [r for _, r, _ in episodes] == pytest.approx(list(running[ended]))
            running[ended], steps[ended], games[ended] = 0, 0, games[ended] + 1
        assert (games >= 1).all(), games      # every env finished a game: the check did run
    finally:
        env.close()


def test_popgym_tuple_observation_is_one_hot():
    # Autoencode observes Tuple(Discrete(2), Discrete(4)): expect [one_hot(a, 2), one_hot(b, 4)].
    env_id = "popgym-AutoencodeEasy-v0"
    env = make_env(cfg(env_id, num_envs=2), seed=7)
    obs = env.reset()
    env.close()
    for k in range(2):
        ref = gym.make(env_id)
        (a, b), _ = ref.reset(seed=7 + k)
        expected = np.concatenate([np.eye(2)[a], np.eye(4)[b]]).astype(np.float32)
        np.testing.assert_array_equal(obs[k], expected)


# ---------------------------------------------------------------- the `first` convention

def cartpole_action(k, t):
    return (t // (2 + k)) % 2   # a fixed sequence per env, different periods -> episodes of varied length


@pytest.mark.parametrize("env_id, env_batches, n, steps, min_episodes, min_truncations", [
    ("CartPole-v1", 1, 4, 300, 16, 0),
    ("CartPole-v1", 2, 4, 300, 16, 0),
    ("Acrobot-v1", 1, 1, 600, 1, 1),   # these actions never swing it up: cut by its 500-step limit
])
def test_first_convention_matches_single_envs_by_hand(env_id, env_batches, n, steps, min_episodes, min_truncations):
    seed = 5
    env = make_env(cfg(env_id, env_batches=env_batches, num_envs=n), seed=seed)
    obs0 = env.reset()
    got = run(env, steps, cartpole_action)
    env.close()
    n_episodes = n_truncations = 0
    for k in range(n):
        ref = gym.make(env_id)
        obs, _ = ref.reset(seed=seed + k)
        np.testing.assert_array_equal(obs0[k], obs.astype(np.float32))
        ret, length = 0.0, 0
        for t in range(steps):
            obs, reward, terminated, truncated, _ = ref.step(cartpole_action(k, t))
            ret, length = ret + reward, length + 1
            ended = terminated or truncated
            expected_episodes = []
            if ended:
                expected_episodes = [(k, ret, length)]
                obs, _ = ref.reset()           # the next episode's first observation
                ret, length = 0.0, 0
                n_episodes += 1
                n_truncations += truncated
            np.testing.assert_array_equal(got["obs"][t][k], obs.astype(np.float32))
            assert got["reward"][t][k] == reward
            assert got["first"][t][k] == ended
            assert [e for e in got["episodes"][t] if e[0] == k] == expected_episodes
    assert n_episodes >= min_episodes and n_truncations >= min_truncations   # boundaries really crossed


def test_gym_seeding_is_reproducible():
    def rollout(seed):
        env = make_env(cfg("CartPole-v1", num_envs=3), seed=seed)
        obs = [env.reset()] + run(env, 60, cartpole_action)["obs"]
        env.close()
        return np.stack(obs)
    a, b, c = rollout(3), rollout(3), rollout(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], c[0])


# ---------------------------------------------------------------- Atari

def test_atari_episodic_life_and_raw_game_scores():
    """Space Invaders (3 lives, 5..30 points per invader) with random actions, against the raw
    AtariVectorEnv without a life-loss signal: same frames and rewards (the game is NOT reset at a
    life loss), first at every life loss and game over, episodes = whole games' raw scores."""
    n, seed, steps = 2, 1, 1500
    env = make_env(cfg("ALE/SpaceInvaders-v5", num_envs=n), seed=seed)
    ref = AtariVectorEnv("space_invaders", n, num_threads=1, autoreset_mode="SameStep",
                         reward_clipping=False, episodic_life=False, life_loss_info=False)
    obs = env.reset()
    ref_obs, info = ref.reset(seed=seed)
    np.testing.assert_array_equal(obs, ref_obs)
    lives = info["lives"]
    rng = np.random.default_rng(0)
    ret, length = np.zeros(n), np.zeros(n, int)
    n_games = n_life_losses = 0
    max_reward = 0.0
    for t in range(steps):
        actions = rng.integers(0, env.num_actions, n)
        obs, reward, first, episodes = env.step(actions)
        ref_obs, ref_reward, terminated, truncated, info = ref.step(actions)
        game_over = terminated | truncated
        life_lost = ~game_over & (info["lives"] < lives)
        lives = info["lives"]
        np.testing.assert_array_equal(obs, ref_obs)
        np.testing.assert_array_equal(reward, ref_reward)
        np.testing.assert_array_equal(first, game_over | life_lost)
        ret, length = ret + ref_reward, length + 1
        assert sorted(episodes) == [(k, ret[k], length[k]) for k in np.flatnonzero(game_over)]
        ret[game_over], length[game_over] = 0, 0
        n_games += game_over.sum()
        n_life_losses += life_lost.sum()
        max_reward = max(max_reward, reward.max())
    env.close()
    assert max_reward > 1            # raw scores: reward clipping is off
    assert n_games >= 2 and n_life_losses >= 2 * n_games


def test_fire_then_action_2_after_every_life_loss_on_breakout():
    """env.fire_on_life_loss (the paper's FireResetEnv after EpisodicLifeEnv), against the raw
    AtariVectorEnv stepped by hand: an agent that only ever sends NOOP gets FIRE and then RIGHT
    (action 2) played for it on the two steps after each life loss, the frames match the raw env
    given those actions, and the ball relaunches every time, so all 5 lives go."""
    n, seed = 2, 3
    env = make_env(cfg("ALE/Breakout-v5", fire_on_life_loss=True, num_envs=n), seed=seed)
    ref = AtariVectorEnv("breakout", n, num_threads=1, autoreset_mode="SameStep", reward_clipping=False,
                         episodic_life=False, life_loss_info=False)
    obs = env.reset()
    ref_obs, info = ref.reset(seed=seed)
    np.testing.assert_array_equal(obs, ref_obs)
    lives, due = info["lives"], [[] for _ in range(n)]
    life_losses = games = 0
    for t in range(1500):
        expected = np.array([due[k].pop(0) if due[k] else 0 for k in range(n)])
        executed, forced = env.send(np.zeros(n, np.int64), env.groups[0])
        np.testing.assert_array_equal(executed, expected)
        np.testing.assert_array_equal(forced, expected != 0)
        _, obs, reward, first, episodes = env.recv()
        ref_obs, ref_reward, terminated, truncated, info = ref.step(expected)
        np.testing.assert_array_equal(obs, ref_obs)
        game_over = terminated | truncated
        lost = ~game_over & (info["lives"] < lives)
        lives = info["lives"]
        np.testing.assert_array_equal(first, game_over | lost)
        for k in np.flatnonzero(lost):
            due[k] = [1, 2]
        life_losses += lost.sum()
        games += game_over.sum()
    env.close()
    assert life_losses >= 4 * n and games >= n      # without the forced FIRE the first life loss stalls the game


def test_atari_frame_cap_ends_the_game():
    # 400 frames at frame skip 4: every Pong game (far longer than that) is cut at agent step 100.
    env = make_env(cfg("ALE/Pong-v5", max_episode_frames=0, num_envs=2), seed=0)   # 0: no cap
    env.reset()
    assert not np.array(run(env, 20, lambda k, t: 0)["first"]).any()
    env.close()
    env = make_env(cfg("ALE/Pong-v5", max_episode_frames=400, num_envs=2), seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    out = run(env, 250, lambda k, t: rng.integers(0, 6))
    env.close()
    first = np.array(out["first"])
    assert np.flatnonzero(first[:, 0]).tolist() == [99, 199]   # the 100th and 200th steps
    assert first[:, 0].tolist() == first[:, 1].tolist()
    reward = np.array(out["reward"])
    for t in (99, 199):
        assert sorted(out["episodes"][t]) == [(k, float(reward[t - 99:t + 1, k].sum()), 100) for k in range(2)]


# ---------------------------------------------------------------- pipelined groups

@pytest.mark.parametrize("env_id", ["ALE/Breakout-v5", "CartPole-v1"])
def test_groups_round_robin_and_per_env_streams(env_id):
    """Two groups in flight (send/recv) give each env the same stream as stepping all at once."""
    n, seed, rounds = 4, 3, 300
    rngs = [np.random.default_rng(100 + k) for k in range(n)]
    actions = [[int(r.integers(0, 2)) for _ in range(rounds)] for r in rngs]   # per env, per its own step

    sync = make_env(cfg(env_id, num_envs=n), seed=seed)
    expected_obs0 = sync.reset()
    exp_steps = [sync.step(np.array([actions[k][t] for k in range(n)])) for t in range(rounds)]
    sync.close()
    assert sum(len(step[3]) for step in exp_steps) >= n   # games do end within the run

    env = make_env(cfg(env_id, env_batches=2, num_envs=n), seed=seed)
    assert [ids.tolist() for ids in env.groups] == [[0, 1], [2, 3]]
    obs0 = env.reset()
    np.testing.assert_array_equal(obs0, expected_obs0)
    steps_taken = np.zeros(n, int)
    for ids in env.groups:
        env.send(np.array([actions[k][0] for k in ids]), ids)
    for i in range(2 * rounds):
        ids, obs, reward, first, episodes = env.recv()
        assert ids.tolist() == env.groups[i % 2].tolist()     # groups come back in the order sent
        for j, k in enumerate(ids):
            t = steps_taken[k]
            e_obs, e_reward, e_first, e_episodes = exp_steps[t]
            np.testing.assert_array_equal(obs[j], e_obs[k])
            assert reward[j] == e_reward[k] and first[j] == e_first[k]
            assert [e for e in episodes if e[0] == k] == [e for e in e_episodes if e[0] == k]
        steps_taken[ids] += 1
        if i < 2 * rounds - 2:
            env.send(np.array([actions[k][steps_taken[k]] for k in ids]), ids)
    env.close()
    assert steps_taken.tolist() == [rounds] * n


def test_send_recv_misuse_is_refused():
    env = make_env(cfg("CartPole-v1", env_batches=2, num_envs=4), seed=0)
    env.reset()
    with pytest.raises(RuntimeError, match="no group in flight"):
        env.recv()
    with pytest.raises(ValueError, match="not one of the groups"):
        env.send(np.zeros(2, np.int64), np.array([1, 2]))
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        env.send(np.array([0, 2]), env.groups[0])
    env.send(np.zeros(2, np.int64), env.groups[0])
    with pytest.raises(RuntimeError, match="already in flight"):
        env.send(np.zeros(2, np.int64), env.groups[0])
    env.close()
