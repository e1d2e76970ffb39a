"""Fused Triton kernels of the sum rule (linear Transformer), tested against naive.py.

    W_t = m_t W_{t-1} + k_t v_tᵀ          y_t = W_tᵀ q_t          (m_t = 0 where reset[t, b])

One program owns one (sequence, head) and a block of BV columns of W: the columns are independent
given k and q, so splitting Dv multiplies the programs when B·H is small (128 at the paper's shape).

Backward, with nothing stored by the forward: G_t = dL/dW_t runs backwards,
    G_t = q_t dy_tᵀ + m_{t+1} G_{t+1};   dk_t = G_t v_t;   dv_t = G_tᵀ k_t;   dW_0 = m_0 G_0,
and dq_t = W_t dy_t needs W_t in forward order, so the program first replays the forward recurrence
from W_0 (the same operations as the forward: exact and cheap), then runs the reverse sweep. dq and
dk sum over the columns of W, so each column block writes a partial that the host adds up. With
truncation (TRUNCATE) G restarts from zero at every step: only q_t dy_tᵀ reaches step t's k and v.
"""
import torch
import triton
import triton.language as tl

from .. import _triton_utils as tu
from .._triton_utils import lanes


@triton.jit
def _step(q, sq_t, k, sk_t, v, sv_t, reset, B, b, t, live, ok, ov, DK, DV,
          HAS_RESET: tl.constexpr, ACC: tl.constexpr):
    """Step t's inputs (zeros unless live): loaded a step ahead of their use, so the load latency
    overlaps the previous step's arithmetic instead of stalling every step."""
    mk, mv = lanes(ok, DK, live), lanes(ov, DV, live)
    q_t = tl.load(q + t * sq_t + ok, mask=mk, other=0).to(ACC)
    k_t = tl.load(k + t * sk_t + ok, mask=mk, other=0).to(ACC)
    v_t = tl.load(v + t * sv_t + ov, mask=mv, other=0).to(ACC)
    r_t = tl.load(reset + t * B + b, mask=live & HAS_RESET, other=0) != 0
    return q_t, k_t, v_t, r_t


@triton.jit(do_not_specialize=["T", "B", "H"])
def _sum_rule_fwd(q, sq_t, sq_b, sq_h, k, sk_t, sk_b, sk_h, v, sv_t, sv_b, sv_h,
                  W0, reset, y, WT, T, B, H, DK, DV,
                  BK: tl.constexpr, BV: tl.constexpr, HAS_RESET: tl.constexpr, ACC: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    ok = tl.arange(0, BK)
    ov = tl.program_id(1) * BV + tl.arange(0, BV)
    mk, mv = ok < DK, ov < DV
    w_off = bh * DK * DV + ok[:, None] * DV + ov[None, :]
    W = tl.load(W0 + w_off, mask=mk[:, None] & mv[None, :], other=0).to(ACC)
    q, k, v = q + b * sq_b + h * sq_h, k + b * sk_b + h * sk_h, v + b * sv_b + h * sv_h
    y = y + bh * DV + ov
    nq, nk, nv, nr = _step(q, sq_t, k, sk_t, v, sv_t, reset, B, b, bh * 0, T > 0, ok, ov, DK, DV,
                           HAS_RESET, ACC)
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        q_t, k_t, v_t, r_t = nq, nk, nv, nr
        nq, nk, nv, nr = _step(q, sq_t, k, sk_t, v, sv_t, reset, B, b, t64 + 1, t64 + 1 < T,
                               ok, ov, DK, DV, HAS_RESET, ACC)
        if HAS_RESET:
            W = tl.where(r_t, 0.0, W)
        W += k_t[:, None] * v_t[None, :]
        y_t = tl.sum(W * q_t[:, None], 0)
        tl.store(y + t64 * B * H * DV, y_t.to(y.dtype.element_ty), mask=mv)
    tl.store(WT + w_off, W, mask=mk[:, None] & mv[None, :])


@triton.jit(do_not_specialize=["T", "B", "H"])
def _sum_rule_bwd(q, sq_t, sq_b, sq_h, k, sk_t, sk_b, sk_h, v, sv_t, sv_b, sv_h,
                  W0, reset, dy, dWT, dq_part, dk_part, dv, dW0, T, B, H, DK, DV,
                  BK: tl.constexpr, BV: tl.constexpr, HAS_RESET: tl.constexpr, TRUNCATE: tl.constexpr,
                  ACC: tl.constexpr):
    # dy [T, B, H, DV], dv [T, B, H, DV], dq_part / dk_part [NV, T, B, H, DK]: contiguous.
    bh = tl.program_id(0).to(tl.int64)
    iv = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    ok = tl.arange(0, BK)
    ov = iv * BV + tl.arange(0, BV)
    mk, mv = ok < DK, ov < DV
    m2 = mk[:, None] & mv[None, :]
    w_off = bh * DK * DV + ok[:, None] * DV + ov[None, :]
    q, k, v = q + b * sq_b + h * sq_h, k + b * sk_b + h * sk_h, v + b * sv_b + h * sv_h
    dy, dv = dy + bh * DV + ov, dv + bh * DV + ov
    dq_part = dq_part + (iv * T * B * H + bh) * DK + ok
    dk_part = dk_part + (iv * T * B * H + bh) * DK + ok
    step = B * H * DV

    # Forward replay: dq_t = W_t dy_t (this block's columns).
    W = tl.load(W0 + w_off, mask=m2, other=0).to(ACC)
    t0 = bh * 0
    _, nk, nv, nr = _step(q, sq_t, k, sk_t, v, sv_t, reset, B, b, t0, T > 0, ok, ov, DK, DV,
                          HAS_RESET, ACC)
    ndy = tl.load(dy + t0 * step, mask=mv, other=0).to(ACC)
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        k_t, v_t, r_t, dy_t = nk, nv, nr, ndy
        live = t64 + 1 < T
        _, nk, nv, nr = _step(q, sq_t, k, sk_t, v, sv_t, reset, B, b, t64 + 1, live, ok, ov, DK, DV,
                              HAS_RESET, ACC)
        ndy = tl.load(dy + (t64 + 1) * step, mask=lanes(ov, DV, live), other=0).to(ACC)
        if HAS_RESET:
            W = tl.where(r_t, 0.0, W)
        W += k_t[:, None] * v_t[None, :]
        tl.store(dq_part + t64 * B * H * DK, tl.sum(W * dy_t[None, :], 1), mask=mk)

    # Reverse sweep: G = dL/dW_t.
    G = tl.load(dWT + w_off, mask=m2, other=0).to(ACC)
    tT = t0 + T - 1
    nq, nk, nv, nr = _step(q, sq_t, k, sk_t, v, sv_t, reset, B, b, tT, T > 0, ok, ov, DK, DV,
                           HAS_RESET, ACC)
    ndy = tl.load(dy + tT * step, mask=mv, other=0).to(ACC)
    for i in range(T):
        t64 = tl.cast(T - 1 - i, tl.int64)
        q_t, k_t, v_t, r_t, dy_t = nq, nk, nv, nr, ndy
        live = t64 > 0
        nq, nk, nv, nr = _step(q, sq_t, k, sk_t, v, sv_t, reset, B, b, t64 - 1, live, ok, ov, DK, DV,
                               HAS_RESET, ACC)
        ndy = tl.load(dy + (t64 - 1) * step, mask=lanes(ov, DV, live), other=0).to(ACC)
        G += q_t[:, None] * dy_t[None, :]
        tl.store(dk_part + t64 * B * H * DK, tl.sum(G * v_t[None, :], 1), mask=mk)
        tl.store(dv + t64 * step, tl.sum(G * k_t[:, None], 0), mask=mv)
        if HAS_RESET:
            G = tl.where(r_t, 0.0, G)
        if TRUNCATE:    # W_{t-1} is a constant to step t: nothing flows further back
            G = tl.zeros_like(G)
    tl.store(dW0 + w_off, G, mask=m2)


def _forward(q, k, v, W0, reset):
    T, B, H, DK = q.shape
    DV = v.shape[-1]
    BK, BV, NV, warps = tu.column_blocks(B, H, DK, DV, q.device)
    y = torch.empty(T, B, H, DV, dtype=q.dtype, device=q.device)
    WT = torch.empty_like(W0)
    reset_bytes, has_reset = tu.reset_arg(reset, q)
    _sum_rule_fwd[(B * H, NV)](*tu.seq(q), *tu.seq(k), *tu.seq(v), W0.contiguous(), reset_bytes, y, WT,
                               T, B, H, DK, DV, BK=BK, BV=BV, HAS_RESET=has_reset,
                               ACC=tu.acc_type(W0), num_warps=warps)
    return y, WT


class _SumRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, W0, reset, truncate):
        y, WT = _forward(q, k, v, W0, reset)
        ctx.save_for_backward(q, k, v, W0, reset)
        ctx.truncate = truncate
        return y, WT

    @staticmethod
    def backward(ctx, dy, dWT):
        q, k, v, W0, reset = ctx.saved_tensors
        T, B, H, DK = q.shape
        DV = v.shape[-1]
        BK, BV, NV, warps = tu.column_blocks(B, H, DK, DV, q.device)
        acc = W0.dtype
        dq_part = torch.empty(NV, T, B, H, DK, dtype=acc, device=q.device)
        dk_part = torch.empty(NV, T, B, H, DK, dtype=acc, device=q.device)
        dv = torch.empty(T, B, H, DV, dtype=acc, device=q.device)
        dW0 = torch.empty_like(W0)
        reset_bytes, has_reset = tu.reset_arg(reset, q)
        _sum_rule_bwd[(B * H, NV)](*tu.seq(q), *tu.seq(k), *tu.seq(v), W0.contiguous(), reset_bytes,
                                   dy.contiguous(), dWT.contiguous(), dq_part, dk_part, dv, dW0,
                                   T, B, H, DK, DV, BK=BK, BV=BV, HAS_RESET=has_reset,
                                   TRUNCATE=ctx.truncate, ACC=tu.acc_type(W0), num_warps=warps)
        return (dq_part.sum(0).to(q.dtype), dk_part.sum(0).to(k.dtype), dv.to(v.dtype), dW0, None, None)


def fused_recurrent_sum_rule(q, k, v, W, reset, truncate=False):
    """q, k: [T, B, H, Dk]; v: [T, B, H, Dv]; W: [B, H, Dk, Dv] float32/64; reset: [T, B] bool or
    None. Returns y [T, B, H, Dv] in q's dtype and the final W. Without gradients to compute (the
    acting path: T = 1 under no_grad) it runs the forward kernel alone and keeps nothing."""
    tu.check_inputs("sum_rule", _sum_rule_fwd, (q, k, v, W), (q.shape[-1], v.shape[-1]))
    if tu.needs_grad(q, k, v, W):
        return _SumRule.apply(q, k, v, W, reset, truncate)
    return _forward(q, k, v, W, reset)
