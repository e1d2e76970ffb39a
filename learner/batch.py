"""The learner batch: a dict of time-major [T+1, B, ...] CPU tensors, as the rollout actors ship them.

    "obs" [T+1, B, *obs_shape] uint8|float32   "reward" [T+1, B] float32 (raw; reward[0] unused)
      or, for stacked frames [S, H, W] (Atari), the compact form the actors ship:
      "frames" [T+1, B, H, W] uint8 (each row's newest frame)   "stack0" [B, S, H, W] uint8 (row 0's
      stack)   "stack_reset" [T+1, B] bool (a game starts at that row: its stack is zeros + the frame);
      rebuild_obs turns them into "obs" on the learner's device
    "first" [T+1, B] bool    "action" [T+1, B] int64    "last_action" [T+1, B] int64
    "forced" [T+1, B] bool (action t was the env's, not the policy's: a FIRE after a life loss)
    "logits" [T+1, B, A] float32 (behaviour)    "core_state" tuple of [B, ...] (before obs 0)

from_rollout makes one from a rollout as actors/rollout.py returns it (runtime/batcher.py cuts
batches of B sequences out of several); check_batch names whatever is missing or misshapen;
to_device moves it (pinned + non_blocking on CUDA), rebuilding "obs" from the compact form;
stack_moments gives the statistics of the stacks from the compact form; random_batch makes a
synthetic one for tests and benchmarks.
"""
import numpy as np
import torch

KEYS = ("obs", "reward", "first", "action", "last_action", "forced", "logits", "core_state")
COMPACT_OBS = ("frames", "stack0", "stack_reset")
STEP_KEYS = ("obs", "frames", "stack_reset", "reward", "first", "action", "last_action", "forced", "logits")


def rollout_keys(rollout):
    """The arrays of a rollout that a learner batch takes: the per-step ones it holds (obs, or the
    compact frames) and, for compact frames, stack0; the core state travels beside them."""
    return [k for k in STEP_KEYS if k in rollout] + (["stack0"] if "stack0" in rollout else [])


def from_rollout(rollout):
    """The learner batch of one rollout's N sequences: a RolloutWorker's numpy arrays [T+1, N, ...]
    as CPU tensors (sharing their memory) and its core state. Compact Atari frames stay compact
    (the learner rebuilds the stacks on its device; to_device(batch, "cpu") does it here)."""
    # In place where the arrays allow it; a read-only one (fetched through Ray) is copied once.
    batch = {k: torch.from_numpy(np.require(rollout[k], requirements=("C", "W"))) for k in rollout_keys(rollout)}
    batch["core_state"] = tuple(rollout["core_state"])
    return batch


def _stack_sources(frames, stack0, stack_reset):
    """(history [T+S, B, H, W]: the rows' frames after stack0's first S-1 (row r at index r+S-1),
    index [T+1, S]: the history index of channel c of stack t (t+c), valid [T+1, S, B]: whether
    that frame is at or after the last game start at or before row t, else the channel is zeros)."""
    T1 = frames.shape[0]
    S = stack0.shape[1]
    history = torch.cat([stack0[:, :S - 1].transpose(0, 1), frames])
    rows = torch.arange(T1, device=frames.device)
    index = rows[:, None] + torch.arange(S, device=frames.device)[None, :]             # [T+1, S]
    starts = torch.where(stack_reset, rows[:, None], torch.full_like(rows[:, None], -T1 - S))
    last_start = torch.cummax(starts, dim=0).values                                     # [T+1, B]
    valid = (index - (S - 1))[:, :, None] >= last_start[:, None, :]                     # [T+1, S, B]
    return history, index, valid


def rebuild_obs(frames, stack0, stack_reset):
    """[T+1, B, S, H, W] frame stacks from the compact form (see above), on the tensors' device.
    Stack t holds the frames of rows t-S+1 .. t (rows < 0 from stack0), with the frames before the
    last game start at or before row t zeroed, as AtariVectorEnv's reset leaves them.
    Laid out channels-last per stack ([T+1, B, H, W, S] in memory), as the conv torso reads them:
    flattened to [N, S, H, W] they are already channels-last, with no copy to make."""
    history, index, valid = _stack_sources(frames, stack0, stack_reset)
    T1, S = index.shape
    out = torch.empty(T1, *history.shape[1:], S, dtype=frames.dtype, device=frames.device)
    for c in range(S):       # channel c of every stack: rows c .. c+T of the history, zeroed where invalid
        torch.mul(history[c:c + T1], valid[:, c, :, None, None].to(frames.dtype), out=out[..., c])
    return out.permute(0, 1, 4, 2, 3)


def stack_moments(frames, stack0, stack_reset, scale=1.0):
    """(n, mean, population variance) [S, H, W] of the (T+1)·B stacks times `scale` that
    rebuild_obs makes, computed from the T+S distinct frames of each sequence rather than the S
    times as many stacked ones: channel c of stack t is frame t-S+1+c or zeros, so the sums over
    the stacks are 0/1-weighted sums over the frames, one small matrix product each (exact for the
    sums of bytes; the squares' sums round in float32, as a direct sum would)."""
    history, index, valid = _stack_sources(frames, stack0, stack_reset)
    R, B, H, W = history.shape
    T1, S = index.shape
    weights = torch.zeros(S, R, B, device=frames.device)
    for c in range(S):
        weights[c, index[:, c]] = valid[:, c].float()        # index[:, c] = c, c+1, ..., c+T: no repeats
    weights = weights.view(S, R * B)
    x = history.reshape(R * B, H * W).float()
    n = T1 * B
    mean = weights @ x * (scale / n)
    var = (weights @ x.square_() * (scale * scale / n) - mean ** 2).clamp_min_(0)   # weights² = weights
    return n, mean.view(S, H, W), var.view(S, H, W)


def check_batch(batch, obs_shape, num_actions):
    """Validate `batch` against the contract; returns (T, B)."""
    if not isinstance(batch, dict):
        raise TypeError(f"a learner batch is a dict with keys {', '.join(KEYS)}, got {type(batch).__name__}")
    keys = KEYS if "frames" not in batch else tuple(k for k in KEYS if k != "obs") + COMPACT_OBS
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"learner batch lacks {', '.join(missing)}; it needs {', '.join(keys)}")
    if "frames" in batch:
        frames, stack0 = batch["frames"], batch["stack0"]
        if len(obs_shape) != 3 or tuple(frames.shape[2:]) != tuple(obs_shape[1:]) or frames.dim() != 4 \
                or tuple(stack0.shape[1:]) != tuple(obs_shape) or stack0.shape[0] != frames.shape[1]:
            raise ValueError(f"batch frames {tuple(frames.shape)} and stack0 {tuple(stack0.shape)} do not make "
                             f"stacks of {tuple(obs_shape)}: expected [T+1, B, {', '.join(map(str, obs_shape[1:]))}] "
                             f"and [B, {', '.join(map(str, obs_shape))}]")
        T1, B = frames.shape[:2]
    else:
        obs = batch["obs"]
        if obs.dim() != 2 + len(obs_shape) or tuple(obs.shape[2:]) != tuple(obs_shape):
            raise ValueError(f"batch obs has shape {tuple(obs.shape)}, expected [T+1, B, "
                             f"{', '.join(map(str, obs_shape))}]")
        T1, B = obs.shape[:2]
    if T1 < 2:
        raise ValueError(f"batch holds {T1} observation(s) per sequence; an unroll of T >= 1 steps has T+1")
    want = {"reward": ((T1, B), None), "first": ((T1, B), torch.bool), "action": ((T1, B), torch.int64),
            "last_action": ((T1, B), torch.int64), "forced": ((T1, B), torch.bool),
            "logits": ((T1, B, num_actions), None)}
    if "frames" in batch:
        want["stack_reset"] = ((T1, B), torch.bool)
    for key, (shape, dtype) in want.items():
        x = batch[key]
        if tuple(x.shape) != shape:
            raise ValueError(f"batch {key} has shape {tuple(x.shape)}, expected {list(shape)} "
                             f"(T+1={T1}, B={B}" + (f", A={num_actions})" if key == "logits" else ")"))
        if dtype is not None and x.dtype != dtype:
            raise ValueError(f"batch {key} has dtype {x.dtype}, expected {dtype}")
    if not isinstance(batch["core_state"], (tuple, list)) or any(s.shape[0] != B for s in batch["core_state"]):
        raise ValueError(f"batch core_state must be a tuple of tensors [B={B}, ...]")
    return T1 - 1, B


def to_device(batch, device, rebuild=True):
    """The batch's tensors on `device` (on CUDA through pinned memory, so the copies are
    asynchronous), with compact frames rebuilt into "obs" there (unless not `rebuild`): a quarter of
    the bytes cross."""
    device = torch.device(device)
    cuda = device.type == "cuda"

    def move(x):
        if cuda and not x.is_cuda and not x.is_pinned():
            x = x.pin_memory()
        return x.to(device, non_blocking=cuda)

    out = {k: move(v) for k, v in batch.items() if torch.is_tensor(v)}
    out["core_state"] = tuple(move(s) for s in batch["core_state"])
    if "frames" in out and rebuild:
        out["obs"] = rebuild_obs(out.pop("frames"), out.pop("stack0"), out.pop("stack_reset"))
    return out


def random_batch(obs_shape, obs_dtype, num_actions, T, B, core_state, seed=0, first_prob=0.1):
    """A synthetic batch obeying the contract (random frames, rewards, episode starts, actions)."""
    g = torch.Generator().manual_seed(seed)
    if obs_dtype == torch.uint8:
        obs = torch.randint(0, 256, (T + 1, B, *obs_shape), generator=g, dtype=torch.uint8)
    else:
        obs = torch.randn((T + 1, B, *obs_shape), generator=g, dtype=obs_dtype)
    first = torch.rand(T + 1, B, generator=g) < first_prob
    action = torch.randint(0, num_actions, (T + 1, B), generator=g)
    last_action = torch.cat([torch.zeros(1, B, dtype=torch.int64), action[:-1]]).masked_fill(first, 0)
    return {
        "obs": obs,
        "reward": torch.randn(T + 1, B, generator=g),
        "first": first,
        "action": action,
        "last_action": last_action,
        "forced": torch.zeros(T + 1, B, dtype=torch.bool),
        "logits": torch.randn(T + 1, B, num_actions, generator=g),
        "core_state": tuple(s.detach().clone() for s in core_state),
        "version": 0,
    }
