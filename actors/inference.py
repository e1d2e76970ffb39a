"""Central batched inference: the policy runs in one place for many actors' envs.

    server = ray.remote(InferenceServer).options(max_concurrency=64).remote(cfg, space, A, holder)
    ray.get(server.register.remote(worker, num_envs))           # a (re)started actor: fresh states
    ref = server.act.remote(worker, env_ids, obs, reward, first, game_start, last_action, want_state)
    action, logits, version, state_before = ray.get(ref)

With `run.inference=central` the rollout actors only step their envs: each env group's outputs go
to the server as a request, and while it is answered the actor steps its other groups. The
server's batching thread takes the first pending request, waits up to run.inference_timeout_ms for
more (up to run.inference_batch envs in all), runs torso, core and heads once on all of them, and
answers each caller. The core states live here, one table per actor (reset where `first` says, as
in the actor), and so do the frame stacks of Atari envs: a request carries each env's newest frame
and whether a game started (a quarter of the bytes). `want_state` returns the states before the
step, which travel with a rollout that starts there. Weights come from the same holder as the
actors': a polling thread fetches each new version off the serving path (asking the holder before
every batch put a Ray round trip into every batch's latency), and the batching thread loads it
between batches, so a batch acts on weights about one poll interval (run.inference_weights_poll_ms,
plus a fetch) older than the newest published at most; each answer says which version acted.
"""
import queue
import threading
import time

import numpy as np
import torch

from agents import Agent

from . import resolve_actor
from .rollout import act


class NotRegistered(ValueError):
    """act() from a worker the server has no tables for (a restarted server has forgotten them): the
    worker registers again (actors/rollout.py recognises this type, across Ray, by its class)."""


class _Request:
    def __init__(self, worker, env_ids, obs, reward, first, last_action, want_state):
        self.worker, self.env_ids, self.obs = worker, env_ids, obs
        self.reward, self.first, self.last_action, self.want_state = reward, first, last_action, want_state
        self.done, self.result, self.error = threading.Event(), None, None


class InferenceServer:
    def __init__(self, cfg, observation_space, num_actions, weights_holder=None, seed=0):
        torch.manual_seed(seed)      # the sampled actions
        torch.set_num_threads(max(1, int(cfg.run.inference_cpus)))   # the CPUs Ray reserved for it
        self.device = torch.device("cuda" if cfg.run.inference_gpus > 0 and torch.cuda.is_available() else "cpu")
        self.agent = Agent(observation_space, num_actions, cfg.model, cfg.core, cfg.learner.reward_clip)
        self.agent.to(self.device).eval()
        self.obs_shape = tuple(observation_space.shape)
        self.stacks = len(self.obs_shape) == 3 and self.obs_shape[0] > 1 and observation_space.dtype == np.uint8
        self.max_batch, self.timeout = cfg.run.inference_batch, cfg.run.inference_timeout_ms / 1000
        self.holder, self.version = resolve_actor(weights_holder), -1   # a handle or its name
        self.poll_s = cfg.run.inference_weights_poll_ms / 1000
        self.pending = None          # (version, state dict) fetched by the poller, not yet loaded
        self.tables = {}             # worker -> {"state": tuple of [N, ...], "stack": [N, S, H, W] or None}
        self.lock = threading.Lock()
        self.requests = queue.Queue()
        self.batches, self.envs_served, self.busy_s = 0, 0, 0.0
        if self.holder is not None:      # the first batch acts on the published weights, not a fresh init
            self._fetch_newer()
            self._newest_weights()
            threading.Thread(target=self._poll_weights, daemon=True).start()
        threading.Thread(target=self._serve, daemon=True).start()

    def register(self, worker, num_envs):
        """A (re)started actor with `num_envs` envs: its states and frame stacks start from zero."""
        stack = torch.zeros((num_envs, *self.obs_shape), dtype=torch.uint8) if self.stacks else None
        with self.lock:
            self.tables[worker] = {"state": self.agent.initial_state(num_envs, self.device), "stack": stack}
        return True

    def act(self, worker, env_ids, obs, reward, first, game_start, last_action, want_state=False):
        """One env group's step (see the module docstring); `obs` is [n, H, W] newest frames for
        stacked-frame envs, [n, *obs_shape] otherwise. Returns (action [n], logits [n, A], the
        weights version, the core state before the step if `want_state`)."""
        with self.lock:
            table = self.tables.get(worker)
        if table is None:
            raise NotRegistered(f"inference: worker {worker} is not registered; call register(worker, num_envs) first "
                             "(a restarted server has forgotten it: the worker registers again)")
        want = (len(env_ids), *(self.obs_shape[1:] if self.stacks else self.obs_shape))
        if tuple(np.shape(obs)) != want:
            raise ValueError(f"inference: worker {worker} sent observations of shape {tuple(np.shape(obs))}, "
                             f"expected {want} ({'the newest frame of each env' if self.stacks else 'one per env'})")
        env_ids = np.asarray(env_ids)
        if self.stacks:     # the env's stack: shifted by one frame, or restarted at a game start
            idx = torch.from_numpy(env_ids)
            with self.lock:
                old = table["stack"][idx]
                new = torch.cat([old[:, 1:], torch.from_numpy(np.asarray(obs))[:, None]], dim=1)
                new[torch.from_numpy(np.asarray(game_start, bool)), :-1] = 0
                table["stack"][idx] = new
            obs = new.numpy()
        request = _Request(worker, env_ids, obs, reward, first, last_action, want_state)
        self.requests.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def stats(self):
        """Batches run, envs served, mean envs per batch, mean seconds per batch, the weights version
        that acted last and the newest the poller fetched (the next batch acts on it)."""
        n, pending = max(self.batches, 1), self.pending
        return {"batches": self.batches, "envs": self.envs_served, "mean_batch": self.envs_served / n,
                "seconds_per_batch": self.busy_s / n, "version": self.version,
                "fetched": self.version if pending is None else pending[0]}

    def _serve(self):
        while True:
            batch = [self.requests.get()]
            size, deadline = len(batch[0].env_ids), time.monotonic() + self.timeout
            while size < self.max_batch:
                try:
                    batch.append(self.requests.get(timeout=max(0.0, deadline - time.monotonic())))
                    size += len(batch[-1].env_ids)
                except queue.Empty:
                    break
            start = time.monotonic()
            try:
                self._newest_weights()
                self._run(batch)
            except Exception as e:  # noqa: BLE001  each caller gets the error; the server goes on
                for r in batch:
                    r.error = e
                    r.done.set()
            self.batches, self.envs_served = self.batches + 1, self.envs_served + size
            self.busy_s += time.monotonic() - start

    def _newest_weights(self):
        """Load the version the poller fetched, if any: one copy of the parameters, between batches."""
        pending = self.pending       # one read: the poller may replace it meanwhile
        if pending is not None and pending[0] != self.version:
            self.agent.load_state_dict(pending[1])
            self.version = pending[0]

    def _fetch_newer(self):
        """Put a version newer than the last fetched into `pending`; False if there is none."""
        import ray

        from .flat_weights import unflatten
        have = self.version if self.pending is None else self.pending[0]
        try:
            latest = ray.get(self.holder.latest.remote(have))
            if latest is None:
                return False
            version, layout, buffer = ray.get(latest[1][0])
        except ray.exceptions.RayError:    # the holder is restarting: serve the weights we have
            return False
        self.pending = (version, unflatten(layout, buffer))
        return True

    def _poll_weights(self):
        while True:
            if not self._fetch_newer():
                time.sleep(self.poll_s)

    @torch.no_grad()
    def _run(self, batch):
        states = []
        for r in batch:
            table = self.tables[r.worker]
            idx = torch.from_numpy(r.env_ids).to(self.device)
            states.append(tuple(x[idx] for x in table["state"]))
        cat = lambda key: np.concatenate([getattr(r, key) for r in batch])  # noqa: E731
        state = tuple(torch.cat(parts) for parts in zip(*states))
        action, logits, new_state, _ = act(self.agent, cat("obs"), cat("reward").astype(np.float32),
                                           cat("first"), state, cat("last_action").astype(np.int64))
        start = 0
        for r, before in zip(batch, states):
            n = len(r.env_ids)
            table = self.tables[r.worker]
            idx = torch.from_numpy(r.env_ids).to(self.device)
            for x, s in zip(table["state"], new_state):
                x[idx] = s[start:start + n]
            r.result = (action[start:start + n], logits[start:start + n], self.version,
                        tuple(x.cpu() for x in before) if r.want_state else None)
            start += n
            r.done.set()
