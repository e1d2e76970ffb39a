"""Fused Triton kernels of the delta rule (Delta Net), tested against naive.py.

    W̃ = m_t W_{t-1}      δ_t = v_t − W̃ᵀ k_t      W_t = W̃ + β_t k_t δ_tᵀ      y_t = W_tᵀ q_t

One program owns one (sequence, head) and a block of BV columns of W: column j of W only ever
meets column j of v, so splitting Dv multiplies the programs when B·H is small.

Backward (the scheme of flash-linear-attention's fused_recurrent_delta_rule, plus resets). The
forward stores δ_t (a [T, B, H, Dv] tensor, never W). With G_t = dL/dW_t:
    reverse sweep:  G += q dyᵀ;  dδ = β Gᵀk (= dv);  dβ = δ·(Gᵀk);  dk = β G δ;  G = m (G − k dδᵀ)
    forward sweep:  dk −= W̃ dδ;  dq = W_t dy     (W replayed from W_0 with the stored δ: exact)
The reverse sweep needs no W at all; the terms that do are added by a forward replay, so the
backward stores nothing of size D² per step. dq, dk, dβ sum over columns: per-block partials.
With truncation (TRUNCATE) G restarts from zero at every step (W_{t-1} is a constant to step t);
the forward replay's dk −= W̃ dδ stays: k_t meets the constant W̃ in δ_t.
"""
import torch
import triton
import triton.language as tl

from .. import _triton_utils as tu
from .._triton_utils import lanes


@triton.jit
def _step(q, sq_t, k, sk_t, beta, sb_t, reset, B, b, t, live, ok, DK, HAS_RESET: tl.constexpr,
          ACC: tl.constexpr):
    """Step t's q, k, β and reset flag (zeros unless live): loaded a step ahead of their use, so
    the load latency overlaps the previous step's arithmetic instead of stalling every step."""
    mk = lanes(ok, DK, live)
    q_t = tl.load(q + t * sq_t + ok, mask=mk, other=0).to(ACC)
    k_t = tl.load(k + t * sk_t + ok, mask=mk, other=0).to(ACC)
    b_t = tl.load(beta + t * sb_t, mask=live, other=0).to(ACC)
    r_t = tl.load(reset + t * B + b, mask=live & HAS_RESET, other=0) != 0
    return q_t, k_t, b_t, r_t


@triton.jit(do_not_specialize=["T", "B", "H"])
def _delta_rule_fwd(q, sq_t, sq_b, sq_h, k, sk_t, sk_b, sk_h, v, sv_t, sv_b, sv_h,
                    beta, sb_t, sb_b, sb_h, W0, reset, y, WT, delta, T, B, H, DK, DV,
                    BK: tl.constexpr, BV: tl.constexpr, HAS_RESET: tl.constexpr,
                    SAVE: tl.constexpr, ACC: tl.constexpr):
    # y, delta: [T, B, H, DV] contiguous (delta in ACC, written only when SAVE).
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    ok = tl.arange(0, BK)
    ov = tl.program_id(1) * BV + tl.arange(0, BV)
    mk, mv = ok < DK, ov < DV
    w_off = bh * DK * DV + ok[:, None] * DV + ov[None, :]
    W = tl.load(W0 + w_off, mask=mk[:, None] & mv[None, :], other=0).to(ACC)
    q, k, v = q + b * sq_b + h * sq_h, k + b * sk_b + h * sk_h, v + b * sv_b + h * sv_h
    beta = beta + b * sb_b + h * sb_h
    y, delta = y + bh * DV + ov, delta + bh * DV + ov
    t0 = bh * 0
    nq, nk, nb, nr = _step(q, sq_t, k, sk_t, beta, sb_t, reset, B, b, t0, T > 0, ok, DK, HAS_RESET, ACC)
    nv = tl.load(v + ov, mask=mv, other=0).to(ACC)
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        q_t, k_t, b_t, r_t, v_t = nq, nk, nb, nr, nv
        live = t64 + 1 < T
        nq, nk, nb, nr = _step(q, sq_t, k, sk_t, beta, sb_t, reset, B, b, t64 + 1, live, ok, DK,
                               HAS_RESET, ACC)
        nv = tl.load(v + (t64 + 1) * sv_t + ov, mask=lanes(ov, DV, live), other=0).to(ACC)
        if HAS_RESET:
            W = tl.where(r_t, 0.0, W)
        d_t = v_t - tl.sum(W * k_t[:, None], 0)
        W += (b_t * k_t)[:, None] * d_t[None, :]
        y_t = tl.sum(W * q_t[:, None], 0)
        tl.store(y + t64 * B * H * DV, y_t.to(y.dtype.element_ty), mask=mv)
        if SAVE:
            tl.store(delta + t64 * B * H * DV, d_t, mask=mv)
    tl.store(WT + w_off, W, mask=mk[:, None] & mv[None, :])


@triton.jit(do_not_specialize=["T", "B", "H"])
def _delta_rule_bwd(q, sq_t, sq_b, sq_h, k, sk_t, sk_b, sk_h, beta, sb_t, sb_b, sb_h,
                    delta, W0, reset, dy, dWT, dq_part, dk_part, db_part, dv, dW0, T, B, H, DK, DV,
                    BK: tl.constexpr, BV: tl.constexpr, HAS_RESET: tl.constexpr, TRUNCATE: tl.constexpr,
                    ACC: tl.constexpr):
    # delta, dy, dv: [T, B, H, DV]; dq_part, dk_part: [NV, T, B, H, DK]; db_part [NV, T, B, H].
    bh = tl.program_id(0).to(tl.int64)
    iv = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    ok = tl.arange(0, BK)
    ov = iv * BV + tl.arange(0, BV)
    mk, mv = ok < DK, ov < DV
    m2 = mk[:, None] & mv[None, :]
    w_off = bh * DK * DV + ok[:, None] * DV + ov[None, :]
    q, k = q + b * sq_b + h * sq_h, k + b * sk_b + h * sk_h
    beta = beta + b * sb_b + h * sb_h
    delta, dy, dv = delta + bh * DV + ov, dy + bh * DV + ov, dv + bh * DV + ov
    dq_part = dq_part + (iv * T * B * H + bh) * DK + ok
    dk_part = dk_part + (iv * T * B * H + bh) * DK + ok
    db_part = db_part + iv * T * B * H + bh
    step_v, step_k = B * H * DV, B * H * DK

    # Reverse sweep: G = dL/dW_t, and every term that needs no W.
    G = tl.load(dWT + w_off, mask=m2, other=0).to(ACC)
    tT = bh * 0 + T - 1
    nq, nk, nb, nr = _step(q, sq_t, k, sk_t, beta, sb_t, reset, B, b, tT, T > 0, ok, DK, HAS_RESET, ACC)
    nd = tl.load(delta + tT * step_v, mask=mv, other=0)
    ndy = tl.load(dy + tT * step_v, mask=mv, other=0).to(ACC)
    for i in range(T):
        t64 = tl.cast(T - 1 - i, tl.int64)
        q_t, k_t, b_t, r_t, d_t, dy_t = nq, nk, nb, nr, nd, ndy
        live = t64 > 0
        nq, nk, nb, nr = _step(q, sq_t, k, sk_t, beta, sb_t, reset, B, b, t64 - 1, live, ok, DK,
                               HAS_RESET, ACC)
        nd = tl.load(delta + (t64 - 1) * step_v, mask=lanes(ov, DV, live), other=0)
        ndy = tl.load(dy + (t64 - 1) * step_v, mask=lanes(ov, DV, live), other=0).to(ACC)
        G += q_t[:, None] * dy_t[None, :]
        kG = tl.sum(G * k_t[:, None], 0)
        dd_t = b_t * kG
        tl.store(dv + t64 * step_v, dd_t, mask=mv)
        tl.store(db_part + t64 * B * H, tl.sum(kG * d_t))
        tl.store(dk_part + t64 * step_k, b_t * tl.sum(G * d_t[None, :], 1), mask=mk)
        G -= k_t[:, None] * dd_t[None, :]
        if HAS_RESET:
            G = tl.where(r_t, 0.0, G)
        if TRUNCATE:    # W_{t-1} is a constant to step t: nothing flows further back
            G = tl.zeros_like(G)
    tl.store(dW0 + w_off, G, mask=m2)

    # Forward replay: the terms that need W. It reads back dv and dk_part, written above by other
    # threads of this program: the barrier makes those writes visible.
    tl.debug_barrier()
    W = tl.load(W0 + w_off, mask=m2, other=0).to(ACC)
    t0 = bh * 0
    _, nk, nb, nr = _step(q, sq_t, k, sk_t, beta, sb_t, reset, B, b, t0, T > 0, ok, DK, HAS_RESET, ACC)
    nd = tl.load(delta, mask=mv, other=0)
    ndd = tl.load(dv, mask=mv, other=0)
    ndk = tl.load(dk_part, mask=mk, other=0)
    ndy = tl.load(dy, mask=mv, other=0).to(ACC)
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        k_t, b_t, r_t, d_t, dd_t, dk_t, dy_t = nk, nb, nr, nd, ndd, ndk, ndy
        live = t64 + 1 < T
        _, nk, nb, nr = _step(q, sq_t, k, sk_t, beta, sb_t, reset, B, b, t64 + 1, live, ok, DK,
                              HAS_RESET, ACC)
        nxt_v, nxt_k = (t64 + 1) * step_v, (t64 + 1) * step_k
        nd = tl.load(delta + nxt_v, mask=lanes(ov, DV, live), other=0)
        ndd = tl.load(dv + nxt_v, mask=lanes(ov, DV, live), other=0)
        ndk = tl.load(dk_part + nxt_k, mask=lanes(ok, DK, live), other=0)
        ndy = tl.load(dy + nxt_v, mask=lanes(ov, DV, live), other=0).to(ACC)
        if HAS_RESET:
            W = tl.where(r_t, 0.0, W)
        tl.store(dk_part + t64 * step_k, dk_t - tl.sum(W * dd_t[None, :], 1), mask=mk)
        W += (b_t * k_t)[:, None] * d_t[None, :]
        tl.store(dq_part + t64 * step_k, tl.sum(W * dy_t[None, :], 1), mask=mk)


def _forward(q, k, v, beta, W0, reset, save, y_dtype):
    T, B, H, DK = q.shape
    DV = v.shape[-1]
    BK, BV, NV, warps = tu.column_blocks(B, H, DK, DV, q.device)
    y = torch.empty(T, B, H, DV, dtype=y_dtype, device=q.device)
    WT = torch.empty_like(W0)
    delta = torch.empty(T, B, H, DV, dtype=W0.dtype, device=q.device) if save else y
    reset_bytes, has_reset = tu.reset_arg(reset, q)
    _delta_rule_fwd[(B * H, NV)](*tu.seq(q), *tu.seq(k), *tu.seq(v), *tu.steps(beta), W0.contiguous(),
                                 reset_bytes, y, WT, delta, T, B, H, DK, DV, BK=BK, BV=BV,
                                 HAS_RESET=has_reset, SAVE=save, ACC=tu.acc_type(W0), num_warps=warps)
    return y, WT, (delta if save else None)


class DeltaRule(torch.autograd.Function):
    """(q, k, v, beta, W0, reset, y_dtype, truncate) -> (y, W_final). delta_rnn reuses it with
    y_dtype = the state's dtype (its z stays in the accumulation dtype)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, W0, reset, y_dtype, truncate=False):
        y, WT, delta = _forward(q, k, v, beta, W0, reset, True, y_dtype)
        ctx.save_for_backward(q, k, v, beta, W0, reset, delta)
        ctx.truncate = truncate
        return y, WT

    @staticmethod
    def backward(ctx, dy, dWT):
        q, k, v, beta, W0, reset, delta = ctx.saved_tensors
        T, B, H, DK = q.shape
        DV = v.shape[-1]
        BK, BV, NV, warps = tu.column_blocks(B, H, DK, DV, q.device)
        acc, dev = W0.dtype, q.device
        dq_part = torch.empty(NV, T, B, H, DK, dtype=acc, device=dev)
        dk_part = torch.empty(NV, T, B, H, DK, dtype=acc, device=dev)
        db_part = torch.empty(NV, T, B, H, dtype=acc, device=dev)
        dv = torch.empty(T, B, H, DV, dtype=acc, device=dev)
        dW0 = torch.empty_like(W0)
        reset_bytes, has_reset = tu.reset_arg(reset, q)
        _delta_rule_bwd[(B * H, NV)](*tu.seq(q), *tu.seq(k), *tu.steps(beta), delta, W0.contiguous(),
                                     reset_bytes, dy.contiguous(), dWT.contiguous(), dq_part, dk_part,
                                     db_part, dv, dW0, T, B, H, DK, DV, BK=BK, BV=BV,
                                     HAS_RESET=has_reset, TRUNCATE=ctx.truncate, ACC=tu.acc_type(W0),
                                     num_warps=warps)
        return (dq_part.sum(0).to(q.dtype), dk_part.sum(0).to(k.dtype), dv.to(v.dtype),
                db_part.sum(0).to(beta.dtype), dW0, None, None, None)


def fused_recurrent_delta_rule(q, k, v, beta, W, reset, truncate=False):
    """q, k: [T, B, H, Dk]; v: [T, B, H, Dv]; beta: [T, B, H]; W: [B, H, Dk, Dv] float32/64;
    reset: [T, B] bool or None. Returns y [T, B, H, Dv] in q's dtype and the final W. Without
    gradients to compute (the acting path: T = 1 under no_grad) it runs the forward kernel alone
    and stores nothing for a backward."""
    tu.check_inputs("delta_rule", _delta_rule_fwd, (q, k, v, beta, W), (q.shape[-1], v.shape[-1]))
    if tu.needs_grad(q, k, v, beta, W):
        return DeltaRule.apply(q, k, v, beta, W, reset, q.dtype, truncate)
    y, WT, _ = _forward(q, k, v, beta, W, reset, False, q.dtype)
    return y, WT
