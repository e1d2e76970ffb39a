"""The learner: V-trace updates on batches of unrolls, weights with a version, checkpoints.

    learner = Learner(cfg, env.observation_space, env.num_actions, frames_per_step=env.frames_per_step)
    stats = learner.step(batch)                  # {"loss/total": ..., "learner/lr": ..., ...}
    stats = learner.step(learner.prepare(batch)) # the same, with the batch's own work done first
                                                 # (runtime/service.py: in its loader thread)
    version, state_dict = learner.weights()      # CPU copy to publish to the actors
    learner.save(run_dir / "checkpoint.pt", extra={...});  extra = learner.load(path)

An update that meets a NaN or Inf loss or gradient is skipped: no optimiser step, the weights,
optimiser state and version stay as they were, and learner/skipped_updates counts it.
"""
import math
import warnings

import numpy as np
import torch
from torch import nn

from agents import Agent
from agents.obs_norm import batch_moments, merged
from configs import config_to_dict

from . import checkpoint, losses, vtrace
from .batch import COMPACT_OBS, check_batch, rebuild_obs, stack_moments, to_device
from .checkpoint import CheckpointError
from .health import DeadUnits
from .popart import PopArt


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("learner.device=cuda but no CUDA device is visible; use learner.device=auto or cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown learner.device {name!r}; choose one of auto, cpu, cuda")
    return torch.device(name)


class Learner:
    def __init__(self, cfg, observation_space, num_actions, frames_per_step=1):
        if isinstance(frames_per_step, bool) or not isinstance(frames_per_step, (int, np.integer)) \
                or frames_per_step < 1:
            raise ValueError(f"frames_per_step must be a positive integer, got {frames_per_step!r}")
        self.cfg, self.frames_per_step = cfg, int(frames_per_step)
        self.device = resolve_device(cfg.learner.device)
        # Initial weights depend on run.seed only, without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.run.seed)
            self.agent = Agent(observation_space, num_actions, cfg.model, cfg.core, cfg.learner.reward_clip)
        self.agent.to(self.device)
        self.optimizer = self._make_optimizer()
        self.popart = PopArt(cfg.learner.popart_beta).to(self.device) if cfg.learner.popart else None
        self.dead_units = DeadUnits(self.agent)
        self.bf16 = cfg.learner.bf16 and self.device.type == "cuda"
        if cfg.learner.bf16 and not self.bf16:
            warnings.warn("learner.bf16 applies on CUDA only; this learner runs on the CPU in float32")
        self.frames = 0            # environment frames consumed (T * B * frames_per_step per batch)
        self._obs_stats_ahead = None   # the observation statistics after the last batch prepared
        self.lr_anchor = (0, 1.0)  # where the lr schedule restarts (see current_lr)
        self.version = 0           # applied updates: the weights' version number
        self.skipped_updates = 0   # updates refused by the non-finite guard

    def _make_optimizer(self):
        lc = self.cfg.learner
        if lc.optimizer == "adam":
            return torch.optim.Adam(self.agent.parameters(), lr=lc.lr, betas=(lc.adam_beta1, lc.adam_beta2),
                                    eps=lc.adam_eps)
        return torch.optim.RMSprop(self.agent.parameters(), lr=lc.lr, alpha=lc.rmsprop_alpha,
                                   eps=lc.rmsprop_eps, momentum=lc.rmsprop_momentum)

    def current_lr(self):
        """learner.lr_schedule as a function of the frames consumed. The lr is held at lr · m until the
        decay start s, then goes to zero at run.total_frames: lr · m · (1 − q) (linear) or
        lr · m · (1 + cos πq) / 2 (cosine), q = (frames − s) / (total − s). (a, m) is the anchor:
        (0, 1) for a run that never changed its budget; a resume with another budget moves it to the
        resume point with the factor reached there (load_payload), so the lr goes on without a jump
        and still reaches zero at the new budget. s = max(a, lr_decay_start · total): a run resumed
        inside its hold keeps holding until the new budget's decay start."""
        lc = self.cfg.learner
        return lc.lr * self._lr_factor(self.frames, self.cfg.run.total_frames, self.lr_anchor)

    def _lr_factor(self, frames, total, anchor):
        start, factor = anchor
        schedule = self.cfg.learner.lr_schedule
        if schedule == "constant":
            return 1.0
        start = max(start, self.cfg.learner.lr_decay_start * total)
        q = 1.0 if total <= start else min(1.0, max(0.0, (frames - start) / (total - start)))
        if schedule == "linear":
            return factor * (1.0 - q)
        return factor * 0.5 * (1.0 + math.cos(math.pi * q))

    @torch.no_grad()
    def prepare(self, batch):
        """The part of an update that depends only on the batch: the batch on the learner's device,
        its frame stacks rebuilt, its observations turned into the torso's input (floats,
        channels-last, scaled, and normalised by the running statistics with this batch merged in,
        as `step` always did before its forward pass), and those statistics under "obs_stats"
        (mean, var, count; () without model.obs_norm), which `step` installs in the agent.

        The service runs it in its loader thread while the update thread trains on the batch
        before, so the update thread does none of this work. Batches must be stepped in the order
        they were prepared (the statistics chain from one prepared batch to the next), by one
        thread; `step` given a batch that is not prepared prepares it first, from the agent's own
        statistics. The batch is checked (check_batch) first."""
        check_batch(batch, self.agent.obs_shape, self.agent.num_actions)
        agent = self.agent
        b = to_device(batch, self.device, rebuild=False)
        compact = [b.pop(k) for k in COMPACT_OBS] if "frames" in b else None
        obs = b["obs"] if compact is None else rebuild_obs(*compact)
        stats = ()
        if agent.obs_norm is not None:
            before = self._obs_stats_ahead
            if before is None:   # the count on the host, so that merging a batch never waits for the device
                mean, var, count = agent.obs_norm.stats()
                before = (mean, var, count.cpu())
            moments = batch_moments(obs.reshape(-1, *agent.obs_shape), agent.obs_scale) if compact is None \
                else stack_moments(*compact, agent.obs_scale)      # from the distinct frames: S times fewer
            stats = merged(before, moments)
            self._obs_stats_ahead = stats
        b["obs"] = agent.preprocess(obs, stats or None).view(*obs.shape[:2], *agent.obs_shape)
        b["obs_stats"] = stats
        return b

    def step(self, batch):
        """Learn from a batch of B unrolls (as the actors ship it, or `prepare`d): learner.epochs
        passes over it, each in learner.minibatches gradient steps on B / minibatches whole
        sequences (one step per batch by default, as IMPALA). Returns the statistics (floats),
        averaged over the steps."""
        lc = self.cfg.learner
        T, B = check_batch(batch, self.agent.obs_shape, self.agent.num_actions)
        if lc.epochs < 1 or lc.minibatches < 1 or B % lc.minibatches:
            raise ValueError(f"learner.epochs ({lc.epochs}) and learner.minibatches ({lc.minibatches}) must be "
                             f"positive, and the batch's {B} sequences must split into minibatches evenly")
        if "obs_stats" not in batch:
            self._obs_stats_ahead = None      # from the agent's statistics, whatever came before
            batch = self.prepare(batch)
        lr = self.current_lr()
        if batch["obs_stats"]:    # the statistics this batch was normalised by: the published ones
            self.agent.obs_norm.set_stats(batch["obs_stats"])
        size = B // lc.minibatches
        steps = []
        for _ in range(lc.epochs):
            for start in range(0, B, size):
                part = {k: v[:, start:start + size] for k, v in batch.items() if k not in ("core_state", "obs_stats")}
                part["core_state"] = tuple(s[start:start + size] for s in batch["core_state"])
                steps.append(self._update(part, lr))
        self.frames += T * B * self.frames_per_step
        stats = {k: float(np.mean([s[k] for s in steps])) for k in steps[0]}
        stats["learner/skipped_updates"] = float(self.skipped_updates)
        return stats

    def _update(self, b, lr):
        """One gradient step on the (device) batch `b`; returns its statistics."""
        lc = self.cfg.learner
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16), self.dead_units.record():
            logits, baseline = self.agent.unroll(b["obs"], b["reward"], b["first"], b["core_state"],
                                                 b["last_action"], preprocessed=True, last_row_grad=False)
        logits, baseline = logits.float(), baseline.float()
        # With PopArt the head predicts normalised values; V-trace works on the reward's scale.
        values = baseline.detach() if self.popart is None else self.popart.denormalize(baseline.detach())

        # Step t: action[t] taken at obs t earns reward[t+1]; the episode ends if obs t+1 is a first.
        rewards = b["reward"][1:]
        if lc.reward_clip > 0:
            rewards = rewards.clamp(-lc.reward_clip, lc.reward_clip)
        discounts = (~b["first"][1:]).float() * lc.discount
        actions = b["action"][:-1]
        # A forced step (the env's FIRE after a life loss) is part of the environment: importance
        # weight 1 (the behaviour logits taken as the target's), and no policy loss there.
        forced = b["forced"][:-1]
        behaviour = torch.where(forced[..., None], logits[:-1].detach(), b["logits"][:-1])
        chosen = (~forced).float()
        vt = vtrace.from_logits(
            behaviour_policy_logits=behaviour, target_policy_logits=logits[:-1], actions=actions,
            discounts=discounts, rewards=rewards, values=values[:-1], bootstrap_value=values[-1],
            clip_rho_threshold=lc.clip_rho, clip_pg_rho_threshold=lc.clip_pg_rho, lambda_=lc.vtrace_lambda)

        # IMPALA's advantages carry the clipped importance weight; APPO's surrogate has its own ratio.
        adv = vt.pg_advantages if lc.loss == "impala" else vt.advantages
        if self.popart is not None:
            adv = adv / self.popart.sigma.float()
        adv_mean, adv_std = adv.mean(), adv.std()
        if lc.advantage_norm:
            adv = (adv - adv_mean) / (adv_std + 1e-8)
        adv = adv * chosen
        if lc.loss == "impala":
            pg_loss = losses.policy_gradient_loss(logits[:-1], actions, adv, lc.loss_reduction)
            ratio_cut = torch.zeros((), device=adv.device)
        else:
            pg_loss, ratio_cut = losses.appo_policy_loss(logits[:-1], behaviour, actions, adv,
                                                         lc.ppo_clip, lc.loss_reduction)
        targets = vt.vs if self.popart is None else self.popart.normalize(vt.vs)
        baseline_loss = lc.baseline_cost * losses.baseline_loss(targets, baseline[:-1], lc.loss_reduction)
        entropy_loss = lc.entropy_cost * losses.entropy_loss(logits[:-1], lc.loss_reduction, weights=chosen)
        total_loss = pg_loss + baseline_loss + entropy_loss

        self.optimizer.zero_grad(set_to_none=True)
        total_loss.backward()
        max_norm = lc.grad_clip if lc.grad_clip > 0 else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.agent.parameters(), max_norm)
        dead = self.dead_units.fractions()
        values = torch.stack([total_loss, pg_loss, baseline_loss, entropy_loss, grad_norm, adv_mean, adv_std,
                              ratio_cut, *dead.values()]).detach().float()
        total, pg, base, ent, norm, a_mean, a_std, cut, *dead_fractions = values.tolist()  # one sync
        if np.isfinite(total) and np.isfinite(norm):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            if self.popart is not None:
                self.popart.update(vt.vs, self.agent.baseline)
            self.version += 1
        else:
            self.skipped_updates += 1
        self.optimizer.zero_grad(set_to_none=True)  # a skipped update's gradients go nowhere
        stats = {"loss/total": total, "loss/pg": pg, "loss/baseline": base, "loss/entropy": ent,
                 "learner/grad_norm": norm, "learner/lr": lr,
                 "learner/clip_fraction": float(lc.grad_clip > 0 and norm > lc.grad_clip),
                 "learner/adv_mean": a_mean, "learner/adv_std": a_std,
                 "learner/skipped_updates": float(self.skipped_updates),
                 **dict(zip(dead, dead_fractions))}
        if lc.loss == "appo":
            stats["learner/ppo_clip_fraction"] = cut
        if self.popart is not None:
            stats["learner/popart_mu"] = float(self.popart.mu)
            stats["learner/popart_sigma"] = float(self.popart.sigma)
        return stats

    def weights(self):
        """(version, state_dict copied to the CPU): what the actors load with agent.load_state_dict."""
        return self.version, {k: v.detach().to("cpu", copy=True) for k, v in self.agent.state_dict().items()}

    # -- checkpoints -------------------------------------------------------------------------------

    def _meta(self):
        a = self.agent
        return {"core": self.cfg.model.core, "torso": a.torso_name, "num_actions": a.num_actions,
                "observation_shape": list(a.obs_shape), "observation_dtype": a.obs_dtype,
                "use_last_action": a.use_last_action}

    def payload(self, extra=None):
        """Everything needed to continue, as plain data and CPU tensors (what `save` writes; the
        training loop ships it from the learner's Ray actor to the driver, which writes it)."""
        to_cpu = lambda x: x.detach().cpu() if isinstance(x, torch.Tensor) else x  # noqa: E731
        optimizer = self.optimizer.state_dict()
        optimizer["state"] = {i: {k: to_cpu(v) for k, v in slots.items()}
                              for i, slots in optimizer["state"].items()}
        return {
            "format": checkpoint.FORMAT,
            "meta": self._meta(),
            "model": {k: to_cpu(v) for k, v in self.agent.state_dict().items()},
            "optimizer": optimizer,
            # The lr schedule is a function of these counters and the config: no scheduler state.
            "counters": {"frames": self.frames, "version": self.version,
                         "skipped_updates": self.skipped_updates, "total_frames": self.cfg.run.total_frames,
                         "lr_anchor": [self.lr_anchor[0], float(self.lr_anchor[1])]},
            "rng": checkpoint.rng_state(),
            # PopArt's value statistics (None without PopArt): the baseline head means nothing without them.
            "popart": None if self.popart is None else {k: v.cpu() for k, v in self.popart.state_dict().items()},
            "config": config_to_dict(self.cfg),
            "extra": extra if extra is not None else {},
        }

    def save(self, path, extra=None):
        """Write everything needed to continue (atomically); `extra`: the caller's own plain data."""
        checkpoint.save_atomic(self.payload(extra), path)

    def load(self, path):
        """Continue from the checkpoint at `path`; returns its `extra`. Everything is checked before
        anything is changed: a checkpoint that does not fit raises CheckpointError, leaving this
        learner as it was."""
        return self.load_payload(checkpoint.read(path), path)

    def load_payload(self, payload, path="checkpoint"):
        """`load` for a payload already read (by `checkpoint.read`); `path` names it in messages."""
        mine, theirs = self._meta(), payload["meta"] if isinstance(payload["meta"], dict) else {}
        for key, value in mine.items():
            if theirs.get(key) != value:
                raise CheckpointError(f"checkpoint {path} does not fit this learner: {key} is "
                                      f"{theirs.get(key)!r} in the checkpoint, {value!r} here")
        self._check_model_state(payload["model"], path)
        optimizer = self._make_optimizer()  # a fresh one: a failed load cannot touch ours
        in_force = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path}: optimiser state does not fit this model: {e}") from None
        # load_state_dict also brings back the checkpoint's eps, betas, alpha, momentum: the config's
        # values are the ones in force (a resume with --set, or a PBT trial with its new values).
        for group, values in zip(optimizer.param_groups, in_force):
            group.update(values)
        self._check_optimizer_state(payload["optimizer"], path)
        counters = payload["counters"]
        if not all(isinstance(counters.get(k), int) for k in ("frames", "version", "skipped_updates")):
            raise CheckpointError(f"checkpoint {path}: counters are malformed: {counters!r}")
        checkpoint.check_rng_state(payload["rng"], path)
        popart = payload.get("popart")
        if self.popart is not None and (not isinstance(popart, dict) or set(popart) != {"mu", "nu"}):
            raise CheckpointError(f"checkpoint {path} holds no PopArt statistics (it was trained with "
                                  "learner.popart=false); resume it with learner.popart=false")

        self.agent.load_state_dict(payload["model"])
        self._obs_stats_ahead = None      # the next batch prepared starts from the loaded statistics
        if self.popart is not None:
            self.popart.load_state_dict(popart)
        self.optimizer = optimizer
        self.frames, self.version = counters["frames"], counters["version"]
        self.skipped_updates = counters["skipped_updates"]
        # Older checkpoints have no anchor: their schedule ran from (0, 1) over their config's budget.
        anchor = tuple(counters.get("lr_anchor", (0, 1.0)))
        total = counters.get("total_frames", payload["config"]["run"]["total_frames"])
        if total != self.cfg.run.total_frames:    # a new budget: the schedule goes on from here
            anchor = (self.frames, self._lr_factor(self.frames, total, anchor))
        self.lr_anchor = (int(anchor[0]), float(anchor[1]))
        checkpoint.set_rng_state(payload["rng"])
        return payload["extra"]

    def _check_model_state(self, state, path):
        own = self.agent.state_dict()
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path}: model state is not a state dict")
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path} does not fit this model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        for key, value in own.items():
            if not isinstance(state[key], torch.Tensor) or state[key].shape != value.shape:
                got = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
                raise CheckpointError(f"checkpoint {path} does not fit this model: {key} has shape {got} "
                                      f"in the checkpoint, {tuple(value.shape)} here")

    def _check_optimizer_state(self, state, path):
        params = list(self.agent.parameters())
        for index, slots in state["state"].items():
            for name, value in slots.items():
                if name != "step" and (not isinstance(value, torch.Tensor) or value.shape != params[index].shape):
                    raise CheckpointError(f"checkpoint {path}: optimiser slot {name} of parameter {index} "
                                          f"does not match the parameter's shape {tuple(params[index].shape)}")

