"""The rollout worker: N environments and a CPU copy of the agent, producing unrolls of T steps.

One worker lives in each Ray actor (`ray.remote(RolloutWorker)`); tests use it in-process. Acting
happens here, one `Agent.act` per batch of env outputs: a Ray call per step would cost more than
the step. With `env.env_batches` > 1 the env answers in batches of N / env_batches, and while the
worker acts on one batch the others step in ALE's C++ threads.

Each env group (`env.groups`, stepped together) runs a continuous stream of steps 0, 1, 2, ... .
Rollout k holds steps kT ... kT+T (T+1 observations, [T+1, N, ...]), so consecutive rollouts
overlap by one observation, and the core state that travels with rollout k is each env's state
before it acted on step kT. With several groups in flight, a group that completes rollout k carries
straight on into rollout k+1 (its rows wait in `self.rollouts` for the next call), so the groups
never wait for each other.
"""
import collections
import dataclasses

import numpy as np
import torch

from agents import Agent

from . import resolve_actor
from .envs import make_env
from .flat_weights import unflatten


def worker_seed(seed, index, num_envs):
    """The seed of rollout worker `index` of a run seeded `seed`: disjoint env seed ranges per
    worker (env j of worker i gets seed * 1_000_003 + i * num_envs + j)."""
    return seed * 1_000_003 + index * num_envs


def act(agent, obs, reward, first, state, last_action, greedy=False):
    """The acting step of training and evaluation alike, on one batch of env outputs (numpy):
    obs [N, ...], reward and first [N], last_action [N] (the action each env took last). The last
    action fed to the core is 0 where an episode starts: it belongs to the previous episode.
    Returns (action [N] int64, behaviour logits [N, A], the new core state, the last action fed)."""
    last = np.where(first, 0, last_action)
    action, logits, state = agent.act(torch.from_numpy(obs), torch.from_numpy(reward), torch.from_numpy(first),
                                      state, torch.from_numpy(last), greedy=greedy)
    return action.cpu().numpy(), logits.cpu().numpy(), state, last


class RolloutWorker:
    def __init__(self, cfg, worker_index=0, seed=0, num_cpus=1, weights_holder=None, inference=None):
        """cfg: the run's configs.Config (checked; it travels to a Ray actor as it is); num_cpus: the CPUs
        Ray gave this actor, which size ALE's thread pool when env.num_threads is 0;
        weights_holder: the Ray actor (runtime.weights_holder.WeightsHolder), or its name, each rollout
        fetches the newest weights from when it starts; inference: an actors.inference.InferenceServer
        actor, or its name, to act for this worker (run.inference=central), which then only steps
        its envs."""
        torch.set_num_threads(1)      # inference on a few envs: threads would only contend with ALE's
        torch.manual_seed(seed)       # action sampling
        self.rng = np.random.default_rng(seed)   # the random actions played while a restarted server is away
        self.index = worker_index
        self.holder, self.server = resolve_actor(weights_holder), resolve_actor(inference)
        self.requests = collections.deque()    # central: (ids, k, t, request) in the order sent
        self.T = cfg.learner.unroll_length
        threads = cfg.env.num_threads or max(1, int(num_cpus))
        self.env = make_env(dataclasses.replace(cfg.env, num_threads=threads), seed)
        self.agent = Agent(self.env.observation_space, self.env.num_actions, cfg.model, cfg.core,
                           cfg.learner.reward_clip, bf16_torso_on_cpu=cfg.run.actor_bf16)
        self.agent.eval()
        self.version = -1
        N = self.env.num_envs
        # Stacked frames (Atari) ship once: each row's newest frame, the whole stack at row 0, and
        # where a game started (its stack restarts as zeros + the new frame); the learner rebuilds
        # the stacks (learner.batch.rebuild_obs). A quarter of the bytes of [T+1, N, 4, 84, 84].
        shape = self.env.observation_space.shape
        self.compact = len(shape) == 3 and shape[0] > 1 and self.env.observation_space.dtype == np.uint8
        self.core_state = self.agent.initial_state(N)   # each env's state before its next step
        self.last_action = np.zeros(N, np.int64)
        self.step = np.zeros(N, np.int64)               # each env's next step index s
        self.rollouts = {}                              # k -> rollout being filled
        self.episodes = []
        self.next_k = 0
        # Start every env: act on the reset observation, in batches as the env expects them.
        if self.server is not None:
            import ray
            ray.get(self.server.register.remote(self.index, N))
        obs = self.env.reset()
        zeros, ones = np.zeros(N, np.float32), np.ones(N, bool)
        with torch.no_grad():
            for ids in self.env.groups:
                self._observe(ids, obs[ids], zeros[ids], ones[ids], ones[ids])

    def set_weights(self, weights):
        """weights: (version, state_dict), or the (version, layout, buffer) payload of
        actors/flat_weights.py, as the learner publishes them."""
        version, *rest = weights
        if version != self.version:
            self.agent.load_state_dict(rest[0] if len(rest) == 1 else unflatten(*rest))
            self.version = version

    def _fetch_newest(self):
        import ray
        try:
            latest = ray.get(self.holder.latest.remote(self.version))
        except ray.exceptions.RayActorError:   # the holder is restarting: act on the weights we have
            return
        if latest is not None:
            self.set_weights(ray.get(latest[1][0]))

    def info(self):
        e = self.env
        return dict(observation_space=e.observation_space, num_actions=e.num_actions,
                    frames_per_step=e.frames_per_step, num_envs=e.num_envs)

    @torch.no_grad()  # not inference_mode: the core states it ships may enter the learner's autograd
    def rollout(self, weights=None):
        """Step until rollout k = 0, 1, 2, ... is complete in every env and return it: numpy arrays
        [T+1, N, ...] (obs, or for stacked frames frames/stack0/stack_reset; reward, first,
        last_action, action, forced, logits), the core state before row 0, the weights version,
        and the games finished meanwhile as (return, length)."""
        if weights is not None:
            self.set_weights(weights)
        elif self.holder is not None and self.server is None:
            self._fetch_newest()          # the newest published weights, not those of when it was queued
        k, T = self.next_k, self.T
        while (self.step <= (k + 1) * T).any():
            if self.server is not None:   # the oldest request's actions to the env: its group steps next
                self._answered(*self.requests.popleft())
            ids, obs, reward, first, done = self.env.recv()
            self.episodes.extend((float(r), int(n)) for _, r, n in done)
            ids = np.asarray(ids)
            game_start = np.isin(ids, [k for k, _, _ in done])   # a new game: its frame stack restarted
            self._observe(ids, obs, reward, first, game_start)
        self.next_k += 1
        out = self.rollouts.pop(k)
        # Rows 1..T were acted on with this call's weights (row 0 in the previous call, which the
        # behaviour logits record for V-trace); with central inference, the oldest version that acted.
        step_version = out.pop("step_version")   # the worker's bookkeeping: it does not travel
        acted = step_version[1:T] if T > 1 else step_version[:1]
        out["version"] = self.version if self.server is None else int(acted.min())
        out["episodes"], self.episodes = self.episodes, []
        return out

    def _buffer(self, k):
        if k not in self.rollouts:
            T, N, e = self.T, self.env.num_envs, self.env
            shape = e.observation_space.shape
            frames = ({"frames": np.zeros((T + 1, N, *shape[1:]), np.uint8),
                       "stack0": np.zeros((N, *shape), np.uint8),
                       "stack_reset": np.zeros((T + 1, N), bool)} if self.compact else
                      {"obs": np.zeros((T + 1, N, *shape), e.observation_space.dtype)})
            self.rollouts[k] = {
                **frames,
                "reward": np.zeros((T + 1, N), np.float32),
                "first": np.zeros((T + 1, N), bool),
                "last_action": np.zeros((T + 1, N), np.int64),
                # Row T's action is taken in the next rollout (its row 0); it stays 0 here.
                "action": np.zeros((T + 1, N), np.int64),
                "forced": np.zeros((T + 1, N), bool),      # the env played its own action there
                "logits": np.zeros((T + 1, N, e.num_actions), np.float32),
                "step_version": np.zeros((T + 1, N), np.int64),   # the weights version that acted
                "core_state": tuple(torch.zeros_like(s) for s in self.core_state),
                "worker": self.index,
            }
        return self.rollouts[k]

    def _observe(self, ids, obs, reward, first, game_start):
        """Record one env group's output and act on it: here, or by a request to the server."""
        step = self.step[ids]
        assert (step == step[0]).all(), "the envs of a group step together"
        k, t = divmod(int(step[0]), self.T)
        last = np.where(first, 0, self.last_action[ids])
        # Step kT+t is row t of rollout k and, on a boundary (t == 0, k > 0), also row T of k-1.
        for rk, rt in [(k, t)] + ([(k - 1, self.T)] if t == 0 and k > 0 else []):
            buf = self._buffer(rk)
            if self.compact:
                buf["frames"][rt, ids], buf["stack_reset"][rt, ids] = obs[:, -1], game_start
                if rt == 0:
                    buf["stack0"][ids] = obs
            else:
                buf["obs"][rt, ids] = obs
            buf["reward"][rt, ids], buf["first"][rt, ids], buf["last_action"][rt, ids] = reward, first, last
        if self.server is not None:
            request = self.server.act.remote(self.index, ids, obs[:, -1] if self.compact else obs, reward, first,
                                             game_start, last, want_state=t == 0)
            self.requests.append((ids, k, t, request))
            return
        idx = torch.from_numpy(ids)
        state = tuple(x[idx] for x in self.core_state)
        action, logits, new_state, _ = act(self.agent, obs, reward, first, state, last)
        for x, new in zip(self.core_state, new_state):
            x[idx] = new
        self._send(ids, k, t, action, logits, state, self.version)

    def _answered(self, ids, k, t, request):
        import ray
        try:
            action, logits, version, state = ray.get(request)
        except ray.exceptions.RayError as e:
            from .inference import NotRegistered
            # The server restarted (its tables are gone) or its answer was lost: register again,
            # with fresh core states, and play this step with a uniform random action instead.
            if not isinstance(getattr(e, "cause", None), NotRegistered) and \
                    not isinstance(e, ray.exceptions.RayActorError):
                raise
            ray.get(self.server.register.remote(self.index, self.env.num_envs))
            n, A = len(ids), self.env.num_actions
            action = self.rng.integers(0, A, n)
            logits = np.zeros((n, A), np.float32)
            state = tuple(torch.zeros_like(x[:n]) for x in self.core_state)
            version = self.version
        self._send(ids, k, t, action, logits, state, version)

    def _send(self, ids, k, t, action, logits, state_before, version):
        """Record the group's step k·T + t (rollout k starts from the state before its row 0) and
        send its actions to the env."""
        buf = self._buffer(k)
        if t == 0:
            idx = torch.from_numpy(ids)
            for dst, src in zip(buf["core_state"], state_before):
                dst[idx] = src
        action, forced = self.env.send(action, ids)   # what the env played (a forced FIRE, or ours)
        buf["action"][t, ids], buf["logits"][t, ids], buf["forced"][t, ids] = action, logits, forced
        buf["step_version"][t, ids] = version
        self.last_action[ids] = action
        self.step[ids] += 1

    def close(self):
        self.env.close()
