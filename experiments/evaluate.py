"""Evaluate a checkpoint: play N whole episodes with the agent it holds and its own config.

    result = evaluate("runs/pong-rdn", episodes=10)          # a run directory or a checkpoint file
    result["mean"], result["returns"]                          # also written to <run>/eval.json
    evaluate("runs/pong-rdn", 1, video=True)                   # + <run>/eval.mp4 (and TensorBoard)

Scores are what the env reports per game (actors/envs.py): raw game scores summed over all lives,
whole games up to the env's frame cap (env.max_episode_frames, 108k frames for Atari), whatever
episodic-life setting resets the core meanwhile. The agent acts exactly as in training (its core is
reset where the env says `first`, also at a life loss when the run was trained that way).

Unbiased episode counts: with M envs in parallel, taking the first N games to finish would favour
short ones. Instead env k is given a fixed quota of the N games (N // M, one more for the first
N % M envs) and only its first `quota[k]` games count; envs that met theirs keep stepping unheeded.

`protocol="paper"` is the paper's evaluation instead (its code's `--mode test`): greedy actions, an
episode is one life (episodic life and FIRE after a life loss as in its test env, the return
zeroed at every life's end), `episodes` (30) episodes in each of `repeats` (5) runs, reported as
the mean and std of the runs' means; for BattleZone and Up'n Down an episode whose running return
goes below zero is dropped and the core reset, as its noneg script did. Runs are played side by
side, run r on an env seeded seed + r; the frame cap is the config's own.
"""
import json
from pathlib import Path

import numpy as np
import torch

from actors.rollout import act
from configs.files import atomic_write
from experiments import PROTOCOLS
from learner import checkpoint
from learner.checkpoint import CheckpointError

EVAL_SEED = 1_000_000_007   # env seeds from here on; far from the training envs' seeds of small runs
EVAL_SEED_STRIDE = 100_000  # env seeds per run: an evaluation seeds env k with seed + k, k < this
NO_NEGATIVE_GAMES = ("battle_zone", "up_n_down")   # the paper's noneg evaluation script
VIDEO_SCALE = 2             # the 210x160 colour screen becomes 420x320 (even sides, as H.264's yuv420p wants)
TB_VIDEO_FRAMES = 600       # TensorBoard gets the first 600 frames (40 s at 15 fps) as a GIF


def eval_seed(run_seed):
    """The evaluation seed of a comparison's run `run_seed`: ranges of EVAL_SEED_STRIDE env seeds,
    so that runs of consecutive seeds never play the same env seeds."""
    return EVAL_SEED + run_seed * EVAL_SEED_STRIDE


def checkpoint_path(path):
    """A run directory or a checkpoint file -> the checkpoint file's path."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def load_agent(path):
    """(agent in eval mode, Config, payload) from the checkpoint at `path`; CheckpointError if unusable."""
    from agents import Agent
    from configs import ConfigError, config_from_dict
    from actors.envs import make_env

    payload = checkpoint.read(path)
    try:
        cfg = config_from_dict(payload["config"], source=f"{path} (its config)")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: its config is unusable: {e}") from None
    env = make_env(_eval_env_config(cfg, 1), 0)   # one throwaway env for the spaces
    try:
        agent = Agent(env.observation_space, env.num_actions, cfg.model, cfg.core, cfg.learner.reward_clip)
    finally:
        env.close()
    try:
        agent.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the agent its config "
                              f"describes: {str(e).splitlines()[0]}") from None
    agent.eval()
    return agent, cfg, payload


def _eval_env_config(cfg, num_envs):
    import dataclasses
    # One synchronous group, and env threads for the CPUs this process may use.
    return dataclasses.replace(cfg.env, num_envs=num_envs, env_batches=1, num_threads=0)


def play(agent, cfg, episodes, greedy=False, seed=EVAL_SEED, num_envs=None, film=None):
    """Play `episodes` whole games; returns (returns, lengths), lists in env order (env 0's games
    first). `film` (a _ScreenFilm) follows env 0 through its first game."""
    from actors.envs import make_env

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    n = min(episodes, num_envs or cfg.env.num_envs)
    env = make_env(_eval_env_config(cfg, n), seed)
    quota = [episodes // n + (k < episodes % n) for k in range(n)]
    games = [[] for _ in range(n)]
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)   # the sampled actions
            obs = env.reset()
            state = agent.initial_state(n)
            reward = np.zeros(n, np.float32)
            first = np.ones(n, bool)
            last_action = np.zeros(n, np.int64)
            while any(len(g) < q for g, q in zip(games, quota)):
                action, _, state, _ = act(agent, obs, reward, first, state, last_action, greedy=greedy)
                obs, reward, first, finished = env.step(action)
                last_action = env.executed.copy()   # the agent's, or the env's forced FIRE
                if film is not None:
                    film.step(last_action[0], reward[0], first[0], any(k == 0 for k, _, _ in finished))
                for k, ret, length in finished:
                    if len(games[k]) < quota[k]:
                        games[k].append((ret, length))
    finally:
        env.close()
    played = [game for g in games for game in g]
    return [r for r, _ in played], [n for _, n in played]


class _ScreenFilm:
    """Films env 0's first game on the game's own colour screen: an MP4 (imageio and its ffmpeg) and
    the first frames kept for TensorBoard. The agent acts on env 0's grey stacks as ever; a twin of
    env 0, built from the same config and seed in colour (actors.envs.make_env(screen=True): the
    same game, frame for frame), plays the actions env 0 played and is filmed. Rewards and episode
    ends are compared at every step, so a twin out of step fails loudly instead of filming
    another game."""

    def __init__(self, env_cfg, seed, path, fps):
        import dataclasses

        import imageio.v2 as imageio

        from actors.envs import make_env
        self.env = make_env(dataclasses.replace(env_cfg, num_envs=1, env_batches=1), seed, screen=True)
        self.path, self.fps = path, fps
        self.writer = imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264",
                                         macro_block_size=2, ffmpeg_log_level="error")
        self.tb_frames, self.count, self.filming = [], 0, True
        self._add(self.env.reset()[0])

    def _add(self, screen):
        frame = np.asarray(screen)[-1]                                # [210, 160, 3] RGB
        self.writer.append_data(frame.repeat(VIDEO_SCALE, 0).repeat(VIDEO_SCALE, 1))   # nearest-neighbour
        if len(self.tb_frames) < TB_VIDEO_FRAMES:
            self.tb_frames.append(frame.copy())   # the env may reuse its observation buffer
        self.count += 1

    def step(self, action, reward, first, game_over):
        """Env 0 played `action` and got `reward` and `first`; `game_over`: its game ended (its
        next frame belongs to the next game, which is not filmed)."""
        if not self.filming:
            return
        screen, twin_reward, twin_first, _ = self.env.step(np.array([action], np.int64))
        if twin_reward[0] != reward or twin_first[0] != first:
            raise RuntimeError(f"eval --video: the colour twin of env 0 fell out of step at frame {self.count} "
                               f"(reward {twin_reward[0]} vs {reward}, episode end {twin_first[0]} vs {first})")
        if game_over:
            self.filming = False
        else:
            self._add(screen[0])

    def close(self):
        self.writer.close()
        self.env.close()


class LifeTally:
    """The paper's per-life bookkeeping for n envs: returns summed per life, a life recorded when
    it ends (`first`), at most `episodes` per env; with `no_negative` an episode whose running
    return goes below zero is dropped (not recorded, counted in `dropped`)."""

    def __init__(self, n, episodes, no_negative=False):
        self.episodes, self.no_negative = episodes, no_negative
        self.lives = [[] for _ in range(n)]
        self.lengths = [[] for _ in range(n)]    # agent steps of each recorded life
        self.running = np.zeros(n)
        self.steps = np.zeros(n, np.int64)
        self.dropped = 0

    def done(self):
        return all(len(x) >= self.episodes for x in self.lives)

    def add(self, reward, first):
        """One step's rewards and episode ends; returns where an episode was dropped (the caller
        restarts the core there, as the paper's script did)."""
        self.running += reward
        self.steps += 1
        rejected = (self.running < 0) if self.no_negative else np.zeros(len(self.lives), bool)
        for k in range(len(self.lives)):
            if len(self.lives[k]) >= self.episodes:
                continue
            if rejected[k]:
                self.dropped += 1
            elif first[k]:
                self.lives[k].append(float(self.running[k]))
                self.lengths[k].append(int(self.steps[k]))
        self.running[first | rejected] = 0
        self.steps[first | rejected] = 0
        return rejected


def play_lives(agent, cfg, episodes=30, repeats=5, seed=EVAL_SEED):
    """The paper's protocol (see the module docstring): returns (per-run lists of `episodes` life
    returns, the same lists of their lengths in agent steps, the number of episodes dropped for a
    negative return)."""
    import dataclasses

    from actors.envs import ATARI_PREFIX, atari_game, make_env

    env_cfg = dataclasses.replace(_eval_env_config(cfg, repeats), episodic_life=True, fire_on_life_loss=True)
    no_negative = cfg.env.id.startswith(ATARI_PREFIX) and atari_game(cfg.env.id) in NO_NEGATIVE_GAMES
    env = make_env(env_cfg, seed)
    tally = LifeTally(repeats, episodes, no_negative)
    try:
        obs = env.reset()
        state = agent.initial_state(repeats)
        reward = np.zeros(repeats, np.float32)
        first = np.ones(repeats, bool)
        last_action = np.zeros(repeats, np.int64)
        while not tally.done():
            action, _, state, _ = act(agent, obs, reward, first, state, last_action, greedy=True)
            obs, reward, first, _ = env.step(action)
            last_action = env.executed.copy()
            first = first | tally.add(reward, first)    # a dropped episode restarts the core
    finally:
        env.close()
    return tally.lives, tally.lengths, tally.dropped


def _write_tensorboard_video(logdir, frames, fps, step):
    """Add the frames as an animated GIF under the tag eval/video (what SummaryWriter.add_video
    writes, without its moviepy dependency)."""
    import imageio.v3 as iio
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    gif = iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)
    h, w, channels = frames[0].shape
    image = Summary.Image(height=h, width=w, colorspace=channels, encoded_image_string=gif)
    with SummaryWriter(log_dir=str(logdir)) as writer:
        writer.file_writer.add_summary(Summary(value=[Summary.Value(tag="eval/video", image=image)]), step)


def evaluate(path, episodes, greedy=False, video=False, seed=EVAL_SEED, num_envs=None, protocol="games",
             repeats=5):
    """Play `episodes` games with the checkpoint at `path` (a run directory or the file); write
    eval.json (and eval.mp4 with `video`) beside it and return the same dict: episodes, mean, std
    (population, ddof=0), min, max, returns, lengths, greedy, seed, frames (the checkpoint's),
    protocol. With protocol="paper": `episodes` lives in each of `repeats` runs, greedy; mean and
    std are those of the runs' means, and `runs` lists them."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    path = checkpoint_path(path)
    agent, cfg, payload = load_agent(path)
    if protocol == "paper":
        if video:
            raise ValueError("--video films whole games; drop it with --protocol paper")
        lives, lengths, dropped = play_lives(agent, cfg, episodes, repeats, seed)
        means = np.asarray([np.mean(x) for x in lives])
        flat = np.asarray([r for x in lives for r in x])
        result = {"checkpoint": str(path), "env": cfg.env.id, "core": cfg.model.core,
                  "frames": payload["counters"]["frames"], "protocol": "paper", "episodes": episodes,
                  "repeats": repeats, "greedy": True, "seed": seed, "mean": float(means.mean()),
                  "std": float(means.std()), "min": float(flat.min()), "max": float(flat.max()),
                  "runs": [float(m) for m in means], "returns": [float(r) for r in flat],
                  "lengths": [n for x in lengths for n in x], "dropped": dropped}
        atomic_write(path.parent / "eval.json", json.dumps(result, indent=2) + "\n")
        return result
    recorder = None
    if video:
        if len(agent.obs_shape) != 3 or agent.obs_dtype != "uint8":
            raise ValueError(f"--video films image observations (Atari); {cfg.env.id} observes "
                             f"{agent.obs_dtype} vectors of shape {agent.obs_shape}")
        # Agent steps per second of game time: the ALE runs at 60 frames/s. Env 0 is seeded `seed`.
        recorder = _ScreenFilm(cfg.env, seed, str(path.parent / "eval.mp4"), fps=60 / cfg.env.frame_skip)
    try:
        returns, lengths = play(agent, cfg, episodes, greedy, seed, num_envs, film=recorder)
    finally:
        if recorder is not None:
            recorder.close()
    r = np.asarray(returns, np.float64)
    result = {"checkpoint": str(path), "env": cfg.env.id, "core": cfg.model.core,
              "frames": payload["counters"]["frames"], "protocol": "games", "episodes": len(returns), "greedy": greedy,
              "seed": seed, "mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()),
              "max": float(r.max()), "returns": [float(x) for x in returns], "lengths": lengths}
    if recorder is not None:
        result["video"] = recorder.path
        if any(p.name.startswith("events.out.tfevents") for p in path.parent.iterdir()):
            _write_tensorboard_video(path.parent, recorder.tb_frames, recorder.fps, result["frames"])
            result["video_tensorboard"] = "eval/video"
    atomic_write(path.parent / "eval.json", json.dumps(result, indent=2) + "\n")
    return result
