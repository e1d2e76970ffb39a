"""The fused Triton kernels (backend="triton") against the reference loops: values and every gradient.

Without CUDA the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
which executes the same kernel code on the CPU, slowly: shapes stay tiny. The ground truth is the
reference backend in float64 on the same (rounded) inputs; the reference itself is tested against
per-element float64 loops in tests/test_ops.py. Every buffer the kernel modules allocate starts as
NaN, so an element a kernel forgets to write fails the comparison.
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from fwp_core import make_core, ops
from fwp_core.ops import _triton_utils as tu
from tests.op_cases import OPS, as_tuple, random_case

KERNELS = {op: importlib.import_module(f"fwp_core.ops.{op}.fused_recurrent") for op in OPS}
ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # cpu: under the interpreter

# Norm-relative error ‖a − b‖ / ‖b‖ allowed against the float64 reference. float32: a few ulps of
# rounding per step, summed over T steps and D-term reductions, measured at ≤ 2e-6 on these shapes.
# bfloat16 inputs (compared with the reference on the same bf16 values): the kernels accumulate in
# float32, so what remains is rounding y and the gradients to bf16 (2^-9 relative per element).
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2}


class _PoisonedTorch:
    """Stands in for `torch` inside a kernel module: every buffer it allocates starts as NaN, and
    the shapes allocated are recorded."""

    def __init__(self):
        self.allocated = []

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *shape, **kw):
        return self._poison(torch.empty(*shape, **kw))

    def empty_like(self, x, **kw):
        return self._poison(torch.empty_like(x, **kw))

    def _poison(self, x):
        self.allocated.append(tuple(x.shape))
        return x.fill_(float("nan"))


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    proxies = {op: _PoisonedTorch() for op in OPS}
    for op, module in KERNELS.items():
        monkeypatch.setattr(module, "torch", proxies[op])
    return proxies


def _run(op, args, state, reset, backend, state_grad, seed=0, truncate=False, device=None):
    """Outputs (y and the final state) and the gradients of a random linear functional of all of
    them (so every output element matters) w.r.t. the inputs and, if state_grad, the state (zeros
    where it gets none). The reference runs on the CPU unless `device` says otherwise."""
    device = device or (DEVICE if backend == "triton" else "cpu")
    args = [a.detach().to(device).requires_grad_() for a in args]
    if state is not None:
        state = [s.detach().to(device).requires_grad_(state_grad) for s in state]
    reset = None if reset is None else reset.to(device)
    y, final = getattr(ops, op)(*args, state=None if state is None else tuple(state), reset=reset,
                                backend=backend, truncate=truncate)
    outs = [y, *as_tuple(final)]
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
               for o in outs)
    wrt = args + (state if state is not None and state_grad else [])
    grads = torch.autograd.grad(loss, wrt, allow_unused=truncate)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt)]
    return [o.cpu() for o in outs], [g.cpu() for g in grads]


def _rel_err(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)).item()


def _check(got, want, tol, what):
    assert torch.isfinite(got).all(), f"{what}: non-finite elements (one the kernel never wrote?)"
    err = _rel_err(got, want)
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


# T, B, H, D, initial state ("grad", "no_grad" or None), resets (t, b), checkpoint interval
CASES = {
    "D5-resets-state_grad": (5, 2, 2, 5, "grad", [(0, 0), (2, 1)], 16),
    "D33-no_state-no_reset": (3, 3, 1, 33, None, None, 16),   # column split, padded blocks
    "T1-reset-state_grad": (1, 3, 2, 4, "grad", [(0, 1)], 16),
    # checkpoints every 2 steps: resets at a chunk's start and inside chunks, replayed from there
    "D3-checkpoint_every_2": (6, 2, 1, 3, "no_grad", [(2, 0), (3, 1), (5, 0)], 2),
}


def _compare(op, case, dtype, monkeypatch, truncate=False):
    T, B, H, D, state_kind, resets, every = CASES[case]
    monkeypatch.setattr(tu, "CHECKPOINT_EVERY", every)
    args, state, reset = random_case(op, T, B, H, D, seed=T * 100 + D, reset_p=0)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    args = [a.to(dtype) for a in args]                      # the values both backends see
    state = None if state_kind is None else [s.to(acc) for s in state]
    if resets is None:
        reset = None
    for t, b in resets or []:
        reset[t, b] = True
    grad = state_kind == "grad"
    outs, grads = _run(op, args, state, reset, "triton", grad, truncate=truncate)
    ref_outs, ref_grads = _run(op, [a.double() for a in args],
                               None if state is None else [s.double() for s in state], reset,
                               "reference", grad, truncate=truncate)
    assert outs[0].dtype == dtype and all(s.dtype == acc for s in outs[1:])
    assert len(grads) == len(ref_grads)
    for i, (a, b) in enumerate(zip(outs, ref_outs)):
        _check(a, b, TOL[dtype], f"{op} output {i}")
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert a.dtype == (args + (state or []))[i].dtype
        if truncate and i >= len(args):     # the initial state: exactly none through truncation
            assert torch.count_nonzero(a) == 0 and torch.count_nonzero(b) == 0, f"{op} state gradient"
            continue
        _check(a, b, TOL[dtype], f"{op} gradient of input {i}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("op", OPS)
def test_float32_matches_reference(op, case, monkeypatch):
    _compare(op, case, torch.float32, monkeypatch)


@pytest.mark.parametrize("case", ["D5-resets-state_grad", "D3-checkpoint_every_2"])
@pytest.mark.parametrize("op", OPS)
def test_float64_matches_reference_to_rounding(op, case, monkeypatch):
    _compare(op, case, torch.float64, monkeypatch)


@pytest.mark.parametrize("case", ["D5-resets-state_grad", "D3-checkpoint_every_2"])
@pytest.mark.parametrize("op", OPS)
def test_truncated_backward_matches_the_truncated_reference(op, case, monkeypatch):
    """truncate=True: the kernels' backward drops the gradient through the carried state at every
    step (not computed and discarded): the same gradients as the reference's per-step detach."""
    _compare(op, case, torch.float32, monkeypatch, truncate=True)


@pytest.mark.parametrize("op", OPS)
def test_bfloat16_inputs_accumulate_in_float32(op, monkeypatch):
    _compare(op, "D5-resets-state_grad", torch.bfloat16, monkeypatch)


@pytest.mark.parametrize("op", ["sum_rule", "delta_rule"])
def test_key_and_value_head_dims_may_differ(op):
    T, B, H, DK, DV = 4, 2, 2, 3, 6
    g = torch.Generator().manual_seed(5)
    rn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    args = [torch.softmax(rn(T, B, H, DK), -1), torch.softmax(rn(T, B, H, DK), -1), rn(T, B, H, DV)]
    args += [torch.sigmoid(rn(T, B, H))] if op == "delta_rule" else []
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[2, 0] = True
    state = [rn(B, H, DK, DV)]
    outs, grads = _run(op, args, state, reset, "triton", True)
    ref_outs, ref_grads = _run(op, [a.double() for a in args], [state[0].double()], reset,
                               "reference", True)
    for i, (a, b) in enumerate(zip(outs + grads, ref_outs + ref_grads)):
        _check(a, b, TOL[torch.float32], f"{op} output/gradient {i}")


@pytest.mark.parametrize("op", OPS)
def test_acting_steps_equal_one_call_and_keep_nothing_for_backward(op, poisoned):
    T, B, H, D = 4, 2, 2, 5
    args, state, _ = random_case(op, T, B, H, D, dtype=torch.float32, device=DEVICE, seed=11)
    args = [a.requires_grad_() for a in args]               # no_grad must win over requires_grad
    state = tuple(s.float() for s in state)
    reset = torch.zeros(T, B, dtype=torch.bool, device=DEVICE)
    reset[2, 1] = True
    timed = 4 if op == "rdn" else len(args)                 # rdn's Rq, Rk, Rv, rb are not per step
    f = getattr(ops, op)
    with torch.no_grad():
        y, final = f(*args, state=state, reset=reset, backend="triton")
        s, ys = state, []
        for t in range(T):
            for p in poisoned.values():
                p.allocated.clear()
            step = [a[t:t + 1] for a in args[:timed]] + args[timed:]
            y_t, s = f(*step, state=s, reset=reset[t:t + 1], backend="triton")
            ys.append(y_t)
    torch.testing.assert_close(torch.cat(ys), y, rtol=1e-6, atol=1e-6)
    for a, b in zip(as_tuple(s), as_tuple(final)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # The last step allocated its outputs and nothing else (delta_rnn: also z = the Delta Net's y).
    allocated = sorted(shape for p in poisoned.values() for shape in p.allocated)
    outputs = [tuple(y_t.shape)] + [tuple(x.shape) for x in as_tuple(s)]
    if op == "delta_rnn":
        outputs.append(tuple(y_t.shape))
    assert allocated == sorted(outputs)


@pytest.mark.parametrize("name", ["linear_transformer", "delta_net", "rdn", "delta_rnn"])
def test_core_forward_backward_with_triton_equals_reference(name, monkeypatch):
    """The whole core: the ops see split views of the slow net's output (strided inputs)."""
    torch.manual_seed(0)
    core = make_core(name, 7, d_model=12, num_layers=2, num_heads=2, head_dim=5, ff_dim=16)
    core = core.double().to(DEVICE)
    T, B = 4, 2
    x = torch.randn(T, B, 7, dtype=torch.float64, device=DEVICE)
    reset = torch.zeros(T, B, dtype=torch.bool, device=DEVICE)
    reset[2, 1] = True
    state = tuple(torch.randn_like(s) * 0.3 for s in core.initial_state(B))
    results = []
    for backend in ("reference", "triton"):
        monkeypatch.setenv("FWP_BACKEND", backend)
        y, final = core(x, state, reset)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)).sum() + sum(
            (s * 0.5).sum() for s in final)
        results.append([y, *final, *torch.autograd.grad(loss, list(core.parameters()))])
    for i, (a, b) in enumerate(zip(results[1], results[0])):
        _check(a, b, 1e-10, f"{name} core tensor {i}")


def test_kernels_run_compiled_with_cuda_and_interpreted_without():
    """conftest's TRITON_INTERPRET=1 reached the kernels, which were decorated at import."""
    kernels = [v for m in KERNELS.values() for n, v in vars(m).items() if n.endswith(("_fwd", "_bwd"))]
    assert len(kernels) == 8
    for k in kernels:
        assert isinstance(k, triton.runtime.JITFunction) == torch.cuda.is_available()


def _a_kernel(x):
    pass


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    compiled = triton.runtime.JITFunction(_a_kernel)       # what @triton.jit gives without it
    monkeypatch.setattr(KERNELS["delta_rule"], "_delta_rule_fwd", compiled)
    args, _, _ = random_case("delta_rule", 2, 1, 1, 3, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"delta_rule: the Triton backend needs CUDA tensors.*"
                                           r"backend='reference'.*TRITON_INTERPRET=1"):
        ops.delta_rule(*args, backend="triton")


def test_head_dim_above_the_limit_is_refused():
    args, _, _ = random_case("sum_rule", 1, 1, 1, tu.MAX_HEAD_DIM + 1, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"sum_rule: the Triton backend supports head dims up to 64, "
                                         r"got 65; use backend='reference'"):
        ops.sum_rule(*args, backend="triton")


def test_kernels_compile_for_an_h100():
    """The interpreter accepts code the GPU compiler rejects; compile every kernel for sm_90 (no
    GPU needed) from the launches the op wrappers make, in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "bench/compile_kernels.py", "--quiet"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all 8 kernels compiled" in done.stdout, done.stdout[-3000:]


# bench/gpu_check.sh, step 2: on CUDA, every op at the sizes the agent runs (the paper's RL shape, a
# large one, and head dims 16 and 48, whose blocks are padded), forward and backward against the
# float64 reference on the same device, float32 and bf16 inputs, truncation off and on, with resets
# and an initial state that gets a gradient. Deselected unless FWP_GPU_CHECK=1 (tests/conftest.py):
# at these sizes it needs a GPU. Without CUDA (the script's --dry-run) each size is a stand-in the
# interpreter can afford, so the dry run proves this code. With FWP_GPU_CHECK_ERRORS=<file>, each case appends its errors there
# as a tab-separated line (the script's table of them).
GPU_SIZES = {   # T, B, H, D
    "rl": (50, 32, 4, 32), "large": (80, 256, 8, 64), "D16": (20, 8, 2, 16), "D48": (20, 8, 2, 48)}
STAND_INS = {"rl": (4, 2, 2, 4), "large": (4, 3, 2, 8), "D16": (3, 2, 1, 2), "D48": (3, 2, 1, 6)}


@pytest.mark.parametrize("truncate", [False, True], ids=["bptt", "truncated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("op", OPS)
def test_gpu_check_sizes_match_reference(op, size, dtype, truncate):
    if DEVICE == "cuda" and size == "large":
        # The float64 reference keeps every step's [256, 8, 64, 64] tensors for its backward (tens of
        # GB): one large case at a time across pytest-xdist's workers, its memory freed after it.
        import fcntl
        import tempfile
        with open(os.path.join(tempfile.gettempdir(), "fwp_gpu_check_large.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return _gpu_check_case(op, size, dtype, truncate)
            finally:
                torch.cuda.empty_cache()
    _gpu_check_case(op, size, dtype, truncate)


def _gpu_check_case(op, size, dtype, truncate):
    T, B, H, D = GPU_SIZES[size] if DEVICE == "cuda" else STAND_INS[size]
    args, state, reset = random_case(op, T, B, H, D, seed=D + T, reset_p=0.05)
    reset[0, 0] = reset[T // 2, B - 1] = True                 # at least one inside the sequence
    args = [a.to(dtype) for a in args]                         # the values both backends see
    state = [s.float() for s in state]
    outs, grads = _run(op, args, state, reset, "triton", True, truncate=truncate)
    ref_outs, ref_grads = _run(op, [a.double() for a in args], [s.double() for s in state], reset,
                               "reference", True, truncate=truncate, device=DEVICE)
    n_in = len(args)
    for g, r in zip(grads[n_in:], ref_grads[n_in:]):
        if truncate:                                           # the initial state: exactly none
            assert torch.count_nonzero(g) == 0 and torch.count_nonzero(r) == 0, f"{op}: state gradient"
    if truncate:
        grads, ref_grads = grads[:n_in], ref_grads[:n_in]
    out_err = max(_rel_err(a, b) for a, b in zip(outs, ref_outs))
    grad_err = max(_rel_err(a, b) for a, b in zip(grads, ref_grads))
    finite = all(torch.isfinite(x).all() for x in outs + grads)
    record = os.environ.get("FWP_GPU_CHECK_ERRORS")
    if record:
        with open(record, "a") as f:
            f.write(f"{op}\t{size}\t{T}x{B}x{H}x{D}\t{str(dtype).removeprefix('torch.')}\t"
                    f"{'on' if truncate else 'off'}\t{out_err:.2e}\t{grad_err:.2e}\t{TOL[dtype]:.0e}\t"
                    f"{finite}\t{DEVICE}\n")
    for i, (a, b) in enumerate(zip(outs, ref_outs)):
        _check(a, b, TOL[dtype], f"{op} {size} output {i}")
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        _check(a, b, TOL[dtype], f"{op} {size} gradient of input {i}")
