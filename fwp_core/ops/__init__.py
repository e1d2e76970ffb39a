"""The fast-weight rules of Irie et al. (2021), one public function per rule.

    y, W = sum_rule(q, k, v, state=None, reset=None, backend=None)
    y, W = delta_rule(q, k, v, beta, state=None, reset=None, backend=None)
    y, (W, y_last) = rdn(qx, kx, vx, bx, Rq, Rk, Rv, rb, state=None, reset=None, backend=None)
    y, (W, R, y_last) = delta_rnn(q, k, v, beta, kr, vr, br, state=None, reset=None, backend=None)

Time-major: sequences are [T, B, H, D], per-step scalars [T, B, H], fast weights [B, H, Dk, Dv].
`reset[t, b]` zeroes sequence b's whole state before step t. `state=None` means zeros. The state is
kept and returned in float32 (float64 when an input is float64); y has the inputs' dtype.
Gradients reach every input, the initial state included; with `truncate=True` no gradient crosses
steps through the state (the paper's RL code): step t's inputs get the gradient of step t's own
output, the carried state is a constant to it, and the initial state gets none.

`backend`: "reference" (the plain PyTorch loops in `<rule>/naive.py`) or "triton" (the fused
kernels in `<rule>/fused_recurrent.py`: CUDA tensors, head dims up to 64; on CPU only under
TRITON_INTERPRET=1, for testing). None picks $FWP_BACKEND if set, else Triton for CUDA
tensors and the reference otherwise.
"""
import importlib
import os

import torch

from .delta_rnn.naive import delta_rnn_naive
from .delta_rule.naive import delta_rule_naive
from .rdn.naive import rdn_naive
from .sum_rule.naive import sum_rule_naive

__all__ = ["sum_rule", "delta_rule", "rdn", "delta_rnn", "BACKENDS"]

BACKENDS = ("reference", "triton")


def _pick_backend(backend, x):
    name = backend if backend is not None else os.environ.get("FWP_BACKEND") or None
    if name is None:
        name = "triton" if x.is_cuda and _triton_available() else "reference"
    if name not in BACKENDS:
        raise ValueError(f"unknown fast-weight backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def _triton_available():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _fused(op):
    # Imported on first use so that CPU-only installs never import Triton.
    try:
        module = importlib.import_module(f".{op}.fused_recurrent", __name__)
    except ModuleNotFoundError as e:
        if e.name != "triton":
            raise
        raise RuntimeError(f"{op}: backend='triton' needs the triton package, which is not installed; "
                           f"use backend='reference'") from e
    return getattr(module, f"fused_recurrent_{op}")


def _acc_dtype(*tensors):
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _expect(op, name, x, shape, what):
    """Check x against `shape` (ints, or None for "any size"), naming x and what the dims mean."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(shape):
        raise ValueError(f"{op}: {name} must have {len(shape)} dims {what}, got shape {tuple(x.shape)}")
    for want, got in zip(shape, x.shape):
        if want is not None and want != got:
            expected = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{op}: {name} has shape {tuple(x.shape)}, expected {expected} {what}")
    if not (x.is_floating_point() or name == "reset"):
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {x.dtype}")


def _check_reset(op, reset, T, B, device):
    if reset is None:
        return None
    _expect(op, "reset", reset, (T, B), "[T, B]")
    if reset.dtype != torch.bool:
        raise TypeError(f"{op}: reset must be a bool tensor [T, B], got {reset.dtype}")
    if reset.device != device:
        raise ValueError(f"{op}: reset is on {reset.device} but the inputs are on {device}")
    return reset


def _check_sequences(op, seqs, scalars):
    """seqs: name -> [T, B, H, D] tensors (the first sets T, B, H); scalars: name -> [T, B, H]."""
    first_name, first = next(iter(seqs.items()))
    _expect(op, first_name, first, (None, None, None, None), "[T, B, H, D]")
    T, B, H, _ = first.shape
    for name, x in seqs.items():
        _expect(op, name, x, (T, B, H, None), f"[T, B, H, D] matching {first_name}'s T, B, H")
        if x.device != first.device:
            raise ValueError(f"{op}: {name} is on {x.device} but {first_name} is on {first.device}")
    for name, x in scalars.items():
        _expect(op, name, x, (T, B, H), f"[T, B, H] matching {first_name}'s T, B, H")
    return T, B, H


def _state(op, state, names_shapes, like, acc):
    """Materialise a state tuple: zeros when None, else checked and cast to the accumulation dtype."""
    if state is None:
        return tuple(torch.zeros(shape, dtype=acc, device=like.device) for _, shape in names_shapes)
    if isinstance(state, torch.Tensor):
        state = (state,)
    if len(state) != len(names_shapes):
        names = ", ".join(n for n, _ in names_shapes)
        raise ValueError(f"{op}: state must hold ({names}), got {len(state)} tensors")
    out = []
    for x, (name, shape) in zip(state, names_shapes):
        _expect(op, f"state {name}", x, shape, "[" + ", ".join(map(str, shape)) + "]")
        out.append(x.to(acc))
    return tuple(out)


def sum_rule(q, k, v, state=None, reset=None, backend=None, truncate=False):
    """Linear Transformer: W += k vᵀ; y = Wᵀ q. Returns (y [T, B, H, Dv], W [B, H, Dk, Dv])."""
    T, B, H = _check_sequences("sum_rule", {"q": q, "k": k, "v": v}, {})
    _same_last("sum_rule", ("q", q), ("k", k))
    acc = _acc_dtype(q, k, v)
    (W,) = _state("sum_rule", state, [("W", (B, H, q.shape[-1], v.shape[-1]))], q, acc)
    reset = _check_reset("sum_rule", reset, T, B, q.device)
    if _pick_backend(backend, q) == "triton":
        return _fused("sum_rule")(q, k, v, W, reset, truncate)
    return sum_rule_naive(q, k, v, W, reset, truncate)


def delta_rule(q, k, v, beta, state=None, reset=None, backend=None, truncate=False):
    """Delta Net: W += β k (v − Wᵀk)ᵀ; y = Wᵀ q. Returns (y [T, B, H, Dv], W [B, H, Dk, Dv])."""
    T, B, H = _check_sequences("delta_rule", {"q": q, "k": k, "v": v}, {"beta": beta})
    _same_last("delta_rule", ("q", q), ("k", k))
    acc = _acc_dtype(q, k, v, beta)
    (W,) = _state("delta_rule", state, [("W", (B, H, q.shape[-1], v.shape[-1]))], q, acc)
    reset = _check_reset("delta_rule", reset, T, B, q.device)
    if _pick_backend(backend, q) == "triton":
        return _fused("delta_rule")(q, k, v, beta, W, reset, truncate)
    return delta_rule_naive(q, k, v, beta, W, reset, truncate)


def rdn(qx, kx, vx, bx, Rq, Rk, Rv, rb, state=None, reset=None, backend=None, truncate=False):
    """Recurrent Delta Net (see rdn/naive.py). Returns (y [T, B, H, D], (W, y_last))."""
    seqs = {"qx": qx, "kx": kx, "vx": vx}
    T, B, H = _check_sequences("rdn", seqs, {"bx": bx})
    D = qx.shape[-1]
    _same_last("rdn", *seqs.items())
    for name, R in (("Rq", Rq), ("Rk", Rk), ("Rv", Rv)):
        _expect("rdn", name, R, (H, D, D), "[H, D, D]")
    _expect("rdn", "rb", rb, (H, D), "[H, D]")
    acc = _acc_dtype(qx, kx, vx, bx, Rq, Rk, Rv, rb)
    W, y_last = _state("rdn", state, [("W", (B, H, D, D)), ("y_last", (B, H, D))], qx, acc)
    reset = _check_reset("rdn", reset, T, B, qx.device)
    if _pick_backend(backend, qx) == "triton":
        return _fused("rdn")(qx, kx, vx, bx, Rq, Rk, Rv, rb, W, y_last, reset, truncate)
    return rdn_naive(qx, kx, vx, bx, Rq, Rk, Rv, rb, W, y_last, reset, truncate)


def delta_rnn(q, k, v, beta, kr, vr, br, state=None, reset=None, backend=None, truncate=False):
    """Delta RNN (see delta_rnn/naive.py). Returns (y [T, B, H, D], (W, R, y_last))."""
    seqs = {"q": q, "k": k, "v": v, "kr": kr, "vr": vr}
    T, B, H = _check_sequences("delta_rnn", seqs, {"beta": beta, "br": br})
    D = q.shape[-1]
    _same_last("delta_rnn", *seqs.items())
    acc = _acc_dtype(q, k, v, beta, kr, vr, br)
    shapes = [("W", (B, H, D, D)), ("R", (B, H, D, D)), ("y_last", (B, H, D))]
    W, R, y_last = _state("delta_rnn", state, shapes, q, acc)
    reset = _check_reset("delta_rnn", reset, T, B, q.device)
    if _pick_backend(backend, q) == "triton":
        return _fused("delta_rnn")(q, k, v, beta, kr, vr, br, W, R, y_last, reset, truncate)
    return delta_rnn_naive(q, k, v, beta, kr, vr, br, W, R, y_last, reset, truncate)


def _same_last(op, *named):
    (n0, x0), rest = named[0], named[1:]
    for n, x in rest:
        if x.shape[-1] != x0.shape[-1]:
            raise ValueError(
                f"{op}: {n} has head dim {x.shape[-1]} but {n0} has {x0.shape[-1]}; they must match")
