"""Vectorised environments from an env id, one interface for ALE and gymnasium envs.

    env = make_env(cfg.env, seed=0)                    # cfg.env.num_envs envs
    obs = env.reset()                                  # [N, ...]; every env starts an episode here
    obs, reward, first, episodes = env.step(actions)   # actions: [N] ints in [0, env.num_actions)

`ALE/<Game>-v5` ids run on ale-py's C++ `AtariVectorEnv` (frame skip with max-pool, grey 84x84,
frame stack, no-op starts, fire on reset, sticky actions, frame cap: all from `EnvConfig`); any other
gymnasium id (classic control, `popgym-*`) on gymnasium's `SyncVectorEnv`, its observations
flattened to float32 (Discrete and MultiDiscrete parts become one-hot). Discrete actions only.

Step semantics (both kinds):
- Same-step autoreset: where an episode ends, obs[i] is already the first observation of the next
  one, reward[i] is the raw (unclipped) reward of the step that ended it and first[i] is True.
- With Atari episodic life, a life loss also sets first[i] (the core resets) while the game goes on.
- `episodes` lists every GAME that ended in the step as (env_index, return, length): the raw score
  summed over all its lives and its length in agent steps. An Atari game also ends (and sets first)
  when it reaches `max_episode_frames` emulator frames (0: no cap); gymnasium envs keep their
  registered time limit (CartPole-v1: 500 steps).

Pipelined groups (`env_cfg.env_batches` = G groups of N/G envs, 1 = synchronous): group g holds the
fixed env ids `env.groups[g]` = [g*N/G, (g+1)*N/G). `send(actions, env_ids)` starts one group's step
and returns at once; `recv()` waits for the group sent EARLIEST and returns
(env_ids, obs, reward, first, episodes) for it, rows in env_ids' (ascending) order. So an actor that,
after `reset()`, sends every group once and then answers each `recv()` with a `send()` for the same
env_ids gets the groups back round-robin: each env id exactly once per round of G recvs, always with
the same group-mates. While it computes one group's actions the other groups step on the env's
threads. `step()` is `send` for every group then `recv` for every group. For gymnasium envs `send`
only stores the actions and `recv` steps the group (same ordering, no overlap).

Why fixed groups instead of AtariVectorEnv's own `batch_size < num_envs`: measured with ale-py
0.12.1, that mode returns whichever `batch_size` envs finish first (info["env_id"] says which), so a
batch mixes envs of both halves now and then (about 1 round in 100: Pong 8 envs, batches of 4) and
envs drift apart in step count; an actor would need per-env rollout bookkeeping. Here each group is
its own `AtariVectorEnv` (ordered mode, batch_size = group size) with its own `num_threads` threads.

Seeding: env k is seeded with seed + k by `reset()` (give actors disjoint seed ranges, e.g.
seed = base + actor_index * num_envs). Gymnasium envs then reproduce their observations exactly,
autoresets included. An ALE env seeded this way reloads its ROM and seeds both the emulator (sticky
actions) and its no-op count generator, so its frames are a deterministic function of its seed and
its own action sequence (verified: two envs built with the same seed give identical streams,
whatever the group layout or thread count).

Facts about ale-py 0.12.1's AtariVectorEnv this module relies on (established by experiment):
- `episodic_life=True` ends the episode at a life loss AND resets the whole game (lives back to full,
  score lost): unusable for the paper's protocol. We pass `episodic_life=False,
  life_loss_info=env_cfg.episodic_life`: terminated=True at a life loss, the game goes on.
- `autoreset_mode="SameStep"`: on the step that ends a game the obs and info already belong to the
  new game (after its no-ops and FIRE), reward/terminated/truncated to the step that ended it.
  "NextStep" would return the last frame and spend the next step on the reset.
- `reward_clipping` defaults to True; we pass False (the learner clips, logs need raw scores).
- info keys: env_id, lives, frame_number (frames since the ROM was (re)loaded), episode_frame_number
  (frames since the game's reset). `max_num_frames_per_episode` counts emulator frames (a cap of 400
  truncates at agent step 100 with frame skip 4). After a reset three of the four stacked frames are
  zero. FIRE is pressed only at game start, not after a life loss (the agent has FIRE in its action
  set). `env.fire_on_life_loss` adds the paper's FireResetEnv-after-EpisodicLifeEnv behaviour: the
  two steps after a life loss send FIRE and then action 2 instead of the agent's actions (`send`
  returns which were forced; the learner leaves those steps out of the policy loss).
- A real game over is told apart from a life loss by frame_number - episode_frame_number (frames
  before the current game started): it changes exactly when the game was reset in this step (game
  over or frame cap), and it works for games without lives (Pong reports lives=0 throughout).
"""
import collections
import os
from functools import partial

import gymnasium as gym
import numpy as np

# The ids' check lives with the config (checked before Ray starts); evaluate and atari_scores import
# these two from here.
from configs.envs import ATARI_PREFIX, atari_game, register_env_ids

_NO_FRAME_CAP = 2**31 - 1   # ALE counts frames in an int
ALE_SCREEN = (210, 160)     # every Atari game's screen, in pixels (height, width)


class VecEnv:
    """N environments in fixed groups; see the module docstring for the semantics.

    Attributes: num_envs, observation_space (ONE env's), num_actions, frames_per_step,
    groups (list of int64 arrays of env ids, one per group), executed (the action each env was
    last sent: the agent's, or a forced FIRE).
    """
    FORCED_ACTIONS = (1, 2)   # after a life loss: FIRE, then action 2 (FireResetEnv's reset)

    def __init__(self, groups, seed, observation_space, num_actions, frames_per_step):
        self._groups = groups
        self._seed = seed
        self.observation_space = observation_space
        self.num_actions = num_actions
        self.frames_per_step = frames_per_step
        sizes = [g.num_envs for g in groups]
        starts = np.cumsum([0] + sizes)
        self.groups = [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]
        self.num_envs = int(starts[-1])
        self._in_flight = collections.deque()   # group indices, in the order they were sent
        self._returns = np.zeros(self.num_envs, np.float64)   # raw score of each env's current game
        self._lengths = np.zeros(self.num_envs, np.int64)     # agent steps in each env's current game
        self._forced_left = np.zeros(self.num_envs, np.int64)  # forced actions still due, per env
        self.executed = np.zeros(self.num_envs, np.int64)

    def reset(self):
        """Start a new game in every env (env k seeded with seed + k); returns obs [N, ...]."""
        if self._in_flight:
            raise RuntimeError("reset() while groups are in flight: recv() them first")
        obs = [group.reset(self._seed + int(ids[0])) for group, ids in zip(self._groups, self.groups)]
        self._returns[:] = 0
        self._lengths[:] = 0
        self._forced_left[:] = 0
        return obs[0] if len(obs) == 1 else np.concatenate(obs)

    def step(self, actions):
        """Step every env: actions [N] -> (obs [N, ...], reward [N] f32, first [N] bool, episodes)."""
        actions = self._check_actions(actions, self.num_envs)
        for ids in self.groups:
            self.send(actions[ids], ids)
        results = [self.recv() for _ in self.groups]
        if len(results) == 1:
            return results[0][1:]
        episodes = [e for r in results for e in r[4]]
        return (*(np.concatenate([r[i] for r in results]) for i in (1, 2, 3)), episodes)

    def send(self, actions, env_ids):
        """Start stepping the group whose env ids are `env_ids` (as returned by recv or env.groups).
        Returns (executed actions, forced mask): where a life was just lost in a game that needs
        FIRE (env.fire_on_life_loss), the env plays FIRE, then action 2, instead of the agent's."""
        env_ids = np.asarray(env_ids)
        g = next((g for g, ids in enumerate(self.groups) if np.array_equal(ids, env_ids)), None)
        if g is None:
            raise ValueError(f"send(): env_ids {env_ids.tolist()} is not one of the groups "
                             f"{[f'{ids[0]}..{ids[-1]}' for ids in self.groups]}; pass the env_ids recv() returned")
        if g in self._in_flight:
            raise RuntimeError(f"send(): group {g} (envs {env_ids[0]}..{env_ids[-1]}) is already in flight; "
                               "recv() it first")
        actions = self._check_actions(actions, len(env_ids)).copy()
        left = self._forced_left[env_ids]
        forced = left > 0
        if forced.any():
            actions[forced] = np.asarray(self.FORCED_ACTIONS)[len(self.FORCED_ACTIONS) - left[forced]]
            self._forced_left[env_ids[forced]] -= 1
        self._groups[g].send(actions)
        self._in_flight.append(g)
        self.executed[env_ids] = actions
        return actions, forced

    def recv(self):
        """Wait for the earliest-sent group: (env_ids, obs, reward, first, episodes)."""
        if not self._in_flight:
            raise RuntimeError("recv() with no group in flight: send() a group's actions first")
        g = self._in_flight.popleft()
        obs, reward, first, game_over = self._groups[g].recv()
        ids = self.groups[g]
        if self._groups[g].fire_on_life_loss:
            self._forced_left[ids[first & ~game_over]] = len(self.FORCED_ACTIONS)
        self._returns[ids] += reward
        self._lengths[ids] += 1
        episodes = []
        for k in ids[game_over]:
            episodes.append((int(k), float(self._returns[k]), int(self._lengths[k])))
            self._returns[k] = 0
            self._lengths[k] = 0
        return ids, obs, reward, first, episodes

    def close(self):
        for group in self._groups:
            group.close()
        self._groups = []   # dropping the AtariVectorEnv is what stops its C++ threads
        self._in_flight.clear()

    def _check_actions(self, actions, n):
        actions = np.asarray(actions)
        if actions.shape != (n,) or actions.dtype.kind not in "iu":
            raise ValueError(f"actions must be {n} integers, got shape {actions.shape} dtype {actions.dtype}")
        if n and (actions.min() < 0 or actions.max() >= self.num_actions):
            raise ValueError(f"actions must lie in [0, {self.num_actions}), got {actions.min()}..{actions.max()}")
        return actions.astype(np.int64, copy=False)


class _AtariGroup:
    """One AtariVectorEnv stepped as a whole (batch_size = num_envs: results come back in env order)."""

    def __init__(self, game, num_envs, env_cfg, num_threads, screen=False):
        from ale_py.vector_env import AtariVectorEnv
        self.num_envs = num_envs
        # The agent's view (grey, resized, stacked), or the game's own colour screen for a video.
        view = dict(grayscale=False, img_height=ALE_SCREEN[0], img_width=ALE_SCREEN[1], stack_num=1) if screen else \
            dict(stack_num=env_cfg.frame_stack, img_height=env_cfg.img_size, img_width=env_cfg.img_size)
        self.vec = AtariVectorEnv(
            game, num_envs,
            num_threads=num_threads,
            autoreset_mode="SameStep",             # obs at an episode's end is the next one's first
            reward_clipping=False,                 # raw scores; the learner clips
            episodic_life=False,                   # True would restart the whole game at a life loss
            life_loss_info=env_cfg.episodic_life,  # terminated at a life loss, the game goes on
            frameskip=env_cfg.frame_skip,
            **view,
            noop_max=env_cfg.noop_max,
            use_fire_reset=env_cfg.fire_reset,
            repeat_action_probability=env_cfg.sticky_actions,
            max_num_frames_per_episode=env_cfg.max_episode_frames if env_cfg.max_episode_frames > 0 else _NO_FRAME_CAP,
            full_action_space=env_cfg.full_action_space,
        )
        self._env_ids = np.arange(num_envs)
        # FireResetEnv's test: the game's action 1 is FIRE (of at least three actions).
        from ale_py import Action
        action_set = list(self.vec.ale.get_action_set())
        needs_fire = len(action_set) >= 3 and action_set[1] == Action.FIRE
        self.fire_on_life_loss = env_cfg.fire_on_life_loss and env_cfg.episodic_life and needs_fire
        self._game_start = None   # frame_number - episode_frame_number: frames before the current game

    def reset(self, seed):
        obs, info = self.vec.reset(seed=seed)
        self._game_start = info["frame_number"] - info["episode_frame_number"]
        return obs

    def send(self, actions):
        self.vec.send(actions)

    def recv(self):
        obs, reward, terminated, truncated, info = self.vec.recv()
        if not np.array_equal(info["env_id"], self._env_ids):   # ordered mode guarantees this
            raise RuntimeError(f"AtariVectorEnv returned envs {info['env_id'].tolist()} out of order")
        game_start = info["frame_number"] - info["episode_frame_number"]
        game_over = game_start != self._game_start   # the game was reset within this step
        self._game_start = game_start
        return obs, reward.astype(np.float32), terminated | truncated | game_over, game_over

    def close(self):
        self.vec.close()


def _make_flat_env(env_id):
    # configs.envs.check_env_id saw that the action space is Discrete and the observations flatten.
    env = gym.make(env_id, disable_env_checker=True)   # the checker warns spuriously on popgym
    env = gym.wrappers.FlattenObservation(env)                 # Discrete/MultiDiscrete -> one-hot
    return gym.wrappers.DtypeObservation(env, np.float32)


class _GymGroup:
    """A SyncVectorEnv; send() stores the actions, recv() steps."""

    fire_on_life_loss = False

    def __init__(self, env_id, num_envs):
        self.num_envs = num_envs
        self.vec = gym.vector.SyncVectorEnv([partial(_make_flat_env, env_id)] * num_envs,
                                            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self._action_start = int(self.vec.single_action_space.start)   # Discrete(n, start=s)
        self._actions = None

    def reset(self, seed):
        obs, _ = self.vec.reset(seed=seed)   # env j of the group gets seed + j
        return obs

    def send(self, actions):
        self._actions = actions + self._action_start

    def recv(self):
        obs, reward, terminated, truncated, _ = self.vec.step(self._actions)
        done = terminated | truncated
        return obs, reward.astype(np.float32), done, done

    def close(self):
        self.vec.close()


def make_env(env_cfg, seed: int, screen: bool = False) -> VecEnv:
    """Build the `env_cfg.num_envs` envs of `env_cfg.id` in `env_cfg.env_batches` groups (see module
    docstring). env_cfg is a checked configs.EnvConfig: its id and values are usable.
    screen: Atari only, for videos: observe the game's own colour screen (one [210, 160, 3] RGB
    frame, no stack) instead of the agent's grey stacks; the game, its seeding and steps are the same."""
    num_envs, groups_n = env_cfg.num_envs, env_cfg.env_batches   # groups_n divides num_envs (configs)
    register_env_ids()
    size = num_envs // groups_n
    if screen and not env_cfg.id.startswith(ATARI_PREFIX):
        raise ValueError(f"only Atari games have a screen to film; {env_cfg.id} has none")
    if env_cfg.id.startswith(ATARI_PREFIX):
        game = atari_game(env_cfg.id)
        # 0: the CPUs this process may use; every group gets them all (mostly one group steps at a time)
        threads = min(env_cfg.num_threads or len(os.sched_getaffinity(0)), size)
        groups = []
        try:
            for _ in range(groups_n):
                groups.append(_AtariGroup(game, size, env_cfg, threads, screen))
        except Exception:
            for group in groups:
                group.close()
            raise
        vec = groups[0].vec
        return VecEnv(groups, seed, vec.single_observation_space, int(vec.single_action_space.n),
                      env_cfg.frame_skip)
    groups = [_GymGroup(env_cfg.id, size) for _ in range(groups_n)]
    vec = groups[0].vec
    return VecEnv(groups, seed, vec.single_observation_space, int(vec.single_action_space.n), 1)
