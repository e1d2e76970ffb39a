"""Checkpoint files: written atomically, read back only whole.

A checkpoint is one torch.save'd dict of plain types and tensors (so it loads with
weights_only=True: no pickled code runs at load). `save_atomic` writes it with
configs.files.atomic_write, the project's one way of replacing a file: a kill at any moment leaves
either the old or the new file, never a torn one.
"""
import io
import random
from pathlib import Path

import numpy as np
import torch

from configs.errors import Error
from configs.files import atomic_write

FORMAT = 1
KEYS = ("format", "meta", "model", "optimizer", "counters", "rng", "config", "extra")


class CheckpointError(Error):
    """A checkpoint that cannot be used here; the message says which file and why."""


def save_atomic(payload, path):
    """torch.save `payload` to `path` through `atomic_write`."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getvalue())


def read(path):
    """The checkpoint at `path` as a dict (tensors on the CPU); CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, foreign pickle: all mean "not usable"
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a learner checkpoint of format {FORMAT} (found {got!r})")
    missing = [k for k in KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    return payload


def rng_state():
    """Python, NumPy, torch (and CUDA) generator states, in types weights_only loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def check_rng_state(state, path):
    ok = (isinstance(state, dict) and isinstance(state.get("python"), tuple)
          and isinstance(state.get("numpy"), dict) and isinstance(state["numpy"].get("keys"), torch.Tensor)
          and isinstance(state.get("torch"), torch.Tensor) and state["torch"].dtype == torch.uint8
          and isinstance(state.get("cuda"), list))
    if not ok:
        raise CheckpointError(f"checkpoint {path}: its RNG states are malformed")


def set_rng_state(state):
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():  # a GPU run resumed on a CPU has none to restore
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
