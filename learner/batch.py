"""The learner batch: a dict of time-major [T+1, B, ...] CPU tensors, as the rollout actors ship them.

    "obs" [T+1, B, *obs_shape] uint8|float32   "reward" [T+1, B] float32 (raw; reward[0] unused)
    "first" [T+1, B] bool    "action" [T+1, B] int64    "last_action" [T+1, B] int64
    "forced" [T+1, B] bool (action t was the env's, not the policy's: a FIRE after a life loss)
    "logits" [T+1, B, A] float32 (behaviour)    "core_state" tuple of [B, ...] (before obs 0)

check_batch names whatever is missing or misshapen; to_device moves it (pinned + non_blocking on
CUDA); random_batch makes a synthetic one for tests and benchmarks.
"""
import torch

KEYS = ("obs", "reward", "first", "action", "last_action", "forced", "logits", "core_state")


def check_batch(batch, obs_shape, num_actions):
    """Validate `batch` against the contract; returns (T, B)."""
    if not isinstance(batch, dict):
        raise TypeError(f"a learner batch is a dict with keys {', '.join(KEYS)}, got {type(batch).__name__}")
    missing = [k for k in KEYS if k not in batch]
    if missing:
        raise ValueError(f"learner batch lacks {', '.join(missing)}; it needs {', '.join(KEYS)}")
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


def to_device(batch, device):
    """The batch's tensors on `device`; on CUDA through pinned memory, so the copies are asynchronous."""
    device = torch.device(device)
    cuda = device.type == "cuda"

    def move(x):
        if cuda and not x.is_cuda and not x.is_pinned():
            x = x.pin_memory()
        return x.to(device, non_blocking=cuda)

    out = {k: move(batch[k]) for k in KEYS if k != "core_state"}
    out["core_state"] = tuple(move(s) for s in batch["core_state"])
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
