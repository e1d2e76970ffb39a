"""The IMPALA learner loop: rollouts in from the Ray actors as they come, batches of B sequences
through the Learner, weights out through the object store.

runtime/serial.py is the same algorithm in one process, without Ray; this is its distributed form.
`LearnerService` runs inside a Ray actor (on a GPU when the cluster has one) and owns the rollout
actors. The driver (runtime/driver.py) calls `run(seconds)` again and again: each call trains for
about that long and reports what happened, so the driver can log, checkpoint and stop between calls.

The data path, per update (threads, so that each overlaps the others):
- the loader thread fetches finished rollouts once each (`ray.get`) and resubmits their actors
  (`_fetch`), concatenates B sequences straight into one of three rotating host buffers (pinned
  on CUDA, then copied to the GPU on a side stream with an event the update waits for), and does
  the batch's own work there (`Learner.prepare`: frame stacks, observation statistics and
  normalisation: `_stage`);
- the main thread (`run`) trains on the batch ready while the loader prepares the next;
- the publisher thread turns the newest weights (flattened on the device after each update, or
  every run.publish_interval) into one numpy buffer in the object store and hands its reference to
  the WeightsHolder, from which every rollout fetches the newest version when it starts.

Back-pressure: each actor has at most run.max_rollouts_in_flight rollout calls pending, the
loader fetches no more than run.learner_queue_size rollouts ahead of the update, and a call is
issued only while the sequences asked for and not yet handed to an update (in flight, fetched,
batched) stay within one rollout per actor, plus the rest of a batch that a last rollout still
fills, plus the batch being prepared (runtime/credits.py). Memory stays flat however long the run,
and the data stays fresh when the learner is the bottleneck: a rollout starts (and fetches the
newest weights) only when the learner will reach it soon, so learner/policy_lag stays within
(total envs / batch size) + 2 updates, whatever max_rollouts_in_flight is; actors that outrun the
learner wait instead of acting on weights that are old by the time they are trained on. A dead
actor is restarted by Ray (max_restarts=-1); its failed calls are counted in actors/restarts and
asked again.
"""
import collections
import math
import queue
import threading
import time
import uuid
from collections import defaultdict

import numpy as np
import ray
import ray.util.scheduling_strategies
import torch

from actors.rollout import RolloutWorker, worker_seed
from actors.flat_weights import flatten
from learner import Learner, checkpoint

from .batcher import Batcher, host_buffers
from .credits import Credits
from .malloc import keep_freed_memory
from .weights_holder import WeightsHolder

BUFFERS = 3     # host buffers in rotation: one being filled, one queued, one being trained on


def queue_size(cfg, num_envs):
    """run.learner_queue_size, or (0) rollouts enough for two batches."""
    need = math.ceil(cfg.learner.batch_size / num_envs)
    return cfg.run.learner_queue_size or 2 * need


def inference_server_args(cfg, holder_name):
    """The InferenceServer's constructor arguments, small enough for Ray to pass inline: a restartable
    actor must not be built from object-store arguments (ray-project/ray#53727: a restart fails once
    they are gone), and Ray puts any argument over 100 KB there. So the observation space travels as
    its shape and dtype, all the server reads: a gymnasium Box keeps its bounds per element, and
    pickles to 113 KB for an Atari frame stack [4, 84, 84]."""
    import dataclasses
    import types

    from actors.envs import make_env
    probe = make_env(dataclasses.replace(cfg.env, num_threads=1, num_envs=cfg.env.env_batches), 0)   # spaces only
    space = types.SimpleNamespace(shape=tuple(probe.observation_space.shape), dtype=probe.observation_space.dtype)
    actions = probe.num_actions
    probe.close()
    return cfg, space, actions, holder_name, cfg.run.seed


class LearnerService:
    def __init__(self, cfg, checkpoint_payload=None, source="checkpoint", worker_cls=RolloutWorker):
        """worker_cls: the rollout actors' class (bench/learner.py --pipeline passes producers of
        prebuilt rollouts with RolloutWorker's interface)."""
        self.cfg, rc = cfg, cfg.run      # a configs.Config, checked before Ray started
        keep_freed_memory()              # the update's large tensors reuse their pages (runtime/malloc.py)
        if rc.learner_threads:           # else Ray's OMP_NUM_THREADS: the learner's 1 CPU
            torch.set_num_threads(rc.learner_threads)
        # The holder lives on the learner's node (it goes when the learner goes anyway) and comes
        # back empty if it is lost: workers then keep their weights until the next publication.
        here = ray.get_runtime_context().get_node_id()
        # The restartable actors get the holder and the inference server by name, not by handle
        # (actors.resolve_actor says why); the names are this service's own.
        self.names = {role: f"{role}-{uuid.uuid4().hex}" for role in ("weights-holder", "inference-server")}
        self.holder = ray.remote(WeightsHolder).options(
            name=self.names["weights-holder"], num_cpus=0, max_restarts=-1,
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        self.server = self._start_inference(cfg) if rc.inference == "central" else None
        # SPREAD: actors over the nodes, so that a lost node takes few of them.
        worker = ray.remote(worker_cls).options(
            num_cpus=rc.actor_cpus, max_restarts=-1, max_task_retries=0, scheduling_strategy="SPREAD")
        central = {"inference": self.names["inference-server"]} if self.server is not None else {}
        self.workers = [worker.remote(cfg, i, worker_seed(rc.seed, i, cfg.env.num_envs), rc.actor_cpus,
                                      self.names["weights-holder"], **central)
                        for i in range(rc.num_actors)]
        info = ray.get(self.workers[0].info.remote())
        self.num_envs = info["num_envs"]
        self.learner = Learner(cfg, info["observation_space"], info["num_actions"], info["frames_per_step"])
        self.extra, self.error = {}, None
        if checkpoint_payload is not None:
            try:
                self.extra = self.learner.load_payload(checkpoint_payload, source)
            except checkpoint.CheckpointError as e:  # reported by state(), raised by the driver
                self.error = str(e)
        self.queue_size = queue_size(cfg, self.num_envs)   # holds a batch: configs checked it before Ray started
        self._publish_now()                 # version 0 (or the checkpoint's) before any rollout asks
        # Credits for the sequences asked for and not yet handed to an update: one rollout per actor,
        # plus what a batch still waits for while its last rollout runs (so that the actors who
        # finished it keep stepping), plus the batch the loader prepares while the update trains
        # (without it an actor that made a whole batch waits out the fetch and `prepare` of its
        # rollout before its next call: 13% of its time on 2 cores, with the update 15% idle). The
        # data is (total envs / B) + 1 updates old when the learner is the bottleneck, +1 if the
        # publisher is late.
        B = cfg.learner.batch_size
        self.credits = Credits(rc.num_actors * self.num_envs + max(B - self.num_envs, 0) + B)
        # Stale sequences the batcher drops give their credits back, as a trained batch does.
        self.batcher = Batcher(cfg.learner.batch_size, rc.max_policy_lag, on_drop=self.credits.release)
        self.in_flight = {}                 # ObjectRef -> worker index
        self._wanting = collections.deque()  # worker indices owed a call, first come first served
        self.restarts = 0
        self.lost_rollouts = 0              # rollouts whose objects were lost (a node died holding them)
        self.peak_queued = 0                # the most rollouts fetched and waiting to be batched
        self.batches = queue.Queue(maxsize=1)
        self._events = []                   # the games each fetched rollout finished, for run()'s report
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failure = None
        self._to_publish, self._publish_ready = None, threading.Event()
        self.device = self.learner.device
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._buffers, self._copied, self._turn = None, [None] * BUFFERS, 0   # _stage's rotating host buffers
        for _ in range(rc.max_rollouts_in_flight):    # every actor's first call before any second
            for i in range(len(self.workers)):
                self._want(i)
        self._issue()
        self._threads = [threading.Thread(target=self._guard, args=(f,), daemon=True, name=f.__name__)
                         for f in (self._load, self._publish)]
        for t in self._threads:
            t.start()

    def _start_inference(self, cfg):
        """The central inference server (actors/inference.py), threaded: each actor's requests wait
        in their own thread while one batching thread serves them all."""
        from actors.inference import InferenceServer
        concurrency = cfg.run.num_actors * cfg.env.env_batches + 8
        return ray.remote(InferenceServer).options(
            num_cpus=cfg.run.inference_cpus, num_gpus=cfg.run.inference_gpus, max_concurrency=concurrency,
            max_restarts=-1, scheduling_strategy="DEFAULT", name=self.names["inference-server"]).remote(
                *inference_server_args(cfg, self.names["weights-holder"]))

    # -- threads ------------------------------------------------------------------------------------

    def _guard(self, body):
        try:
            body()
        except BaseException as e:  # noqa: BLE001  re-raised by run() in the caller's thread
            self._failure = e

    def _want(self, i):
        self._wanting.append(i)

    def _issue(self):
        """Give the actors owed a call theirs while the credits last (so that no rollout starts
        long before the update reaches it)."""
        while self._wanting and self.credits.reserve(self.num_envs):
            i = self._wanting.popleft()
            self.in_flight[self.workers[i].rollout.remote()] = i

    def _load(self):
        """The loader thread: issue the calls the credits allow, fetch finished rollouts, stage batches."""
        while not self._stop.is_set():
            self._issue()
            waited = self._fetch()
            if not self._stage() and not waited:
                time.sleep(0.005)       # nothing to fetch or stage yet: wait for the actors or the update

    def _fetch(self):
        """Wait briefly for finished rollouts, while fewer than queue_size are fetched and not yet
        batched, and hand them to the batcher; False if there was nothing to wait for. A rollout
        lost with its actor or node is counted, its credits given back, its actor asked again."""
        if self.batcher.rollouts() >= self.queue_size or not self.in_flight:
            return False
        ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=0.05)
        for ref in ready:
            i = self.in_flight.pop(ref)
            self._want(i)
            try:
                rollout = ray.get(ref)
            except ray.exceptions.RayError as e:
                if isinstance(e, ray.exceptions.RayTaskError) and \
                        not isinstance(getattr(e, "cause", None), ray.exceptions.RayError):
                    raise                   # the rollout code itself failed: a bug, not a loss
                # The actor died (Ray restarts it) or its rollout was lost with a node.
                with self._lock:
                    if isinstance(e, ray.exceptions.RayActorError):
                        self.restarts += 1
                    else:
                        self.lost_rollouts += 1
                print(f"[learner] actor {i}: rollout lost ({type(e).__name__}); asking again", flush=True)
                self.credits.release(self.num_envs)
                continue
            with self._lock:
                self._events.append(rollout.pop("episodes"))
            self.batcher.add(rollout)
            self.peak_queued = max(self.peak_queued, self.batcher.rollouts())
        return True

    def _stage(self):
        """Take B sequences into the next of the rotating host buffers (on CUDA copied to the GPU on
        a side stream) and queue them for the update; False while fewer than B are fetched."""
        B = self.cfg.learner.batch_size
        if self.batcher.sequences() < B:
            return False
        if self._buffers is None:
            first = self.batcher.pending[0][0]
            self._buffers = [host_buffers(first, B, pin=self._copy_stream is not None) for _ in range(BUFFERS)]
        turn = self._turn
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()     # its last copy to the GPU is done: free to refill
        taken = self.batcher.take(self.learner.version, out=self._buffers[turn])
        if taken is None:                        # stale sequences were dropped: fewer than B are left
            return True
        batch, versions = taken
        # The batch's own work (stacks, observation statistics and normalisation) here, so that the
        # update thread only trains: on 2 CPU cores this thread runs while the actor waits.
        if self._copy_stream is not None:
            with torch.cuda.stream(self._copy_stream):
                batch = self.learner.prepare(batch)
                self._copied[turn] = torch.cuda.Event()
                self._copied[turn].record(self._copy_stream)
        else:
            batch = self.learner.prepare(batch)
        item = (batch, versions, self._copied[turn])
        self._turn = (turn + 1) % BUFFERS
        while not self._stop.is_set():
            try:
                self.batches.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        return True

    def _publish(self):
        """Put the newest flattened weights in the object store and hand them to the holder."""
        while not self._stop.is_set():
            if not self._publish_ready.wait(timeout=0.1):
                continue
            with self._lock:
                version, flat = self._to_publish
                self._publish_ready.clear()
            ref = ray.put(flat.payload(version))
            self.holder.publish.remote(version, [ref])

    def _publish_now(self):
        version, flat = self.learner.version, flatten(self.learner.agent.state_dict())
        ray.get(self.holder.publish.remote(version, [ray.put(flat.payload(version))]))

    # -- the driver's calls -------------------------------------------------------------------------

    def state(self):
        return {"frames": self.learner.frames, "version": self.learner.version, "extra": self.extra,
                "error": self.error}

    def run(self, seconds, until_frames=None):
        """Train for about `seconds`, or until run.total_frames (or `until_frames`, if sooner) are
        consumed; return what happened meanwhile."""
        learner = self.learner
        total = self.cfg.run.total_frames if until_frames is None else min(until_frames, self.cfg.run.total_frames)
        start, frames0 = time.monotonic(), learner.frames
        stats, lags, waited = defaultdict(list), [], 0.0
        while time.monotonic() - start < seconds and learner.frames < total:
            if self._failure is not None:
                raise RuntimeError("the learner's loader or publisher thread failed") from self._failure
            t0 = time.monotonic()
            try:
                batch, versions, event = self.batches.get(timeout=0.1)
            except queue.Empty:
                waited += time.monotonic() - t0
                continue
            waited += time.monotonic() - t0
            self.credits.release(self.cfg.learner.batch_size)   # room for the next call (the loader issues it)
            if event is not None:          # the side stream's copy, before the update reads it
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(event)
                for v in batch.values():
                    for x in (v if isinstance(v, tuple) else (v,)):
                        if x.is_cuda:     # not the statistics' count, kept on the host
                            x.record_stream(stream)
            lags.append(learner.version - np.mean(versions))  # updates since they acted
            for key, value in learner.step(batch).items():
                stats[key].append(value)
            if learner.version % self.cfg.run.publish_interval == 0:
                flat = flatten(learner.agent.state_dict())   # a device copy; the host copy is the publisher's
                with self._lock:
                    self._to_publish = (learner.version, flat)
                    self._publish_ready.set()
        elapsed = time.monotonic() - start
        report = {key: float(np.mean(v)) for key, v in stats.items()}
        if lags:
            report["learner/policy_lag"] = float(np.mean(lags))
        report["perf/env_frames_per_s"] = (learner.frames - frames0) / max(elapsed, 1e-9)
        report["learner/wait_fraction"] = waited / max(elapsed, 1e-9)
        report["learner/dropped_stale"] = float(self.batcher.dropped)
        with self._lock:
            episodes = [e for events in self._events for e in events]
            self._events.clear()
            restarts = self.restarts
        report["actors/restarts"] = float(restarts)
        report["actors/lost_rollouts"] = float(self.lost_rollouts)
        return {"frames": learner.frames, "version": learner.version, "stats": report, "episodes": episodes}

    def checkpoint_payload(self, extra):
        """Everything needed to continue, as plain data (the driver writes it atomically)."""
        self.extra = extra
        return self.learner.payload(extra)

    def kill_worker(self, i):
        """For tests and drills: kill actor i as a crash would (Ray restarts it)."""
        ray.kill(self.workers[i], no_restart=False)

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        for w in self.workers:
            ray.kill(w)
        if self.server is not None:
            ray.kill(self.server)
        ray.kill(self.holder)
