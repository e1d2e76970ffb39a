"""fwp_core.ops (reference backend) against the per-element float64 loops of tests/elementwise.py."""
import pytest
import torch

from fwp_core import ops
from tests import elementwise
from tests.op_cases import OPS, as_tuple, random_case


def _grads(outputs, inputs, seed):
    """Gradients of a random linear functional of all outputs (so every output element matters)."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs, allow_unused=False)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_elementwise(op, seed):
    T, B, H, D = 5, 3, 2, 3
    args, state, reset = random_case(op, T, B, H, D, seed=seed)
    reset[0, 0] = True          # a reset at t = 0 discards the given state
    reset[2, 1] = True          # and one mid-sequence
    args = [a.clone().requires_grad_() for a in args]
    state = [s.clone().requires_grad_() for s in state]

    y, final = getattr(ops, op)(*args, state=tuple(state), reset=reset, backend="reference")
    y_ref, final_ref = getattr(elementwise, op)(*args, *state, reset)
    final, final_ref = as_tuple(final), as_tuple(final_ref)

    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(final, final_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    g = _grads([y, *final], args + state, seed)
    g_ref = _grads([y_ref, *final_ref], args + state, seed)
    for name, a, b in zip(range(len(g)), g, g_ref):
        assert a.abs().sum() > 0 or b.abs().sum() == 0, f"input {name}: gradient vanished"
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"input {name}: {m}")


@pytest.mark.parametrize("op", OPS)
def test_gradcheck(op):
    args, state, reset = random_case(op, 3, 2, 1, 2, seed=3)
    reset[1, 0] = True
    n = len(args)

    def f(*xs):
        y, final = getattr(ops, op)(*xs[:n], state=tuple(xs[n:]), reset=reset, backend="reference")
        return (y, *as_tuple(final))
    inputs = tuple(x.clone().requires_grad_() for x in (*args, *state))
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("op", OPS)
def test_state_none_is_zeros_and_gradient_reaches_state(op):
    args, state, _ = random_case(op, 4, 2, 2, 3, seed=5)
    f = getattr(ops, op)
    y0, _ = f(*args)
    y1, _ = f(*args, state=tuple(torch.zeros_like(s) for s in state))
    torch.testing.assert_close(y0, y1)
    state = tuple(s.clone().requires_grad_() for s in state)
    y, _ = f(*args, state=state)
    grads = torch.autograd.grad(y.square().sum(), state)
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("op", OPS)
def test_low_precision_inputs_keep_float32_state(op):
    args, state, reset = random_case(op, 4, 2, 2, 3, seed=6)
    y, final = getattr(ops, op)(*(a.bfloat16() for a in args), reset=reset)
    assert y.dtype == torch.bfloat16
    assert all(s.dtype == torch.float32 for s in as_tuple(final))
    y64, _ = getattr(ops, op)(*args, reset=reset)
    torch.testing.assert_close(y.double(), y64, rtol=0.05, atol=0.05)


def test_reset_at_every_step_equals_independent_steps():
    args, state, _ = random_case("delta_rule", 4, 2, 1, 3, seed=7)
    reset = torch.ones(4, 2, dtype=torch.bool)
    y, _ = ops.delta_rule(*args, state=state, reset=reset)
    for t in range(4):
        y_t, _ = ops.delta_rule(*(a[t:t + 1] for a in args))
        torch.testing.assert_close(y[t:t + 1], y_t)


# -- bad input ------------------------------------------------------------------------------------

def test_wrong_rank_is_named():
    (q, k, v, beta), _, _ = random_case("delta_rule", 4, 2, 2, 3)
    with pytest.raises(ValueError, match=r"delta_rule: q must have 4 dims \[T, B, H, D\]"):
        ops.delta_rule(q[0], k, v, beta)
    with pytest.raises(ValueError, match=r"delta_rule: beta must have 3 dims"):
        ops.delta_rule(q, k, v, beta[..., None])


@pytest.mark.parametrize("cut,what", [(lambda x: x[:3], "T"), (lambda x: x[:, :1], "B"),
                                      (lambda x: x[:, :, :1], "H")])
def test_mismatched_T_B_H_is_named(cut, what):
    (q, k, v, beta), _, _ = random_case("delta_rule", 4, 2, 2, 3)
    with pytest.raises(ValueError, match=r"delta_rule: v has shape .* matching q's T, B, H"):
        ops.delta_rule(q, k, cut(v), beta)
    with pytest.raises(ValueError, match=r"delta_rule: beta has shape"):
        ops.delta_rule(q, k, v, cut(beta))


def test_bad_state_and_reset_are_named():
    args, state, reset = random_case("rdn", 4, 2, 2, 3)
    with pytest.raises(ValueError, match=r"rdn: state must hold \(W, y_last\)"):
        ops.rdn(*args, state=state[:1])
    with pytest.raises(ValueError, match=r"rdn: state y_last has shape"):
        ops.rdn(*args, state=(state[0], state[1][:, :1]))
    with pytest.raises(TypeError, match=r"rdn: reset must be a bool tensor"):
        ops.rdn(*args, reset=reset.float())
    with pytest.raises(ValueError, match=r"rdn: reset has shape"):
        ops.rdn(*args, reset=reset[:2])
    with pytest.raises(ValueError, match=r"rdn: Rq has shape"):
        ops.rdn(*args[:4], args[4][:, :2], *args[5:])


def test_unknown_backend_lists_the_choices(monkeypatch):
    args, _, _ = random_case("sum_rule", 2, 1, 1, 2)
    with pytest.raises(ValueError, match="unknown fast-weight backend 'cuda'; choose one of reference, triton"):
        ops.sum_rule(*args, backend="cuda")
    monkeypatch.setenv("FWP_BACKEND", "fast")
    with pytest.raises(ValueError, match="'fast'"):
        ops.sum_rule(*args)


@pytest.mark.parametrize("op", OPS)
def test_truncated_op_equals_one_call_per_step_with_the_state_detached(op):
    """truncate=True: the same values, and the gradients of calling the op one step at a time with
    the carried state detached in between (the paper's RL code: no gradient crosses steps through
    the state); the initial state gets none."""
    T, B, H, D = 4, 2, 2, 3
    args, state, reset = random_case(op, T, B, H, D, seed=7)
    reset[2, 1] = True
    timed = 4 if op == "rdn" else len(args)                 # rdn's R, r_b are weights, not per step
    f = getattr(ops, op)
    a1 = [a.clone().requires_grad_() for a in args]
    s1 = [s.clone().requires_grad_() for s in state]
    y, final = f(*a1, state=tuple(s1), reset=reset, backend="reference", truncate=True)
    a2 = [a.clone().requires_grad_() for a in args]
    s, ys = tuple(state), []
    for t in range(T):
        step = [a[t:t + 1] for a in a2[:timed]] + a2[timed:]
        y_t, s = f(*step, state=tuple(x.detach() for x in as_tuple(s)), reset=reset[t:t + 1],
                   backend="reference")
        ys.append(y_t)
    y_ref, final_ref = torch.cat(ys), as_tuple(s)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(_weighted(y), a1 + s1, allow_unused=True)
    g_ref = torch.autograd.grad(_weighted(y_ref), a2)
    for i, (a, b) in enumerate(zip(g, g_ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"input {i}: {m}")
    assert all(x is None for x in g[len(a1):]), "the initial state got a gradient through truncation"
    full = torch.autograd.grad(_weighted(f(*a1, state=tuple(s1), reset=reset, backend="reference")[0]), a1)
    assert any(not torch.allclose(a, b) for a, b in zip(full, g)), "truncation changed no gradient"


def _weighted(y):
    return (y * torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y)).sum()
