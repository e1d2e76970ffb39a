"""The agent (the paper's RL agent): torso -> ReLU -> Linear(hidden) -> ReLU -> concat [clipped last reward,
one-hot last action (optional)] -> core -> policy logits and baseline.

    agent = Agent(env.observation_space, env.num_actions, cfg.model, cfg.core, cfg.learner.reward_clip)
    state = agent.initial_state(N)
    action, logits, state = agent.act(obs, last_reward, first, state)        # actors: [N, ...]
    logits, baseline = agent.unroll(obs, reward, first, state0)              # learner: [T+1, B, ...]

`reset[t, b]` (the batch's "first") resets the core before step t. uint8 frames are scaled by 1/255
here, so actors and the object store move bytes, not floats.
"""
import contextlib
import dataclasses

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fwp_core import make_core

from .obs_norm import ObservationNorm
from .torsos import make_torso, resolve_torso


class Agent(nn.Module):
    def __init__(self, observation_space, num_actions, model, core, reward_clip=1.0, bf16_torso_on_cpu=False):
        """model, core: the config's ModelConfig and CoreConfig sections; reward_clip: the last
        reward the core sees is clipped to [-reward_clip, reward_clip] (0: not clipped), as the
        learner clips the rewards of its loss; bf16_torso_on_cpu: see below (actors only)."""
        super().__init__()
        if isinstance(num_actions, bool) or not isinstance(num_actions, (int, np.integer)) or num_actions < 1:
            raise ValueError(f"num_actions must be a positive integer, got {num_actions!r}")
        self.obs_shape = tuple(int(d) for d in observation_space.shape)
        self.obs_dtype = np.dtype(observation_space.dtype).name
        self.obs_is_uint8 = self.obs_dtype == "uint8"
        self.num_actions = int(num_actions)
        self.reward_clip = float(reward_clip)
        self.use_last_action = model.use_last_action
        # Running per-element normalisation of the (scaled) observations, updated by the learner.
        self.obs_norm = ObservationNorm(self.obs_shape) if model.obs_norm else None
        self.torso_name = resolve_torso(model.torso, self.obs_shape)
        self.torso = make_torso(self.torso_name, self.obs_shape, model.hidden_size)
        self.fc = nn.Linear(self.torso.output_size, model.hidden_size)
        core_input = model.hidden_size + 1 + (self.num_actions if self.use_last_action else 0)
        self.core = make_core(model.core, core_input, **dataclasses.asdict(core))
        self.policy = nn.Linear(self.core.output_size, self.num_actions)
        self.baseline = nn.Linear(self.core.output_size, 1)
        if model.init == "orthogonal":
            self._orthogonal_init()
        # Conv torsos run channels-last: 3x faster on CPU (measured, IMPALA ResNet, one thread) and
        # the layout cuDNN's tensor-core convolutions prefer.
        self.channels_last = len(self.obs_shape) == 3
        if self.channels_last:
            self.torso.to(memory_format=torch.channels_last)
        # Actors may run the conv torso and its Linear in bfloat16 on the CPU (run.actor_bf16): 1.6-1.7x
        # faster convolutions where the CPU has bf16 units. The core and heads stay float32, so the
        # states shipped to the learner keep their dtype; the behaviour logits record what was
        # sampled, and V-trace corrects for the difference.
        self.bf16_torso_on_cpu = bf16_torso_on_cpu

    def _orthogonal_init(self):
        """The PPO/APPO peers' Atari init (CleanRL, Sample Factory): orthogonal weights, gain √2 before
        a ReLU, 0.01 on the policy head (near-uniform first policy), 1 on the baseline head; zero
        biases, so no unit starts switched off by its bias. The core keeps its own init."""
        for m in [*self.torso.modules(), self.fc]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(m.weight, gain=2 ** 0.5)
                nn.init.zeros_(m.bias)
        for head, gain in ((self.policy, 0.01), (self.baseline, 1.0)):
            nn.init.orthogonal_(head.weight, gain=gain)
            nn.init.zeros_(head.bias)

    @property
    def obs_scale(self):
        """What an observation is multiplied by before anything else: 1/255 for uint8 frames."""
        return 1.0 / 255.0 if self.obs_is_uint8 else 1.0

    def initial_state(self, batch_size, device=None):
        return self.core.initial_state(batch_size, device)

    def unroll(self, obs, last_reward, reset, state, last_action=None, preprocessed=False, last_row_grad=True):
        """A whole sequence: obs [T+1, B, *obs_shape], last_reward and reset [T+1, B] (last_action
        [T+1, B] int64 when model.use_last_action), state the core state before step 0.
        preprocessed: obs is already the torso's input (`preprocess`, viewed as [T+1, B, ...]).
        last_row_grad=False: the torso's features of row T are a constant to autograd (the
        learner's bootstrap row, whose only use is V(x_T) as a constant of the loss: its share
        of the torso's backward would carry zeros, B of the (T+1)·B frames' worth of work).
        Returns logits [T+1, B, A] and baseline [T+1, B]; the core runs once over all steps."""
        logits, baseline, _ = self._forward(obs, last_reward, reset, state, last_action, preprocessed, last_row_grad)
        return logits, baseline

    def preprocess(self, obs, obs_stats=None, float_dtype=None):
        """Observations [T, B, *obs_shape] as the env gives them -> the torso's input [T·B, ...]:
        floats (float_dtype, default the weights'), channels-last for images, scaled (1/255 for
        frames) and, with model.obs_norm, normalised by `obs_stats` ((mean, var, count); default
        the agent's running statistics). Needs no gradient: the learner runs it ahead of its update."""
        x = obs.flatten(0, 1)
        if self.channels_last:  # on the bytes, before the float copy: a quarter of the traffic
            x = x.contiguous(memory_format=torch.channels_last)
        float_dtype = float_dtype or self.fc.weight.dtype
        own_copy = x.dtype != float_dtype        # then .to makes a fresh tensor, ours to overwrite
        x = x.to(float_dtype)
        if self.obs_norm is not None:            # the 1/255 folded into the normalisation
            return self.obs_norm(x, self.obs_scale, inplace=own_copy, stats=obs_stats)
        return x * self.obs_scale if self.obs_is_uint8 else x

    @torch.no_grad()  # not inference_mode: its tensors could not enter the learner's autograd later
    def act(self, obs, last_reward, reset, state, last_action=None, greedy=False):
        """One step for N envs: obs [N, *obs_shape], last_reward [N], reset [N] bool (numpy or torch).
        Returns action [N] int64 (sampled, or the argmax when greedy), logits [N, A], new state."""
        device = self.fc.weight.device
        as_t = lambda x: None if x is None else torch.as_tensor(x, device=device)[None]  # noqa: E731  add T=1
        logits, _, state = self._forward(as_t(obs), as_t(last_reward), as_t(reset), state, as_t(last_action))
        logits = logits[0]
        if greedy:
            action = logits.argmax(-1)
        else:
            action = torch.multinomial(F.softmax(logits.float(), dim=-1), 1).squeeze(-1)
        return action, logits, state

    def _forward(self, obs, last_reward, reset, state, last_action, preprocessed=False, last_row_grad=True):
        T, B = self._check(obs, last_reward, reset, last_action)
        dtype = self.fc.weight.dtype
        bf16 = self.bf16_torso_on_cpu and self.channels_last and obs.device.type == "cpu"
        if preprocessed:
            x = obs.flatten(0, 1)
            if self.channels_last:   # a view of preprocess's output; a copy only for a slice of it
                x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = self.preprocess(obs, float_dtype=torch.bfloat16 if bf16 else dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            if last_row_grad or T < 2 or not torch.is_grad_enabled():
                x = self._features(x)
            else:
                with torch.no_grad():
                    last = self._features(x[(T - 1) * B:])
                x = torch.cat([self._features(x[:(T - 1) * B]), last])
        x = (x.to(dtype) if bf16 else x).view(T, B, -1)
        r = last_reward.to(x.dtype)
        if self.reward_clip > 0:
            r = r.clamp(-self.reward_clip, self.reward_clip)
        parts = [x, r.unsqueeze(-1)]
        if self.use_last_action:
            parts.append(F.one_hot(last_action.long(), self.num_actions).to(x.dtype))
        y, state = self.core(torch.cat(parts, dim=-1), state, reset.bool())
        return self.policy(y), self.baseline(y).squeeze(-1), state

    def _features(self, x):
        """The torso and its Linear: the torso's input [N, ...] -> features [N, hidden_size]."""
        return F.relu(self.fc(F.relu(self.torso(x))))

    def _check(self, obs, last_reward, reset, last_action):
        if tuple(obs.shape[2:]) != self.obs_shape or obs.dim() != 2 + len(self.obs_shape):
            raise ValueError(f"obs has shape {tuple(obs.shape)}, expected [T, B, {', '.join(map(str, self.obs_shape))}]"
                             f" ([N, ...] in act) for this agent's observation space")
        T, B = obs.shape[:2]
        for name, x in (("last_reward", last_reward), ("reset", reset)):
            if x is None or tuple(x.shape) != (T, B):
                got = None if x is None else tuple(x.shape)
                raise ValueError(f"{name} must be [T, B] = [{T}, {B}] ([N] in act), got {got}")
        if self.use_last_action:
            if last_action is None or tuple(last_action.shape) != (T, B):
                got = None if last_action is None else tuple(last_action.shape)
                raise ValueError(f"model.use_last_action is on: last_action must be [T, B] = [{T}, {B}] "
                                 f"([N] in act), got {got}")
        return T, B
